//! `[hooks] on_job_done`: a command run when a job ends (every item final, its results file
//! complete), as pueue's callbacks and Oban's hooks do. No shell: the first word is the program,
//! the rest its arguments. It gets the job's facts in `NIGHTSHIFT_*` variables and nothing else of
//! the daemon's environment (which holds the API key), with `PATH` set to the usual places. It
//! runs beside the daemon, in a process group of its own: its failure, or its hanging past
//! [`HOOK_TIMEOUT`] (then the group is killed), is logged and never holds anything up. A hook still
//! running when the daemon stops is killed; one whose job ended just before a crash does not run.

use std::path::PathBuf;
use std::time::Duration;

use crate::store::items::Counts;

/// A hook still running after this long is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// What a hook is told of the job that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnded {
    pub name: String,
    /// `done`, or `canceled`.
    pub state: &'static str,
    pub counts: Counts,
    /// The ledger's cost of its billed calls, USD.
    pub cost_usd: f64,
    pub results: PathBuf,
}

impl JobEnded {
    /// The hook's environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let c = &self.counts;
        vec![
            ("NIGHTSHIFT_JOB", self.name.clone()),
            ("NIGHTSHIFT_JOB_STATE", self.state.to_owned()),
            ("NIGHTSHIFT_ITEMS", c.total.to_string()),
            ("NIGHTSHIFT_SUCCEEDED", c.succeeded.to_string()),
            ("NIGHTSHIFT_ERRORED", c.errored.to_string()),
            ("NIGHTSHIFT_EXPIRED", c.expired.to_string()),
            ("NIGHTSHIFT_CANCELED", c.canceled.to_string()),
            ("NIGHTSHIFT_COST_USD", format!("{:.6}", self.cost_usd)),
            ("NIGHTSHIFT_RESULTS", self.results.display().to_string()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ]
    }
}

/// Starts `command` for `job` and returns at once; a task waits for it and logs how it ended.
pub fn run(command: &[String], job: JobEnded) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let mut cmd = tokio::process::Command::new(program);
    // A process group of its own, so a hook that runs too long is killed with what it started.
    cmd.args(args)
        .env_clear()
        .envs(job.env())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let name = job.name.clone();
    let program = program.clone();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(job = %name, hook = %program, error = %e, "the on_job_done hook could not start");
            return;
        }
    };
    tokio::spawn(async move {
        match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::info!(job = %name, hook = %program, "the on_job_done hook ran")
            }
            Ok(Ok(status)) => {
                tracing::error!(job = %name, hook = %program, %status, "the on_job_done hook failed")
            }
            Ok(Err(e)) => {
                tracing::error!(job = %name, hook = %program, error = %e, "the on_job_done hook could not be waited for")
            }
            Err(_) => {
                if let Some(pid) = child
                    .id()
                    .and_then(|id| rustix::process::Pid::from_raw(id as i32))
                {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                tracing::error!(job = %name, hook = %program, timeout_secs = HOOK_TIMEOUT.as_secs(), "the on_job_done hook ran too long and was killed");
            }
        }
    });
}
