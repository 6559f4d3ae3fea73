//! `nightshift plan FILE`: reads a job file without sending anything and says what running it
//! would take: estimated tokens, cost through batches vs real time, how long the real-time lane
//! would need under the configured limits, and which limit binds.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::intake::{ParsedLine, parse_line};
use crate::job::JobDefaults;

/// `nightshift plan --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Plan {
    /// Valid requests in the file (invalid lines are counted in `invalid_lines`).
    pub items: u64,
    pub invalid_lines: u64,
    /// Estimated input tokens (a token per four bytes of request body; it runs 10–25 % high).
    pub input_tokens: u64,
    /// The sum of `max_tokens`: an upper bound of the output.
    pub max_output_tokens: u64,
    pub cost_usd: Cost,
    /// Seconds the real-time lane needs at the configured limits (input estimated, output at
    /// `max_tokens`); null when a model has no configured limits.
    pub drain_seconds_realtime: Option<f64>,
    /// The limit that decides the drain time: `rpm`, `itpm` or `otpm` (null as above).
    pub binding: Option<&'static str>,
    /// Models without a price: their calls are not in `cost_usd`.
    pub unpriced_models: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Cost {
    /// Everything through the Message Batches API (half price).
    pub batch: f64,
    /// Everything real time.
    pub realtime: f64,
}

/// Per limit class: requests, input tokens, output tokens, and a model of the class.
#[derive(Default)]
struct ClassTotals {
    requests: u64,
    input: u64,
    output: u64,
    model: String,
}

pub fn plan(config: &Config, file: &Path) -> anyhow::Result<Plan> {
    let sidecar = file.with_extension("toml");
    let defaults = if sidecar.is_file() {
        let text = std::fs::read_to_string(&sidecar)
            .with_context(|| format!("reading {}", sidecar.display()))?;
        JobDefaults::from_sidecar(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", sidecar.display()))?
    } else {
        JobDefaults::default()
    };
    let reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let mut classes: BTreeMap<String, ClassTotals> = BTreeMap::new();
    let (mut items, mut invalid, mut input, mut output) = (0u64, 0u64, 0u64, 0u64);
    let (mut batch_micro, mut realtime_micro) = (0i64, 0i64);
    let mut unpriced: Vec<String> = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let ParsedLine::Valid(v) = parse_line(line, i as u64 + 1, &defaults, 0) else {
            invalid += 1;
            continue;
        };
        items += 1;
        input += v.input_estimate;
        output += v.max_tokens;
        let usage = crate::api::Usage {
            input_tokens: v.input_estimate,
            output_tokens: v.max_tokens,
            ..Default::default()
        };
        match (
            config.prices.cost_micro_usd(&v.model, &usage, true),
            config.prices.cost_micro_usd(&v.model, &usage, false),
        ) {
            (Some(b), Some(r)) => {
                batch_micro += b;
                realtime_micro += r;
            }
            _ if !unpriced.contains(&v.model) => unpriced.push(v.model.clone()),
            _ => {}
        }
        let totals = classes
            .entry(crate::quota::limit_class(&v.model))
            .or_default();
        totals.requests += 1;
        totals.input += v.input_estimate;
        totals.output += v.max_tokens;
        totals.model = v.model;
    }
    // Classes drain side by side; the slowest decides, and within it the slowest dimension.
    let mut drain: Option<(f64, &'static str)> = Some((0.0, "rpm"));
    for totals in classes.values() {
        let limits = config.limits_for(&totals.model);
        let dims = [
            ("rpm", totals.requests, limits.rpm),
            ("itpm", totals.input, limits.itpm),
            ("otpm", totals.output, limits.otpm),
        ];
        if dims.iter().any(|(_, _, limit)| limit.is_none()) {
            drain = None;
            break;
        }
        for (name, amount, limit) in dims {
            let secs = amount as f64 / limit.unwrap_or(1) as f64 * 60.0;
            if let Some((worst, _)) = drain
                && secs > worst
            {
                drain = Some((secs, name));
            }
        }
    }
    if items == 0 {
        drain = Some((0.0, "rpm"));
    }
    Ok(Plan {
        items,
        invalid_lines: invalid,
        input_tokens: input,
        max_output_tokens: output,
        cost_usd: Cost {
            batch: batch_micro as f64 / 1_000_000.0,
            realtime: realtime_micro as f64 / 1_000_000.0,
        },
        drain_seconds_realtime: drain.map(|(s, _)| s),
        binding: drain.filter(|_| items > 0).map(|(_, b)| b),
        unpriced_models: unpriced,
    })
}

impl Plan {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} requests ({} invalid lines left out)\n  input tokens   ~{} (estimated)\n  output tokens  <= {} (sum of max_tokens)\n  cost           ${:.4} through batches, ${:.4} real time (at most)\n",
            self.items,
            self.invalid_lines,
            self.input_tokens,
            self.max_output_tokens,
            self.cost_usd.batch,
            self.cost_usd.realtime
        );
        match (self.drain_seconds_realtime, self.binding) {
            (Some(secs), Some(binding)) => out.push_str(&format!(
                "  real time      about {:.0} s at the configured limits; {binding} binds\n",
                secs
            )),
            _ => out.push_str("  real time      unknown: some models have no configured limits ([limits] or [quota] tier)\n"),
        }
        if !self.unpriced_models.is_empty() {
            out.push_str(&format!(
                "  no price for: {} (not in the cost)\n",
                self.unpriced_models.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limits: &str) -> Config {
        Config::parse(limits, Path::new("/tmp/nightshift.toml")).expect("config")
    }

    fn write(lines: &[String]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        use std::io::Write;
        for l in lines {
            writeln!(file, "{l}").expect("write");
        }
        file
    }

    fn line(i: usize, prompt_chars: usize, max_tokens: u64) -> String {
        format!(
            r#"{{"custom_id":"p-{i}","params":{{"model":"claude-sonnet-4-5","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"{}"}}]}}}}"#,
            "x".repeat(prompt_chars)
        )
    }

    #[test]
    fn the_binding_dimension_is_the_slowest_to_drain() {
        let limits = "[limits.default]\nrpm = 1000\nitpm = 10000\notpm = 100000\n";
        // Long prompts, short answers: input tokens bind.
        let file = write(&(0..10).map(|i| line(i, 4_000, 16)).collect::<Vec<_>>());
        let p = plan(&config(limits), file.path()).expect("plan");
        assert_eq!(p.items, 10);
        assert_eq!(p.binding, Some("itpm"));
        assert!(p.drain_seconds_realtime.expect("known") > 60.0);
        // Short prompts, long answers: output tokens bind.
        let file = write(&(0..10).map(|i| line(i, 10, 50_000)).collect::<Vec<_>>());
        assert_eq!(
            plan(&config(limits), file.path()).expect("plan").binding,
            Some("otpm")
        );
        // Many small requests under a low RPM: requests bind.
        let low_rpm = "[limits.default]\nrpm = 50\nitpm = 10000\notpm = 100000\n";
        let file = write(&(0..200).map(|i| line(i, 10, 1)).collect::<Vec<_>>());
        let p = plan(&config(low_rpm), file.path()).expect("plan");
        assert_eq!(p.binding, Some("rpm"));
        assert_eq!(
            p.drain_seconds_realtime,
            Some(240.0),
            "200 requests at 50 RPM"
        );
    }

    #[test]
    fn costs_compare_batches_with_real_time_and_bad_lines_are_left_out() {
        let mut lines: Vec<String> = (0..4).map(|i| line(i, 400, 100)).collect();
        lines.push("{not json".into());
        let file = write(&lines);
        let p = plan(&config(""), file.path()).expect("plan");
        assert_eq!((p.items, p.invalid_lines), (4, 1));
        assert!((p.cost_usd.batch * 2.0 - p.cost_usd.realtime).abs() < 1e-6);
        assert_eq!(p.drain_seconds_realtime, None, "no limits configured");
        assert_eq!(p.binding, None);
        assert_eq!(p.max_output_tokens, 400);
    }
}
