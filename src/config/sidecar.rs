//! A job's sidecar, `<job>.toml`: the job's defaults (tenant, priority, mode, deadline, cache) and, for a
//! template of recurring runs, its schedule.

use serde::Deserialize;

use crate::model::job::{Deadline, JobDefaults, check_tenant};
use crate::policy::cron::CronSchedule;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    tenant: Option<String>,
    priority: Option<String>,
    mode: Option<String>,
    deadline: Option<String>,
    cache: Option<String>,
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
        let raw: RawSidecar = toml::from_str(text).map_err(|e| super::toml_error(&e, text))?;
        let schedule = match (raw.schedule.clone(), raw.timezone.clone()) {
            (None, None) => None,
            (None, Some(_)) => return Err("`timezone` is only used with `schedule`".into()),
            (Some(expr), tz) => {
                CronSchedule::parse(&expr, tz.as_deref()).map_err(|e| format!("`schedule` {e}"))?;
                Some((expr, tz))
            }
        };
        let defaults = raw.defaults()?;
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

/// Parses a sidecar manifest's job defaults. Errors name the setting.
pub fn job_defaults(text: &str) -> Result<JobDefaults, String> {
    Manifest::parse(text).map(|m| m.defaults)
}

impl RawSidecar {
    fn defaults(self) -> Result<JobDefaults, String> {
        let raw = self;
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
        if let Some(c) = raw.cache {
            defaults.cache = Some(c.parse().map_err(|e| format!("`cache` {e}"))?);
        }
        Ok(defaults)
    }
}

/// The job defaults as a sidecar, for each run (the template's own sidecar minus its schedule).
pub fn to_toml(defaults: &JobDefaults) -> String {
    let mut out = format!(
        "tenant = {}\npriority = \"{}\"\nmode = \"{}\"\n",
        toml_string(&defaults.tenant),
        defaults.priority.as_str(),
        defaults.mode.as_str()
    );
    if let Some((text, _)) = &defaults.deadline {
        out.push_str(&format!("deadline = {}\n", toml_string(text)));
    }
    if let Some(cache) = defaults.cache {
        out.push_str(&format!("cache = \"{}\"\n", cache.as_str()));
    }
    out
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{Mode, Priority};

    #[test]
    fn sidecar_parses_and_rejects_unknown_keys() {
        let d = job_defaults("tenant = \"acme\"\npriority = \"high\"\ndeadline = \"4h\"")
            .expect("valid sidecar");
        assert_eq!(d.tenant, "acme");
        assert_eq!(d.priority, Priority::High);
        assert_eq!(d.mode, Mode::Auto);
        assert_eq!(d.deadline, Some(("4h".into(), Deadline::After(14_400_000))));
        let err = job_defaults("tennant = \"x\"").expect_err("unknown key");
        assert!(err.contains("tennant"), "{err}");
        let err = job_defaults("priority = \"urgent\"").expect_err("bad value");
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
}
