//! Recurring jobs. A job file whose sidecar carries `schedule = "<cron>"` is a template: intake
//! keeps a copy in `<data_dir>/templates/` and registers the schedule instead of running it; at
//! each fire time the scheduler drops a copy into the jobs folder as `<name>-<time>.jsonl`, which
//! intake takes in as any other job.
//!
//! Cron expressions are read by the `cron` crate: six fields with seconds (`0 30 2 * * *`), or the
//! classic five (`30 2 * * *`, taken as second 0). They are wall-clock times in the schedule's
//! time zone (`timezone = "Europe/Paris"` in the sidecar, else the machine's), and daylight saving
//! is handled as classic cron does: a time skipped by the spring jump fires right after it (02:30
//! becomes 03:30), a time repeated by the autumn fall-back fires once.
//!
//! Fire times are computed by the pure [`CronSchedule::next_after`]; the scheduler's clock is
//! passed in, so tests can move time. The scheduler that fires them is `lanes::schedules`.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::DateTime as CivilDateTime;
use jiff::tz::TimeZone;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: cron::Schedule,
    tz: TimeZone,
}

impl CronSchedule {
    /// `expr`: 5, 6 or 7 fields; `tz`: an IANA name, or None for the machine's zone.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<CronSchedule, String> {
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expr}"),
            6 | 7 => expr.to_owned(),
            n => {
                return Err(format!(
                    "{expr:?} has {n} fields; write 5 (min hour day month weekday) or 6 with seconds first"
                ));
            }
        };
        let cron = cron::Schedule::from_str(&full)
            .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))?;
        let tz = match tz {
            Some(name) => {
                TimeZone::get(name).map_err(|e| format!("time zone {name:?} is not known: {e}"))?
            }
            None => TimeZone::system(),
        };
        Ok(CronSchedule { cron, tz })
    }

    /// The first fire time strictly after `t`, or None if the expression never fires again.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut wall = t.to_zoned(self.tz.clone()).datetime();
        // A few rounds at most: only a wall time repeated by a fall-back can map to or before `t`.
        for _ in 0..8 {
            let next_wall = self.cron.after(&to_chrono(wall)?).next()?;
            let next_wall = from_chrono(next_wall.naive_utc())?;
            // `compatible`: a skipped wall time moves forward past the gap, a repeated one takes
            // its first occurrence.
            let at = self
                .tz
                .to_ambiguous_zoned(next_wall)
                .compatible()
                .ok()?
                .timestamp();
            if at > t {
                return Some(at);
            }
            wall = next_wall;
        }
        None
    }
}

fn to_chrono(wall: CivilDateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::from(wall.year()),
        wall.month() as u32,
        wall.day() as u32,
    )?;
    let time = chrono::NaiveTime::from_hms_opt(
        wall.hour() as u32,
        wall.minute() as u32,
        wall.second() as u32,
    )?;
    Some(chrono::NaiveDateTime::new(date, time).and_utc())
}

fn from_chrono(wall: chrono::NaiveDateTime) -> Option<CivilDateTime> {
    use chrono::{Datelike, Timelike};
    CivilDateTime::new(
        i16::try_from(wall.year()).ok()?,
        wall.month() as i8,
        wall.day() as i8,
        wall.hour() as i8,
        wall.minute() as i8,
        wall.second() as i8,
        0,
    )
    .ok()
}

/// The job name of a run: the schedule's name and the fire time (UTC), e.g.
/// `nightly-summary-20261124T020000Z`. The same fire time always gives the same name, so a run
/// fired twice (a crash between writing the file and recording it) is taken in once.
pub fn run_name(schedule: &str, at_ms: i64) -> String {
    let stamp = Timestamp::from_millisecond(at_ms)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| at_ms.to_string());
    format!("{schedule}-{stamp}")
}

/// The next fire time of a schedule (`expr` in `tz`) after `now` (None: never again, or
/// unreadable).
pub fn next_run(expr: &str, tz: Option<&str>, now: i64) -> Option<i64> {
    let schedule = CronSchedule::parse(expr, tz).ok()?;
    schedule
        .next_after(Timestamp::from_millisecond(now).ok()?)
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn five_and_six_fields_and_bad_expressions() {
        let five = CronSchedule::parse("30 2 * * *", Some("UTC")).expect("five fields");
        let six = CronSchedule::parse("0 30 2 * * *", Some("UTC")).expect("six fields");
        let t = at("2026-11-23T12:00:00Z");
        assert_eq!(five.next_after(t), Some(at("2026-11-24T02:30:00Z")));
        assert_eq!(five.next_after(t), six.next_after(t));
        assert!(CronSchedule::parse("every night", None).is_err());
        assert!(CronSchedule::parse("61 * * * *", None).is_err());
        assert!(CronSchedule::parse("0 2 * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn wall_clock_times_follow_the_zone_across_daylight_saving() {
        let paris = CronSchedule::parse("0 22 * * *", Some("Europe/Paris")).expect("parse");
        // 22:00 in Paris is 21:00 UTC in winter, 20:00 UTC in summer.
        assert_eq!(
            paris.next_after(at("2026-11-23T12:00:00Z")),
            Some(at("2026-11-23T21:00:00Z"))
        );
        assert_eq!(
            paris.next_after(at("2026-07-01T12:00:00Z")),
            Some(at("2026-07-01T20:00:00Z"))
        );
    }

    #[test]
    fn a_time_skipped_by_the_spring_jump_fires_right_after_it() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let ny = CronSchedule::parse("30 2 * * *", Some("America/New_York")).expect("parse");
        assert_eq!(
            ny.next_after(at("2026-03-08T05:00:00Z")), // 00:00 EST
            Some(at("2026-03-08T07:30:00Z"))           // 03:30 EDT
        );
    }

    #[test]
    fn a_time_repeated_by_the_fall_back_fires_once() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let ny = CronSchedule::parse("30 1 * * *", Some("America/New_York")).expect("parse");
        let first = ny.next_after(at("2026-11-01T04:00:00Z")).expect("fires");
        assert_eq!(first, at("2026-11-01T05:30:00Z")); // 01:30 EDT
        // Asked again just after it (now 01:31 EDT, and later 01:10 EST): the next is tomorrow.
        let tomorrow = at("2026-11-02T06:30:00Z"); // 01:30 EST
        assert_eq!(ny.next_after(first), Some(tomorrow));
        assert_eq!(ny.next_after(at("2026-11-01T06:10:00Z")), Some(tomorrow));
    }

    #[test]
    fn runs_are_named_by_their_fire_time() {
        let ms = at("2026-11-24T02:00:00Z").as_millisecond();
        assert_eq!(run_name("summary", ms), "summary-20261124T020000Z");
    }
}
