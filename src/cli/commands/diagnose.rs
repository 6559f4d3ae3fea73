//! `nightshift diagnose`: per route, endpoint and model, the last success, the first failure and
//! the latest failure side by side, and who owned each 429 and 529 (what a support ticket needs);
//! `--evidence FILE` writes it all as a support bundle.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::views::diagnose;
use crate::cli::{load_config, print_report};
use crate::store;

pub fn run(config: Option<&Path>, json: bool, evidence: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let conn = store::open_read_only(crate::lanes::store_location(&config))?;
    if let Some(file) = evidence {
        let bundle = diagnose::evidence(&conn, store::now_ms())?;
        let text = serde_json::to_string_pretty(&bundle)?;
        // A new, private file: a bundle never overwrites one, and only its owner reads it.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .with_context(|| format!("creating the evidence file {}", file.display()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.sync_all())
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!(
            "wrote the support bundle to {} ({} routes, {} throttling answers; no key, prompt or answer)",
            file.display(),
            bundle.diagnosis.routes.len(),
            bundle.diagnosis.events.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let report = diagnose::diagnose(&conn)?;
    print_report(json, &report, |r| r.to_text())
}
