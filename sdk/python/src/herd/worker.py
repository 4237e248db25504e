"""The worker's half of the protocol: find the supervisor, say Hello, answer every Task with
exactly one Done until Shutdown. A Python twin of the Rust SDK (crates/worker/src/lib.rs).

- A worker never outlives its supervisor: end of stream on the socket exits 1; only the
  termination frame (Shutdown) exits 0; a protocol violation, or not being started by herd,
  exits 2.
- A handler may stream: a generator handler's yielded values are sent as Chunk frames
  (protocol version 2), each a record line of its own, and its return value is the final
  output. Chunks are queued like replies and go out within the same 1 ms.
- A handler failure is a result, not a crash: an exception becomes a non-retryable error
  (`Retryable` asks for a retry) and the worker keeps serving.
- Pipelining is cheap: input is read in large chunks; while further complete tasks are already
  buffered, replies after quick handlers are queued and written together; everything queued is
  written before the worker could block on a read, so a reply never waits for new input.
- Waiting for a task wakes nothing: the worker waits in poll(2), not in a blocking recv, which
  Linux also wakes each time the supervisor reads a reply.
- Protocol 3: herd may take back a task queued behind a slow one (`Withdraw`), and cancel one
  (`Cancel`). A handler that has run for 10 ms (up to 0.4 s while tiny tasks flow: each look
  costs the serve loop the GIL) gets a watcher thread that reads the socket for it: it answers
  each `Withdraw` at once (`Withdrawn` for a task not started: dropped; `Kept` for one started
  or answered), answers a `Cancel` of a queued task with `Done(Cancelled)`, and raises the
  running task's cancel flag (`Task.cancelled`, `Task.wait_cancelled`), which a handler ends
  with `raise Cancelled()`. Tiny handlers never wake it. A task is taken to run only while the
  watcher does not hold the read side, so it is never both given back and run (see `_Watch`).
- A batch handler (`run_batch`, protocol 3's optional Batching/Batch) gets the tasks of a
  Batch frame in one call (a lone Task as a list of one) and answers each with its own Done,
  queued as each result comes; its loop is a twin of the single-task one, which stays as it is.
- A finished Done is held for about 1 ms at most: the supervisor times each attempt from the
  previous Done. The serve loop flushes once the oldest held reply is 1 ms old; while a handler
  runs, a flusher thread (started the first time a reply is held across a handler) does it. It
  needs the GIL for that, which a busy handler gives up within the interpreter's switch
  interval (5 ms by default), so under a CPU-bound Python handler the bound is that interval.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import threading
import time
import traceback
from types import GeneratorType as _Generator
from types import ModuleType
from typing import (Any, Callable, Dict, Generator, Iterator, List, NoReturn, Optional, Protocol,
                    Tuple, Union)

from . import _codec
from ._codec import Buffer, ProtocolError

#: What a handler may return (or yield, as a chunk): str is sent as UTF-8, a dict or list as
#: compact JSON (UTF-8).
Output = Union[bytes, bytearray, memoryview, str, Dict[str, Any], List[Any]]
#: A handler: the payload (or, with pass_task=True, the Task) in, the output out; a generator
#: handler streams.
Handler = Callable[[Any], Any]
#: A batch handler: the payloads (or, with pass_task=True, the Tasks) of one batch in, one
#: result per event out, in order: a list (or any sequence), or an iterator that yields them.
BatchHandler = Callable[[List[Any]], Any]
# The read buffer: bytes, or a bytearray for a frame too big for one read.
_Data = Union[bytes, bytearray]

ENV_SOCKET = "HERD_SOCKET"
ENV_TOKEN = "HERD_TOKEN"
ENV_WORKER = "HERD_WORKER"
ENV_MAX_FRAME = "HERD_MAX_FRAME"
#: Set (to anything but "" or "0"), the worker runs the pure-Python serve loop even where the
#: native one (herd._native) is installed. herd passes none of its own HERD_* variables to its
#: workers: give it with `herd run --env HERD_PURE_PYTHON=1`.
ENV_PURE_PYTHON = "HERD_PURE_PYTHON"

# Exit codes, as the Rust SDK's.
EXIT_SHUTDOWN = 0
EXIT_DISCONNECTED = 1
EXIT_ERROR = 2

# The protocol version this worker speaks.
HELLO_PROTOCOL = _codec.PROTOCOL_VERSION

# Bytes asked of each recv: many pipelined small tasks at once.
READ_SIZE = 64 * 1024
# Queued replies above this size are written even if more input is buffered.
WRITE_BATCH = 64 * 1024
# The longest a queued Done waits, in seconds.
MAX_HOLD = 0.001
# Replies are batched only behind handlers faster than this (seconds); after a slower one the
# reply goes out at once, since a write costs little next to such a task and the supervisor is
# waiting to send more.
BATCH_ONLY_UNDER = 50e-6
# How long a handler runs before the watcher reads the socket for it (protocol 3). herd
# withdraws work only from behind a task that has run a second or more, so this costs nothing
# it needs, and tiny tasks never wake the watcher.
WATCH_AFTER = 0.010
# While tasks flow, the watcher looks at most this seldom: each look takes the GIL from the
# serve loop, which on a busy machine waits for the watcher to be scheduled (at one look per
# 10 ms, 15% of the tiny-task rate). A slow handler is then found within twice this.
WATCH_LONGEST = 0.2
# The largest retry_after delay a frame carries, in milliseconds (a u64).
_MAX_DELAY_MS = 0xFFFF_FFFF_FFFF_FFFF

_HEADER = struct.Struct("<I")
_unpack_header = _HEADER.unpack_from


class Retryable(Exception):
    """Raise this from a handler to ask herd to run the event again (up to its --retries, with
    backoff). Its message is shown in the record if the retries run out.

    `retry_after` (seconds, a float) says how long to wait before the next attempt (a
    service's Retry-After, a lock that expires): herd waits that long instead of its own
    backoff, up to its longest backoff (32 x --retry-backoff). Sent in whole milliseconds."""

    def __init__(self, *args: object, retry_after: Optional[float] = None) -> None:
        super().__init__(*args)
        if retry_after is not None:
            retry_after = float(retry_after)
            if not retry_after >= 0:  # also refuses NaN
                raise ValueError(f"retry_after must be a number of seconds >= 0, not "
                                 f"{retry_after!r}")
        #: The delay asked for, in seconds, or None for herd's own backoff.
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raise this from a handler that saw its task cancelled (`Task.cancelled`): the event
    ends with a `cancelled` record and the worker keeps serving. Raised for a task herd did
    not cancel, it fails the event saying so."""


class Fatal(Exception):
    """Raise this from a handler for a `failed` record carrying exactly this message, with no
    traceback on stderr. Any other exception also fails the event, without a retry."""


class Disconnected(Exception):
    """The supervisor closed or reset the connection."""


class _Startup(Exception):
    """The worker cannot start: not under herd, unusable environment, no socket."""


class _Channel(Protocol):
    """What a Task reaches its serve loop through: the pure-Python one's `_PyChannel`, or the
    native loop's `herd._native.Channel`. Each call names its task, which must be running."""

    def chunk(self, id: int, data: bytes) -> None: ...
    def cancelled(self, id: int) -> bool: ...
    def wait_cancelled(self, id: int, timeout: Optional[float] = None) -> bool: ...
    def write_raw(self, id: int, data: bytes) -> None: ...
    def flush(self, id: int) -> None: ...


class Task:
    """One task, handed to a handler run with `run(handler, pass_task=True)`."""

    __slots__ = ("id", "attempt", "payload", "_chan")

    def __init__(self, id: int, attempt: int, payload: bytes, chan: _Channel) -> None:
        #: The supervisor's identifier for this attempt; unique within one supervisor run.
        self.id = id
        #: Which attempt this is at the event: 1 the first time, 2 after one retry, and so on.
        self.attempt = attempt
        #: The event, exactly as herd received it (one input line without its newline).
        self.payload = payload
        self._chan = chan

    @property
    def cancelled(self) -> bool:
        """Whether herd asked to cancel this task (`herd ctl cancel`, a client's cancel). Check
        it between steps of a long computation and end with `raise herd.Cancelled()`: the
        record is `cancelled` and the worker stays up. A handler that never looks is killed by
        herd once --exit-timeout has passed after the cancel.

        The flag is raised by a watcher thread that reads the socket once a handler has run
        for 10 ms (in the pure-Python loop it needs the GIL for that, which a CPU-bound
        handler lets go of every few ms)."""
        return self._chan.cancelled(self.id)

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Blocks until herd cancels this task or `timeout` seconds pass (None: no limit);
        whether it was cancelled. A handler waiting on something else can use this in a
        thread, or as an interruptible sleep: `if task.wait_cancelled(5): raise Cancelled()`."""
        return self._chan.wait_cancelled(self.id, timeout)

    def chunk(self, data: Output) -> None:
        """Sends `data` (bytes-like, str as UTF-8, a dict or list as JSON) as a partial result
        of this task, before the handler returns: herd writes it at once as a record line of
        its own. The same as yielding it from a generator handler. Raises Fatal if it does not
        fit in a frame."""
        self._chan.chunk(self.id, _output_bytes(data))

    def _write_raw(self, data: Buffer) -> None:
        """Fault injection only (examples/chaos.py): queues raw bytes after the replies already
        queued and writes everything out. Anything but whole valid frames breaks the protocol."""
        self._chan.write_raw(self.id, bytes(data))

    def _flush(self) -> None:
        """Fault injection only: writes out the replies of earlier tasks that are still queued,
        so a worker about to die loses only the task in hand."""
        self._chan.flush(self.id)

    def __repr__(self) -> str:
        return f"Task(id={self.id}, attempt={self.attempt}, payload_len={len(self.payload)})"


class _PyChannel:
    """The pure-Python loop's side of a Task: its outbox and watcher."""

    __slots__ = ("_out", "_watch", "_max")

    def __init__(self, out: _Outbox, watch: _Watch, max_frame: int) -> None:
        self._out = out
        self._watch = watch
        self._max = max_frame

    def chunk(self, id: int, data: bytes) -> None:
        _send_chunk(self._out, id, data, self._max)

    def cancelled(self, id: int) -> bool:
        return self._watch.cancel_id == id

    def wait_cancelled(self, id: int, timeout: Optional[float] = None) -> bool:
        return self._watch.wait_cancel(id, timeout)

    def write_raw(self, id: int, data: bytes) -> None:
        self._out.queue(data)
        self._out.flush()

    def flush(self, id: int) -> None:
        self._out.flush()


class _Answered:
    """The channel of a batch's Task whose result is in: it can send nothing more."""

    def chunk(self, id: int, data: bytes) -> None:
        raise Fatal("a chunk of a task that was answered already")

    def cancelled(self, id: int) -> bool:
        return False

    def wait_cancelled(self, id: int, timeout: Optional[float] = None) -> bool:
        return False

    def write_raw(self, id: int, data: bytes) -> None:
        raise Fatal("a write for a task that was answered already")

    def flush(self, id: int) -> None:
        pass


_ANSWERED = _Answered()


class _Outbox:
    """The write side, shared by the serve loop and the flusher thread: frames are queued and
    written out, in order, under one lock."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queued: List[bytes] = []
        self.size = 0
        # When the oldest queued frame was held back (time.perf_counter()); None if none is.
        self.since: Optional[float] = None
        # An OSError the flusher hit, for the serve loop to report.
        self._error: Optional[OSError] = None
        # The flusher thread; False if it could not be started.
        self._flusher: Union[None, bool, threading.Thread] = None
        self._idle = False
        self._stop = False

    def queue(self, frame: bytes) -> None:
        with self._lock:
            self._queued.append(frame)
            self.size += len(frame)

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def add(self, frame: bytes, now: float, flush: bool) -> None:
        """Queues a reply made at `now`, and writes out everything queued if `flush`, if the
        batch is big, or if the oldest reply has waited MAX_HOLD; else leaves it for later
        (the flusher writes it out if the serve loop has not within MAX_HOLD)."""
        with self._lock:
            self._queued.append(frame)
            self.size += len(frame)
            since = self.since
            if (flush or self.size >= WRITE_BATCH
                    or (since is not None and now - since >= MAX_HOLD)):
                self._write_locked()
            elif since is None:
                self.since = now
                if self._flusher is None:
                    self._start_flusher()
                elif self._idle:
                    self._wake.notify()

    def _write_locked(self) -> None:
        if self._error is not None:
            raise self._error
        self.since = None
        if self._queued:
            data = b"".join(self._queued) if len(self._queued) > 1 else self._queued[0]
            self._queued.clear()
            self.size = 0
            self._sock.sendall(data)

    def _start_flusher(self) -> None:
        t = threading.Thread(target=self._run_flusher, name="herd-flush", daemon=True)
        try:
            t.start()
        except RuntimeError:
            # Without the flusher every reply is still written before the worker blocks on a
            # read; only the bound on holding one back during a slow handler is lost. Not
            # retried: `_idle` stays False, so nothing waits for a thread that is not there.
            self._flusher = False
            return
        self._flusher = t

    def _run_flusher(self) -> None:
        with self._lock:
            while not self._stop:
                since = self.since
                if since is None:
                    self._idle = True
                    self._wake.wait()
                    self._idle = False
                    continue
                left = since + MAX_HOLD - time.perf_counter()
                if left > 0:
                    self._wake.wait(left)
                elif self._error is not None:
                    self._queued.clear()
                    self.since = None
                else:
                    try:
                        self._write_locked()
                    except OSError as e:
                        self._error = e
                        self._queued.clear()
                        self.since = None

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify()


class _Reader:
    """Reads the socket, waiting for input in poll(2) rather than in a blocking recv. After a
    read found nothing the next one polls first (the supervisor is answering one task at a
    time); after a read found data it tries recv first (tasks are queued up)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._poll_first = False

    def recv(self, n: int) -> bytes:
        recv, flags = self._sock.recv, socket.MSG_DONTWAIT
        while True:
            if self._poll_first:
                self._poll.poll()
            try:
                data = recv(n, flags)
            except BlockingIOError:
                self._poll_first = True
                continue
            self._poll_first = False
            return data

    def recv_into(self, view: memoryview) -> int:
        recv_into, flags = self._sock.recv_into, socket.MSG_DONTWAIT
        while True:
            if self._poll_first:
                self._poll.poll()
            try:
                n = recv_into(view, len(view), flags)
            except BlockingIOError:
                self._poll_first = True
                continue
            self._poll_first = False
            return n


class _Watch:
    """Protocol 3 while a handler runs: the watcher, a thread that reads the socket only once a
    handler has been running for WATCH_AFTER, so that herd's Withdraw and Cancel are answered
    even when the task in hand is slow or hung. A Python twin of crates/worker/src/watch.rs.

    - The serve loop reads its frames itself between handlers, as it always has. Per task it
      publishes where its read buffer stands (`pos`; `data` after each read) and the running
      task's id (`running`, -1 between handlers): a few attribute stores.
    - The watcher parks while the worker is idle, and is woken when a handler starts. While
      tasks flow it looks ever less often, up to every WATCH_LONGEST.
    - A handler that has run for WATCH_AFTER (between looks) is slow: the watcher takes the
      read side (`_lock`, `engaged`), reads on, and answers Withdraw and Cancel at once,
      removing a withdrawn or cancelled task from the buffer. The Task frames it reads stay in
      the buffer, in order, for the serve loop, which takes them over (`take_back`) when the
      handler returns.
    - Exactly one owner per task: the serve loop takes a task to run only while the watcher
      does not hold the read side. The watcher sets `engaged` before it checks that the same
      handler still runs; the serve loop clears `running` before it checks `engaged` (each
      store and load is one bytecode under the GIL, so one always sees the other's move), and
      if set, waits for the lock. So a queued task is either still in the buffer (`Withdrawn`)
      or started (`Kept`). A Withdraw the serve loop reads itself finds its task run already.
    - A cancel is a request: a Cancel for the running task sets `cancel_id`; the handler
      decides when to stop. One for a queued task removes it and answers Done(Cancelled)."""

    __slots__ = ("running", "pos", "data", "parked", "engaged", "touched", "ended", "stop",
                 "cancel_id", "_sock", "_out", "_max", "_decode", "_lock", "_park", "_cancel",
                 "_wake_r", "_wake_w", "_thread")

    def __init__(self, sock: socket.socket, out: _Outbox, max_frame: int,
                 batching: bool = False) -> None:
        # The task whose handler runs, -1 between handlers.
        self.running = -1
        # The serve loop's read buffer, and where its next frame starts.
        self.data: _Data = b""
        self.pos = 0
        # The watcher waits for a handler to start (and must be notified).
        self.parked = False
        # The watcher holds, or is about to hold, the read side.
        self.engaged = False
        # The watcher changed the buffer: `data` (from 0) is what is left to run.
        self.touched = False
        # The watcher read the end of the stream, Shutdown, or a frame it cannot read: it reads
        # no more (the serve loop reads that for itself).
        self.ended = False
        self.stop = False
        # The task herd cancelled (ids are unique in a herd run).
        self.cancel_id = -1
        self._sock = sock
        self._out = out
        self._max = max_frame
        # A batch handler's worker is also sent Batch frames (tasks the watcher keeps, in order).
        self._decode: Callable[[_codec.Buffer, int, int], _codec.ToBatchingWorker] = (
            _codec.decode_to_batching_worker if batching else _codec.decode_to_worker)
        self._lock = threading.Lock()
        self._park = threading.Condition()
        self._cancel = threading.Condition()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        t = threading.Thread(target=self._run, name="herd-watch", daemon=True)
        try:
            t.start()
        except RuntimeError:
            # Without the watcher, withdrawals and cancels are answered between tasks only
            # (Kept, or nothing): herd falls back to waiting, or to a kill.
            self.ended = True
            return
        self._thread = t

    def unpark(self) -> None:
        with self._park:
            self._park.notify()

    def take_back(self) -> bool:
        """The handler ended while the watcher may hold the read side: wakes it and waits for
        it to let go. Whether it changed the buffer (then `data`, from 0, is what is left)."""
        try:
            self._wake_w.send(b"\x01")
        except OSError:
            pass  # a full pipe already holds a wake-up
        with self._lock:
            self.engaged = False
            touched, self.touched = self.touched, False
        return touched

    def wait_cancel(self, id: int, timeout: Optional[float]) -> bool:
        with self._cancel:
            return self._cancel.wait_for(lambda: self.cancel_id == id, timeout)

    def shut(self) -> None:
        """Stops the watcher and waits for it (it is parked, or reading for a handler that
        raised on the way out)."""
        self.stop = True
        with self._park:
            self._park.notify()
        try:
            self._wake_w.send(b"\x01")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        park = self._park
        interval = WATCH_AFTER
        # Where the serve loop stood at the last look: it moved since if tasks flow.
        last: Optional[Tuple[_Data, int]] = None
        while True:
            with park:
                # Parked while no handler runs and none ran since the last look (an idle
                # worker wakes nothing).
                while True:
                    if self.stop:
                        return
                    self.parked = True
                    if self.running != -1:
                        break
                    if last is not None and (last[0] is not self.data or last[1] != self.pos):
                        break
                    last = None
                    park.wait()
                    # Woken by a handler's start (or a stop, seen below): time it from here,
                    # without looking whether it still runs (tiny ones would have ended).
                    interval = WATCH_AFTER
                    break
                self.parked = False
                seen = self.running
                last = (self.data, self.pos)
                # Give the handler its time; a stop cuts the wait short.
                park.wait(interval)
            if self.stop or self.ended:
                return
            if seen == -1 or self.running != seen:
                # Tasks flow: look less often (each look costs the serve loop the GIL).
                interval = min(interval * 2, WATCH_LONGEST)
                continue
            interval = WATCH_AFTER
            with self._lock:
                self.engaged = True
                if self.running == seen:
                    self._watch(seen)
                else:
                    self.engaged = False

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _watch(self, seen: int) -> None:
        """Reads and answers frames while the handler of task `seen` runs (the read side is
        held)."""
        max_frame = self._max
        decode = self._decode
        buf = bytearray(self.data[self.pos:])
        # buf[:kept] is whole Task frames, left for the serve loop in order.
        kept = 0
        touched = False
        self._drain_wake()
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        wake_fd = self._wake_r.fileno()
        poller.register(wake_fd, select.POLLIN)
        try:
            while True:
                while len(buf) - kept >= 4:
                    n = _unpack_header(buf, kept)[0]
                    fend = kept + 4 + n
                    if n > max_frame or fend > len(buf):
                        if n > max_frame:
                            self.ended = True  # the serve loop refuses it after this task
                            return
                        break
                    try:
                        msg = decode(buf, kept + 4, fend)
                    except ProtocolError:
                        self.ended = True  # left for the serve loop to refuse
                        return
                    if msg[0] == "Task" or msg[0] == "Batch":
                        kept = fend
                        continue
                    if msg[0] == "Shutdown":
                        self.ended = True
                        return
                    tag, id = msg
                    del buf[kept:fend]
                    touched = True
                    removed = _remove_task(buf, kept, id, max_frame)
                    found = removed is not None
                    if removed is not None:
                        kept -= removed
                    if tag == "Withdraw":
                        answer: Optional[bytes] = (_codec.encode_withdrawn(id) if found
                                                   else _codec.encode_kept(id))
                    elif found:
                        answer = _codec.encode_done_cancelled(id)
                    else:
                        answer = None
                        if self.running == id:
                            with self._cancel:
                                self.cancel_id = id
                                self._cancel.notify_all()
                    if answer is not None:
                        try:
                            self._out.queue(answer)
                            self._out.flush()
                        except OSError:
                            self.ended = True  # the serve loop meets it on its next write
                            return
                if self.running != seen or self.stop:
                    return
                ready = poller.poll()
                if any(fd == wake_fd for fd, _ in ready):
                    self._drain_wake()
                    if self.running != seen or self.stop:
                        return
                try:
                    more = self._sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    self.ended = True  # the serve loop meets it on its next read
                    return
                if not more:
                    self.ended = True
                    return
                buf += more
                touched = True
        finally:
            if touched:
                self.data = bytes(buf)
                self.pos = 0
                self.touched = True


def _remove_task(buf: bytearray, stop: int, id: int, max_frame: int) -> Optional[int]:
    """Takes task `id` out of the whole Task and Batch frames in buf[:stop]: how many bytes
    shorter the buffer is, or None if the task is not there. A task of a batch not started is
    taken out alone (the batch's frame is written again without it); the rest still run
    together."""
    p = 0
    while p < stop:
        fend: int = p + 4 + _unpack_header(buf, p)[0]
        msg = _codec.decode_to_batching_worker(buf, p + 4, fend)
        if msg[0] == "Task" and msg[1] == id:
            del buf[p:fend]
            return fend - p
        if msg[0] == "Batch":
            tasks = msg[1]
            rest = [t for t in tasks if t[0] != id]
            if len(rest) < len(tasks):
                frame = _codec.encode_batch(rest, max_frame) if rest else b""
                buf[p:fend] = frame
                return fend - p - len(frame)
        p = fend
    return None


# Handler results that are a dict or a list go out as compact JSON.
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _output_bytes(value: object) -> bytes:
    """The handler's return value as bytes: bytes as is, str encoded as UTF-8, bytearray and
    memoryview copied, a dict or a list as compact JSON. Anything else (None included) is a
    handler bug, reported as such."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return _to_json(value).encode("utf-8")
    raise TypeError(
        f"handler returned {type(value).__name__}, expected bytes, bytearray, memoryview, str, "
        f"dict or list")


def _native_result(value: object, chan: _Channel, id: int) -> bytes:
    """The native loop's conversion of a result other than bytes or str (it does those)."""
    if type(value) is _Generator:
        return _stream(value, id, chan)
    return _output_bytes(value)


def _send_chunk(out: _Outbox, id: int, data: bytes, max_frame: int) -> None:
    try:
        frame = _codec.encode_chunk(id, data, max_frame)
    except ProtocolError:
        raise Fatal(f"chunk of {len(data)} bytes exceeds the maximum frame of {max_frame} "
                    f"bytes") from None
    # Held like a quick reply: out within MAX_HOLD, one write for a burst of chunks.
    out.add(frame, time.perf_counter(), False)


def _stream(gen: Generator[Any, None, Any], id: int, chan: _Channel) -> bytes:
    """Runs a generator handler: each yielded value is a chunk, the return value (None: empty)
    the final output. A chunk already sent stays sent if the generator then raises."""
    try:
        while True:
            try:
                value = next(gen)
            except StopIteration as stop:
                result = stop.value
                return b"" if result is None else _output_bytes(result)
            chan.chunk(id, _output_bytes(value))
    finally:
        gen.close()


def _failure_message(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _truncate(s: str, max_bytes: int) -> str:
    """The longest prefix of `s` that encodes to at most `max_bytes` UTF-8 bytes."""
    return s.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


# How a handler's exception is reported (`_failure`); the native loop knows these numbers.
_KIND_FATAL = 0
_KIND_RETRYABLE = 1
_KIND_CANCELLED = 2


def _failure(exc: BaseException, cancelled: bool, skip_frame: bool = False,
             returned: bool = False) -> Tuple[int, str, Optional[int]]:
    """How a handler that raised `exc` is reported, for both serve loops: (kind, message,
    retry delay in ms or None). `cancelled`: herd cancelled this task. Any exception but
    herd's own gets its traceback on stderr (without the serve loop's frame: `skip_frame`).
    `returned`: a batch handler's per-event result, not raised: its message only."""
    if isinstance(exc, Retryable):
        ms = None
        if exc.retry_after is not None:
            ms = min(round(exc.retry_after * 1000), _MAX_DELAY_MS)
        return _KIND_RETRYABLE, str(exc) or "Retryable", ms
    if isinstance(exc, Cancelled):
        if cancelled:
            return _KIND_CANCELLED, "cancelled", None
        return (_KIND_FATAL, "the handler raised Cancelled, but herd did not cancel this task",
                None)
    if isinstance(exc, Fatal):
        return _KIND_FATAL, str(exc) or "Fatal", None
    if returned:
        return _KIND_FATAL, _failure_message(exc), None
    # Like a Rust panic: the traceback (from the handler down) for whoever reads the worker's
    # stderr, which herd logs.
    try:
        tb = exc.__traceback__
        if skip_frame and tb is not None:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return _KIND_FATAL, f"handler raised {_failure_message(exc)}", None


def _done_err(id: int, retryable: bool, message: str, max_frame: int,
              delay_ms: Optional[int] = None) -> bytes:
    try:
        if delay_ms is not None:
            return _codec.encode_done_retry_after(id, message, delay_ms, max_frame)
        return _codec.encode_done_err(id, retryable, message, max_frame)
    except ProtocolError:
        size = len(message.encode("utf-8"))
        return _codec.encode_done_err(id, False, (
            f"handler error message of {size} bytes exceeds the maximum frame of {max_frame} "
            f"bytes; it began: {_truncate(message, 200)}"), max_frame)


def _failed(exc: Exception, id: int, max_frame: int, watch: _Watch) -> bytes:
    """The Done frame for a handler that raised `exc`."""
    kind, message, delay_ms = _failure(exc, watch.cancel_id == id, skip_frame=True)
    if kind == _KIND_CANCELLED:
        return _codec.encode_done_cancelled(id)
    return _done_err(id, kind == _KIND_RETRYABLE, message, max_frame, delay_ms)


def _too_big(id: int, output: bytes, max_frame: int) -> bytes:
    return _done_err(id, False, (
        f"handler output of {len(output)} bytes exceeds the maximum frame of {max_frame} "
        f"bytes"), max_frame)


def _native_module() -> Optional[ModuleType]:
    """herd._native, unless it is not built or ENV_PURE_PYTHON asks for the pure-Python loop."""
    if os.environ.get(ENV_PURE_PYTHON, "") not in ("", "0"):
        return None
    try:
        from . import _native
    except ImportError:
        return None
    return _native


def serve(sock: socket.socket, handler: Handler, token: str,
          max_frame: int = _codec.DEFAULT_MAX_FRAME, pass_task: bool = False) -> None:
    """Runs the worker's side of the protocol on a connected socket: sends Hello, then answers
    every Task with exactly one Done until Shutdown, which returns normally.

    Raises Disconnected when the supervisor goes away, ProtocolError for a frame that cannot
    be read or written. The handler runs on the calling thread.

    The loop is herd._native's (herd-worker's, in Rust) where it is installed, else this
    module's pure-Python one (also with HERD_PURE_PYTHON=1): the same conversation, replies,
    exit conditions and handler semantics."""
    native = _native_module()
    if native is not None:
        code, message = native.serve(sock.fileno(), handler, token, max_frame,
                                     Task if pass_task else None, _native_result, _failure)
        if code == EXIT_DISCONNECTED:
            raise Disconnected()
        if code != EXIT_SHUTDOWN:
            raise ProtocolError(message.removeprefix("protocol error: "))
        return
    _serve_pure(sock, handler, token, max_frame, pass_task)


def serve_batch(sock: socket.socket, handler: BatchHandler, token: str,
                max_frame: int = _codec.DEFAULT_MAX_FRAME, max: int = 64,
                pass_task: bool = False) -> None:
    """`serve` for a batch handler (see `run_batch`) of up to `max` tasks per call: declares
    Batching{max} after Hello (max 2 or more; 1: single tasks, each a list of one)."""
    max = _batch_max(max)
    native = _native_module()
    if native is not None and hasattr(native, "serve_batch"):
        code, message = native.serve_batch(sock.fileno(), handler, token, max_frame, max,
                                           Task if pass_task else None, _results,
                                           _native_event, _failure)
        if code == EXIT_DISCONNECTED:
            raise Disconnected()
        if code != EXIT_SHUTDOWN:
            raise ProtocolError(message.removeprefix("protocol error: "))
        return
    _serve_pure(sock, handler, token, max_frame, pass_task, max)


def _batch_max(max: int) -> int:
    if isinstance(max, bool) or not isinstance(max, int) or not 1 <= max <= 0xFFFF_FFFF:
        raise ValueError(f"max must be a whole number of tasks from 1 to 2**32-1, not {max!r}")
    return max


def _serve_pure(sock: socket.socket, handler: Handler, token: str, max_frame: int,
                pass_task: bool, batch: int = 0) -> None:
    """The pure-Python loop; `batch` (1 or more) for a batch handler of up to that many tasks."""
    out = _Outbox(sock)
    watch = _Watch(sock, out, max_frame, batching=batch > 1)
    try:
        try:
            out.queue(_codec.encode_hello(HELLO_PROTOCOL, os.getpid(), token, max_frame))
            if batch > 1:
                # Right after Hello, before any other frame (docs/PROTOCOL.md §4b).
                out.queue(_codec.encode_batching(batch))
            out.flush()
            watch.start()
            if batch:
                _serve_batch_loop(_Reader(sock), out, watch, handler, max_frame, pass_task,
                                  batch > 1)
            else:
                _serve_loop(_Reader(sock), out, watch, handler, max_frame, pass_task)
        except (OSError, Disconnected):
            raise
        except BaseException:
            # A protocol error, or SystemExit/KeyboardInterrupt from a handler, ends the worker:
            # the replies of the tasks it finished still go out (herd counts them).
            try:
                out.flush()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            raise
        finally:
            watch.shut()
            out.stop()
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
        raise Disconnected() from None


def _serve_loop(reader: _Reader, out: _Outbox, w: _Watch, handler: Handler, max_frame: int,
                pass_task: bool) -> None:
    perf = time.perf_counter
    chan = _PyChannel(out, w, max_frame)
    decode = _codec.decode_to_worker
    encode_ok = _codec.encode_done_ok
    header = _unpack_header
    data: _Data = b""
    pos = 0
    while True:
        # Everything queued goes out before a read that may block.
        if out.size:
            out.flush()
        data = _read_more(reader, data, pos, max_frame)
        w.data = data
        pos, end = 0, len(data)
        fend = _frame_end(data, 0, end, max_frame)
        while fend:
            msg = decode(data, pos + 4, fend)
            pos = fend
            # The end of the next frame if it is all here, else 0 (the next read may block). An
            # oversize header counts as incomplete: it is refused after this task's reply.
            fend = 0
            if end - pos >= 4:
                n = header(data, pos)[0]
                if pos + 4 + n <= end and n <= max_frame:
                    fend = pos + 4 + n
            if msg[0] != "Task":
                if msg[0] == "Shutdown":
                    out.flush()
                    return
                # Protocol 3, read between handlers: the task is not in the buffer, so it ran
                # already (Withdraw: Kept; Cancel: its Done went out, nothing to stop).
                if msg[0] == "Withdraw":
                    out.add(_codec.encode_kept(msg[1]), perf(), not fend)
                continue
            _, id, attempt, payload = msg
            # The task has started: the watcher may read (and answer for what is queued) now.
            w.pos = pos
            w.running = id
            if w.parked:
                w.unpark()
            t0 = perf()
            try:
                output = handler(Task(id, attempt, payload, chan) if pass_task else payload)
                if type(output) is not bytes:
                    if type(output) is str:
                        output = output.encode()
                    elif type(output) is _Generator:
                        output = _stream(output, id, chan)
                    else:
                        output = _output_bytes(output)
            except Exception as e:  # noqa: BLE001 - any handler failure is a `failed` record
                frame = _failed(e, id, max_frame, w)
            else:
                try:
                    frame = encode_ok(id, output, max_frame)
                except ProtocolError:
                    frame = _too_big(id, output, max_frame)
            w.running = -1
            if w.engaged and w.take_back():
                # The watcher read on (and may have removed withdrawn or cancelled tasks).
                data = w.data
                pos, end = 0, len(data)
                fend = 0
                if end >= 4:
                    n = header(data, 0)[0]
                    if 4 + n <= end and n <= max_frame:
                        fend = 4 + n
            now = perf()
            # Hold the reply while more tasks are buffered behind a quick handler (the outbox
            # bounds for how long); send it at once after a slow one or before a read.
            out.add(frame, now, not fend or now - t0 >= BATCH_ONLY_UNDER)


def _serve_batch_loop(reader: _Reader, out: _Outbox, w: _Watch, handler: BatchHandler,
                      max_frame: int, pass_task: bool, batching: bool) -> None:
    """`_serve_loop` for a batch handler: a Task is a batch of one; each task's Done is queued
    as its result comes (`_answer_batch`). A twin rather than a branch, to keep the single-task
    loop as it is. `batching`: Batching was sent, so Batch frames may come."""
    perf = time.perf_counter
    chan = _PyChannel(out, w, max_frame)
    decode = _codec.decode_to_batching_worker if batching else _codec.decode_to_worker
    header = _unpack_header
    data: _Data = b""
    pos = 0
    while True:
        # Everything queued goes out before a read that may block.
        if out.size:
            out.flush()
        data = _read_more(reader, data, pos, max_frame)
        w.data = data
        pos, end = 0, len(data)
        fend = _frame_end(data, 0, end, max_frame)
        while fend:
            msg = decode(data, pos + 4, fend)
            pos = fend
            fend = 0
            if end - pos >= 4:
                n = header(data, pos)[0]
                if pos + 4 + n <= end and n <= max_frame:
                    fend = pos + 4 + n
            if msg[0] == "Task":
                tasks: List[_codec.BatchTask] = [(msg[1], msg[2], msg[3])]
            elif msg[0] == "Batch":
                tasks = msg[1]
                if not tasks:
                    continue
            else:
                if msg[0] == "Shutdown":
                    out.flush()
                    return
                # As in `_serve_loop`: its task (or batch) ran already.
                if msg[0] == "Withdraw":
                    out.add(_codec.encode_kept(msg[1]), perf(), not fend)
                continue
            # The batch has started, all of it (a Withdraw of any of its tasks is Kept); a
            # Cancel reaches its first task's flag, as in the Rust SDK.
            w.pos = pos
            w.running = tasks[0][0]
            if w.parked:
                w.unpark()
            t0 = perf()
            _answer_batch(handler, tasks, chan, out, w, max_frame, pass_task)
            w.running = -1
            if w.engaged and w.take_back():
                data = w.data
                pos, end = 0, len(data)
                fend = 0
                if end >= 4:
                    n = header(data, 0)[0]
                    if 4 + n <= end and n <= max_frame:
                        fend = 4 + n
            if not fend or perf() - t0 >= BATCH_ONLY_UNDER:
                out.flush()


def _answer_batch(handler: BatchHandler, tasks: List[_codec.BatchTask], chan: _PyChannel,
                  out: _Outbox, w: _Watch, max_frame: int, pass_task: bool) -> None:
    """Calls a batch handler and queues one Done per task, each as soon as its result is there
    (held like a quick reply: out within MAX_HOLD). An exception from the handler (or from the
    iterator it returned) fails every task not answered yet; one that is not an Exception
    propagates, after the Dones already queued."""
    perf = time.perf_counter
    n = len(tasks)
    objs = [Task(id, attempt, payload, chan) for id, attempt, payload in tasks] if pass_task \
        else None
    got = 0
    it: Optional[Iterator[Any]] = None
    try:
        it = _results(handler(objs if objs is not None else
                              [payload for _, _, payload in tasks]))
        while True:
            try:
                value = next(it)
            except StopIteration:
                break
            if got == n:
                break  # one too many, ignored: a generator ran to its end, or has more
            id = tasks[got][0]
            if objs is not None:
                # Its Done goes out now: no chunk may follow (as herd-worker's Task::answer).
                objs[got]._chan = _ANSWERED
            got += 1
            out.add(_event_done(id, value, max_frame, w), perf(), False)
    except Exception as e:  # noqa: BLE001 - the batch's failure fails the unanswered tasks
        _fail_rest(e, tasks[got:], out, max_frame, w)
        return
    finally:
        if isinstance(it, _Generator):
            it.close()
    if got < n:
        # herd-worker's words, which the native loop's results get.
        message = f"the batch handler returned {got} results for a batch of {n} tasks"
        for id, _, _ in tasks[got:]:
            out.add(_done_err(id, False, message, max_frame), perf(), False)


def _results(value: object) -> Iterator[Any]:
    """A batch handler's return value as an iterator of per-event results."""
    if isinstance(value, (bytes, bytearray, memoryview, str, dict)) or value is None:
        raise TypeError(f"batch handler returned {type(value).__name__}, expected a list of "
                        f"per-event results or an iterator of them")
    try:
        it: Iterator[Any] = iter(value)  # type: ignore[call-overload]
        return it
    except TypeError:
        raise TypeError(f"batch handler returned {type(value).__name__}, expected a list of "
                        f"per-event results or an iterator of them") from None


def _event_done(id: int, value: object, max_frame: int, w: _Watch) -> bytes:
    """The Done frame for one event's result: an output, or an exception instance (that event
    fails as a handler that raised it would, without a traceback on stderr)."""
    if isinstance(value, BaseException):
        kind, message, delay_ms = _failure(value, w.cancel_id == id, returned=True)
        if kind == _KIND_CANCELLED:
            return _codec.encode_done_cancelled(id)
        return _done_err(id, kind == _KIND_RETRYABLE, message, max_frame, delay_ms)
    try:
        output = _output_bytes(value)
    except TypeError as e:
        return _done_err(id, False, f"batch handler's result: {e}", max_frame)
    try:
        return _codec.encode_done_ok(id, output, max_frame)
    except ProtocolError:
        return _too_big(id, output, max_frame)


# A per-event result that is an output (`_native_event`), beside `_failure`'s kinds.
_KIND_OK = 3


def _native_event(value: object, cancelled: bool) -> Tuple[int, Union[bytes, str], Optional[int]]:
    """The native loop's conversion of a batch handler's per-event result other than bytes or
    str: (_KIND_OK, output, None), or a failure as `_failure` reports it."""
    if isinstance(value, BaseException):
        return _failure(value, cancelled, returned=True)
    try:
        return _KIND_OK, _output_bytes(value), None
    except TypeError as e:
        return _KIND_FATAL, f"batch handler's result: {e}", None


def _fail_rest(exc: Exception, tasks: List[_codec.BatchTask], out: _Outbox, max_frame: int,
               w: _Watch) -> None:
    """Fails `tasks` (the unanswered rest of a batch) with the batch handler's exception, whose
    traceback is printed once."""
    if not tasks:
        return
    perf = time.perf_counter
    if isinstance(exc, Cancelled):
        for id, _, _ in tasks:
            out.add(_failed(exc, id, max_frame, w), perf(), False)
        return
    kind, message, delay_ms = _failure(exc, False, skip_frame=True)
    for id, _, _ in tasks:
        out.add(_done_err(id, kind == _KIND_RETRYABLE, message, max_frame, delay_ms), perf(),
                False)


def _frame_end(data: Buffer, pos: int, end: int, max_frame: int) -> int:
    """The end of the frame at `pos` if it is all in data[:end], else 0."""
    if end - pos < 4:
        return 0
    n = _codec.frame_len(data, pos, max_frame)
    return pos + 4 + n if pos + 4 + n <= end else 0


def _read_more(reader: _Reader, rest: _Data, pos: int, max_frame: int) -> _Data:
    """`rest[pos:]` (an incomplete frame, possibly empty) followed by at least one more byte.
    A frame bigger than a read is read straight into a buffer of its size."""
    rest = rest[pos:]
    if len(rest) >= 4:
        total = 4 + _codec.frame_len(rest, 0, max_frame)
        if total > READ_SIZE:
            buf = bytearray(total)
            buf[:len(rest)] = rest
            view = memoryview(buf)
            got = len(rest)
            while got < total:
                n = reader.recv_into(view[got:])
                if n == 0:
                    raise ProtocolError("connection closed in the middle of a frame")
                got += n
            return bytes(buf) if total <= 2 * READ_SIZE else buf
    data = reader.recv(READ_SIZE)
    if not data:
        if rest:
            raise ProtocolError("connection closed in the middle of a frame")
        raise Disconnected()
    return rest + data if rest else data


def _program_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name or "herd worker"


def _config() -> Tuple[str, str, int]:
    """(socket path, token, max frame) from the environment herd sets."""
    for var in (ENV_SOCKET, ENV_TOKEN):
        if var not in os.environ:
            raise _Startup(
                f"this program is a herd worker: run it under `herd run -- <cmd>` "
                f"({var} is not set)")
    path = os.environ[ENV_SOCKET]
    token = os.environ[ENV_TOKEN]
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise _Startup(f"environment variable {ENV_TOKEN} is invalid: not valid UTF-8") from None
    raw = os.environ.get(ENV_MAX_FRAME)
    max_frame = _codec.DEFAULT_MAX_FRAME
    if raw is not None:
        try:
            max_frame = int(raw.strip())
            if max_frame < 0:
                raise ValueError("negative")
        except ValueError as e:
            raise _Startup(
                f"environment variable {ENV_MAX_FRAME} is invalid: {raw!r}: {e}") from None
    return path, token, min(max_frame, _codec.MAX_FRAME_CEILING)


def worker_index() -> Optional[int]:
    """This worker's slot index in its pool (HERD_WORKER), or None outside herd."""
    try:
        return int(os.environ[ENV_WORKER])
    except (KeyError, ValueError):
        return None


def run(handler: Handler, *, pass_task: bool = False) -> NoReturn:
    """Runs `handler` as a herd worker until the supervisor sends the termination frame, then
    exits the process. Never returns.

    `handler(payload: bytes)` returns the output: bytes, bytearray, memoryview, or str (sent as
    UTF-8). A generator handler streams: each value it yields is sent at once as a chunk (a
    record line of its own), and what it returns (None: empty) is the final output. An
    exception gives the event a `failed` record (`Retryable` asks for a retry
    instead) and the worker keeps serving. With `pass_task=True` the handler gets a `Task`
    (`.payload`, `.attempt`, `.id`) instead of the payload.

    Exit codes: 0 after the termination frame, 1 when the supervisor goes away, 2 when not
    started by herd, the socket cannot be reached, or the protocol is broken."""
    code = _run(handler, pass_task)
    sys.exit(code)


def run_batch(handler: BatchHandler, max: int = 64, *, pass_task: bool = False) -> NoReturn:
    """Runs a batch handler as a herd worker (`run` for work that is cheaper per event in
    bulk): herd hands it up to `max` events per call when it runs with `--batch N`, and single
    events otherwise (then the handler gets a list of one). Never returns.

    `handler(payloads: list[bytes])` (a list of `Task` with `pass_task=True`) returns one
    result per event, in order: a list (or tuple), or an iterator (a generator) yielding them,
    whose each result is sent as soon as it is produced. A result is an output, as `run`'s
    handler returns it (bytes, bytearray, memoryview, str, or a dict or list as JSON), or an
    exception instance, which fails that event alone as raising it from `run`'s handler would
    (`Retryable`, with its `retry_after`, asks for a retry; `Fatal` or any other fails it;
    `Cancelled` for a cancelled task). Too few results fail the events left without one;
    results beyond the batch's size are ignored (an iterator is read once past the last event,
    so a generator's code after its last yield runs; one that yields more is closed). An
    exception raised by the handler (or its iterator) fails every event of the batch not
    answered yet, and the worker keeps serving; SystemExit and KeyboardInterrupt end the
    worker as in `run`.

    A generator is the iterator of per-event results here, not a stream of chunks. A Task's
    `chunk` still sends a partial result of its event, before that event's result is produced.

    `max` is 1 to 2**32-1 (1: single events only). Exit codes are `run`'s."""
    code = _run(handler, pass_task, _batch_max(max))
    sys.exit(code)


def _run(handler: Handler, pass_task: bool, batch: int = 0) -> int:
    try:
        path, token, max_frame = _config()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise _Startup(f"cannot connect to the supervisor at {path}: {e.strerror or e}") \
                from None
        try:
            if batch:
                serve_batch(sock, handler, token, max_frame, batch, pass_task)
            else:
                serve(sock, handler, token, max_frame, pass_task)
        finally:
            sock.close()
        return EXIT_SHUTDOWN
    except Disconnected:
        return _fail("the supervisor closed the connection; exiting", EXIT_DISCONNECTED)
    except ProtocolError as e:
        return _fail(f"protocol error: {e}", EXIT_ERROR)
    except _Startup as e:
        return _fail(str(e), EXIT_ERROR)
    except OSError as e:
        return _fail(f"protocol error: {e}", EXIT_ERROR)


def _fail(message: str, code: int) -> int:
    try:
        sys.stderr.write(f"{_program_name()}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code
