//! The control socket's client, beside its server ([`crate::control`]): what `herd submit`,
//! `herd status` and `herd ctl` speak, for any Rust program.
//!
//! [`Client::connect`] waits for the daemon's welcome (a client over its connection cap waits
//! for a turn rather than fail); [`ask`] sends one request and reads one reply; [`status`]
//! reads the typed [`Status`]; [`Client::submit`] starts a submission and splits the connection
//! into an [`Events`] writer and a [`Records`] reader, meant to run concurrently: the daemon
//! sends records while it still reads events, and reads no more events from a submitter that
//! does not read its records. [`Client::submit_lines`] does all of it for a reader of lines
//! and a writer of records (`herd submit`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), herd_supervisor::client::ClientError> {
//! use herd_supervisor::client::Client;
//! use herd_supervisor::{Input, SubmitOptions};
//!
//! let client = Client::connect("/run/herd.sock".as_ref()).await?;
//! let (mut events, mut records) = client.submit(&SubmitOptions::default()).await?;
//! let send = async move {
//!     events.send(&[Input::event(0, r#"{"n":1}"#.into())]).await?;
//!     events.end().await
//! };
//! let read = async move {
//!     let mut out = Vec::new();
//!     while let Some(bytes) = records.next().await? {
//!         out.extend_from_slice(&bytes); // JSON lines, as `herd run` writes them
//!     }
//!     Ok(out)
//! };
//! let (sent, records) = tokio::join!(send, read);
//! let records = records?; // the daemon's reason, if any, comes with the records
//! sent?;
//! # let _ = records;
//! # Ok(()) }
//! ```

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herd_proto::codec::{encode_frame, FrameCodec, FrameError};
use herd_proto::control::{
    RequestRef, SubmitOption, CONTROL_VERSION, EVENTS_FRAME_OVERHEAD, EVENT_LINE_OVERHEAD,
    REPLY_MAX_FRAME, REQUEST_MAX_FRAME,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::record::split_seq;
use crate::resume::{Cut, NotARecord, Plan, Renumber};
use crate::{Input, Status, SubmitOptions};

pub use herd_proto::control::{Reply, Request};

/// How long [`ask`] and [`status`] wait for the daemon's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for its turn when the daemon's control connections are all in
/// use (it connects, but is not welcomed until one closes).
pub const TURN_TIMEOUT: Duration = Duration::from_secs(300);
/// After this long without a welcome, the client says (in the log) what it waits for.
const TURN_NOTICE: Duration = Duration::from_secs(5);
/// Bytes of lines per `Events` frame (a single longer line gets a frame of its own).
const BATCH_BYTES: usize = 64 * 1024;

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no herd daemon at {} (is `herd serve` running?)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the daemon did not take the connection within {}: its control connections stayed in \
         use (--max-connections)",
        humantime::format_duration(*.0)
    )]
    NoTurn(Duration),
    #[error(
        "the daemon speaks control protocol {0} and this herd {CONTROL_VERSION}: use the herd \
         binary that matches the daemon"
    )]
    Version(u32),
    #[error("the daemon refused the connection: {0}")]
    Refused(String),
    /// The daemon's answer to a request: an error reply.
    #[error("{0}")]
    Daemon(String),
    #[error("unexpected reply from the daemon: {0}")]
    Unexpected(String),
    #[error("bad reply from the daemon")]
    BadReply(#[source] FrameError),
    #[error("the daemon closed the connection")]
    Closed(#[source] Option<io::Error>),
    #[error("the daemon closed the connection without a reply")]
    NoReply,
    /// Options that no request carries together.
    #[error("{0}")]
    Options(String),
    #[error("the daemon went away")]
    Gone(#[source] io::Error),
    #[error("the daemon went away after {received} records")]
    GoneAfter {
        received: u64,
        #[source]
        source: Option<FrameError>,
    },
    /// A submission with a priority ended before its first record: the daemon predates
    /// `SubmitWith`.
    #[error(
        "the daemon closed the connection without a record: if it is older than priorities \
         it does not know --priority and --line-priority"
    )]
    NoPriorities,
    #[error("the daemon sent {sent} records, but {received} arrived")]
    Miscount { sent: u64, received: u64 },
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bad status object")]
    BadStatus(#[source] serde_json::Error),
    #[error("cannot encode a request")]
    Encode(#[source] FrameError),
}

/// Why [`Client::submit_lines`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading the input failed, or it changed under a [`Plan`].
    #[error("cannot read the input")]
    Input(#[source] io::Error),
    #[error("cannot write records")]
    Output(#[source] io::Error),
    /// The output took records no more (its writer ended without an error).
    #[error("cannot write records (after {0})")]
    OutputClosed(u64),
    #[error(transparent)]
    Renumber(#[from] NotARecord),
    #[error("the daemon's last record is unfinished")]
    Unfinished,
    #[error("the daemon finished after {records} records for {lines} lines")]
    Short { records: u64, lines: u64 },
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] io::Error),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// What [`Client::submit_lines`] sent and received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Lines sent.
    pub lines: u64,
    /// Final records received: one per line.
    pub records: u64,
}

type Replies = FramedRead<OwnedReadHalf, FrameCodec<Reply, Request>>;

/// A connection the daemon has welcomed.
#[derive(Debug)]
pub struct Client {
    rd: Replies,
    wr: OwnedWriteHalf,
    max_frame: usize,
    max_line: usize,
    /// Open submissions with `SubmitNamed`, to learn their id ([`Client::named`]).
    named: bool,
}

/// Every option of a submission, for an `Open` request.
fn open_options(options: &SubmitOptions, named: bool) -> Vec<SubmitOption> {
    let ms = |d: Duration| (d.as_millis() as u64).max(1);
    let mut out = Vec::new();
    if options.ordered {
        out.push(SubmitOption::Ordered);
    }
    if options.priority != 0 {
        out.push(SubmitOption::Priority(options.priority));
    }
    if options.line_priority {
        out.push(SubmitOption::LinePriority);
    }
    if let Some(r) = options.rate {
        out.push(SubmitOption::Rate(r.to_string()));
    }
    if let Some(d) = options.max_age {
        out.push(SubmitOption::MaxAgeMs(ms(d)));
    }
    if let Some(d) = options.deadline {
        out.push(SubmitOption::DeadlineMs(ms(d)));
    }
    if named {
        out.push(SubmitOption::Named);
    }
    match &options.key {
        crate::KeySource::None => {}
        crate::KeySource::Line => out.push(SubmitOption::LineKey),
        crate::KeySource::Pointer(p) => out.push(SubmitOption::KeyPointer(p.to_string())),
    }
    if let Some(b) = options.batch {
        out.push(SubmitOption::Batch {
            max: b.max,
            wait_ms: b.wait.as_millis() as u64,
            by_key: b.by_key,
        });
    }
    out
}

fn frame(req: &Request) -> Result<Vec<u8>, ClientError> {
    let mut buf = Vec::new();
    encode_frame(req, &mut buf, REQUEST_MAX_FRAME).map_err(ClientError::Encode)?;
    Ok(buf)
}

/// Connects, retrying while the daemon's listen backlog is full (`EAGAIN`): a client over
/// the connection cap waits for its turn rather than fail.
async fn connect_stream(path: &Path, until: Instant) -> Result<UnixStream, ClientError> {
    let mut pause = Duration::from_millis(5);
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() + pause < until => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(source) => {
                return Err(ClientError::Connect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

impl Client {
    /// Connects to the daemon's control socket at `path` and waits for its welcome, at most
    /// [`TURN_TIMEOUT`] while its connections are all in use.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let until = Instant::now() + TURN_TIMEOUT;
        let stream = connect_stream(path, until).await?;
        let (rd, mut wr) = stream.into_split();
        let mut rd = FramedRead::new(rd, FrameCodec::new(REPLY_MAX_FRAME));
        let hello = frame(&Request::Hello {
            protocol: CONTROL_VERSION,
        })?;
        // An error reply is still worth reading when the Hello cannot be written.
        let sent = wr.write_all(&hello).await;
        // Over the connection cap, the daemon accepts us only once a connection closes.
        let mut welcome = pin!(rd.next());
        let first = match tokio::time::timeout(TURN_NOTICE, &mut welcome).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    control = %path.display(),
                    "the daemon's control connections are all in use; waiting for a turn (at \
                     most {})",
                    humantime::format_duration(TURN_TIMEOUT)
                );
                tokio::time::timeout_at(until, &mut welcome)
                    .await
                    .map_err(|_| ClientError::NoTurn(TURN_TIMEOUT))?
            }
        };
        match first {
            Some(Ok(Reply::Welcome {
                protocol,
                max_frame,
                max_line,
                ..
            })) if protocol == CONTROL_VERSION => Ok(Client {
                rd,
                wr,
                max_frame: max_frame as usize,
                max_line: max_line as usize,
                named: false,
            }),
            Some(Ok(Reply::Welcome { protocol, .. })) => Err(ClientError::Version(protocol)),
            Some(Ok(Reply::Error(e))) => Err(ClientError::Refused(e)),
            Some(Ok(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Some(Err(e)) => Err(ClientError::BadReply(e)),
            None => Err(ClientError::Closed(sent.err())),
        }
    }

    /// Opens the submission so that the daemon names it ([`Records::submission`]), for a
    /// cancel from another connection (`herd ctl cancel --submission`);
    /// [`Client::submit_lines`] prints it on stderr as `herd: submission N`. A daemon older
    /// than `SubmitNamed` closes the connection instead.
    pub fn named(mut self) -> Self {
        self.named = true;
        self
    }

    /// The longest event line the daemon's workers take: [`Events`] sends a longer one as a
    /// rejected line, and it gets a `rejected` record.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Sends one request (status, scale, reload, stop) and reads its reply; an error reply
    /// is [`ClientError::Daemon`].
    pub async fn ask(mut self, req: &Request) -> Result<Reply, ClientError> {
        self.wr
            .write_all(&frame(req)?)
            .await
            .map_err(ClientError::Gone)?;
        match self.rd.next().await {
            Some(Ok(Reply::Error(e))) => Err(ClientError::Daemon(e)),
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => Err(ClientError::BadReply(e)),
            None => Err(ClientError::NoReply),
        }
    }

    /// Starts a submission: events go out on the [`Events`], their records come back on the
    /// [`Records`]. Run both at once (two tasks, or `join!`): the daemon stops reading events
    /// from a submitter that does not read its records.
    pub async fn submit(
        mut self,
        options: &SubmitOptions,
    ) -> Result<(Events, Records), ClientError> {
        // Plain Submit when there is no priority to give: it works with daemons older than
        // SubmitWith too.
        let with_priority = options.priority != 0 || options.line_priority;
        // Milliseconds, at least 1 (0 means the daemon's own limit).
        let ms = |d: Option<Duration>| d.map_or(0, |d| (d.as_millis() as u64).max(1));
        let timed = options.max_age.is_some() || options.deadline.is_some();
        let keyed = options.key != crate::KeySource::None;
        // The oldest request that carries every option given (so that older daemons serve
        // what they can): Open anything (keys, batches), SubmitNamed the name (and a rate), SubmitTimed the
        // time limits and a rate too, SubmitRated only a rate.
        let start = if keyed || options.batch.is_some() || (self.named && timed) {
            Request::Open {
                options: open_options(options, self.named),
            }
        } else if self.named {
            Request::SubmitNamed {
                ordered: options.ordered,
                priority: options.priority,
                line_priority: options.line_priority,
                rate: options.rate.map(|r| r.to_string()),
            }
        } else if timed {
            Request::SubmitTimed {
                ordered: options.ordered,
                priority: options.priority,
                line_priority: options.line_priority,
                max_age_ms: ms(options.max_age),
                deadline_ms: ms(options.deadline),
                rate: options.rate.map_or_else(String::new, |r| r.to_string()),
            }
        } else if let Some(rate) = options.rate {
            Request::SubmitRated {
                ordered: options.ordered,
                priority: options.priority,
                line_priority: options.line_priority,
                rate: rate.to_string(),
            }
        } else if with_priority {
            Request::SubmitWith {
                ordered: options.ordered,
                priority: options.priority,
                line_priority: options.line_priority,
            }
        } else {
            Request::Submit {
                ordered: options.ordered,
            }
        };
        self.wr
            .write_all(&frame(&start)?)
            .await
            .map_err(ClientError::Gone)?;
        // A named submission's first reply is its id.
        let submission = if self.named {
            match self.rd.next().await {
                Some(Ok(Reply::Submission { id })) => Some(id),
                Some(Ok(Reply::Error(e))) => return Err(ClientError::Daemon(e)),
                Some(Ok(other)) => return Err(ClientError::Unexpected(format!("{other:?}"))),
                Some(Err(e)) => return Err(ClientError::BadReply(e)),
                None => return Err(ClientError::NoReply),
            }
        } else {
            None
        };
        let (keep_tx, keep_rx) = oneshot::channel();
        let events = Events {
            wr: self.wr,
            encoder: Encoder {
                budget: BATCH_BYTES.min(self.max_frame),
                max_frame: self.max_frame,
                max_line: self.max_line,
            },
            keep: keep_tx,
        };
        let records = Records {
            rd: self.rd,
            lines: RecordLines::default(),
            with_priority,
            done: false,
            keep: Keep::Waiting(keep_rx),
            submission,
        };
        Ok((events, records))
    }
}

impl Client {
    /// Submits the lines of `input` and writes their records to `output` as JSON lines: what
    /// `herd submit` does. With a `plan` (`--resume`, `--retry-failed`) only the lines that
    /// run are sent, and records keep their line numbers as `seq`.
    ///
    /// Lines are read on a thread, frames go out on one task, replies come in on another, and
    /// records are written on a thread: no side waits for another, so a slow output holds up
    /// only this submission, never the socket's other direction.
    pub async fn submit_lines(
        self,
        input: impl Read + Send + 'static,
        mut output: impl Write + Send + 'static,
        options: &SubmitOptions,
        plan: Option<Arc<Plan>>,
    ) -> Result<Submitted, SubmitError> {
        let max_line = self.max_line;
        let (events, records) = self.submit(options).await?;
        if let Some(id) = records.submission() {
            // `herd submit --print-id`: the id `herd ctl cancel --submission` names, as soon
            // as the daemon gives it, for whoever runs the command.
            eprintln!("herd: submission {id}");
        }

        // Lines are read and encoded on a plain thread, and handed over as ready frames.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let encoder = events.encoder();
        let mut cut = plan.clone().map(Cut::new);
        let input_thread = std::thread::Builder::new()
            .name("herd-input".into())
            .spawn(move || -> Result<u64, SubmitError> {
                let mut failed = None;
                let read = crate::lines::read_lines(input, max_line, 1024, |batch| {
                    // With a plan, only the lines that run are sent; the daemon numbers them
                    // densely.
                    let batch = match &mut cut {
                        None => batch,
                        Some(cut) => match cut.batch(batch) {
                            Ok(kept) if kept.is_empty() => return true,
                            Ok(kept) => kept,
                            Err(e) => {
                                failed = Some(SubmitError::Input(e));
                                return false;
                            }
                        },
                    };
                    match encoder.encode(&batch) {
                        Ok(frames) => tx.blocking_send(frames).is_ok(),
                        Err(e) => {
                            failed = Some(e.into());
                            false
                        }
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                let read = read.map_err(SubmitError::Input)?;
                match &cut {
                    None => Ok(read),
                    Some(cut) => cut.end().map_err(SubmitError::Input),
                }
            })
            .map_err(|e| SubmitError::Thread("input", e))?;
        // Records are written on a plain thread, so a slow output never holds up the socket.
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(4);
        let output_thread = std::thread::Builder::new()
            .name("herd-output".into())
            .spawn(move || -> io::Result<()> {
                while let Some(bytes) = out_rx.blocking_recv() {
                    output.write_all(&bytes)?;
                    if out_rx.is_empty() {
                        output.flush()?;
                    }
                }
                output.flush()
            })
            .map_err(|e| SubmitError::Thread("output", e))?;

        let writer = async move {
            let mut events = events;
            while let Some(frames) = rx.recv().await {
                events.send_encoded(&frames).await?;
            }
            // Our side stays open until the last record: closing it says we are gone.
            events.end().await
        };
        let mut renumber = plan.map(Renumber::new);
        let reader = async move {
            let mut records = records;
            while let Some(bytes) = records.next().await? {
                // Counted as the daemon sent them (its seqs), then renumbered.
                let bytes = match &mut renumber {
                    Some(r) => r.apply(&bytes)?,
                    None => bytes,
                };
                if out_tx.send(bytes).await.is_err() {
                    return Ok(Err(records.received()));
                }
            }
            if renumber.as_ref().is_some_and(|r| !r.is_clean()) {
                return Err(SubmitError::Unfinished);
            }
            // One final record per line sent; chunk lines come on top.
            Ok(Ok(records.finals()))
        };
        let mut writer = pin!(writer);
        let mut reader = pin!(reader);
        let mut writing = true;
        let outcome = loop {
            tokio::select! {
                _ = &mut writer, if writing => {
                    // A failed write means the daemon is gone; the reader says so when it
                    // sees it.
                    writing = false;
                }
                r = &mut reader => break r,
            }
        };
        // The reader is finished (and its sender dropped): the output thread writes what it
        // was given, also when the daemon failed us, and ends.
        let written = match output_thread.join() {
            Ok(r) => r.map_err(SubmitError::Output),
            Err(_) => Err(SubmitError::Panicked("output")),
        };
        let received = match outcome? {
            Ok(n) => n,
            // The output failed: that thread has the reason.
            Err(n) => {
                written?;
                return Err(SubmitError::OutputClosed(n));
            }
        };
        written?;
        // `Done` comes only after the daemon read our End: every frame is out, whatever the
        // writer's state (it may not have been polled since its last write).
        let lines = match input_thread.join() {
            Ok(r) => r?,
            Err(_) => return Err(SubmitError::Panicked("input")),
        };
        if lines != received {
            return Err(SubmitError::Short {
                records: received,
                lines,
            });
        }
        Ok(Submitted {
            lines,
            records: received,
        })
    }
}

/// One request, one reply, within [`ASK_TIMEOUT`].
pub async fn ask(path: &Path, req: &Request) -> Result<Reply, ClientError> {
    let exchange = async { Client::connect(path).await?.ask(req).await };
    tokio::time::timeout(ASK_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout(ASK_TIMEOUT))?
}

/// The daemon's [`Status`].
pub async fn status(path: &Path) -> Result<Status, ClientError> {
    match ask(path, &Request::Status).await? {
        Reply::Status(json) => serde_json::from_str(&json).map_err(ClientError::BadStatus),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// Turns batches of inputs into `Events` frames of at most `budget` bytes each (a line longer
/// than that gets a frame of its own, which the daemon's `max_frame` always allows). Cheap to
/// clone, so a program may encode on a thread of its own and hand [`Events::send_encoded`]
/// the bytes.
#[derive(Debug, Clone)]
pub struct Encoder {
    budget: usize,
    max_frame: usize,
    max_line: usize,
}

impl Encoder {
    /// The frames for `batch`, back to back in one buffer. An event longer than the daemon's
    /// line limit and an [`Input::Rejected`] go as rejected lines. Seqs are not sent: the
    /// daemon numbers the lines of a submission as they arrive.
    pub fn encode(&self, batch: &[Input]) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut lines: Vec<Option<&serde_bytes::Bytes>> = Vec::new();
        let mut size = EVENTS_FRAME_OVERHEAD;
        for input in batch {
            let line = match input {
                Input::Event { payload, .. } if payload.len() <= self.max_line => {
                    Some(serde_bytes::Bytes::new(payload))
                }
                Input::Event { .. } | Input::Rejected { .. } => None,
            };
            let cost = line.map_or(1, |l| l.len() + EVENT_LINE_OVERHEAD);
            if !lines.is_empty() && size + cost > self.budget {
                self.flush(&mut lines, &mut out)?;
                size = EVENTS_FRAME_OVERHEAD;
            }
            lines.push(line);
            size += cost;
        }
        if !lines.is_empty() {
            self.flush(&mut lines, &mut out)?;
        }
        Ok(out)
    }

    fn flush(
        &self,
        lines: &mut Vec<Option<&serde_bytes::Bytes>>,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        let req = RequestRef::Events(std::mem::take(lines));
        encode_frame(&req, out, self.max_frame).map_err(ClientError::Encode)
    }
}

/// The sending side of a submission.
#[derive(Debug)]
pub struct Events {
    wr: OwnedWriteHalf,
    encoder: Encoder,
    /// Where [`Events::end`] leaves the socket's write side, open, for the [`Records`].
    keep: oneshot::Sender<OwnedWriteHalf>,
}

impl Events {
    /// An encoder for this submission's frames.
    pub fn encoder(&self) -> Encoder {
        self.encoder.clone()
    }

    /// Sends `batch`: the daemon numbers its events after those sent before.
    pub async fn send(&mut self, batch: &[Input]) -> Result<(), ClientError> {
        let frames = self.encoder.encode(batch)?;
        self.send_encoded(&frames).await
    }

    /// Sends frames made by [`Events::encoder`].
    pub async fn send_encoded(&mut self, frames: &[u8]) -> Result<(), ClientError> {
        self.wr.write_all(frames).await.map_err(ClientError::Gone)
    }

    /// Cancels event `seq` of this submission (numbered from 0 in the order sent). Its
    /// record answers: `cancelled`, or the record it already had. After [`Events::end`],
    /// [`Records::cancel`] does the same.
    pub async fn cancel(&mut self, seq: u64) -> Result<(), ClientError> {
        let f = frame(&Request::Cancel { seq })?;
        self.wr.write_all(&f).await.map_err(ClientError::Gone)
    }

    /// Says there are no more events. The socket stays open until the [`Records`] is
    /// dropped: closing it earlier would tell the daemon the submitter is gone.
    pub async fn end(mut self) -> Result<(), ClientError> {
        self.wr
            .write_all(&frame(&Request::End)?)
            .await
            .map_err(ClientError::Gone)?;
        // When the records are already dropped, there is no one left to read them anyway.
        let _ = self.keep.send(self.wr);
        Ok(())
    }
}

/// The receiving side of a submission.
#[derive(Debug)]
pub struct Records {
    rd: Replies,
    lines: RecordLines,
    with_priority: bool,
    done: bool,
    /// The write side once the events ended, held open while records still come.
    keep: Keep,
    /// The daemon's id of a named submission ([`Client::named`]).
    submission: Option<u64>,
}

/// Where the write side of a submission is, as the [`Records`] sees it.
#[derive(Debug)]
enum Keep {
    /// With the [`Events`], or on its way after [`Events::end`].
    Waiting(oneshot::Receiver<OwnedWriteHalf>),
    /// Here, after [`Events::end`].
    Held(OwnedWriteHalf),
    /// The [`Events`] was dropped without `end`.
    Gone,
}

impl Records {
    /// The next record lines: JSON lines exactly as `herd run` writes them, though a chunk may
    /// end inside a line that the next one continues. `None` once the daemon said every
    /// record was sent, and as many arrived.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let received = self.lines.total;
        match self.rd.next().await {
            Some(Ok(Reply::Records(bytes))) => {
                self.lines.feed(&bytes);
                Ok(Some(bytes))
            }
            Some(Ok(Reply::Done { records })) => {
                if records != received {
                    return Err(ClientError::Miscount {
                        sent: records,
                        received,
                    });
                }
                self.done = true;
                Ok(None)
            }
            Some(Ok(Reply::Error(e))) => Err(ClientError::Daemon(e)),
            Some(Ok(other)) => Err(ClientError::Unexpected(format!("{other:?}"))),
            Some(Err(e)) => Err(ClientError::GoneAfter {
                received,
                source: Some(e),
            }),
            None if received == 0 && self.with_priority => Err(ClientError::NoPriorities),
            None => Err(ClientError::GoneAfter {
                received,
                source: None,
            }),
        }
    }

    /// The daemon's id of this submission, if it was opened [`Client::named`].
    pub fn submission(&self) -> Option<u64> {
        self.submission
    }

    /// Cancels event `seq` once the events have ended ([`Events::end`]); before that, use
    /// [`Events::cancel`] (this one then fails with [`ClientError::Unexpected`]).
    pub async fn cancel(&mut self, seq: u64) -> Result<(), ClientError> {
        if let Keep::Waiting(rx) = &mut self.keep {
            match rx.try_recv() {
                Ok(wr) => self.keep = Keep::Held(wr),
                Err(oneshot::error::TryRecvError::Closed) => self.keep = Keep::Gone,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        let Keep::Held(wr) = &mut self.keep else {
            return Err(ClientError::Unexpected(
                "a cancel before the events ended: send it with Events::cancel".into(),
            ));
        };
        let f = frame(&Request::Cancel { seq })?;
        wr.write_all(&f).await.map_err(ClientError::Gone)
    }

    /// Record lines received so far (chunk lines included).
    pub fn received(&self) -> u64 {
        self.lines.total
    }

    /// Final records received so far: one per event sent, once the submission is done.
    pub fn finals(&self) -> u64 {
        self.lines.total - self.lines.chunks
    }
}

/// Counts the record lines of a submission as they arrive, and which of them are chunk
/// lines (`{"seq":N,"chunk":...`) rather than final records.
#[derive(Debug, Default)]
struct RecordLines {
    total: u64,
    chunks: u64,
    /// The start of the line in progress, when a frame ended inside it.
    head: Vec<u8>,
}

/// Enough of a line to tell a chunk line: `{"seq":`, 20 digits, `,"chunk":`.
const LINE_HEAD: usize = 36;

impl RecordLines {
    fn feed(&mut self, bytes: &[u8]) {
        // Records never contain a raw newline; a frame may end inside one.
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[start..nl];
            start = nl + 1;
            self.total += 1;
            let chunk = if self.head.is_empty() {
                is_chunk_line(line)
            } else {
                let room = LINE_HEAD.saturating_sub(self.head.len());
                self.head.extend_from_slice(&line[..line.len().min(room)]);
                let chunk = is_chunk_line(&self.head);
                self.head.clear();
                chunk
            };
            self.chunks += u64::from(chunk);
        }
        let rest = &bytes[start..];
        let room = LINE_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&rest[..rest.len().min(room)]);
    }
}

fn is_chunk_line(line: &[u8]) -> bool {
    split_seq(line).is_some_and(|(_, rest)| rest.starts_with(b",\"chunk\":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_tell_chunk_lines_from_final_records_across_frames() {
        let text = concat!(
            "{\"seq\":0,\"chunk\":0,\"attempt\":1,\"output\":1}\n",
            "{\"seq\":12345678901234567890,\"chunk\":1,\"attempt\":1,\"output\":\"x\"}\n",
            "{\"seq\":0,\"ok\":true,\"output\":{\"a\":1,\"chunk\":2},\"attempts\":1}\n",
            "{\"seq\":1,\"ok\":false,\"error\":{\"kind\":\"failed\",\"message\":\"m\"},\"attempts\":1}\n",
        )
        .as_bytes();
        // Every way of cutting the text into two frames counts the same.
        for cut in 0..=text.len() {
            let mut lines = RecordLines::default();
            lines.feed(&text[..cut]);
            lines.feed(&text[cut..]);
            assert_eq!((lines.total, lines.chunks), (4, 2), "cut at {cut}");
        }
        // And one byte at a time.
        let mut lines = RecordLines::default();
        for b in text.chunks(1) {
            lines.feed(b);
        }
        assert_eq!((lines.total, lines.chunks), (4, 2));
    }
}
