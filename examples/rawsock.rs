//! The socket limit herd is measured against (`scripts/bench.sh`): a parent and W child
//! processes exchanging length-prefixed frames over Unix sockets, with no serialization, no
//! supervision and a blocking thread per child. Nothing herd does can be faster than this.
//!
//!     rawsock [--workers W] [--inflight K] [--n N]
//!     rawsock bare [--workers W] [--n N] [--ms M]
//!
//! Prints one JSON object: frames per second and the round-trip p50/p99 in microseconds (with
//! K in flight the round trip includes queueing behind the other K-1 frames). `bare` is the
//! ceiling for CPU-bound work: W processes each burn their share of N x M ms of CPU (the same
//! spin as `herd-chaos`), with no dispatcher at all; it prints the wall time and efficiency.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

/// About the size of a tiny `square` event.
const REQUEST: &[u8] = br#"{"op":"square","n":123456}"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("child") => match args.get(2) {
            Some(path) => option(&args, "--spin-ms", 0).and_then(|ms| child(path, ms)),
            None => Err(io::Error::other("child needs a socket path")),
        },
        Some("bare") => bare(&args[2..]),
        Some("spin") => {
            option(&args, "--n", 0).and_then(|n| spin_many(n, option(&args, "--ms", 1)?))
        }
        _ => parent(&args[1..]),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rawsock: {e}");
            ExitCode::FAILURE
        }
    }
}

fn option(args: &[String], name: &str, default: usize) -> io::Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("{name} needs a number"))),
    }
}

fn parent(args: &[String]) -> io::Result<()> {
    let workers = option(args, "--workers", 2)?.max(1);
    let inflight = option(args, "--inflight", 1)?.max(1);
    let n = option(args, "--n", 200_000)?;
    let spin_ms = option(args, "--spin-ms", 0)?;
    let dir = std::env::temp_dir().join(format!("rawsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("s");
    let listener = UnixListener::bind(&path)?;
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..workers {
        children.push(
            Command::new(&exe)
                .arg("child")
                .arg(&path)
                .args(["--spin-ms", &spin_ms.to_string()])
                .spawn()?,
        );
        streams.push(listener.accept()?.0);
    }
    std::fs::remove_dir_all(&dir)?;
    let per = n / workers;
    let mut rtts = Vec::with_capacity(n);
    if args.iter().any(|a| a == "--single") {
        rtts = drive_all(streams, per, inflight)?;
    } else {
        let threads: Vec<_> = streams
            .into_iter()
            .map(|s| std::thread::spawn(move || drive(s, per, inflight)))
            .collect();
        for t in threads {
            rtts.extend(
                t.join()
                    .map_err(|_| io::Error::other("driver panicked"))??,
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for mut c in children {
        c.wait()?;
    }
    rtts.sort_unstable_by(f64::total_cmp);
    let pct = |q: f64| rtts[((q * rtts.len() as f64) as usize).min(rtts.len() - 1)];
    // With --spin-ms, how much of the wall time the children spent on the work.
    let ideal = (rtts.len() * spin_ms) as f64 / 1000.0 / workers as f64;
    println!(
        "{{\"workers\":{workers},\"inflight\":{inflight},\"spin_ms\":{spin_ms},\"frames\":{},\
         \"seconds\":{secs:.4},\"frames_per_sec\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\
         \"efficiency\":{:.4}}}",
        rtts.len(),
        rtts.len() as f64 / secs,
        pct(0.5),
        pct(0.99),
        ideal / secs
    );
    Ok(())
}

fn bare(args: &[String]) -> io::Result<()> {
    let workers = option(args, "--workers", 2)?.max(1);
    let n = option(args, "--n", 20_000)?;
    let ms = option(args, "--ms", 1)?;
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let children = (0..workers)
        .map(|k| {
            let share = n * (k + 1) / workers - n * k / workers;
            Command::new(&exe)
                .args(["spin", "--n", &share.to_string(), "--ms", &ms.to_string()])
                .spawn()
        })
        .collect::<io::Result<Vec<_>>>()?;
    for mut c in children {
        if !c.wait()?.success() {
            return Err(io::Error::other("a spinning child failed"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ideal = (n * ms) as f64 / 1000.0 / workers as f64;
    println!(
        "{{\"workers\":{workers},\"events\":{n},\"ms\":{ms},\"seconds\":{secs:.4},\
         \"efficiency\":{:.4}}}",
        ideal / secs
    );
    Ok(())
}

/// `count` times `ms` of this thread's CPU time, read as `herd-chaos` reads it.
fn spin_many(count: usize, ms: usize) -> io::Result<()> {
    use nix::time::{clock_gettime, ClockId};
    let cpu = || {
        clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(Duration::from)
            .map_err(io::Error::from)
    };
    let d = Duration::from_millis(ms as u64);
    for _ in 0..count {
        let start = cpu()?;
        while cpu()?.saturating_sub(start) < d {
            for _ in 0..100 {
                std::hint::spin_loop();
            }
        }
    }
    Ok(())
}

/// One child's connection as the parent drives it: `n` frames, `inflight` outstanding.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    sent: std::collections::VecDeque<Instant>,
    next: usize,
    done: usize,
    n: usize,
    inflight: usize,
}

impl Conn {
    fn new(stream: UnixStream, n: usize, inflight: usize) -> io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, stream.try_clone()?),
            writer: BufWriter::with_capacity(64 * 1024, stream),
            sent: std::collections::VecDeque::with_capacity(inflight),
            next: 0,
            done: 0,
            n,
            inflight,
        })
    }

    /// Tops up the frames in flight, in one write.
    fn refill(&mut self) -> io::Result<()> {
        while self.next < self.n && self.sent.len() < self.inflight {
            write_frame(&mut self.writer, REQUEST)?;
            self.sent.push_back(Instant::now());
            self.next += 1;
        }
        self.writer.flush()
    }

    /// Reads one reply (blocking) and every other one already buffered, recording round trips
    /// in microseconds.
    fn drain(&mut self, rtts: &mut Vec<f64>, body: &mut Vec<u8>) -> io::Result<()> {
        loop {
            read_frame(&mut self.reader, body)?;
            if let Some(t) = self.sent.pop_front() {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
            self.done += 1;
            if self.reader.buffer().is_empty() {
                return Ok(());
            }
        }
    }

    /// A zero-length frame tells the child to exit.
    fn finish(&mut self) -> io::Result<()> {
        write_frame(&mut self.writer, b"")?;
        self.writer.flush()
    }
}

/// Drives one child from this thread, blocking in read.
fn drive(stream: UnixStream, n: usize, inflight: usize) -> io::Result<Vec<f64>> {
    let mut c = Conn::new(stream, n, inflight)?;
    let mut rtts = Vec::with_capacity(n);
    let mut body = Vec::new();
    while c.done < n {
        c.refill()?;
        c.drain(&mut rtts, &mut body)?;
    }
    c.finish()?;
    Ok(rtts)
}

/// As [`drive`] for every child from one thread waiting in poll(2), as herd's pool does.
fn drive_all(streams: Vec<UnixStream>, n: usize, inflight: usize) -> io::Result<Vec<f64>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut conns = streams
        .into_iter()
        .map(|s| Conn::new(s, n, inflight))
        .collect::<io::Result<Vec<_>>>()?;
    let mut rtts = Vec::with_capacity(n * conns.len());
    let mut body = Vec::new();
    for c in conns.iter_mut() {
        c.refill()?;
    }
    while conns.iter().any(|c| c.done < n) {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = conns
                .iter()
                .map(|c| PollFd::new(c.reader.get_ref().as_fd(), PollFlags::POLLIN))
                .collect();
            poll(&mut fds, PollTimeout::NONE)?;
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        for (c, ready) in conns.iter_mut().zip(ready) {
            if ready {
                c.drain(&mut rtts, &mut body)?;
                c.refill()?;
            }
        }
    }
    for c in conns.iter_mut() {
        c.finish()?;
    }
    Ok(rtts)
}

/// Echoes a small reply per frame, flushing only when no more input is buffered (as the
/// worker SDK does).
fn child(path: &str, spin_ms: usize) -> io::Result<()> {
    let stream = UnixStream::connect(path)?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    let mut body = Vec::new();
    loop {
        read_frame(&mut reader, &mut body)?;
        if body.is_empty() {
            return Ok(());
        }
        if spin_ms > 0 {
            spin_many(1, spin_ms)?;
        }
        write_frame(&mut writer, b"15241383936")?;
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(body)
}

fn read_frame(r: &mut impl Read, body: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    body.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(body)
}
