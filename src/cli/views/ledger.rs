//! `nightshift ledger`: billed calls grouped by tenant, day, model or job, as a table, JSON or CSV.

use std::fmt::Write as _;

use crate::store::sql::Conn;
use serde::Serialize;

use super::table;

/// `nightshift ledger --json`: `{"groups": [{"key", "requests", "input_tokens", "output_tokens",
/// "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd", "unpriced_requests",
/// "retries_of_unknown", "cache_saved_usd"}], "total": {…}}`.
#[derive(Debug, Serialize)]
pub struct LedgerReport {
    pub groups: Vec<LedgerGroup>,
    pub total: LedgerGroup,
}

#[derive(Debug, Serialize)]
pub struct LedgerGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    /// USD, exact to the millionth (the ledger keeps millionths, so groups add up to the total).
    pub cost_usd: f64,
    /// Calls of models without a price: not in `cost_usd`.
    pub unpriced_requests: i64,
    pub retries_of_unknown: i64,
    /// What the prompt cache saved these calls, USD (their cost with every cache token as plain
    /// input, less `cost_usd`; negative when writes cost more than reads saved).
    pub cache_saved_usd: f64,
}

impl LedgerGroup {
    fn new(key: Option<String>, s: &crate::store::ledger::Sums) -> LedgerGroup {
        LedgerGroup {
            key,
            requests: s.requests,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cache_creation_input_tokens: s.cache_creation_input_tokens,
            cache_read_input_tokens: s.cache_read_input_tokens,
            cost_usd: s.cost_micro_usd as f64 / 1_000_000.0,
            unpriced_requests: s.unpriced_requests,
            retries_of_unknown: s.retries_of_unknown,
            cache_saved_usd: s.cache_saved_micro_usd as f64 / 1_000_000.0,
        }
    }
}

pub fn ledger(
    conn: &Conn,
    by: crate::store::ledger::GroupBy,
    filter: &crate::store::ledger::Filter,
) -> anyhow::Result<LedgerReport> {
    let rows = crate::store::ledger::grouped(conn, by, filter)?;
    let mut total = crate::store::ledger::Sums::default();
    for (_, sums) in &rows {
        total.add(sums);
    }
    Ok(LedgerReport {
        groups: rows
            .iter()
            .map(|(k, s)| LedgerGroup::new(Some(k.clone()), s))
            .collect(),
        total: LedgerGroup::new(None, &total),
    })
}

impl LedgerReport {
    fn rows(&self) -> Vec<Vec<String>> {
        let line = |key: &str, g: &LedgerGroup| {
            vec![
                key.to_owned(),
                g.requests.to_string(),
                g.input_tokens.to_string(),
                g.output_tokens.to_string(),
                g.cache_creation_input_tokens.to_string(),
                g.cache_read_input_tokens.to_string(),
                format!("{:.6}", g.cost_usd),
                g.unpriced_requests.to_string(),
                format!("{:.6}", g.cache_saved_usd),
            ]
        };
        let mut rows: Vec<Vec<String>> = self
            .groups
            .iter()
            .map(|g| line(g.key.as_deref().unwrap_or_default(), g))
            .collect();
        rows.push(line("TOTAL", &self.total));
        rows
    }

    const HEADER: [&'static str; 9] = [
        "KEY",
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHE WRITE",
        "CACHE READ",
        "COST USD",
        "UNPRICED",
        "CACHE SAVED USD",
    ];

    pub fn to_text(&self) -> String {
        let mut rows = vec![Self::HEADER.map(String::from).to_vec()];
        rows.extend(self.rows());
        let mut out = table(&rows);
        if self.total.unpriced_requests > 0 {
            out.push_str("some calls used models without a price: their cost is not counted (see src/prices.rs)\n");
        }
        if self.total.retries_of_unknown > 0 {
            let _ = writeln!(
                out,
                "{} billed calls retried an unknown outcome: the API may have run (and billed) those requests twice",
                self.total.retries_of_unknown
            );
        }
        out
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "key,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd,unpriced_requests,cache_saved_usd\n",
        );
        for row in self.rows() {
            let quoted: Vec<String> = row
                .iter()
                .map(|c| {
                    if c.contains([',', '"', '\n']) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        c.clone()
                    }
                })
                .collect();
            out.push_str(&quoted.join(","));
            out.push('\n');
        }
        out
    }
}
