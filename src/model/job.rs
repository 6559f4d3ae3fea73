//! The words of the job file format: priority, mode, deadline, job defaults, item states and lanes.
//! Each enum maps to and from the string stored in SQLite and written in job files.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// Who waits for the result. Higher classes are admitted first; lower ones leave headroom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Interactive,
    High,
    Normal,
    Nightly,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Interactive,
        Priority::High,
        Priority::Normal,
        Priority::Nightly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Nightly => "nightly",
        }
    }

    /// The number stored in `items.priority`; lower sorts first.
    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> Priority {
        Priority::ALL
            .get(rank.clamp(0, 3) as usize)
            .copied()
            .unwrap_or(Priority::Nightly)
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("must be one of interactive, high, normal, nightly; got {s:?}"))
    }
}

/// Which lane may serve an item: the planner decides for `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Batch,
    Realtime,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Batch => "batch",
            Mode::Realtime => "realtime",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "batch" => Ok(Mode::Batch),
            "realtime" => Ok(Mode::Realtime),
            _ => Err(format!("must be one of auto, batch, realtime; got {s:?}")),
        }
    }
}

/// When a result is needed: a point in time, or a duration counted from intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Unix milliseconds.
    At(i64),
    /// Milliseconds after the job was taken in.
    After(i64),
}

impl Deadline {
    /// The absolute deadline for a job taken in at `intake_ms`.
    pub fn resolve(self, intake_ms: i64) -> i64 {
        match self {
            Deadline::At(at) => at,
            Deadline::After(ms) => intake_ms.saturating_add(ms),
        }
    }
}

impl FromStr for Deadline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ts) = s.parse::<jiff::Timestamp>() {
            return Ok(Deadline::At(ts.as_millisecond()));
        }
        parse_duration_ms(s).map(Deadline::After).ok_or_else(|| {
            format!(
                "must be an RFC 3339 time (2026-11-24T06:00:00Z) or a duration such as 90m, 2h, 1d or 1h30m; got {s:?}"
            )
        })
    }
}

/// Parses durations such as `45s`, `90m`, `2h`, `1d`, `1h30m` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit_ms: i64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        number.clear();
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
    }
    if !number.is_empty() || total <= 0 {
        return None;
    }
    Some(total)
}

/// A job's defaults, from its sidecar `<job>.toml`; each line may override them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDefaults {
    pub tenant: String,
    pub priority: Priority,
    pub mode: Mode,
    /// As written, so relative deadlines resolve against each job's intake time.
    pub deadline: Option<(String, Deadline)>,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            tenant: "default".to_owned(),
            priority: Priority::Nightly,
            mode: Mode::Auto,
            deadline: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    tenant: Option<String>,
    priority: Option<String>,
    mode: Option<String>,
    deadline: Option<String>,
    schedule: Option<String>,
    timezone: Option<String>,
}

/// A sidecar manifest: the job's defaults, and for a template, its schedule.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub defaults: JobDefaults,
    /// `schedule` (a cron expression, checked) and `timezone` (an IANA name, or the machine's).
    pub schedule: Option<(String, Option<String>)>,
}

impl Manifest {
    /// Parses a sidecar. Errors name the setting.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawSidecar =
            toml::from_str(text).map_err(|e| crate::config::toml_error(&e, text))?;
        let schedule = match (raw.schedule.clone(), raw.timezone.clone()) {
            (None, None) => None,
            (None, Some(_)) => return Err("`timezone` is only used with `schedule`".into()),
            (Some(expr), tz) => {
                crate::policy::cron::CronSchedule::parse(&expr, tz.as_deref())
                    .map_err(|e| format!("`schedule` {e}"))?;
                Some((expr, tz))
            }
        };
        let defaults = JobDefaults::from_raw(raw)?;
        if schedule.is_some()
            && let Some((text, Deadline::At(_))) = &defaults.deadline
        {
            return Err(format!(
                "`deadline` is {text:?}, a fixed time; a template with a `schedule` needs a duration \
                 (e.g. \"6h\"), counted from each run"
            ));
        }
        Ok(Manifest { defaults, schedule })
    }
}

impl JobDefaults {
    /// Parses a sidecar manifest's job defaults. Errors name the setting.
    pub fn from_sidecar(text: &str) -> Result<JobDefaults, String> {
        Manifest::parse(text).map(|m| m.defaults)
    }

    fn from_raw(raw: RawSidecar) -> Result<JobDefaults, String> {
        let mut defaults = JobDefaults::default();
        if let Some(tenant) = raw.tenant {
            defaults.tenant = check_tenant(&tenant).map_err(|e| format!("`tenant` {e}"))?;
        }
        if let Some(p) = raw.priority {
            defaults.priority = p.parse().map_err(|e| format!("`priority` {e}"))?;
        }
        if let Some(m) = raw.mode {
            defaults.mode = m.parse().map_err(|e| format!("`mode` {e}"))?;
        }
        if let Some(d) = raw.deadline {
            let parsed = d.parse().map_err(|e| format!("`deadline` {e}"))?;
            defaults.deadline = Some((d, parsed));
        }
        Ok(defaults)
    }
}

/// A tenant name: 1–128 printable characters.
pub fn check_tenant(tenant: &str) -> Result<String, String> {
    if tenant.is_empty() || tenant.chars().count() > 128 || tenant.chars().any(char::is_control) {
        return Err(format!(
            "must be 1-128 printable characters; got {tenant:?}"
        ));
    }
    Ok(tenant.to_owned())
}

/// Where an item is in its life. Mirrors `items.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    Pending,
    InFlight,
    Succeeded,
    Errored,
    Expired,
    Canceled,
}

impl ItemState {
    pub const ALL: [ItemState; 6] = [
        ItemState::Pending,
        ItemState::InFlight,
        ItemState::Succeeded,
        ItemState::Errored,
        ItemState::Expired,
        ItemState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::InFlight => "in_flight",
            ItemState::Succeeded => "succeeded",
            ItemState::Errored => "errored",
            ItemState::Expired => "expired",
            ItemState::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, ItemState::Pending | ItemState::InFlight)
    }
}

impl FromStr for ItemState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown item state {s:?}"))
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two ways to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Realtime,
    Batch,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Realtime => "realtime",
            Lane::Batch => "batch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("1d"), Some(86_400_000));
        assert_eq!(parse_duration_ms("45s"), Some(45_000));
        assert_eq!(parse_duration_ms("2"), None);
        assert_eq!(parse_duration_ms("h"), None);
        assert_eq!(parse_duration_ms("0m"), None);
        assert_eq!(parse_duration_ms("2w"), None);
    }

    #[test]
    fn deadlines_parse_absolute_and_relative() {
        assert_eq!(
            "2026-11-24T06:00:00Z".parse::<Deadline>(),
            Ok(Deadline::At(1_795_500_000_000))
        );
        assert_eq!("2h".parse::<Deadline>(), Ok(Deadline::After(7_200_000)));
        assert_eq!(Deadline::After(1000).resolve(5), 1005);
        assert!("tomorrow".parse::<Deadline>().is_err());
    }

    #[test]
    fn sidecar_parses_and_rejects_unknown_keys() {
        let d =
            JobDefaults::from_sidecar("tenant = \"acme\"\npriority = \"high\"\ndeadline = \"4h\"")
                .expect("valid sidecar");
        assert_eq!(d.tenant, "acme");
        assert_eq!(d.priority, Priority::High);
        assert_eq!(d.mode, Mode::Auto);
        assert_eq!(d.deadline, Some(("4h".into(), Deadline::After(14_400_000))));
        let err = JobDefaults::from_sidecar("tennant = \"x\"").expect_err("unknown key");
        assert!(err.contains("tennant"), "{err}");
        let err = JobDefaults::from_sidecar("priority = \"urgent\"").expect_err("bad value");
        assert!(err.contains("`priority`"), "{err}");
    }

    #[test]
    fn a_template_manifest_has_a_checked_schedule_and_a_relative_deadline() {
        let m = Manifest::parse("schedule = \"0 2 * * *\"\ntimezone = \"UTC\"\ndeadline = \"6h\"")
            .expect("valid template");
        assert_eq!(m.schedule, Some(("0 2 * * *".into(), Some("UTC".into()))));
        let err = Manifest::parse("schedule = \"0 2 * * *\"\ndeadline = \"2026-12-01T00:00:00Z\"")
            .expect_err("a fixed deadline");
        assert!(
            err.contains("`deadline`") && err.contains("duration"),
            "{err}"
        );
        let err = Manifest::parse("timezone = \"UTC\"").expect_err("no schedule");
        assert!(err.contains("`timezone`"), "{err}");
        let err = Manifest::parse("schedule = \"soon\"").expect_err("bad cron");
        assert!(err.contains("`schedule`"), "{err}");
    }

    #[test]
    fn enums_round_trip_their_strings() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
        for s in ItemState::ALL {
            assert_eq!(s.as_str().parse::<ItemState>(), Ok(s));
        }
    }
}
