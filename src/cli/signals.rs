//! The signals the daemon and the fake API answer: SIGTERM and SIGINT stop, SIGHUP reloads; and
//! SIGPIPE, which ends the commands whose reader has gone (`nightshift status | head -1`).

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

/// Gives SIGPIPE back its default action, which Rust's runtime sets to "ignore" before `main`: a
/// write to a pipe whose reader has gone then ends the process quietly, as it ends `cat`, instead
/// of `println!` panicking on EPIPE. Only for commands that hold no sockets
/// ([`crate::cli::args::Command::holds_sockets`]): writes to a socket (hyper's and rustls' go through
/// `writev`, which has no `MSG_NOSIGNAL`) would get the signal too when the peer has closed, and a
/// daemon must see that as an error on one connection, not die of it.
#[allow(unsafe_code)] // one libc call, before any thread starts
pub fn default_sigpipe() {
    // SAFETY: signal(2) with a valid signal number and SIG_DFL; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ends the process as SIGPIPE's default action does (the shell sees the same status, 141 under
/// `set -o pipefail`, as for every other command): for a command that keeps SIGPIPE ignored and
/// found its standard output's reader gone.
#[allow(unsafe_code)] // one libc call
pub fn end_as_by_sigpipe() -> ! {
    default_sigpipe();
    // SAFETY: raise(3) with a valid signal number; its default action ends the process.
    unsafe {
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}
