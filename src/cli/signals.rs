//! The signals the daemon and the fake API answer: SIGTERM and SIGINT stop, SIGHUP reloads.

/// A message per SIGHUP: reload the config file.
pub fn reload_signals() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP; reloads need a restart"),
    }
    rx
}

/// Listens for SIGTERM (systemd stop) and SIGINT (Ctrl-C) from this call on, so a stop that comes
/// while the daemon starts is orderly too (before, the handlers were set when the future was first
/// polled, and an early SIGTERM killed the process); the future resolves on either. Call it inside
/// the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| {
        let stream = signal(kind);
        async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                    name
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}; the other signal stops nightshift");
                    std::future::pending().await
                }
            }
        }
    };
    let (term, int) = (
        listen(SignalKind::terminate(), "SIGTERM"),
        listen(SignalKind::interrupt(), "SIGINT"),
    );
    async move {
        let which = tokio::select! {
            which = term => which,
            which = int => which,
        };
        tracing::info!("{which} received");
    }
}
