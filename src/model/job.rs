//! The words of the job file format: priority, mode, deadline, job defaults, tenants.
//! Each enum maps to and from the string stored in SQLite and written in job files.

use std::str::FromStr;

use super::time::parse_duration_ms;

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

/// Whether nightshift places prompt-cache breakpoints itself (`cache` in a sidecar or the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// A prefix shared by two or more of the job's requests, long enough to be cached, gets a
    /// breakpoint (requests that mark the cache themselves are left as written).
    Auto,
    /// Requests are sent exactly as written.
    Off,
}

impl CacheMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Auto => "auto",
            CacheMode::Off => "off",
        }
    }
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(CacheMode::Auto),
            "off" => Ok(CacheMode::Off),
            _ => Err(format!("must be auto or off; got {s:?}")),
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

/// A job's defaults, from its sidecar `<job>.toml`; each line may override them.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDefaults {
    pub tenant: String,
    pub priority: Priority,
    pub mode: Mode,
    /// As written, so relative deadlines resolve against each job's intake time.
    pub deadline: Option<(String, Deadline)>,
    /// None: the config's `cache` (settled when the job is taken in).
    pub cache: Option<CacheMode>,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            tenant: "default".to_owned(),
            priority: Priority::Nightly,
            mode: Mode::Auto,
            deadline: None,
            cache: None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn enums_round_trip_their_strings() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
    }
}
