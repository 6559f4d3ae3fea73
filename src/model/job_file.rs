//! A job file read line by line, the one way intake and `nightshift plan` both read it: lines end
//! at `\n` (a `\r` before it is dropped), a line longer than the API's request limit is not read
//! into memory and is invalid, a byte order mark before line 1 is skipped (by [`parse_line`]), and
//! a custom_id an earlier line used makes the line invalid ([`Repeats`]). Reads from a `BufRead`
//! it is given; it opens nothing.

use std::collections::HashMap;
use std::io::BufRead;

use sha2::{Digest, Sha256};

use super::line::{LineContext, LineError, ParsedLine, parse_line};

/// Longer lines are not read into memory: no request that large is accepted by the API (32 MB).
pub const MAX_LINE_BYTES: usize = 32 << 20;

/// One line as read and judged.
#[derive(Debug)]
pub struct ReadLine {
    /// Counted from 1.
    pub line_no: u64,
    pub parsed: ParsedLine,
    /// The line's bytes kept (without its end of line), for chunk sizes.
    pub len: usize,
}

/// Reads a job file's lines and judges each with [`parse_line`]; hashes every byte read, so a
/// resumed intake can tell the file is still the one it began.
pub struct JobFileReader<R> {
    reader: R,
    buf: Vec<u8>,
    hasher: Sha256,
    line_no: u64,
    offset: u64,
}

impl<R: BufRead> JobFileReader<R> {
    pub fn new(reader: R) -> JobFileReader<R> {
        JobFileReader {
            reader,
            buf: Vec::with_capacity(64 * 1024),
            hasher: Sha256::new(),
            line_no: 0,
            offset: 0,
        }
    }

    /// Lines read so far.
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The sha256 (hex) of the bytes read so far.
    pub fn prefix_hash(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }

    /// Reads the next line without judging it (for a prefix already taken in). False at the end.
    pub fn skip(&mut self) -> std::io::Result<bool> {
        Ok(self.read_raw()?.is_some())
    }

    /// Reads and judges the next line in `ctx`; None at the end of the file.
    pub fn next_line(&mut self, ctx: &LineContext<'_>) -> std::io::Result<Option<ReadLine>> {
        let Some(too_long) = self.read_raw()? else {
            return Ok(None);
        };
        let mut line: &[u8] = &self.buf;
        if let Some(rest) = line.strip_suffix(b"\n") {
            line = rest;
        }
        if let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
        let parsed = if too_long {
            ParsedLine::Invalid {
                custom_id: None,
                error: LineError::new(
                    self.line_no,
                    None,
                    format!(
                        "is longer than {} MiB, the API's request size limit",
                        MAX_LINE_BYTES >> 20
                    ),
                ),
            }
        } else {
            parse_line(line, self.line_no, ctx)
        };
        Ok(Some(ReadLine {
            line_no: self.line_no,
            parsed,
            len: line.len(),
        }))
    }

    /// Reads one line (up to and with its `\n`) into `buf`, keeping at most [`MAX_LINE_BYTES`] of
    /// it. None at the end; else whether the line was longer.
    fn read_raw(&mut self) -> std::io::Result<Option<bool>> {
        self.buf.clear();
        let (mut read, mut too_long) = (0usize, false);
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                break;
            }
            let (take, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            let keep = take.min(MAX_LINE_BYTES.saturating_sub(self.buf.len()));
            self.buf.extend_from_slice(&available[..keep]);
            too_long |= keep < take;
            self.hasher.update(&available[..take]);
            self.reader.consume(take);
            read += take;
            if done {
                break;
            }
        }
        if read == 0 {
            return Ok(None);
        }
        self.offset += read as u64;
        self.line_no += 1;
        Ok(Some(too_long))
    }
}

/// The custom_ids seen so far in a job, each with the first line that used it. The first line
/// with a custom_id owns it, valid or not; a later line with it is invalid. (Intake keeps this in
/// the store, across restarts; `plan` keeps it here.)
#[derive(Default)]
pub struct Repeats {
    first: HashMap<String, u64>,
}

impl Repeats {
    /// Judges `line` against the lines before it: a custom_id seen earlier makes it invalid.
    pub fn check(&mut self, line: ParsedLine, line_no: u64) -> ParsedLine {
        let custom_id = match &line {
            ParsedLine::Valid(v) => Some(v.custom_id.as_str()),
            ParsedLine::Invalid { custom_id, .. } => custom_id.as_deref(),
        };
        let Some(id) = custom_id else { return line };
        match self.first.get(id) {
            Some(&first) => ParsedLine::Invalid {
                custom_id: None,
                error: repeated_custom_id(line_no, id, first),
            },
            None => {
                self.first.insert(id.to_owned(), line_no);
                line
            }
        }
    }
}

/// The error of a line whose custom_id an earlier line used.
pub fn repeated_custom_id(line_no: u64, custom_id: &str, first: u64) -> LineError {
    LineError::new(
        line_no,
        Some("custom_id"),
        format!("{custom_id:?} repeats line {first}; custom_ids must be unique in a job"),
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<ReadLine> {
        let mut reader = JobFileReader::new(std::io::BufReader::with_capacity(7, bytes));
        let mut lines = Vec::new();
        let defaults = crate::model::job::JobDefaults::default();
        let ctx = LineContext::new(&defaults, 0, "2023-06-01");
        while let Some(line) = reader.next_line(&ctx).expect("read") {
            lines.push(line);
        }
        assert_eq!(reader.offset(), bytes.len() as u64);
        lines
    }

    const GOOD: &str = r#"{"custom_id":"a","params":{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"q"}]}}"#;

    #[test]
    fn lines_end_at_newlines_and_carriage_returns_are_dropped() {
        let text = format!("{GOOD}\r\n{}\n\n{}", GOOD.replace("\"a\"", "\"b\""), "{x");
        let lines = read_all(text.as_bytes());
        assert_eq!(lines.len(), 4, "the last line needs no newline");
        assert!(matches!(lines[0].parsed, ParsedLine::Valid(_)));
        assert!(matches!(lines[1].parsed, ParsedLine::Valid(_)));
        assert!(
            matches!(lines[2].parsed, ParsedLine::Invalid { .. }),
            "empty"
        );
        assert_eq!(lines[0].len, GOOD.len());
        assert_eq!(
            lines.iter().map(|l| l.line_no).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn a_line_past_the_size_limit_is_invalid_and_the_next_is_read() {
        let mut text = vec![b'x'; MAX_LINE_BYTES + 10];
        text.push(b'\n');
        text.extend_from_slice(GOOD.as_bytes());
        let lines = read_all(&text);
        assert_eq!(lines.len(), 2);
        match &lines[0].parsed {
            ParsedLine::Invalid { error, .. } => {
                assert!(error.reason.contains("longer than 32 MiB"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(lines[1].parsed, ParsedLine::Valid(_)));
    }

    #[test]
    fn a_custom_id_belongs_to_the_first_line_that_uses_it() {
        let mut repeats = Repeats::default();
        let lines = read_all(format!("{GOOD}\n{GOOD}\n").as_bytes());
        let mut judged = lines
            .into_iter()
            .map(|l| repeats.check(l.parsed, l.line_no));
        assert!(matches!(judged.next(), Some(ParsedLine::Valid(_))));
        match judged.next() {
            Some(ParsedLine::Invalid { custom_id, error }) => {
                assert_eq!(custom_id, None);
                assert_eq!(error.field.as_deref(), Some("custom_id"));
                assert!(error.reason.contains("repeats line 1"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_prefix_hash_covers_every_byte_read() {
        let text = format!("{GOOD}\n{GOOD}\n");
        let mut reader = JobFileReader::new(text.as_bytes());
        assert!(reader.skip().expect("read"));
        let after_one = reader.prefix_hash();
        assert_eq!(
            after_one,
            hex(&Sha256::digest(format!("{GOOD}\n").as_bytes()))
        );
        assert!(reader.skip().expect("read"));
        assert!(!reader.skip().expect("read"));
        assert_eq!(reader.line_no(), 2);
    }
}
