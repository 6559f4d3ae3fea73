//! `nightshift reload`: asks the running daemon to read its config file again (SIGHUP) and waits
//! for its verdict, so a refused config fails the command (and `systemctl reload`, whose
//! `ExecReload` runs it) instead of passing unseen. Exit 0: in force; 78: refused, the running
//! configuration stays; 69: no daemon answered.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::views::daemon::lock_held;
use crate::cli::{EXIT_CONFIG, EXIT_UNAVAILABLE, load_config};
use crate::daemon::reload::{REQUEST_FILE, VERDICT_FILE, read_verdict};

pub fn run(config: Option<&Path>, pid: Option<i32>, timeout: Duration) -> anyhow::Result<ExitCode> {
    let config = match load_config(config) {
        Ok(config) => config,
        Err(e) => {
            // The daemon would refuse it too. Told all the same (when its pid is known), so that
            // its journal and `status` show the refused reload.
            if let Some(pid) = pid {
                let _ = hang_up(pid);
            }
            eprintln!("the reload was refused, the running configuration stays in force: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let data_dir = &config.data_dir;
    if lock_held(data_dir) != Some(true) {
        eprintln!(
            "no nightshift daemon runs on {}; start it (systemctl start nightshift)",
            data_dir.display()
        );
        return Ok(ExitCode::from(EXIT_UNAVAILABLE));
    }
    let pid_file = data_dir.join(crate::daemon::PID_FILE);
    let holder: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading the daemon's pid from {}", pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    // A pid given must be the daemon's: SIGHUP ends most other processes.
    if let Some(given) = pid
        && given != holder
    {
        anyhow::bail!(
            "pid {given} is not the daemon on {} (that is pid {holder}); nothing was signalled",
            data_dir.display()
        );
    }
    let pid = holder;
    let verdict_path = data_dir.join(VERDICT_FILE);
    let before = read_verdict(&verdict_path).map_or(0, |v| v.seq);
    // A token the daemon echoes in the verdict of the reload that read it (see REQUEST_FILE);
    // who cannot write the data folder waits for the next verdict instead.
    // "<ms>-<pid>": a verdict naming this request or a later one (another `reload` meanwhile)
    // judged the config as it is now.
    let asked_at = crate::store::now_ms();
    let token = format!("{asked_at}-{}", std::process::id());
    let answers = |request: Option<&str>| {
        request
            .and_then(|r| r.split('-').next())
            .and_then(|ms| ms.parse::<i64>().ok())
            .is_some_and(|ms| ms >= asked_at)
    };
    let requested = std::fs::write(data_dir.join(REQUEST_FILE), &token).is_ok();
    hang_up(pid)?;
    let asked = Instant::now();
    loop {
        if let Some(verdict) = read_verdict(&verdict_path)
            .filter(|v| v.seq > before && (!requested || answers(v.request.as_deref())))
        {
            if verdict.ok {
                println!("{}", verdict.message);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{}", verdict.message);
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        if asked.elapsed() > timeout {
            eprintln!(
                "the daemon (pid {}) did not say within {} s whether it took the config; see the journal (journalctl -u nightshift)",
                pid,
                timeout.as_secs()
            );
            return Ok(ExitCode::from(EXIT_UNAVAILABLE));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGHUP to the daemon.
fn hang_up(pid: i32) -> anyhow::Result<()> {
    let target = rustix::process::Pid::from_raw(pid)
        .with_context(|| format!("{pid} is not a process id"))?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .with_context(|| format!("signalling the daemon (pid {pid})"))
}
