//! Time windows per priority class (`[windows.<class>]`): e.g. nightly work only 22:00–06:00 in
//! local wall-clock time (daylight saving follows the zone), or, with `when_idle`, outside its
//! hours too while the organisation's quota is idle.
//!
//! Pure: the time is passed in. The real-time lane asks [`Windows::gate`] per item; the batch lane
//! leaves classes whose window is closed unpacked (`when_idle` does not apply to batches, which
//! do not draw on the Messages quota).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::model::job::Priority;

/// One class's window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Minutes after local midnight; `start > end` wraps past midnight (22:00–06:00).
    pub start: u16,
    pub end: u16,
    pub tz: TimeZone,
    /// As written, for `status`.
    pub hours: String,
    pub timezone: Option<String>,
    /// Outside the hours, run while the org's quota is idle.
    pub when_idle: bool,
}

impl Window {
    /// `hours`: `"HH:MM-HH:MM"`; `timezone`: an IANA name, or None for the machine's zone.
    pub fn parse(hours: &str, timezone: Option<&str>, when_idle: bool) -> Result<Window, String> {
        let bad =
            || format!("is {hours:?}; write local hours as \"HH:MM-HH:MM\", e.g. \"22:00-06:00\"");
        let (a, b) = hours.split_once('-').ok_or_else(bad)?;
        let minutes = |s: &str| -> Option<u16> {
            let (h, m) = s.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "is {hours:?}, an empty window; leave the class out to run it at any time"
            ));
        }
        let tz = match timezone {
            Some(name) => {
                TimeZone::get(name).map_err(|e| format!("time zone {name:?} is not known: {e}"))?
            }
            None => TimeZone::system(),
        };
        Ok(Window {
            start,
            end,
            tz,
            hours: hours.to_owned(),
            timezone: timezone.map(str::to_owned),
            when_idle,
        })
    }

    /// Whether `at` falls within the hours (start inclusive, end exclusive), in local time.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let now = local.hour() as u16 * 60 + local.minute() as u16;
        if self.start < self.end {
            (self.start..self.end).contains(&now)
        } else {
            now >= self.start || now < self.end
        }
    }
}

/// What the real-time lane may do with an item of a class now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No window, or within its hours.
    Open,
    /// Outside its hours, but it may run while the quota is idle.
    IfIdle,
    /// Outside its hours.
    Closed,
}

/// Every class's window.
#[derive(Debug, Clone, Default)]
pub struct Windows(pub BTreeMap<Priority, Window>);

impl Windows {
    pub fn gate(&self, priority: Priority, at: Timestamp) -> Gate {
        match self.0.get(&priority) {
            None => Gate::Open,
            Some(w) if w.is_open(at) => Gate::Open,
            Some(w) if w.when_idle => Gate::IfIdle,
            Some(_) => Gate::Closed,
        }
    }

    /// The ranks (`items.priority`) of classes whose window is closed at `now_ms` (Unix ms, as the
    /// store keeps time), idle or not: what the batch lane leaves unpacked.
    pub fn closed_ranks(&self, now_ms: i64) -> Vec<i64> {
        let Ok(at) = Timestamp::from_millisecond(now_ms) else {
            return Vec::new();
        };
        self.0
            .iter()
            .filter(|(_, w)| !w.is_open(at))
            .map(|(p, _)| p.rank())
            .collect()
    }
}

/// The ranks of every class not in `closed`, in rank order.
pub fn open_ranks(closed: &[i64]) -> Vec<i64> {
    Priority::ALL
        .iter()
        .map(|p| p.rank())
        .filter(|r| !closed.contains(r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn a_window_past_midnight_wraps() {
        let w = Window::parse("22:00-06:00", Some("UTC"), false).expect("parse");
        assert!(w.is_open(at("2026-11-23T22:00:00Z")));
        assert!(w.is_open(at("2026-11-24T05:59:00Z")));
        assert!(!w.is_open(at("2026-11-24T06:00:00Z")));
        assert!(!w.is_open(at("2026-11-23T12:00:00Z")));
        let day = Window::parse("09:00-17:30", Some("UTC"), false).expect("parse");
        assert!(day.is_open(at("2026-11-23T17:29:00Z")));
        assert!(!day.is_open(at("2026-11-23T17:30:00Z")));
    }

    #[test]
    fn hours_are_local_wall_clock_across_daylight_saving() {
        let w = Window::parse("22:00-06:00", Some("Europe/Paris"), false).expect("parse");
        // 21:30 UTC is 22:30 in Paris in winter (open) but 23:30 in summer (open too);
        // 20:30 UTC is 21:30 in winter (closed) and 22:30 in summer (open).
        assert!(!w.is_open(at("2026-11-23T20:30:00Z")));
        assert!(w.is_open(at("2026-07-01T20:30:00Z")));
    }

    #[test]
    fn bad_hours_and_zones_are_errors() {
        assert!(Window::parse("22-06", None, false).is_err());
        assert!(Window::parse("25:00-06:00", None, false).is_err());
        assert!(Window::parse("06:00-06:00", None, false).is_err());
        assert!(Window::parse("22:00-06:00", Some("Nowhere/Town"), false).is_err());
    }

    #[test]
    fn gates_follow_the_class_window() {
        let mut windows = Windows::default();
        windows.0.insert(
            Priority::Nightly,
            Window::parse("22:00-06:00", Some("UTC"), true).expect("parse"),
        );
        windows.0.insert(
            Priority::Normal,
            Window::parse("22:00-06:00", Some("UTC"), false).expect("parse"),
        );
        let noon = at("2026-11-23T12:00:00Z");
        assert_eq!(windows.gate(Priority::High, noon), Gate::Open);
        assert_eq!(windows.gate(Priority::Nightly, noon), Gate::IfIdle);
        assert_eq!(windows.gate(Priority::Normal, noon), Gate::Closed);
        assert_eq!(windows.closed_ranks(noon.as_millisecond()), vec![2, 3]);
        let night = at("2026-11-23T23:00:00Z");
        assert_eq!(windows.gate(Priority::Nightly, night), Gate::Open);
        assert!(windows.closed_ranks(night.as_millisecond()).is_empty());
    }
}
