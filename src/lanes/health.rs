//! The daemon's health as the operator sees it in `status` and the metrics: what is wrong now
//! (the store not taking writes, results that cannot be written, the API out of reach, the disk
//! nearly full), since when, and what was said.
//!
//! It is kept beside the store, not in it: a locked database or a full disk is exactly when the
//! store cannot say so. The parts that meet a trouble mark it on a shared [`Board`]; the daemon
//! writes the board, with the disk's free space, to `<data_dir>/health.json` every beat, over a
//! file of fixed size made at start (overwriting its own bytes needs no new space on a full disk).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The file's name in the data dir.
pub const FILE: &str = "health.json";
/// The file's fixed size: the JSON, padded with spaces.
pub const FILE_BYTES: usize = 8192;

/// The parts a trouble belongs to: the database, the results files, the API, the config.
pub const STORE: &str = "store";
pub const RESULTS: &str = "results";
pub const API: &str = "api";
/// The config file: the last reload refused it (the one before stays in force).
pub const CONFIG: &str = "config";
/// The routes: a tenant with items that no route allows.
pub const ROUTES: &str = "routes";
pub const PARTS: [&str; 5] = [STORE, RESULTS, API, CONFIG, ROUTES];

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trouble {
    /// What it means for the operator, e.g. "the database is busy (locked by another process)".
    pub what: String,
    /// The error as it was last met.
    pub error: String,
    /// When it began (Unix ms).
    pub since: i64,
    /// When it is next tried, where that is known (the next probe of an unreachable API).
    pub next_try_at: Option<i64>,
}

/// What is wrong now, by part ([`PARTS`]).
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<&'static str, Trouble>>>);

impl Board {
    /// `part` is in trouble; `since` is kept from the first report. Logged when it begins.
    pub fn set(&self, part: &'static str, what: &str, error: &str, now: i64, next: Option<i64>) {
        let mut board = crate::lock(&self.0);
        let since = match board.get(part) {
            Some(t) if t.what == what => t.since,
            _ => {
                tracing::error!(part, what, error, "health: a trouble began");
                now
            }
        };
        board.insert(
            part,
            Trouble {
                what: what.to_owned(),
                error: error.to_owned(),
                since,
                next_try_at: next,
            },
        );
    }

    /// `part` is well again (logged if it was not).
    pub fn clear(&self, part: &'static str) {
        if let Some(t) = crate::lock(&self.0).remove(part) {
            tracing::warn!(part, what = %t.what, "health: the trouble has passed");
        }
    }

    pub fn troubles(&self) -> BTreeMap<String, Trouble> {
        crate::lock(&self.0)
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }
}

/// `health.json`, and `status --json` → `daemon.health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// When the daemon wrote this (Unix ms).
    pub at: i64,
    /// Free bytes on the data dir's file system, for this user.
    pub disk_free_bytes: Option<u64>,
    /// Under this many free bytes the disk counts as low (`daemon.disk_low_mb`).
    pub disk_low_bytes: u64,
    pub disk_low: bool,
    /// What is wrong now, by part (`store`, `results`, `api`).
    pub troubles: BTreeMap<String, Trouble>,
}

/// What a store error means for the operator.
pub fn store_trouble(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("locked") || e.contains("busy") {
        "the database is busy (locked by another process)"
    } else if e.contains("full") || e.contains("no space") {
        "the disk is full: the database cannot grow"
    } else {
        "the database does not take writes"
    }
}

/// The health file as the daemon writes it: `health` as JSON, padded to [`FILE_BYTES`].
pub fn to_file_bytes(health: &Health) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(health).unwrap_or_default();
    if bytes.len() > FILE_BYTES - 1 {
        // Too many troubles to tell in full: the parts, without their errors.
        let mut short = health.clone();
        for t in short.troubles.values_mut() {
            let end = t.error.floor_char_boundary(200);
            t.error.truncate(end);
        }
        bytes = serde_json::to_vec(&short).unwrap_or_default();
        bytes.truncate(FILE_BYTES - 1);
    }
    bytes.resize(FILE_BYTES - 1, b' ');
    bytes.push(b'\n');
    bytes
}

/// Reads a health file; None if there is none or it cannot be read.
pub fn read(path: &std::path::Path) -> Option<Health> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trouble_keeps_its_start_until_it_passes_and_the_file_reads_back() {
        let board = Board::default();
        board.set(
            "store",
            store_trouble("database is locked"),
            "database is locked",
            10,
            None,
        );
        board.set(
            "store",
            store_trouble("database is locked"),
            "database is locked",
            20,
            None,
        );
        let t = &board.troubles()["store"];
        assert_eq!(
            (t.since, t.what.as_str()),
            (10, "the database is busy (locked by another process)")
        );
        board.set(
            "store",
            store_trouble("database or disk is full"),
            "full",
            30,
            None,
        );
        assert_eq!(
            board.troubles()["store"].since,
            30,
            "another trouble starts anew"
        );
        let health = Health {
            at: 40,
            troubles: board.troubles(),
            ..Default::default()
        };
        let bytes = to_file_bytes(&health);
        assert_eq!(bytes.len(), FILE_BYTES);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), &bytes).expect("write");
        assert_eq!(read(&dir.path().join(FILE)), Some(health));
        board.clear("store");
        assert!(board.troubles().is_empty());

        // Errors too long for the file are cut, on a character boundary.
        board.set("api", "x", &"é".repeat(5_000), 50, None);
        let long = Health {
            troubles: board.troubles(),
            ..Default::default()
        };
        let bytes = to_file_bytes(&long);
        assert_eq!(bytes.len(), FILE_BYTES);
        let back: Health = serde_json::from_slice(&bytes).expect("still JSON");
        assert_eq!(back.troubles["api"].error.chars().count(), 100);
    }
}
