//! `--resume` and `--retry-failed`: which events of an input still have to run, judged from
//! records files written earlier, and how the pool's dense numbering maps back to line numbers.
//!
//! A records file is read once, line by line, into bitsets over the input's line numbers (one
//! bit per line: 12.5 KB for 100,000 events), never into a map of its lines. The fixed prefix
//! herd writes (`{"seq":N,"ok":…` or `{"seq":N,"chunk":…`) says what a line is, and a
//! streaming syntax check ([`json`]) that every line is one whole JSON value, so a line cut
//! short in the middle of the file is refused; outputs of any size cost no memory to check.
//!
//! The events that run are numbered 0, 1, 2, … for the pool (so `--ordered` and the daemon's
//! arrival-order seqs work unchanged), and each record's `seq` is mapped back to its line
//! number before it is written: [`Plan::original`] is a select over the bitset of lines to run.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::record::{split_seq, Record, SEQ_PREFIX as PREFIX};
use crate::{Input, Room, Source};

mod json;

/// Why the records or the input cannot be resumed from.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(
        "{what} needs the input as a regular file (-i FILE): herd checks the records against \
         it and numbers its lines again"
    )]
    InputNotAFile { what: &'static str },
    #[error("--resume needs the records file it appends to (-o FILE)")]
    NoRecordsFile,
    #[error(
        "--retry-failed reads {} and -o would write to it: write the new records to another \
         file (each file keeps one final record per event)",
        .0.display()
    )]
    SameFile(PathBuf),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{what} needs the records as a regular file, which herd reads back: {} is {kind}",
        path.display()
    )]
    NotAFile {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("another herd is writing to {} (it holds a lock on it)", path.display())]
    Locked {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "refusing to resume from {} for input {} (the file is left as it is)",
        records.display(),
        input.display()
    )]
    BadRecords {
        records: PathBuf,
        input: PathBuf,
        #[source]
        source: BadRecords,
    },
}

/// What is wrong with a records file.
#[derive(Debug, thiserror::Error)]
pub enum BadRecords {
    #[error("line {number} is not a herd record ({why})")]
    NotARecord { number: u64, why: String },
    #[error(
        "line {number} is a record for seq {seq}, but the input has {lines} lines: the input \
         changed since the records were written, or they are another input's"
    )]
    PastTheInput { number: u64, seq: u64, lines: u64 },
    #[error(
        "line {number} is a second final record for seq {seq}; a herd records file has one \
         per event"
    )]
    SecondFinal { number: u64, seq: u64 },
    #[error(transparent)]
    Read(#[from] io::Error),
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ResumeError + 'a {
    move |source| ResumeError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A fixed-size set of line numbers.
#[derive(Debug, Clone)]
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn new(len: u64) -> Self {
        Self {
            words: vec![0; len.div_ceil(64) as usize],
        }
    }

    fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u64) {
        if let Some(w) = self.words.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
}

/// What a records file says about an input of `lines` lines.
#[derive(Debug)]
pub struct Scan {
    /// Lines with a final record (ok or not).
    done: Bits,
    /// Lines whose final record is not ok.
    failed: Bits,
    pub finals: u64,
    pub failed_count: u64,
    /// Streamed partial results (`"chunk"` lines): not final, so they decide nothing.
    pub chunk_lines: u64,
    /// Byte offset and length of an unterminated last line (herd killed while writing it).
    pub torn: Option<(u64, u64)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Ok,
    Failed,
    Chunk,
}

/// `seq` and kind of one records line from its first [`HEAD`] bytes, or why it is not one.
fn parse_line(head: &[u8]) -> Result<(u64, Line), &'static str> {
    let (seq, rest) = split_seq(head).ok_or("it does not start with {\"seq\":")?;
    let seq = seq.ok_or("its seq is not a number")?;
    let kind = if rest.starts_with(b",\"ok\":true,") {
        Line::Ok
    } else if rest.starts_with(b",\"ok\":false,") {
        Line::Failed
    } else if rest.starts_with(b",\"chunk\":") {
        Line::Chunk
    } else {
        return Err("\"ok\" or \"chunk\" does not follow its seq");
    };
    Ok((seq, kind))
}

/// Bytes of a line's start that [`parse_line`] needs: the prefix, 20 digits, `,"ok":false,`.
const HEAD: usize = 64;

/// Opens the records file `path` for `what` (an option's name) and refuses anything but a
/// regular file: a pipe, FIFO or terminal cannot be read back (the scan would wait for ever
/// for its end) nor cut. The open does not wait either: a FIFO's blocks until a writer comes.
fn open_records(
    path: &Path,
    options: &mut OpenOptions,
    what: &'static str,
) -> Result<File, ResumeError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = options
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io_error("open", path))?;
    let kind = file.metadata().map_err(io_error("stat", path))?.file_type();
    let not = if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a pipe or FIFO")
    } else if kind.is_char_device() {
        Some("a terminal or device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(kind) = not {
        return Err(ResumeError::NotAFile {
            what,
            path: path.to_owned(),
            kind,
        });
    }
    // Blocking again: no change on a regular file, but the descriptor is written through.
    let fd = file.as_raw_fd();
    fcntl(fd, FcntlArg::F_GETFL)
        .and_then(|f| {
            let flags = OFlag::from_bits_truncate(f) - OFlag::O_NONBLOCK;
            fcntl(fd, FcntlArg::F_SETFL(flags))
        })
        .map_err(|e| io_error("set the flags of", path)(e.into()))?;
    Ok(file)
}

/// Reads the records file `file` (at `path`), written for an input of `lines` lines. Nothing
/// is changed: see [`repair`]. Fails, naming the line, on anything herd would not have written.
fn scan(file: &File, path: &Path, lines: u64, input: &Path) -> Result<Scan, ResumeError> {
    scan_from(file, lines).map_err(|source| ResumeError::BadRecords {
        records: path.to_owned(),
        input: input.to_owned(),
        source,
    })
}

fn scan_from(mut file: impl Read, lines: u64) -> Result<Scan, BadRecords> {
    let mut scan = Scan {
        done: Bits::new(lines),
        failed: Bits::new(lines),
        finals: 0,
        failed_count: 0,
        chunk_lines: 0,
        torn: None,
    };
    // Only the start of each line and the state of its syntax check are kept, so memory stays
    // the same whatever the size of the records (or of a garbage file without a newline).
    let mut line = LineStart::default();
    let mut offset = 0u64;
    let mut number = 1u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &buf[..n]) {
            line.feed(&buf[start..nl]);
            scan.judge(&line, number, lines)?;
            offset += line.len + 1;
            number += 1;
            line = LineStart::default();
            start = nl + 1;
        }
        line.feed(&buf[start..n]);
        if !line.plausible() {
            break;
        }
    }
    if line.len > 0 {
        if !line.plausible() {
            return Err(BadRecords::NotARecord {
                number,
                why: "it does not start with {\"seq\":".into(),
            });
        }
        // An unterminated last line that starts like a record is what a kill in the middle
        // of a write leaves.
        scan.torn = Some((offset, line.len));
    }
    Ok(scan)
}

/// What [`scan_from`] keeps of a line: its first [`HEAD`] bytes, its syntax check, its length.
#[derive(Default)]
struct LineStart {
    head: Vec<u8>,
    json: json::JsonCheck,
    len: u64,
}

impl LineStart {
    fn feed(&mut self, part: &[u8]) {
        let take = HEAD.saturating_sub(self.head.len()).min(part.len());
        self.head.extend_from_slice(&part[..take]);
        self.json.feed(part);
        self.len += part.len() as u64;
    }

    /// Whether it starts (or may yet start) like a record.
    fn plausible(&self) -> bool {
        self.head.starts_with(PREFIX) || PREFIX.starts_with(&self.head)
    }
}

impl Scan {
    /// Counts one complete line, or says why it cannot be in a records file.
    fn judge(&mut self, line: &LineStart, number: u64, lines: u64) -> Result<(), BadRecords> {
        let not = |why: String| BadRecords::NotARecord { number, why };
        let (seq, kind) = parse_line(&line.head).map_err(|why| not(why.into()))?;
        // Checked before anything else counts it: a line cut short or garbled in the middle
        // of the file is not a record, whatever its start says.
        if let Err(why) = line.json.finish() {
            return Err(not(why.to_string()));
        }
        if seq >= lines {
            return Err(BadRecords::PastTheInput { number, seq, lines });
        }
        match kind {
            Line::Chunk => self.chunk_lines += 1,
            Line::Ok | Line::Failed => {
                if self.done.get(seq) {
                    return Err(BadRecords::SecondFinal { number, seq });
                }
                self.done.set(seq);
                self.finals += 1;
                if kind == Line::Failed {
                    self.failed.set(seq);
                    self.failed_count += 1;
                }
            }
        }
        Ok(())
    }
}

/// Cuts a torn last line off `file` at `path` (see [`Scan::torn`]).
fn repair(file: &File, path: &Path, scan: &Scan) -> Result<(), ResumeError> {
    if let Some((offset, len)) = scan.torn {
        file.set_len(offset)
            .map_err(io_error("cut the torn last line off", path))?;
        tracing::warn!(
            output = %path.display(),
            offset,
            bytes = len,
            "cut off a torn last line (herd was stopped while writing it); its event runs again"
        );
    }
    Ok(())
}

/// Lines of `path` as `herd run` numbers them: a last line without a newline counts.
pub fn count_lines(path: &Path) -> Result<u64, ResumeError> {
    let mut f = File::open(path).map_err(io_error("open input", path))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("read input", path)(e)),
        };
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        last = buf[n - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}

/// The events of one input that run this time.
#[derive(Debug)]
pub struct Plan {
    /// Line numbers that run.
    run: Bits,
    /// Per word of `run`: how many lines before it run (for [`Plan::original`]).
    before: Vec<u64>,
    pub lines: u64,
    pub to_run: u64,
    /// Under `--resume`: lines whose final record in the output is not ok.
    failed_before: Option<Bits>,
    /// Under `--resume`: the records file, checked, held locked while the records are
    /// appended to it (see [`plan`]).
    lock: Option<nix::fcntl::Flock<File>>,
}

impl Plan {
    /// Every line runs except those set in `skip`; with `only`, only those set in it.
    fn new(lines: u64, skip: Option<&Bits>, only: Option<&Bits>) -> Self {
        let mut run = Bits::new(lines);
        for (i, w) in run.words.iter_mut().enumerate() {
            let mut word = only.map_or(!0, |o| o.words[i]);
            if let Some(s) = skip {
                word &= !s.words[i];
            }
            *w = word;
        }
        // Bits past the last line stay clear.
        if !lines.is_multiple_of(64) {
            if let Some(last) = run.words.last_mut() {
                *last &= (1u64 << (lines % 64)) - 1;
            }
        }
        let mut before = Vec::with_capacity(run.words.len());
        let mut total = 0u64;
        for w in &run.words {
            before.push(total);
            total += u64::from(w.count_ones());
        }
        Self {
            run,
            before,
            lines,
            to_run: total,
            failed_before: None,
            lock: None,
        }
    }

    /// The line number of the `dense`-th event that runs (0-based).
    pub fn original(&self, dense: u64) -> Option<u64> {
        if dense >= self.to_run {
            return None;
        }
        // The last word with fewer runs before it than `dense + 1`.
        let word = self.before.partition_point(|&b| b <= dense) - 1;
        let mut w = self.run.words[word];
        for _ in 0..dense - self.before[word] {
            w &= w - 1;
        }
        Some(word as u64 * 64 + u64::from(w.trailing_zeros()))
    }

    /// `records` of the events this plan runs, their `seq` mapped back from the pool's dense
    /// numbering to line numbers (as [`Renumber`] does to record lines).
    pub fn renumber(&self, records: &[Record]) -> Result<Vec<Record>, UnknownEvent> {
        records
            .iter()
            .map(|r| {
                let seq = self.original(r.seq).ok_or(UnknownEvent(r.seq))?;
                Ok(Record { seq, ..r.clone() })
            })
            .collect()
    }

    /// Under `--resume`, the records file to append to: checked, and locked while the plan
    /// lives.
    pub fn append_to(&self) -> Option<&File> {
        self.lock.as_deref()
    }

    /// Whether line `seq` does not run because its final record in the output is not ok.
    pub fn failed_before(&self, seq: u64) -> bool {
        self.failed_before.as_ref().is_some_and(|f| f.get(seq)) && !self.run.get(seq)
    }
}

/// The input changed between its count and its reading: the records would name the wrong
/// lines, so the run stops.
fn input_changed(lines: u64) -> io::Error {
    io::Error::other(format!(
        "the input changed while herd read it: it had {lines} lines at the start"
    ))
}

/// The one place `--resume` and `--retry-failed` cut an input: keeps the lines of each batch
/// that run, numbers them densely, and checks that the input has exactly the lines the plan
/// counted.
#[derive(Debug)]
pub struct Cut {
    plan: Arc<Plan>,
    /// The dense number of the next line that runs.
    next: u64,
    /// Lines read.
    seen: u64,
}

impl Cut {
    pub fn new(plan: Arc<Plan>) -> Self {
        Self {
            plan,
            next: 0,
            seen: 0,
        }
    }

    /// The inputs of `batch` that run, renumbered. Fails on a line past the input's length
    /// as counted before the start (the input grew meanwhile).
    pub fn batch(&mut self, batch: Vec<Input>) -> io::Result<Vec<Input>> {
        let mut kept = Vec::with_capacity(batch.len());
        for mut input in batch {
            let seq = match &mut input {
                Input::Event { seq, .. } | Input::Rejected { seq, .. } => seq,
            };
            if *seq >= self.plan.lines {
                return Err(input_changed(self.plan.lines));
            }
            self.seen += 1;
            if self.plan.run.get(*seq) {
                *seq = self.next;
                self.next += 1;
                kept.push(input);
            }
        }
        Ok(kept)
    }

    /// At the input's end: the lines sent, or an error if the input shrank meanwhile.
    pub fn end(&self) -> io::Result<u64> {
        if self.seen == self.plan.lines {
            Ok(self.next)
        } else {
            Err(input_changed(self.plan.lines))
        }
    }
}

/// Any [`Source`] of an input's lines, cut to the lines that run (see [`Cut`]); without a
/// plan, the lines as read.
pub struct Resumed<S> {
    inner: S,
    cut: Option<Cut>,
}

impl<S> Resumed<S> {
    pub fn new(inner: S, plan: Option<Arc<Plan>>) -> Self {
        Self {
            inner,
            cut: plan.map(Cut::new),
        }
    }
}

impl<S: Source> Source for Resumed<S> {
    async fn next_batch(&mut self, room: Room) -> io::Result<Option<Vec<Input>>> {
        let Some(cut) = &mut self.cut else {
            return self.inner.next_batch(room).await;
        };
        loop {
            match self.inner.next_batch(room).await? {
                Some(batch) => {
                    let kept = cut.batch(batch)?;
                    if !kept.is_empty() {
                        return Ok(Some(kept));
                    }
                }
                None => return cut.end().map(|_| None),
            }
        }
    }
}

/// `--resume` and `--retry-failed` as given: the input, the records file written to, and
/// the records file whose failed events run again.
#[derive(Debug, Clone, Copy)]
pub struct ResumeOptions<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    /// Append to `output`, running only the events without a final record in it.
    pub resume: bool,
    /// Run only the events whose final record in this file is not ok.
    pub retry_failed: Option<&'a Path>,
}

/// Checks the files, repairs a torn last line and works out what runs. `None` when neither
/// option is given (everything runs, numbered as read).
pub fn plan(o: &ResumeOptions) -> Result<Option<Plan>, ResumeError> {
    let (input, output, retry_failed) = (o.input, o.output, o.retry_failed);
    if !o.resume && retry_failed.is_none() {
        return Ok(None);
    }
    let what = if o.resume {
        "--resume"
    } else {
        "--retry-failed"
    };
    // The input is read twice (counted first), so it must be a file, not a pipe.
    if input.as_os_str() == "-" || std::fs::metadata(input).is_ok_and(|m| !m.is_file()) {
        return Err(ResumeError::InputNotAFile { what });
    }
    if o.resume && output.as_os_str() == "-" {
        return Err(ResumeError::NoRecordsFile);
    }
    let lines = count_lines(input)?;
    let only = match retry_failed {
        Some(records) => {
            if same_file(records, output) {
                return Err(ResumeError::SameFile(records.to_owned()));
            }
            let file = open_records(records, OpenOptions::new().read(true), "--retry-failed")?;
            let scan = scan(&file, records, lines, input)?;
            if scan.torn.is_some() {
                tracing::warn!(records = %records.display(), "ignoring an unterminated last line");
            }
            tracing::info!(
                records = %records.display(),
                finals = scan.finals,
                failed = scan.failed_count,
                lines,
                "retrying the events whose final record is not ok"
            );
            Some(scan.failed)
        }
        None => None,
    };
    let mut lock = None;
    let skip = if o.resume {
        // Two herds appending to one file would run every event twice: the first holds the
        // file locked until it ends (the kernel drops the lock of a killed process). It is
        // opened once: read, cut and appended to through one descriptor.
        let file = open_records(
            output,
            OpenOptions::new().read(true).append(true).create(true),
            "--resume",
        )?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, source)| ResumeError::Locked {
                path: output.to_owned(),
                source,
            })?;
        let scan = scan(&file, output, lines, input)?;
        repair(&file, output, &scan)?;
        lock = Some(file);
        tracing::info!(
            output = %output.display(),
            finals = scan.finals,
            failed = scan.failed_count,
            chunk_lines = scan.chunk_lines,
            lines,
            "resuming: events with a final record are done"
        );
        if scan.failed_count > 0 && retry_failed.is_none() {
            tracing::info!(
                failed = scan.failed_count,
                "events that ended failed count as done; to run them again with their seqs: \
                 herd run --retry-failed {} -i {} -o NEW_FILE",
                output.display(),
                input.display()
            );
        }
        Some(scan)
    } else {
        None
    };
    let mut plan = Plan::new(lines, skip.as_ref().map(|s| &s.done), only.as_ref());
    plan.lock = lock;
    plan.failed_before = skip.map(|s| s.failed);
    tracing::info!(lines, to_run = plan.to_run, "events to run");
    Ok(Some(plan))
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A record [`Plan::renumber`] cannot map back: its event is not one the plan ran.
#[derive(Debug, thiserror::Error)]
#[error("a record for unknown event {0}")]
pub struct UnknownEvent(pub u64);

/// A record line [`Renumber`] cannot map back to a line of the input.
#[derive(Debug, thiserror::Error)]
#[error("the daemon sent a record herd cannot renumber")]
pub struct NotARecord;

/// Rewrites the `seq` of record lines (`{"seq":N,…`) from the pool's dense numbering to line
/// numbers, across chunks of bytes that may end inside a line.
pub struct Renumber {
    plan: Arc<Plan>,
    partial: Vec<u8>,
}

impl Renumber {
    pub fn new(plan: Arc<Plan>) -> Self {
        Self {
            plan,
            partial: Vec::new(),
        }
    }

    /// The complete lines of `partial + bytes`, renumbered; the rest waits for more.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<Vec<u8>, NotARecord> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        let mut data = bytes;
        if !self.partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', data) else {
                self.partial.extend_from_slice(data);
                return Ok(out);
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&data[..=nl]);
            self.line(&line, &mut out)?;
            data = &data[nl + 1..];
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            self.line(&data[start..=nl], &mut out)?;
            start = nl + 1;
        }
        self.partial.extend_from_slice(&data[start..]);
        Ok(out)
    }

    fn line(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), NotARecord> {
        let (dense, rest) = split_seq(line).ok_or(NotARecord)?;
        let seq = dense
            .and_then(|d| self.plan.original(d))
            .ok_or(NotARecord)?;
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(rest);
        Ok(())
    }

    /// Whether a line was left unfinished.
    pub fn is_clean(&self) -> bool {
        self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The plan for an input of `lines` lines of which `skipped` are done already.
    fn plan_skipping(lines: u64, skipped: &[u64]) -> Plan {
        let mut skip = Bits::new(lines);
        for &i in skipped {
            skip.set(i);
        }
        Plan::new(lines, Some(&skip), None)
    }

    #[test]
    fn select_maps_dense_numbers_back() {
        let lines = 1000;
        let mut skip = Bits::new(lines);
        for i in (0..lines).filter(|i| i % 3 == 0 || (100..300).contains(i)) {
            skip.set(i);
        }
        let plan = Plan::new(lines, Some(&skip), None);
        let want: Vec<u64> = (0..lines).filter(|&i| !skip.get(i)).collect();
        assert_eq!(plan.to_run, want.len() as u64);
        for (dense, &seq) in want.iter().enumerate() {
            assert_eq!(plan.original(dense as u64), Some(seq));
        }
        assert_eq!(plan.original(plan.to_run), None);
        // `only` and a length that is not a multiple of 64.
        let plan = Plan::new(70, None, Some(&skip));
        assert_eq!(plan.original(0), Some(0));
        assert_eq!(plan.original(1), Some(3));
        assert_eq!(plan.to_run, 24);
        assert_eq!(Plan::new(70, None, None).to_run, 70);
    }

    #[test]
    fn cut_numbers_the_lines_that_run_and_refuses_a_changed_input() {
        let plan = Arc::new(plan_skipping(5, &[1, 3]));
        let events = |seqs: std::ops::Range<u64>| -> Vec<Input> {
            seqs.map(|s| Input::event(s, s.to_string().into()))
                .collect()
        };
        let seqs = |b: &[Input]| -> Vec<(u64, Vec<u8>)> {
            b.iter()
                .map(|i| match i {
                    Input::Event { seq, payload, .. } => (*seq, payload.to_vec()),
                    Input::Rejected { seq, .. } => (*seq, Vec::new()),
                })
                .collect()
        };
        let mut cut = Cut::new(plan.clone());
        let first = cut.batch(events(0..2)).unwrap();
        let second = cut.batch(events(2..5)).unwrap();
        assert_eq!(seqs(&first), [(0, b"0".to_vec())]);
        assert_eq!(seqs(&second), [(1, b"2".to_vec()), (2, b"4".to_vec())]);
        assert_eq!(cut.end().unwrap(), 3);
        // Grown: a line past the count. Shrunk: fewer lines at the end.
        let mut cut = Cut::new(plan.clone());
        let e = cut.batch(events(0..6)).unwrap_err().to_string();
        assert!(e.contains("the input changed while herd read it"), "{e}");
        let mut cut = Cut::new(plan);
        cut.batch(events(0..4)).unwrap();
        let e = cut.end().unwrap_err().to_string();
        assert!(e.contains("it had 5 lines at the start"), "{e}");
    }

    #[test]
    fn scan_judges_lines() {
        let file = b"{\"seq\":1,\"ok\":true,\"output\":1}\n{\"seq\":0,\"chunk\":0,\"output\":2}\n\
            {\"seq\":2,\"ok\":false,\"error\":{}}\n{\"seq\":0,\"ok";
        let s = scan_from(&file[..], 3).unwrap();
        assert_eq!((s.finals, s.failed_count, s.chunk_lines), (2, 1, 1));
        assert!(s.done.get(1) && s.done.get(2) && !s.done.get(0) && s.failed.get(2));
        assert_eq!(s.torn, Some((file.len() as u64 - 12, 12)));
        let err = |f: &[u8], lines| scan_from(f, lines).unwrap_err().to_string();
        assert!(err(b"hello\n", 3).contains("line 1 is not a herd record"));
        assert!(err(b"garbage without newline", 3).contains("line 1 is not a herd record"));
        assert!(err(b"{\"seq\":1,\"ok\":true,\"o\":1}\ngarbage\n", 3).contains("line 2 is not"));
        assert!(err(b"{\"seq\":5,\"ok\":true,\"output\":1}\n", 3).contains("input changed"));
        let twice = b"{\"seq\":0,\"ok\":true,\"o\":1}\n{\"seq\":0,\"ok\":false,\"o\":1}\n";
        assert!(err(twice, 3).contains("second final record"));
        assert!(err(b"{\"seq\":0,\"ok\":true,\"o\":1\n", 3).contains("ends inside a value"));
        // A middle line cut short, though it ends with `}` (issue 19, item 6).
        let cut =
            b"{\"seq\":0,\"ok\":true,\"output\":0}\n{\"seq\":1,\"ok\":true,\"output\":{\"a\":2}\n\
            {\"seq\":2,\"ok\":true,\"output\":4}\n";
        let e = err(cut, 3);
        assert!(
            e.contains("line 2 is not a herd record") && e.contains("not valid JSON"),
            "{e}"
        );
        let trailing = b"{\"seq\":0,\"ok\":true,\"output\":0}}\n";
        assert!(
            err(trailing, 3).contains("column 31"),
            "{}",
            err(trailing, 3)
        );
    }

    #[test]
    fn renumbers_across_chunks() {
        let plan = plan_skipping(10, &[0, 1]);
        let mut r = Renumber::new(Arc::new(plan));
        let mut out = r.apply(b"{\"seq\":0,\"ok\":true}\n{\"se").unwrap();
        out.extend(r.apply(b"q\":3,\"ok\":false}\n").unwrap());
        assert!(r.is_clean());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"seq\":2,\"ok\":true}\n{\"seq\":5,\"ok\":false}\n"
        );
        assert!(r.apply(b"nonsense\n").is_err());
    }

    /// Records and record lines are mapped back alike (herd run, herd submit).
    #[test]
    fn renumbers_records_like_record_lines() {
        let plan = plan_skipping(10, &[0, 1]);
        let record = |seq| Record {
            seq,
            attempts: 1,
            chunks: 0,
            outcome: crate::RecordOutcome::Ok {
                output: bytes::Bytes::from_static(b"1"),
                worker: 0,
                pid: 1,
                micros: 1,
            },
            input: None,
        };
        let back = plan.renumber(&[record(0), record(3)]).unwrap();
        let seqs: Vec<u64> = back.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [2, 5]);
        let mut lines = Vec::new();
        for r in &back {
            r.write_json(&mut lines);
        }
        let mut r = Renumber::new(Arc::new(plan));
        let mut dense = Vec::new();
        record(0).write_json(&mut dense);
        record(3).write_json(&mut dense);
        assert_eq!(r.apply(&dense).unwrap(), lines);
        let plan = plan_skipping(10, &[0, 1]);
        assert_eq!(plan.renumber(&[record(8)]).unwrap_err().0, 8);
    }
}
