//! The report views: what `status`, `job`, `item`, `limits`, `diagnose`, `ledger`, `plan` and
//! `status --watch` show. Each gathers read queries into a documented serde struct, printed as
//! JSON (`--json`, a stable shape) or as aligned text; the helpers here are what they share.

pub mod daemon;
pub mod diagnose;
pub mod item;
pub mod job;
pub mod jobs_table;
pub mod ledger;
pub mod limits;
pub mod plan;
pub mod status;
pub mod watch;

use crate::store::items::Counts;

pub use crate::model::time::format_time;

/// "42s", "7m", "3h".
pub fn format_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

pub use crate::policy::prices::format_usd;

/// A progress bar of `width` cells for `done` of `total`.
pub fn progress_bar(done: u64, total: u64, width: usize) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((fraction * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        ".".repeat(width - filled),
        (fraction * 100.0).floor() as u64
    )
}

/// Lays out rows as columns separated by two spaces; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            // Numbers (and counts such as 90/200 or rates such as 2.5) align right, words left.
            if c > 0
                && !cell.is_empty()
                && cell
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == '.' || ch == '/')
            {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` cut to `width` characters, with an ellipsis when cut.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Items that reached a final state.
pub fn finished(c: &Counts) -> u64 {
    c.succeeded + c.errored + c.expired + c.canceled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_words_left_and_numbers_right() {
        let rows = vec![
            vec!["JOB".to_string(), "TOTAL".to_string()],
            vec!["a".to_string(), "5".to_string()],
            vec!["long-name".to_string(), "1234".to_string()],
        ];
        assert_eq!(
            table(&rows),
            "JOB        TOTAL\na              5\nlong-name   1234\n"
        );
    }

    #[test]
    fn progress_bar_fills_by_fraction() {
        assert_eq!(progress_bar(1, 4, 4), "[#...]  25%");
        assert_eq!(progress_bar(0, 0, 2), "[##] 100%");
    }
}
