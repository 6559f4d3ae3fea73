//! The jobs table `status` and `status --watch` print: labelled columns, fitted to a width by
//! dropping the optional columns first (cache, batches, lanes, progress bar, …) and shortening job
//! names last; the counts (done of total, pending, in flight, errored) always stay.

use super::{finished, format_age, progress_bar, table};
use crate::store::job_status::{JobStatus, LaneCounts, batch_summary};

/// A column: its header, whether it may be dropped (and in which order: lower goes first), and
/// its cell for a job.
struct Column {
    header: &'static str,
    drop_order: Option<u8>,
    cell: fn(&JobStatus) -> String,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "JOB",
        drop_order: None,
        cell: |j| j.name.clone(),
    },
    Column {
        header: "STATE",
        drop_order: None,
        cell: |j| j.state.to_owned(),
    },
    Column {
        header: "PROGRESS",
        drop_order: Some(4),
        cell: |j| progress_bar(finished(&j.counts), j.counts.total, 10),
    },
    Column {
        header: "DONE/TOTAL",
        drop_order: None,
        cell: |j| format!("{}/{}", finished(&j.counts), j.counts.total),
    },
    Column {
        header: "PENDING",
        drop_order: None,
        cell: |j| j.counts.pending.to_string(),
    },
    Column {
        header: "IN FLIGHT",
        drop_order: None,
        cell: |j| j.counts.in_flight.to_string(),
    },
    Column {
        header: "ERRORED",
        drop_order: None,
        cell: |j| j.counts.errored.to_string(),
    },
    Column {
        header: "EXPIRED",
        drop_order: Some(5),
        cell: |j| j.counts.expired.to_string(),
    },
    Column {
        header: "CANCELED",
        drop_order: Some(5),
        cell: |j| j.counts.canceled.to_string(),
    },
    Column {
        header: "ITEMS/S",
        drop_order: Some(7),
        cell: |j| j.items_per_sec.map_or("-".into(), |r| format!("{r:.1}")),
    },
    Column {
        header: "ETA",
        drop_order: Some(6),
        cell: |j| match (j.state, j.eta_secs) {
            ("done" | "canceled", _) => "-".into(),
            (_, Some(secs)) => format_age(secs),
            (_, None) => "?".into(),
        },
    },
    Column {
        header: "REAL TIME P/F/D",
        drop_order: Some(3),
        cell: |j| lane(&j.per_lane.realtime),
    },
    Column {
        header: "BATCH P/F/D",
        drop_order: Some(3),
        cell: |j| lane(&j.per_lane.batch),
    },
    Column {
        header: "BATCHES",
        drop_order: Some(2),
        cell: |j| batch_summary(&j.batches),
    },
    Column {
        header: "CACHE",
        drop_order: Some(1),
        cell: |j| {
            j.cache_summary()
                .map_or_else(|| "-".into(), |c| format!("cache {c}"))
        },
    },
];

/// Pending / in flight / done.
fn lane(c: &LaneCounts) -> String {
    format!("{}/{}/{}", c.pending, c.in_flight, c.done)
}

/// Shortest a job name is cut to when nothing else can go, and before the pace and ETA go.
const MIN_NAME: usize = 8;
const SHORT_NAME: usize = 16;

/// The table, no wider than `width` if it can be (None: every column).
pub fn jobs_table(jobs: &[JobStatus], width: Option<usize>) -> String {
    let mut kept: Vec<&Column> = COLUMNS.iter().collect();
    let mut name_width = jobs
        .iter()
        .map(|j| j.name.chars().count())
        .max()
        .unwrap_or(0);
    let render = |kept: &[&Column], name_width: usize| {
        let mut rows = vec![kept.iter().map(|c| c.header.to_owned()).collect::<Vec<_>>()];
        for job in jobs {
            rows.push(
                kept.iter()
                    .map(|c| {
                        let cell = (c.cell)(job);
                        if c.header == "JOB" {
                            super::truncate(&cell, name_width.max(3))
                        } else {
                            cell
                        }
                    })
                    .collect(),
            );
        }
        table(&rows)
    };
    let Some(width) = width else {
        return render(&kept, name_width);
    };
    let too_wide = |text: &str| text.lines().any(|l| l.chars().count() > width);
    let mut out = render(&kept, name_width);
    // The optional columns go first; long names are cut to SHORT_NAME before the pace and the
    // ETA go, and further only when nothing else can.
    for order in 1..=7u8 {
        if order == 6 {
            while too_wide(&out) && name_width > SHORT_NAME {
                name_width -= 1;
                out = render(&kept, name_width);
            }
        }
        if !too_wide(&out) {
            return out;
        }
        kept.retain(|c| c.drop_order != Some(order));
        out = render(&kept, name_width);
    }
    while too_wide(&out) && name_width > MIN_NAME {
        name_width -= 1;
        out = render(&kept, name_width);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::items::Counts;
    use crate::store::job_status::{Lanes, PerLane};

    fn job(name: &str) -> JobStatus {
        JobStatus {
            name: name.into(),
            state: "running",
            counts: Counts {
                total: 5_000,
                pending: 3_000,
                in_flight: 16,
                succeeded: 1_900,
                errored: 84,
                ..Default::default()
            },
            lanes: Lanes::default(),
            per_lane: PerLane {
                realtime: LaneCounts {
                    pending: 1_000,
                    in_flight: 16,
                    done: 1_984,
                },
                batch: LaneCounts {
                    pending: 2_000,
                    in_flight: 0,
                    done: 0,
                },
            },
            items_per_sec: Some(12.5),
            eta_secs: Some(3_700),
            batches: vec![],
            results_file: String::new(),
            cache_hit_rate: Some(0.99),
            cache_saved_usd: 1.25,
            cache_read_tokens: 0,
            cache_written_tokens: 0,
        }
    }

    #[test]
    fn narrower_terminals_drop_columns_never_the_counts() {
        let jobs = [job("nightly-backfill-2026-12-05"), job("evals")];
        let wide = jobs_table(&jobs, None);
        assert!(
            wide.contains("CACHE") && wide.contains("cache 99.0 % hit, $1.2500 saved"),
            "{wide}"
        );
        assert!(
            wide.contains("REAL TIME P/F/D") && wide.contains("1000/16/1984"),
            "{wide}"
        );
        for width in [120, 100, 80, 60] {
            let text = jobs_table(&jobs, Some(width));
            for line in text.lines() {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
            for count in ["1984/5000", "3000", "16", "84"] {
                assert!(text.contains(count), "{width} lost {count}:\n{text}");
            }
            // Labelled: every column has a header, and the rows line up under them.
            let header = text.lines().next().expect("header");
            assert!(
                header.starts_with("JOB") && header.contains("ERRORED"),
                "{header}"
            );
        }
        let eighty = jobs_table(&jobs, Some(80));
        assert!(
            eighty.contains("ITEMS/S") && eighty.contains("12.5"),
            "{eighty}"
        );
        assert!(eighty.contains("ETA") && eighty.contains("61m"), "{eighty}");
    }
}
