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
- A finished Done is held for about 1 ms at most: the supervisor times each attempt from the
  previous Done. The serve loop flushes once the oldest held reply is 1 ms old; while a handler
  runs, a flusher thread (started the first time a reply is held across a handler) does it. It
  needs the GIL for that, which a busy handler gives up within the interpreter's switch
  interval (5 ms by default), so under a CPU-bound Python handler the bound is that interval.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import threading
import time
import traceback
from types import GeneratorType as _Generator
from typing import Any, Callable, Generator, List, NoReturn, Optional, Tuple, Union

from . import _codec
from ._codec import Buffer, ProtocolError

#: What a handler may return (or yield, as a chunk): str is sent as UTF-8.
Output = Union[bytes, bytearray, memoryview, str]
#: A handler: the payload (or, with pass_task=True, the Task) in, the output out; a generator
#: handler streams.
Handler = Callable[[Any], Any]
# The read buffer: bytes, or a bytearray for a frame too big for one read.
_Data = Union[bytes, bytearray]

ENV_SOCKET = "HERD_SOCKET"
ENV_TOKEN = "HERD_TOKEN"
ENV_WORKER = "HERD_WORKER"
ENV_MAX_FRAME = "HERD_MAX_FRAME"

# Exit codes, as the Rust SDK's.
EXIT_SHUTDOWN = 0
EXIT_DISCONNECTED = 1
EXIT_ERROR = 2

# The protocol version this worker speaks: 2 until it answers Withdraw and Cancel.
HELLO_PROTOCOL = 2

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

_HEADER = struct.Struct("<I")
_unpack_header = _HEADER.unpack_from


class Retryable(Exception):
    """Raise this from a handler to ask herd to run the event again (up to its --retries, with
    backoff). Its message is shown in the record if the retries run out."""


class Fatal(Exception):
    """Raise this from a handler for a `failed` record carrying exactly this message, with no
    traceback on stderr. Any other exception also fails the event, without a retry."""


class Disconnected(Exception):
    """The supervisor closed or reset the connection."""


class _Startup(Exception):
    """The worker cannot start: not under herd, unusable environment, no socket."""


class Task:
    """One task, handed to a handler run with `run(handler, pass_task=True)`."""

    __slots__ = ("id", "attempt", "payload", "_out", "_max")

    def __init__(self, id: int, attempt: int, payload: bytes, out: _Outbox,
                 max_frame: int = _codec.DEFAULT_MAX_FRAME) -> None:
        #: The supervisor's identifier for this attempt; unique within one supervisor run.
        self.id = id
        #: Which attempt this is at the event: 1 the first time, 2 after one retry, and so on.
        self.attempt = attempt
        #: The event, exactly as herd received it (one input line without its newline).
        self.payload = payload
        self._out = out
        self._max = max_frame

    def chunk(self, data: Output) -> None:
        """Sends `data` (bytes-like, or str as UTF-8) as a partial result of this task, before
        the handler returns: herd writes it at once as a record line of its own. The same as
        yielding it from a generator handler. Raises Fatal if it does not fit in a frame."""
        _send_chunk(self._out, self.id, _output_bytes(data), self._max)

    def _write_raw(self, data: Buffer) -> None:
        """Fault injection only (examples/chaos.py): queues raw bytes after the replies already
        queued and writes everything out. Anything but whole valid frames breaks the protocol."""
        self._out.queue(bytes(data))
        self._out.flush()

    def _flush(self) -> None:
        """Fault injection only: writes out the replies of earlier tasks that are still queued,
        so a worker about to die loses only the task in hand."""
        self._out.flush()

    def __repr__(self) -> str:
        return f"Task(id={self.id}, attempt={self.attempt}, payload_len={len(self.payload)})"


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


def _output_bytes(value: object) -> bytes:
    """The handler's return value as bytes: bytes as is, str encoded as UTF-8, bytearray and
    memoryview copied. Anything else (None included) is a handler bug, reported as such."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        f"handler returned {type(value).__name__}, expected bytes, bytearray, memoryview or str")


def _send_chunk(out: _Outbox, id: int, data: bytes, max_frame: int) -> None:
    try:
        frame = _codec.encode_chunk(id, data, max_frame)
    except ProtocolError:
        raise Fatal(f"chunk of {len(data)} bytes exceeds the maximum frame of {max_frame} "
                    f"bytes") from None
    # Held like a quick reply: out within MAX_HOLD, one write for a burst of chunks.
    out.add(frame, time.perf_counter(), False)


def _stream(gen: Generator[Any, None, Any], id: int, out: _Outbox, max_frame: int) -> bytes:
    """Runs a generator handler: each yielded value is a chunk, the return value (None: empty)
    the final output. A chunk already sent stays sent if the generator then raises."""
    try:
        while True:
            try:
                value = next(gen)
            except StopIteration as stop:
                result = stop.value
                return b"" if result is None else _output_bytes(result)
            _send_chunk(out, id, _output_bytes(value), max_frame)
    finally:
        gen.close()


def _failure_message(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _truncate(s: str, max_bytes: int) -> str:
    """The longest prefix of `s` that encodes to at most `max_bytes` UTF-8 bytes."""
    return s.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def _done_err(id: int, retryable: bool, message: str, max_frame: int) -> bytes:
    try:
        return _codec.encode_done_err(id, retryable, message, max_frame)
    except ProtocolError:
        size = len(message.encode("utf-8"))
        return _codec.encode_done_err(id, False, (
            f"handler error message of {size} bytes exceeds the maximum frame of {max_frame} "
            f"bytes; it began: {_truncate(message, 200)}"), max_frame)


def _failed(exc: Exception, id: int, max_frame: int) -> bytes:
    """The Done frame for a handler that raised `exc`."""
    if isinstance(exc, Retryable):
        return _done_err(id, True, str(exc) or "Retryable", max_frame)
    if isinstance(exc, Fatal):
        return _done_err(id, False, str(exc) or "Fatal", max_frame)
    # Like a Rust panic: the traceback (from the handler down) for whoever reads the worker's
    # stderr, which herd logs.
    try:
        tb = exc.__traceback__
        traceback.print_exception(type(exc), exc, tb.tb_next if tb else None, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return _done_err(id, False, f"handler raised {_failure_message(exc)}", max_frame)


def _too_big(id: int, output: bytes, max_frame: int) -> bytes:
    return _done_err(id, False, (
        f"handler output of {len(output)} bytes exceeds the maximum frame of {max_frame} "
        f"bytes"), max_frame)


def serve(sock: socket.socket, handler: Handler, token: str,
          max_frame: int = _codec.DEFAULT_MAX_FRAME, pass_task: bool = False) -> None:
    """Runs the worker's side of the protocol on a connected socket: sends Hello, then answers
    every Task with exactly one Done until Shutdown, which returns normally.

    Raises Disconnected when the supervisor goes away, ProtocolError for a frame that cannot
    be read or written. The handler runs on the calling thread."""
    out = _Outbox(sock)
    try:
        try:
            out.queue(_codec.encode_hello(HELLO_PROTOCOL, os.getpid(), token, max_frame))
            out.flush()
            _serve_loop(_Reader(sock), out, handler, max_frame, pass_task)
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
            out.stop()
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
        raise Disconnected() from None


def _serve_loop(reader: _Reader, out: _Outbox, handler: Handler, max_frame: int,
                pass_task: bool) -> None:
    perf = time.perf_counter
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
                out.flush()
                return
            _, id, attempt, payload = msg
            t0 = perf()
            try:
                output = handler(Task(id, attempt, payload, out, max_frame) if pass_task
                                 else payload)
                if type(output) is not bytes:
                    if type(output) is str:
                        output = output.encode()
                    elif type(output) is _Generator:
                        output = _stream(output, id, out, max_frame)
                    else:
                        output = _output_bytes(output)
            except Exception as e:  # noqa: BLE001 - any handler failure is a `failed` record
                frame = _failed(e, id, max_frame)
            else:
                try:
                    frame = encode_ok(id, output, max_frame)
                except ProtocolError:
                    frame = _too_big(id, output, max_frame)
            now = perf()
            # Hold the reply while more tasks are buffered behind a quick handler (the outbox
            # bounds for how long); send it at once after a slow one or before a read.
            out.add(frame, now, not fend or now - t0 >= BATCH_ONLY_UNDER)


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


def _run(handler: Handler, pass_task: bool) -> int:
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
