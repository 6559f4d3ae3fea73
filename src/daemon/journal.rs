//! Log lines for the journal: when stderr is journald's stream (`$JOURNAL_STREAM` names its device
//! and inode, see `systemd.exec(5)`), each line starts with its syslog priority (`<3>` error,
//! `<4>` warning, `<6>` info, `<7>` debug; `sd-daemon(3)`) and carries no timestamp of its own
//! (the journal stamps each line). `journalctl -p warning` then shows warnings and errors.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The syslog priority of a level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether `journal_stream` (`$JOURNAL_STREAM`, `DEVICE:INODE`) is the file stderr is open on.
pub fn is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    value.split_once(':').is_some_and(|(d, i)| {
        d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
    })
}

/// The device and inode of stderr.
pub fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Wraps an event format, putting the event's priority before each line.
pub struct WithPriority<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Each line of a message (an error's chain may span several) carries the priority, or
        // journald stores the later ones at the default.
        let prefix = format!("<{}>", priority(*event.metadata().level()));
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let body = text.strip_suffix('\n').unwrap_or(&text);
        writeln!(writer, "{prefix}{}", prefixed(body, &prefix))
    }
}

/// `text` as journal lines of priority `level` (each of its lines prefixed).
pub fn lines(level: Level, text: &str) -> String {
    let prefix = format!("<{}>", priority(level));
    format!("{prefix}{}", prefixed(text, &prefix))
}

/// `text` with `prefix` after each newline in it.
fn prefixed(text: &str, prefix: &str) -> String {
    text.replace('\n', &format!("\n{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_message_carries_the_priority() {
        assert_eq!(prefixed("one\ntwo", "<3>"), "one\n<3>two");
        assert_eq!(prefixed("one", "<3>"), "one");
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }

    #[test]
    fn the_journal_is_recognised_by_device_and_inode_only() {
        assert!(is_journal(Some("8:1234"), Some((8, 1234))));
        assert!(
            !is_journal(Some("8:1234"), Some((8, 99))),
            "stderr redirected elsewhere"
        );
        assert!(!is_journal(None, Some((8, 1234))));
        assert!(!is_journal(Some("garbage"), Some((8, 1234))));
    }
}
