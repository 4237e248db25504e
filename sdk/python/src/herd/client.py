"""The asyncio client: one control connection carrying one long-lived submission.

Each submit() is one event line of that submission; the daemon numbers lines in the order they
are sent (`seq`), so a pending table maps seq -> whoever awaits it. A writer task batches queued
events into `Events` frames (waiting on the socket when the daemon withholds credits), and a
reader task turns `Records` chunks (which may end mid-record) into resolved awaits. Anything
that ends the connection fails every pending await with ConnectionLost at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import struct
from dataclasses import dataclass
from typing import (Any, AsyncIterable, AsyncIterator, Callable, Deque, Dict, Generator, Iterable,
                    List, NamedTuple, Optional, Sequence, Set, Tuple, Union)

from . import _codec as codec
from ._codec import ProtocolError, varint
from .errors import _KINDS, ConnectionLost, EventError, HandshakeError, HerdError

CONTROL_VERSION = 2
# Largest frame the daemon sends, and largest we send before `Submit` (control.rs).
REPLY_MAX_FRAME = 8 * 1024 * 1024
REQUEST_MAX_FRAME = 4 * 1024
# Bytes of lines per `Events` frame (as `herd submit`); a longer line gets a frame of its own.
BATCH_BYTES = 64 * 1024
# Bytes an Events frame spends besides its lines, and per line besides the line (control.rs).
EVENTS_FRAME_OVERHEAD = 4 + 1 + 9
EVENT_LINE_OVERHEAD = 1 + 9

# Variant indices: their order is part of the protocol.
# (9 and 10 are Rate and SubmitRated, 12 and 13 CancelIn and SubmitNamed, which this client
# does not send; SubmitTimed carries a rate too, sent empty: no limit of the submission's own.)
HELLO, SUBMIT, EVENTS, END, SUBMIT_WITH, CANCEL, SUBMIT_TIMED, OPEN = 0, 1, 2, 3, 8, 11, 14, 15
# SubmitOption variants of Open (docs/CONTROL.md) that this client sends.
OPT_PRIORITY, OPT_MAX_AGE_MS, OPT_DEADLINE_MS, OPT_LINE_KEY, OPT_BATCH = 1, 4, 5, 7, 9
# Longest key (keys.rs MAX_KEY_LEN).
MAX_KEY_LEN = 1024
WELCOME, RECORDS, DONE, STATUS, OK, ERROR = 0, 1, 2, 3, 4, 5
_REPLY_VARIANTS = 6

_HEADER = struct.Struct("<I")
# `Some` tag and length of a line shorter than 251 bytes (bincode's one-byte varint).
_SHORT_LINE = [b"\x01" + bytes((n,)) for n in range(251)]


_OK_OUTPUT = b',"ok":true,"output":'
_ATTEMPTS = b',"attempts":'


def _result(line: bytes, comma: int) -> Tuple[Optional[bytes], Optional[EventError]]:
    """(output bytes, None) or (None, EventError) for one record line; `comma` is where its
    `seq` ends. A success is `{"seq":N,"ok":true,"output":X,"attempts":...}` with only numbers
    after X (record.rs), so X is sliced out without parsing the record."""
    if line.startswith(_OK_OUTPUT, comma):
        out = line[comma + len(_OK_OUTPUT):line.rfind(_ATTEMPTS)]
        if out[:1] == b'"':
            # A non-JSON output travels as a JSON string: give back its text. Without a
            # backslash it has no escapes: its text is what lies between the quotes (the
            # executor's base64 outputs, every one).
            if b"\\" not in out:
                return out[1:-1], None
            return json.loads(out).encode("utf-8"), None
        # A JSON output is embedded as the worker wrote it: give back exactly those bytes.
        return out, None
    rec = json.loads(line)
    err = rec.get("error") or {}
    kind = err.get("kind", "failed")
    return None, _KINDS.get(kind, EventError)(kind, err.get("message", ""), rec)


#: An event: bytes-like, or str (sent as UTF-8). One line: it must not contain a newline.
Event = Union[bytes, bytearray, memoryview, str]
# How map() and submit_stream() are told of a record: (output, None) or (None, error).
_Resolve = Callable[[Optional[bytes], Optional[BaseException]], None]
# Who awaits a record: submit()'s future, stored as is (no closure per event), or a _Resolve.
_Waiter = Union["asyncio.Future[bytes]", _Resolve]
# (max_age_ms, deadline_ms); 0 is the daemon's own limit.
_Limits = Tuple[int, int]


@dataclass(frozen=True)
class Batch:
    """Batches for a submission's events (docs/BATCHES.md): a worker that takes batches gets
    up to `max` of them in one handler call, a partial batch waiting at most `wait` seconds
    for more while its worker is busy (never while it is idle), and with `by_key` a batch holds
    one key's events only. Every event still gets its own record. `max` 1: no batches."""

    max: int
    wait: float = 0.005
    by_key: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not isinstance(self.max, int) \
                or not 1 <= self.max <= 0xFFFF_FFFF:
            raise ValueError(f"Batch.max must be an integer from 1 to 2**32-1, not {self.max!r}")
        if isinstance(self.wait, bool) or not isinstance(self.wait, (int, float)) \
                or not 0 <= self.wait < 2**53 / 1000:
            raise ValueError(f"Batch.wait must be a number of seconds >= 0, not {self.wait!r}")

    def _option(self) -> bytes:
        """`SubmitOption::Batch { max, wait_ms, by_key }` (docs/CONTROL.md)."""
        return (bytes((OPT_BATCH,)) + varint(self.max) + varint(round(self.wait * 1000))
                + bytes((self.by_key,)))


def _open_options(priority: int, limits: _Limits, keyed: bool,
                  batch: Optional[Batch]) -> bytes:
    """The body of `Open` for a submission with these settings (docs/CONTROL.md)."""
    options = []
    if priority:
        options.append(bytes((OPT_PRIORITY, priority & 0xFF)))
    if limits[0]:
        options.append(bytes((OPT_MAX_AGE_MS,)) + varint(limits[0]))
    if limits[1]:
        options.append(bytes((OPT_DEADLINE_MS,)) + varint(limits[1]))
    if keyed:
        # Each event goes as `<key>\t<event>` (keys.rs).
        options.append(bytes((OPT_LINE_KEY,)))
    if batch is not None:
        options.append(batch._option())
    return bytes((OPEN,)) + varint(len(options)) + b"".join(options)


class Chunk(NamedTuple):
    """A partial result of a streaming handler: chunk `index` (from 0) of attempt `attempt`,
    its output as bytes (like submit()'s). A chunk cannot be taken back: when an attempt fails
    and the event is retried, the next attempt's chunks follow from index 0; keep those whose
    `attempt` is the last one."""

    attempt: int
    index: int  # type: ignore[assignment]  # shadows tuple.index(), as it always has
    data: bytes

_OUTPUT = b',"output":'


def _chunk(line: bytes) -> Chunk:
    """A chunk line `{"seq":N,"chunk":K,"attempt":A,"output":X}` (record.rs) as a Chunk."""
    rec_end = line.index(_OUTPUT)
    head = json.loads(line[:rec_end] + b"}")
    out = line[rec_end + len(_OUTPUT):-1]
    if out[:1] == b'"':
        out = json.loads(out).encode("utf-8")
    return Chunk(head["attempt"], head["chunk"], out)


class Stream:
    """What submit_stream() returns: an async iterator of the event's Chunks as they arrive;
    it ends when the final record does, raising its EventError (or ConnectionLost) if it is
    one. Then `output` is the final output (bytes); `await stream.result()` drains the
    chunks and returns it."""

    def __init__(self) -> None:
        # Set once its event is enqueued: sends the Cancel.
        self._cancel: Optional[Callable[[], None]] = None
        self._cancel_asked = False
        self._chunks: Deque[Chunk] = collections.deque()
        self._wake = asyncio.Event()
        self._end: Optional[Tuple[Optional[bytes], Optional[BaseException]]] = None
        self.output: Optional[bytes] = None

    def cancel(self) -> None:
        """Cancels the event: queued, the daemon drops it; running, it stops its worker. The
        stream then ends with EventCancelled, unless the final record was already on its
        way (then that record stands)."""
        self._cancel_asked = True
        if self._cancel is not None:
            self._cancel()

    def _add(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self._wake.set()

    def _finish(self, out: Optional[bytes], err: Optional[BaseException]) -> None:
        self._end = (out, err)
        self._wake.set()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Chunk:
        while not self._chunks:
            if self._end is not None:
                out, err = self._end
                if err is not None:
                    raise err
                self.output = out
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._chunks.popleft()

    async def result(self) -> Optional[bytes]:
        """Skips the chunks not yet read; returns the final output or raises its error."""
        async for _ in self:
            pass
        return self.output


def _value(out: Optional[bytes], err: Optional[BaseException]) -> Union[bytes, EventError]:
    """What map() yields for a record: its output, or its EventError."""
    if isinstance(err, EventError):
        return err
    assert out is not None, "a record is an output or an error"
    return out


def _frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader, max_frame: int = REPLY_MAX_FRAME) -> bytes:
    head = await reader.readexactly(4)
    n: int = _HEADER.unpack(head)[0]
    if n > max_frame:
        raise ProtocolError(f"the daemon sent a frame of {n} bytes (at most {max_frame})")
    return await reader.readexactly(n)


def connect(path: str, *, timeout: float = 30.0, max_age: Optional[float] = None,
            deadline: Optional[float] = None, batch: Optional[Batch] = None) -> _Connecting:
    """Connects to the daemon's control socket at `path`. Use as `async with connect(p) as
    pool`, or `pool = await connect(p)` (then `await pool.close()`).

    `max_age` and `deadline` (seconds) replace the daemon's --max-age and --deadline for the
    events of this pool: an event that waited longer than `max_age` to start raises
    EventExpired, one without an answer `deadline` after it was accepted (retries
    included) raises EventDeadline. `batch`: the Batch of the pool's events unless a
    submission gives its own (default: the daemon's --batch)."""
    return _Connecting(path, timeout, _limits_ms(max_age, deadline), _check_batch(batch))


def _check_batch(batch: Optional[Batch]) -> Optional[Batch]:
    if batch is not None and not isinstance(batch, Batch):
        raise TypeError(f"batch must be a herd.Batch or None, not {batch!r}")
    return batch


def _limits_ms(max_age: Optional[float], deadline: Optional[float]) -> _Limits:
    """(max_age_ms, deadline_ms) for SubmitTimed: 0 is the daemon's own limit."""
    def ms(name: str, s: Optional[float]) -> int:
        if s is None:
            return 0
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 2**53:
            raise ValueError(f"{name} must be a positive number of seconds, not {s!r}")
        return max(1, round(s * 1000))
    return (ms("max_age", max_age), ms("deadline", deadline))


class _Connecting:
    """What connect() returns: awaitable (a Pool), or an async context manager."""

    def __init__(self, path: str, timeout: float, limits: _Limits = (0, 0),
                 batch: Optional[Batch] = None) -> None:
        self._path = path
        self._timeout = timeout
        self._limits = limits
        self._batch = batch
        self._pool: Optional[Pool] = None

    def __await__(self) -> Generator[Any, None, Pool]:
        return Pool._open(self._path, self._timeout, 0, self._limits,
                          batch=self._batch).__await__()

    async def __aenter__(self) -> Pool:
        self._pool = await Pool._open(self._path, self._timeout, 0, self._limits,
                                      batch=self._batch)
        return self._pool

    async def __aexit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                        tb: Any) -> None:
        assert self._pool is not None, "__aexit__ without __aenter__"
        if exc_type is None:
            await self._pool.close()
        else:
            self._pool.abort()


def _check_priority(priority: int) -> None:
    if not isinstance(priority, int) or not -128 <= priority <= 127:
        raise ValueError(f"priority must be an integer from -128 to 127, not {priority!r}")


class Pool:
    """A submission to a running daemon. Any number of coroutines may call submit() at once.

    A `priority` other than 0, a key, or a `batch` other than the pool's goes on a submission
    of its own (another connection, opened on first use, one per combination), so events at
    the pool's defaults cost nothing extra."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int,
                 max_frame: int, max_line: int) -> None:
        self.pid = pid
        # (path, timeout), to open the connection of another priority.
        self._opened: Tuple[str, float] = ("", 0.0)
        self._limits: _Limits = (0, 0)  # of every connection
        # The Batch of this connection's submission: submissions without one of their own.
        self._batch: Optional[Batch] = None
        # (priority, keyed, batch) -> task opening (then holding) that submission's Pool.
        self._lanes: Dict[Tuple[int, bool, Optional[Batch]], asyncio.Future[Pool]] = {}
        self._reader = reader
        self._writer = writer
        self._max_line = max_line
        self._budget = min(BATCH_BYTES, max_frame)
        self._next = 0
        # seq -> submit()'s future, or map()'s resolve(output, error), for every event sent or
        # queued without a record yet.
        self._pending: Dict[int, _Waiter] = {}
        # seq -> the Stream of a submit_stream() event, until its final record.
        self._streams: Dict[int, Stream] = {}
        # Tasks sending streamed events of other priorities.
        self._relays: Set[asyncio.Task[None]] = set()
        self._outq: Deque[bytes] = collections.deque()
        self._sent = 0  # events written to the socket: seqs below it may be cancelled
        self._cancels: List[int] = []  # seqs to cancel, in the order asked
        self._wake_writer = asyncio.Event()
        self._writer_idle = False  # the writer waits on _wake_writer: set it for new events
        self._closing = False
        self._error: Optional[ConnectionLost] = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._partial = b""
        self._reader_task = asyncio.ensure_future(self._read_loop())
        self._writer_task = asyncio.ensure_future(self._write_loop())

    @classmethod
    async def _open(cls, path: str, timeout: float, priority: int = 0,
                    limits: _Limits = (0, 0), keyed: bool = False,
                    batch: Optional[Batch] = None) -> Pool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=1 << 20), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectionLost(
                f"no herd daemon at {path} (is `herd serve` running?): {e}") from e
        try:
            # Over its --max-connections the daemon accepts us only when a connection closes.
            pool = await asyncio.wait_for(
                cls._handshake(reader, writer, priority, limits, keyed, batch), timeout)
        except asyncio.TimeoutError as e:
            writer.close()
            raise HandshakeError(
                f"the daemon did not take the connection within {timeout}s: its control "
                "connections stayed in use (--max-connections)") from e
        except BaseException:
            writer.close()
            raise
        pool._opened = (path, timeout)
        pool._limits = limits
        pool._batch = batch
        return pool

    @classmethod
    async def _handshake(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         priority: int = 0, limits: _Limits = (0, 0),
                         keyed: bool = False, batch: Optional[Batch] = None) -> Pool:
        writer.write(_frame(bytes((HELLO,)) + varint(CONTROL_VERSION)))
        try:
            await writer.drain()
        except OSError:
            pass  # a daemon that refuses us may close first: its reason may be readable
        try:
            body = await _read_frame(reader)
        except (asyncio.IncompleteReadError, OSError) as e:
            raise HandshakeError(
                "the daemon closed the connection during the handshake") from e
        n = len(body)
        v, p = codec._variant(body, 0, n, "Reply", _REPLY_VARIANTS)
        if v == ERROR:
            text, _ = codec._text(body, p, n, "Error")
            raise HandshakeError(f"the daemon refused the connection: {text}")
        if v != WELCOME:
            raise HandshakeError(f"unexpected reply {v} to Hello")
        protocol, p = codec._uint(body, p, n, 4, "Welcome.protocol")
        if protocol != CONTROL_VERSION:
            raise HandshakeError(
                f"the daemon speaks control protocol {protocol} and this client "
                f"{CONTROL_VERSION}: use a herd package that matches the daemon")
        pid, p = codec._uint(body, p, n, 4, "Welcome.pid")
        max_frame, p = codec._uint(body, p, n, 4, "Welcome.max_frame")
        max_line, p = codec._uint(body, p, n, 4, "Welcome.max_line")
        # Unordered: the client matches records to events by seq itself. Plain Submit
        # without a priority, so that daemons older than SubmitWith work too.
        if keyed or batch is not None:
            # Open, only for keyed or batched events, so that daemons older than Open work
            # for the rest.
            writer.write(_frame(_open_options(priority, limits, keyed, batch)))
        elif any(limits):
            # Only with limits to give, so that daemons older than SubmitTimed work too.
            # max_age_ms, deadline_ms, then rate: an empty string (none).
            writer.write(_frame(bytes((SUBMIT_TIMED, 0, priority & 0xFF, 0))
                                + varint(limits[0]) + varint(limits[1]) + varint(0)))
        elif priority:
            writer.write(_frame(bytes((SUBMIT_WITH, 0, priority & 0xFF, 0))))
        else:
            writer.write(_frame(bytes((SUBMIT, 0))))
        return cls(reader, writer, pid, max_frame, max_line)

    async def _lane(self, priority: int, keyed: bool = False,
                    batch: Optional[Batch] = None) -> Pool:
        """The Pool whose submission runs at `priority`, keyed or not, with `batch` (opened on
        first use)."""
        return await asyncio.shield(self._lane_task(priority, keyed, batch))

    def _lane_task(self, priority: int, keyed: bool = False,
                   batch: Optional[Batch] = None) -> asyncio.Future[Pool]:
        """The task opening (then holding) the Pool of `priority`, keyed or not, with `batch`,
        started on first use."""
        _check_priority(priority)
        if self._error is not None:
            raise self._error
        if self._closing:
            raise HerdError("this pool is closed")
        task = self._lanes.get((priority, keyed, batch))
        if task is None:
            path, timeout = self._opened
            task = asyncio.ensure_future(
                Pool._open(path, timeout, priority, self._limits, keyed, batch))
            self._lanes[(priority, keyed, batch)] = task
        return task

    def _batch_of(self, batch: Optional[Batch]) -> Optional[Batch]:
        """The Batch a submission asking for `batch` gets: its own, else the pool's."""
        return self._batch if batch is None else _check_batch(batch)

    # -----------------------------------------------------------------------------------------
    # Submitting.

    def _admit(self, event: Event) -> bytes:
        """`event` as bytes, or raises why this pool takes no more events."""
        if self._error is not None:
            raise self._error
        if self._closing:
            raise HerdError("this pool is closed")
        if isinstance(event, str):
            return event.encode("utf-8")
        return event if isinstance(event, bytes) else bytes(event)

    def _enqueue(self, event: Event, waiter: _Waiter) -> int:
        data = self._admit(event)
        seq = self._next
        self._next = seq + 1
        self._pending[seq] = waiter
        self._outq.append(data)
        if self._writer_idle:
            self._writer_idle = False
            self._wake_writer.set()
        return seq

    def _enqueue_many(self, events: Sequence[bytes], waiters: Iterable[_Waiter]) -> int:
        """Queues `events` (bytes) in one go, each event's record going to its waiter (in
        order); returns the first one's seq, the others' following it."""
        if self._error is not None:
            raise self._error
        if self._closing:
            raise HerdError("this pool is closed")
        first = self._next
        self._next = first + len(events)
        self._pending.update(zip(range(first, self._next), waiters))
        self._outq.extend(events)
        if self._writer_idle:
            self._writer_idle = False
            self._wake_writer.set()
        return first

    def _keyed(self, key: Union[str, bytes], event: Event) -> bytes:
        """`<key>\\t<event>`, the line a keyed submission takes (docs/KEYS.md)."""
        k = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(k) > MAX_KEY_LEN or b"\t" in k or b"\n" in k:
            raise ValueError(
                f"a key is at most {MAX_KEY_LEN} bytes without a tab or newline: {key!r}")
        return k + b"\t" + self._admit(event)

    async def submit(self, event: Event, *, priority: int = 0,
                     key: Union[str, bytes, None] = None,
                     batch: Optional[Batch] = None) -> bytes:
        """Runs one event (bytes, or str sent as UTF-8); returns its output as bytes, or
        raises the EventError subclass of its record's kind, or ConnectionLost. `priority`:
        -128 to 127, higher runs first (the README's Priorities). `key`: the event's key, for
        the daemon's per-key limits (--max-inflight-per-key, --key-rate: docs/KEYS.md); keyed
        events go on a submission of their own. `batch`: a Batch, to run the event in a batch
        with others submitted with the same Batch (docs/BATCHES.md); default: the pool's."""
        if key is not None:
            line = self._keyed(key, event)
            lane = await self._lane(priority, True, self._batch_of(batch))
            return await lane.submit(line)
        if priority or (batch is not None and batch != self._batch):
            return await (await self._lane(priority, False, self._batch_of(batch))).submit(event)
        # _enqueue inlined: this is the path of every event of a run_in_executor-style program.
        if type(event) is bytes and self._error is None and not self._closing:
            data = event
        elif type(event) is str and self._error is None and not self._closing:
            data = event.encode("utf-8")
        else:
            data = self._admit(event)
        fut: asyncio.Future[bytes] = self._loop.create_future()
        seq = self._next
        self._next = seq + 1
        self._pending[seq] = fut
        self._outq.append(data)
        if self._writer_idle:
            self._writer_idle = False
            self._wake_writer.set()
        try:
            return await fut
        except asyncio.CancelledError:
            # The awaiting coroutine was cancelled: so is the event (its record is dropped).
            self._cancel(seq)
            raise

    def submit_stream(self, event: Event, *, priority: int = 0,
                      key: Union[str, bytes, None] = None,
                      batch: Optional[Batch] = None) -> Stream:
        """Runs one event whose handler streams partial results: returns a Stream, an async
        iterator of its Chunks as they arrive, which ends with the final record (raising its
        EventError if it is one); then `stream.output` is the final output. `priority`, `key`
        and `batch` as for submit().

            stream = pool.submit_stream(b'{"op":"stream","n":3}')
            async for chunk in stream:      # Chunk(attempt, index, data)
                ...
            out = stream.output
        """
        stream = Stream()
        if key is not None:
            line = self._keyed(key, event)
            self._stream_later(stream, line,
                               self._lane_task(priority, True, self._batch_of(batch)))
        elif priority or (batch is not None and batch != self._batch):
            self._stream_later(stream, event,
                               self._lane_task(priority, False, self._batch_of(batch)))
        else:
            self._stream_into(stream, event)
        return stream

    def _stream_into(self, stream: Stream, event: Event) -> None:
        """Sends `event` on this connection, its chunks and final record going to `stream`."""
        streams = self._streams

        def resolve(out: Optional[bytes], err: Optional[BaseException]) -> None:
            streams.pop(seq, None)
            stream._finish(out, err)

        seq = self._enqueue(event, resolve)
        streams[seq] = stream
        stream._cancel = lambda: self._cancel(seq)
        if stream._cancel_asked:
            self._cancel(seq)

    def _stream_later(self, stream: Stream, event: Event, lane: asyncio.Future[Pool]) -> None:
        """_stream_into on another priority's connection once it is open (the `lane` task):
        a task the pool holds, so that close() waits for the event to be sent."""

        async def send() -> None:
            try:
                (await asyncio.shield(lane))._stream_into(stream, event)
            except HerdError as e:
                stream._finish(None, e)
            except asyncio.CancelledError:
                stream._finish(None, ConnectionLost("the client closed the connection"))
                raise

        task = self._loop.create_task(send())
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    async def map(self, events: Union[Iterable[Event], AsyncIterable[Event]], *,
                  ordered: bool = False, window: int = 1024, return_exceptions: bool = False,
                  priority: int = 0, batch: Optional[Batch] = None,
                  ) -> AsyncIterator[Tuple[int, Union[bytes, EventError]]]:
        """Runs every event of `events` (an iterable or async iterable), with at most `window`
        of them sent and not yet yielded, and yields (index, output) as they complete, or in
        input order with `ordered=True`. An event's EventError is raised, or yielded in place
        of its output with `return_exceptions=True`; ConnectionLost is always raised.
        `priority` and `batch` as for submit(); with a batch, `window` should hold a few
        batches for every worker, or batches stay small."""
        if window < 1:
            raise ValueError("window must be at least 1")
        if priority or (batch is not None and batch != self._batch):
            lane = await self._lane(priority, False, self._batch_of(batch))
            async for item in lane.map(events, ordered=ordered, window=window,
                                       return_exceptions=return_exceptions):
                yield item
            return
        loop = asyncio.get_running_loop()
        results: Deque[Tuple[int, Optional[bytes], Optional[BaseException]]] = \
            collections.deque()
        wake = asyncio.Event()
        room = asyncio.Semaphore(window)
        # How many events the feeder sent once it is done, and what stopped it, if anything.
        fed_n: Optional[int] = None
        fed_error: Optional[BaseException] = None

        def resolver(i: int) -> _Resolve:
            def resolve(out: Optional[bytes], err: Optional[BaseException]) -> None:
                results.append((i, out, err))
                wake.set()
            return resolve

        async def feed() -> None:
            nonlocal fed_n, fed_error
            i = 0
            try:
                if isinstance(events, AsyncIterable):
                    it = events.__aiter__()
                    while True:
                        await room.acquire()
                        try:
                            ev = await it.__anext__()
                        except StopAsyncIteration:
                            break
                        self._enqueue(ev, resolver(i))
                        i += 1
                else:
                    for ev in events:
                        await room.acquire()
                        self._enqueue(ev, resolver(i))
                        i += 1
            except BaseException as e:  # handed to the consumer, which re-raises it
                fed_error = e
            fed_n = i
            wake.set()

        feeder = loop.create_task(feed())
        held: Dict[int, Union[bytes, EventError]] = {}
        want = yielded = 0
        try:
            while True:
                if fed_error is not None:
                    raise fed_error
                if not results:
                    if fed_n is not None and yielded == fed_n:
                        return
                    wake.clear()
                    await wake.wait()
                    continue
                i, out, err = results.popleft()
                if err is not None and (isinstance(err, ConnectionLost)
                                        or not return_exceptions):
                    raise err
                value = _value(out, err)
                if not ordered:
                    yielded += 1
                    room.release()
                    yield i, value
                    continue
                held[i] = value
                while want in held:
                    value = held.pop(want)
                    yielded += 1
                    want += 1
                    room.release()
                    yield want - 1, value
        finally:
            feeder.cancel()

    # -----------------------------------------------------------------------------------------
    # The two tasks.

    def _cancel(self, seq: int) -> None:
        """Sends `Cancel { seq }` once the event itself is out, if its record is still owed."""
        if self._error is not None or seq not in self._pending:
            return
        self._cancels.append(seq)
        if self._writer_idle:
            self._writer_idle = False
            self._wake_writer.set()

    def _ready_cancels(self) -> bytes:
        """Frames for the cancels whose events are written (a cancel never overtakes its
        event)."""
        ready = [s for s in self._cancels if s < self._sent]
        if not ready:
            return b""
        self._cancels = [s for s in self._cancels if s >= self._sent]
        return b"".join(_frame(bytes((CANCEL,)) + varint(s)) for s in ready)

    def _encode_batch(self) -> bytes:
        """Frames for queued events, up to about BATCH_BYTES (at least one event)."""
        q = self._outq
        parts: List[bytes] = []
        frames: List[bytes] = []
        size = EVENTS_FRAME_OVERHEAD
        count = 0
        taken = 0
        while q and taken < 4 * BATCH_BYTES:
            ev = q.popleft()
            self._sent += 1
            n = len(ev)
            if n > self._max_line:
                piece, cost = b"\x00", 1  # None: the daemon records it as `rejected`
            elif n < 251:
                piece, cost = _SHORT_LINE[n], n + EVENT_LINE_OVERHEAD
            else:
                piece, cost = b"\x01" + varint(n), n + EVENT_LINE_OVERHEAD
            if count and size + cost > self._budget:
                frames.append(self._events_frame(count, parts))
                parts, size, count = [], EVENTS_FRAME_OVERHEAD, 0
            parts.append(piece)
            if cost > 1:
                parts.append(ev)
            size += cost
            taken += cost
            count += 1
        if count:
            frames.append(self._events_frame(count, parts))
        return b"".join(frames)

    @staticmethod
    def _events_frame(count: int, parts: List[bytes]) -> bytes:
        body = b"".join([bytes((EVENTS,)), varint(count)] + parts)
        return _frame(body)

    async def _write_loop(self) -> None:
        ended = False
        try:
            while True:
                if self._outq:
                    self._writer.write(self._encode_batch())
                elif self._closing and not ended:
                    self._writer.write(_frame(bytes((END,))))
                    ended = True
                elif not self._cancels:
                    # Nothing to send (after End, only cancels may come): wait to be woken.
                    self._wake_writer.clear()
                    self._writer_idle = True
                    await self._wake_writer.wait()
                    continue
                cancels = self._ready_cancels()
                if cancels:
                    self._writer.write(cancels)
                # Waits here while the daemon withholds credits: back-pressure.
                await self._writer.drain()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure ends the connection
            self._fail(ConnectionLost(f"cannot send to the daemon: {e}"))

    async def _read_loop(self) -> None:
        try:
            while True:
                body = await _read_frame(self._reader)
                n = len(body)
                v, p = codec._variant(body, 0, n, "Reply", _REPLY_VARIANTS)
                if v == RECORDS:
                    data, p = codec._bytes(body, p, n, "Records")
                    self._records(data)
                elif v == DONE:
                    records, p = codec._uint(body, p, n, 8, "Done.records")
                    if self._pending:
                        raise ProtocolError(
                            f"Done after {records} records with {len(self._pending)} pending")
                    if not self._done.done():
                        self._done.set_result(records)
                    return
                elif v == ERROR:
                    text, _ = codec._text(body, p, n, "Error")
                    raise ConnectionLost(f"the daemon ended the submission: {text}")
                else:
                    raise ProtocolError(f"unexpected reply variant {v} in a submission")
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, OSError) as e:
            self._fail(ConnectionLost(
                f"the herd daemon (pid {self.pid}) went away (stopped or died) with "
                f"{len(self._pending)} events pending: {type(e).__name__}"))
        except ConnectionLost as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001 - a broken stream ends the connection
            self._fail(ConnectionLost(f"bad data from the daemon: {e}"))

    def _records(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        pending = self._pending
        for line in lines:
            if not line:
                continue
            # The seq comes first in every record: `{"seq":N,...`.
            comma = line.find(b",", 7)
            if line[comma + 2] == 99:  # `{"seq":N,"chunk":...`: a partial result, not final
                stream = self._streams.get(int(line[7:comma]))
                if stream is not None:
                    stream._add(_chunk(line))
                continue
            waiter = pending.pop(int(line[7:comma]), None)
            if waiter is None:
                continue
            out, err = _result(line, comma)
            if isinstance(waiter, asyncio.Future):
                # submit()'s own future, stored as is: no closure per event.
                if not waiter.done():
                    if err is None:
                        waiter.set_result(out)  # type: ignore[arg-type]  # out is bytes
                    else:
                        waiter.set_exception(err)
            else:
                waiter(out, err)

    def _fail(self, exc: ConnectionLost) -> None:
        """Ends the connection: every pending await gets `exc`, now."""
        if self._error is None:
            self._error = exc
        pending, self._pending = self._pending, {}
        self._outq.clear()
        for waiter in pending.values():
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(exc)
            else:
                waiter(None, exc)
        if not self._done.done():
            self._done.set_exception(exc)
            self._done.exception()  # retrieved: close() re-raises it when asked
        self._writer.close()
        for t in (self._reader_task, self._writer_task):
            if t is not asyncio.current_task():
                t.cancel()

    # -----------------------------------------------------------------------------------------
    # Closing.

    @property
    def pending(self) -> int:
        """Events sent or queued whose record has not arrived."""
        return len(self._pending)

    async def close(self) -> None:
        """Waits for every pending event's record, then ends the submission. Raises
        ConnectionLost if the daemon went away first."""
        if not self._closing:
            self._closing = True
            self._wake_writer.set()
        try:
            # The other priorities' submissions end with this one, once every streamed event
            # meant for them is sent.
            await asyncio.gather(*self._relays, return_exceptions=True)
            lanes = await asyncio.gather(*self._lanes.values(), return_exceptions=True)
            await asyncio.gather(*(p.close() for p in lanes if isinstance(p, Pool)))
            await self._done
        finally:
            self._writer.close()
            for t in (self._reader_task, self._writer_task):
                t.cancel()
            await asyncio.gather(self._reader_task, self._writer_task, return_exceptions=True)

    def abort(self) -> None:
        """Drops the connection now; pending awaits get ConnectionLost."""
        self._closing = True
        for relay in list(self._relays):
            relay.cancel()
        for lane in self._lanes.values():
            if lane.done() and lane.exception() is None:
                lane.result().abort()
            else:
                lane.cancel()
        self._fail(ConnectionLost("the client closed the connection"))
