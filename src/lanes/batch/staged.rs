//! A batch's results, downloaded into a file under the data dir before they are applied, then
//! applied in item order. The API returns the lines in any order; applied as they come, each
//! line would change a page of the items table (and of its indexes) no other line near it
//! touches; in item order each page is changed once per chunk. Memory stays flat: only each
//! line's place in the file is kept (a batch holds at most 100,000 lines), never the lines.
//!
//! The file is a copy of what the API keeps for 29 days, not a record: it is not synced, and a
//! crash before every line is applied leaves it to be downloaded again (applying is idempotent).
//!
//! A file whose lines are applied is kept as the spare (see [`recycle`]) and written over by the
//! next download rather than deleted: its pages are still in memory, and writing over them
//! costs a copy, where a new file costs the kernel a fresh page for each 4 KiB (on a virtual
//! machine whose freed memory goes back to the host, that is most of the download's cost).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::model::results::BatchResultLine;

/// Where a line of a staged file is, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub item_id: i64,
    offset: u64,
    len: u32,
}

/// A batch's results file being downloaded.
pub struct Download {
    path: PathBuf,
    out: tokio::io::BufWriter<tokio::fs::File>,
    written: u64,
}

/// The staged file of local batch `batch_id`.
pub fn path(dir: &Path, batch_id: i64) -> PathBuf {
    dir.join(format!("batch-{batch_id}.jsonl"))
}

/// The applied file kept to be written over by the next download.
const SPARE: &str = "spare.jsonl";

impl Download {
    /// Starts the file afresh, over the spare if there is one (what a cut-off download or the
    /// spare held is written over, and its tail cut off at [`Download::finish`]). Private to
    /// this user; a symlink in its place is not followed.
    pub async fn start(dir: &Path, batch_id: i64) -> std::io::Result<Download> {
        tokio::fs::create_dir_all(dir).await?;
        let path = path(dir, batch_id);
        if let Err(e) = tokio::fs::rename(dir.join(SPARE), &path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(error = %e, "the spare staged file cannot be reused");
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false) // written over, its tail cut at `finish`
            .write(true)
            .mode(0o640) // the umask makes it 0600, or 0640 with a readers group
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .await?;
        Ok(Download {
            path,
            out: tokio::io::BufWriter::with_capacity(1 << 20, file),
            written: 0,
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The whole file is written, and what it held past that cut off (not synced: see the
    /// module doc).
    pub async fn finish(mut self) -> std::io::Result<PathBuf> {
        self.out.flush().await?;
        self.out.get_mut().set_len(self.written).await?;
        Ok(self.path)
    }
}

/// Done with the staged file at `path`: it becomes the spare the next download writes over (or
/// is removed, should that fail).
pub async fn recycle(path: &Path) {
    let Some(dir) = path.parent() else { return };
    if tokio::fs::rename(path, dir.join(SPARE)).await.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// What a staged file holds: each line the batch's items are waiting for, in item order.
#[derive(Debug, Default)]
pub struct Index {
    pub places: Vec<Place>,
    /// Lines that are not result lines at all.
    pub unreadable: usize,
    /// Result lines for no item waiting in this batch (applied before a crash, say), or repeats.
    pub unmatched: usize,
}

/// Reads the staged file once: the custom_id of each line, matched to the item waiting for it
/// (`waiting`: custom_id to item id); the places come back sorted by item.
pub fn index(path: &Path, waiting: &HashMap<String, i64>) -> std::io::Result<Index> {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut index = Index::default();
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let start = offset;
        offset += n as u64;
        let text = text(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let Some(parsed) = BatchResultLine::read(text) else {
            index.unreadable += 1;
            continue;
        };
        match waiting.get(parsed.custom_id.as_str()) {
            Some(&item_id) => index.places.push(Place {
                item_id,
                offset: start,
                len: u32::try_from(n).map_err(|_| std::io::Error::other("a line over 4 GiB"))?,
            }),
            None => index.unmatched += 1,
        }
    }
    // Stable: of lines repeated in the file (which the API should never write), the first stays.
    index.places.sort_by_key(|p| p.item_id);
    let lines = index.places.len();
    index.places.dedup_by_key(|p| p.item_id);
    index.unmatched += lines - index.places.len();
    Ok(index)
}

/// The lines at `places`, read back from the staged file, each with its item.
pub fn read(file: &std::fs::File, places: &[Place]) -> std::io::Result<Vec<(i64, String)>> {
    let mut out = Vec::with_capacity(places.len());
    let mut buf = Vec::new();
    for p in places {
        buf.resize(p.len as usize, 0);
        file.read_exact_at(&mut buf, p.offset)?;
        let text = text(&buf).trim().to_owned();
        out.push((p.item_id, text));
    }
    Ok(out)
}

/// A line as text; bytes that are not UTF-8 become U+FFFD (the line is then no result line). The
/// check that finds none is word-at-a-time, a lossy conversion byte-at-a-time.
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Chunks of `places` of at most `max_lines` lines and (unless one line is larger) `max_bytes`.
pub fn chunks(places: &[Place], max_lines: usize, max_bytes: u64) -> Vec<&[Place]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, p) in places.iter().enumerate() {
        let full = i - start >= max_lines || (i > start && bytes + u64::from(p.len) > max_bytes);
        if full {
            out.push(&places[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += u64::from(p.len);
    }
    if start < places.len() {
        out.push(&places[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_staged_file_is_read_back_in_item_order_with_strays_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Download::start(dir.path(), 7).await.expect("start");
        for chunk in [
            &b"{\"custom_id\":\"b\",\"result\":{\"type\":\"expired\"}}\n{\"custom_id\":\"a\",\"res"
                [..],
            b"ult\":{\"type\":\"expired\"}}\nnot json\n\n{\"custom_id\":\"gone\",\"result\":{}}\n",
        ] {
            d.write(chunk).await.expect("write");
        }
        let path = d.finish().await.expect("finish");
        let waiting = HashMap::from([("a".to_owned(), 5), ("b".to_owned(), 9)]);
        let index = index(&path, &waiting).expect("index");
        assert_eq!((index.unreadable, index.unmatched), (1, 1));
        let file = std::fs::File::open(&path).expect("open");
        let lines = read(&file, &index.places).expect("read");
        assert_eq!(
            lines,
            vec![
                (
                    5,
                    r#"{"custom_id":"a","result":{"type":"expired"}}"#.to_owned()
                ),
                (
                    9,
                    r#"{"custom_id":"b","result":{"type":"expired"}}"#.to_owned()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn an_applied_file_is_written_over_by_the_next_download_and_its_tail_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Download::start(dir.path(), 1).await.expect("start");
        d.write(&b"x".repeat(10_000)).await.expect("write");
        let first = d.finish().await.expect("finish");
        recycle(&first).await;
        assert!(!first.exists());
        let mut d = Download::start(dir.path(), 2).await.expect("start");
        d.write(b"{\"custom_id\":\"a\"}\n").await.expect("write");
        let second = d.finish().await.expect("finish");
        assert_eq!(
            std::fs::read(&second).expect("read"),
            b"{\"custom_id\":\"a\"}\n"
        );
        // Only the file being written is there: the spare became it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("batch-2.jsonl")]);
    }

    #[test]
    fn chunks_hold_a_number_of_lines_and_of_bytes() {
        let place = |len| Place {
            item_id: 1,
            offset: 0,
            len,
        };
        let places = [place(10), place(10), place(10), place(50), place(10)];
        let sizes = |c: Vec<&[Place]>| c.iter().map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(sizes(chunks(&places, 2, 1000)), vec![2, 2, 1]);
        assert_eq!(sizes(chunks(&places, 10, 30)), vec![3, 1, 1]);
        assert!(chunks(&[], 10, 30).is_empty());
    }
}
