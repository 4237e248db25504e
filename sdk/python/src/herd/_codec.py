"""herd's wire protocol, version 3: frames and the bincode 2 bodies of every message.

A frame is a 4-byte little-endian body length followed by the body, the bincode 2 "standard"
encoding of one message (docs/PROTOCOL.md):

- unsigned integers are varints: 0..=250 in one byte; else a marker byte, 251 (u16), 252 (u32)
  or 253 (u64), followed by the value in that many little-endian bytes. The encoder always uses
  the smallest form; the decoder, like herd's, also accepts a wider one as long as the marker
  is not wider than the field (a u32 field refuses 253);
- an enum is its variant index (a varint u32), then the variant's fields in order;
- bytes and strings are a varint length and the raw bytes (strings must be UTF-8);
- a bool is one byte, 0 or 1.

Messages are plain tuples, tagged by their variant name:

    herd -> worker:  ("Task", id, attempt, payload)   ("Shutdown",)
                     ("Withdraw", id)  ("Cancel", id)  (version 3)
                     ("Batch", [(id, attempt, payload), ...])  (version 3, optional)
    worker -> herd:  ("Hello", protocol, pid, token)  ("Heartbeat",)
                     ("Done", id, ("Ok", output))     ("Done", id, ("Err", retryable, message))
                     ("Done", id, ("RetryAfter", message, delay_ms))  ("Done", id, ("Cancelled",))
                     ("Chunk", id, data)  (version 2: a partial result, before the task's Done)
                     ("Withdrawn", id)  ("Kept", id)  (version 3: answers to a Withdraw)
                     ("Batching", max)  (version 3, optional: right after Hello)

A worker only needs the `encode_hello`, `encode_done_*`, `encode_chunk`, `encode_withdrawn`,
`encode_kept`, `encode_batching` (a batch handler) and `decode_to_worker`;
the other half exists so tests (and anyone writing a supervisor) can speak the other side.
"""

from __future__ import annotations

import struct
from typing import List, Literal, Optional, Sequence, Tuple, TypeVar, Union

__all__ = [
    "PROTOCOL_VERSION", "HEADER_LEN", "DEFAULT_MAX_FRAME", "MAX_FRAME_CEILING", "ProtocolError",
    "encode_hello", "encode_done_ok", "encode_done_err", "encode_done_retry_after",
    "encode_done_cancelled", "encode_heartbeat", "encode_chunk", "encode_withdrawn",
    "encode_kept", "encode_batching", "encode_task", "encode_shutdown", "encode_withdraw",
    "encode_cancel", "encode_batch",
    "decode_to_worker", "decode_to_batching_worker", "decode_from_worker", "frame_len", "varint",
]

# Version 2 added the Chunk frame; version 3 Withdraw/Withdrawn/Kept, Cancel, the RetryAfter
# and Cancelled outcomes, and the optional Batching/Batch. Every older frame is unchanged.
PROTOCOL_VERSION = 3
HEADER_LEN = 4
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
# herd's hard upper bound for any frame limit (and bincode's allocation limit).
MAX_FRAME_CEILING = 64 * 1024 * 1024

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = _U32

# Variant indices, pinned by herd-proto's enums (FromWorker, Outcome, ToWorker).
HELLO, DONE, HEARTBEAT, CHUNK, WITHDRAWN, KEPT, BATCHING = 0, 1, 2, 3, 4, 5, 6
OK, ERR, RETRY_AFTER, CANCELLED = 0, 1, 2, 3
TASK, SHUTDOWN, WITHDRAW, CANCEL, BATCH = 0, 1, 2, 3, 4

_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class ProtocolError(Exception):
    """A frame that is not one valid message, or one that cannot be encoded."""


#: What a frame is read from or written from.
Buffer = Union[bytes, bytearray, memoryview]

# The decoded messages (see the module's docstring).
TaskMsg = Tuple[Literal["Task"], int, int, bytes]
ShutdownMsg = Tuple[Literal["Shutdown"]]
WithdrawMsg = Tuple[Literal["Withdraw"], int]
CancelMsg = Tuple[Literal["Cancel"], int]
#: One task of a Batch: (id, attempt, payload), the fields of a Task.
BatchTask = Tuple[int, int, bytes]
BatchMsg = Tuple[Literal["Batch"], List[BatchTask]]
ToWorker = Union[TaskMsg, ShutdownMsg, WithdrawMsg, CancelMsg]
#: What a worker that sent Batching may be sent.
ToBatchingWorker = Union[ToWorker, BatchMsg]
HelloMsg = Tuple[Literal["Hello"], int, int, str]
Outcome = Union[Tuple[Literal["Ok"], bytes], Tuple[Literal["Err"], bool, str],
                Tuple[Literal["RetryAfter"], str, int], Tuple[Literal["Cancelled"]]]
DoneMsg = Tuple[Literal["Done"], int, Outcome]
HeartbeatMsg = Tuple[Literal["Heartbeat"]]
ChunkMsg = Tuple[Literal["Chunk"], int, bytes]
WithdrawnMsg = Tuple[Literal["Withdrawn"], int]
KeptMsg = Tuple[Literal["Kept"], int]
BatchingMsg = Tuple[Literal["Batching"], int]
FromWorker = Union[HelloMsg, DoneMsg, HeartbeatMsg, ChunkMsg, WithdrawnMsg, KeptMsg, BatchingMsg]
_M = TypeVar("_M", bound=Tuple[object, ...])


# ---------------------------------------------------------------------------------------------
# Encoding.

def varint(n: int) -> bytes:
    """The bincode 2 varint encoding of the unsigned integer `n` (smallest form)."""
    if n < 251:
        if n < 0:
            raise ProtocolError(f"cannot encode negative integer {n}")
        return bytes((n,))
    if n < 0x1_0000:
        return b"\xfb" + _U16.pack(n)
    if n <= _U32_MAX:
        return b"\xfc" + _U32.pack(n)
    if n <= _U64_MAX:
        return b"\xfd" + _U64.pack(n)
    raise ProtocolError(f"integer {n} does not fit in 64 bits")


def _u32(n: int) -> bytes:
    if n > _U32_MAX:
        raise ProtocolError(f"integer {n} does not fit in 32 bits")
    return varint(n)


def _frame(body: bytes, max_frame: int) -> bytes:
    if len(body) > max_frame:
        raise ProtocolError(
            f"frame of {len(body)} bytes exceeds the maximum of {max_frame} bytes")
    return _HEADER.pack(len(body)) + body


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return varint(len(b)) + b


def encode_hello(protocol: int, pid: int, token: str, max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Hello{protocol, pid, token}: the worker's first frame."""
    return _frame(b"\x00" + _u32(protocol) + _u32(pid) + _str(token), max_frame)


# Done{id, Ok(output)} headers for an output under 251 bytes, by the form of the id: the tiny-
# event path, packed in one call (frame length, variant, id, Ok, output length).
_DONE_ID8 = struct.Struct("<IBBBB")
_DONE_ID16 = struct.Struct("<IBBHBB")
_DONE_ID32 = struct.Struct("<IBBIBB")


def encode_done_ok(id: int, output: Buffer, max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Done{id, Ok(output)}; `output` is bytes-like. One copy of `output`."""
    n = len(output)
    if n < 251 and n + 8 <= max_frame and type(output) is bytes:
        if 0 <= id < 251:
            return _DONE_ID8.pack(n + 4, 1, id, 0, n) + output
        if 251 <= id < 0x1_0000:
            return _DONE_ID16.pack(n + 6, 1, 251, id, 0, n) + output
        if 0x1_0000 <= id <= _U32_MAX:
            return _DONE_ID32.pack(n + 8, 1, 252, id, 0, n) + output
    head = b"\x01" + varint(id) + b"\x00" + varint(n)
    size = len(head) + n
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes exceeds the maximum of {max_frame} bytes")
    return b"".join((_HEADER.pack(size), head, output))


def encode_done_err(id: int, retryable: bool, message: str,
                    max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Done{id, Err{retryable, message}}."""
    return _frame(b"\x01" + varint(id) + (b"\x01\x01" if retryable else b"\x01\x00")
                  + _str(message), max_frame)


def encode_done_retry_after(id: int, message: str, delay_ms: int,
                            max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Done{id, RetryAfter{message, delay_ms}} (version 3): retry no sooner than
    `delay_ms` milliseconds from now."""
    return _frame(b"\x01" + varint(id) + b"\x02" + _str(message) + varint(delay_ms), max_frame)


def encode_done_cancelled(id: int) -> bytes:
    """Frame for Done{id, Cancelled} (version 3): the task ended because it was cancelled."""
    return _frame(b"\x01" + varint(id) + b"\x03", MAX_FRAME_CEILING)


def encode_withdrawn(id: int) -> bytes:
    """Frame for Withdrawn{id} (version 3): the queued task was dropped, herd may run it
    elsewhere."""
    return _frame(b"\x04" + varint(id), MAX_FRAME_CEILING)


def encode_kept(id: int) -> bytes:
    """Frame for Kept{id} (version 3): the task had already started (or finished) here."""
    return _frame(b"\x05" + varint(id), MAX_FRAME_CEILING)


def encode_batching(max: int) -> bytes:
    """Frame for Batching{max} (version 3, optional): sent right after Hello by a worker whose
    handler takes up to `max` tasks per call."""
    return _frame(bytes((BATCHING,)) + _u32(max), MAX_FRAME_CEILING)


def encode_heartbeat() -> bytes:
    """Frame for Heartbeat."""
    return b"\x01\x00\x00\x00\x02"


def encode_chunk(id: int, data: Buffer, max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Chunk{id, data} (version 2): a partial result of task `id`; `data` is
    bytes-like."""
    head = b"\x03" + varint(id) + varint(len(data))
    size = len(head) + len(data)
    if size > max_frame:
        raise ProtocolError(f"frame of {size} bytes exceeds the maximum of {max_frame} bytes")
    return b"".join((_HEADER.pack(size), head, data))


def encode_task(id: int, attempt: int, payload: Buffer,
                max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Task{id, attempt, payload} (the supervisor's side)."""
    return _frame(b"\x00" + varint(id) + _u32(attempt) + varint(len(payload)) + bytes(payload),
                  max_frame)


def encode_shutdown() -> bytes:
    """Frame for Shutdown, the termination frame (the supervisor's side)."""
    return b"\x01\x00\x00\x00\x01"


def encode_withdraw(id: int) -> bytes:
    """Frame for Withdraw{id} (version 3, the supervisor's side)."""
    return _frame(b"\x02" + varint(id), MAX_FRAME_CEILING)


def encode_cancel(id: int) -> bytes:
    """Frame for Cancel{id} (version 3, the supervisor's side)."""
    return _frame(b"\x03" + varint(id), MAX_FRAME_CEILING)


def encode_batch(tasks: Sequence[Tuple[int, int, Buffer]],
                 max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """Frame for Batch{tasks} (version 3, the supervisor's side): (id, attempt, payload) each."""
    parts = [bytes((BATCH,)), varint(len(tasks))]
    for id, attempt, payload in tasks:
        parts += (varint(id), _u32(attempt), varint(len(payload)), bytes(payload))
    return _frame(b"".join(parts), max_frame)


# ---------------------------------------------------------------------------------------------
# Decoding. Every decoder takes the buffer and the body's bounds [p, end), so a frame is decoded
# where it lies in the read buffer, and refuses a body that is not exactly one message.

def frame_len(buf: Buffer, pos: int, max_frame: int) -> int:
    """The body length announced by the header at buf[pos:pos+4] (which must be there)."""
    n: int = _HEADER.unpack_from(buf, pos)[0]
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the maximum of {max_frame} bytes")
    return n


def _short(what: str) -> ProtocolError:
    return ProtocolError(f"malformed frame: body ends inside {what}")


def _uint(buf: Buffer, p: int, end: int, widest: int, what: str) -> Tuple[int, int]:
    """Decodes a varint at p whose field is at most `widest` bytes; returns (value, next p)."""
    if p >= end:
        raise _short(what)
    b = buf[p]
    if b < 251:
        return b, p + 1
    if b == 251:
        if p + 3 > end:
            raise _short(what)
        return _U16.unpack_from(buf, p + 1)[0], p + 3
    if b == 252 and widest >= 4:
        if p + 5 > end:
            raise _short(what)
        return _U32.unpack_from(buf, p + 1)[0], p + 5
    if b == 253 and widest >= 8:
        if p + 9 > end:
            raise _short(what)
        return _U64.unpack_from(buf, p + 1)[0], p + 9
    raise ProtocolError(
        f"malformed frame: invalid varint marker {b} for {what} (a u{widest * 8})")


def _bytes(buf: Buffer, p: int, end: int, what: str) -> Tuple[bytes, int]:
    n, p = _uint(buf, p, end, 8, f"the length of {what}")
    if n > end - p:
        raise ProtocolError(
            f"malformed frame: {what} of {n} bytes, but only {end - p} left in the body")
    return bytes(buf[p:p + n]), p + n


def _text(buf: Buffer, p: int, end: int, what: str) -> Tuple[str, int]:
    raw, p = _bytes(buf, p, end, what)
    try:
        return raw.decode("utf-8"), p
    except UnicodeDecodeError as e:
        raise ProtocolError(f"malformed frame: {what} is not valid UTF-8: {e}") from None


def _bool(buf: Buffer, p: int, end: int, what: str) -> Tuple[bool, int]:
    if p >= end:
        raise _short(what)
    b = buf[p]
    if b > 1:
        raise ProtocolError(f"malformed frame: {what} is {b}, not a bool (0 or 1)")
    return b == 1, p + 1


def _done_with(msg: _M, p: int, end: int, name: str) -> _M:
    if p != end:
        raise ProtocolError(f"malformed frame: {end - p} trailing bytes after {name}")
    return msg


def _variant(buf: Buffer, p: int, end: int, enum: str, count: int) -> Tuple[int, int]:
    v, p = _uint(buf, p, end, 4, f"the {enum} variant")
    if v >= count:
        raise ProtocolError(f"malformed frame: unknown {enum} variant {v}")
    return v, p


def decode_to_worker(buf: Buffer, p: int = 0, end: Optional[int] = None) -> ToWorker:
    """Decodes a ToWorker body: ("Task", id, attempt, payload), ("Shutdown",),
    ("Withdraw", id) or ("Cancel", id). A Batch is refused: it is only ever sent to a worker
    that sent Batching, which decodes with `decode_to_batching_worker`."""
    if end is None:
        end = len(buf)
    # The tiny-event path first: a Task whose id takes 1, 3 or 5 bytes and whose attempt and
    # payload length take one each. Anything else (or anything wrong) takes the general path.
    if end - p >= 4 and buf[p] == TASK:
        b = buf[p + 1]
        if b < 251:
            id, q = b, p + 2
        elif b == 251 and p + 4 <= end:
            id, q = _U16.unpack_from(buf, p + 2)[0], p + 4
        elif b == 252 and p + 6 <= end:
            id, q = _U32.unpack_from(buf, p + 2)[0], p + 6
        else:
            q = end
        if q + 2 <= end:
            attempt, n = buf[q], buf[q + 1]
            if attempt < 251 and n < 251 and q + 2 + n == end:
                payload = buf[q + 2:end]
                if type(payload) is not bytes:
                    payload = bytes(payload)
                return ("Task", id, attempt, payload)
    msg = decode_to_batching_worker(buf, p, end)
    if msg[0] == "Batch":
        raise ProtocolError("malformed frame: a Batch, to a worker that did not send Batching")
    return msg


def decode_to_batching_worker(buf: Buffer, p: int = 0,
                              end: Optional[int] = None) -> ToBatchingWorker:
    """Decodes a ToWorker body for a worker that sent Batching: as `decode_to_worker`, or
    ("Batch", [(id, attempt, payload), ...])."""
    if end is None:
        end = len(buf)
    v, p = _variant(buf, p, end, "ToWorker", 5)
    if v == TASK:
        id, p = _uint(buf, p, end, 8, "Task.id")
        attempt, p = _uint(buf, p, end, 4, "Task.attempt")
        payload, p = _bytes(buf, p, end, "Task.payload")
        return _done_with(("Task", id, attempt, payload), p, end, "Task")
    if v == WITHDRAW:
        id, p = _uint(buf, p, end, 8, "Withdraw.id")
        return _done_with(("Withdraw", id), p, end, "Withdraw")
    if v == CANCEL:
        id, p = _uint(buf, p, end, 8, "Cancel.id")
        return _done_with(("Cancel", id), p, end, "Cancel")
    if v == BATCH:
        count, p = _uint(buf, p, end, 8, "Batch.tasks count")
        # Each task takes at least 3 bytes: a count past that cannot be honest.
        if count > (end - p) // 3:
            raise ProtocolError(
                f"malformed frame: a Batch of {count} tasks in {end - p} bytes")
        tasks: List[BatchTask] = []
        for _ in range(count):
            id, p = _uint(buf, p, end, 8, "Batch task id")
            attempt, p = _uint(buf, p, end, 4, "Batch task attempt")
            payload, p = _bytes(buf, p, end, "Batch task payload")
            tasks.append((id, attempt, payload))
        return _done_with(("Batch", tasks), p, end, "Batch")
    return _done_with(("Shutdown",), p, end, "Shutdown")


def decode_from_worker(buf: Buffer, p: int = 0, end: Optional[int] = None) -> FromWorker:
    """Decodes a FromWorker body: ("Hello", protocol, pid, token), ("Done", id, outcome) with
    outcome ("Ok", output), ("Err", retryable, message), ("RetryAfter", message, delay_ms) or
    ("Cancelled",), ("Heartbeat",), ("Chunk", id, data), ("Withdrawn", id), ("Kept", id) or
    ("Batching", max)."""
    if end is None:
        end = len(buf)
    v, p = _variant(buf, p, end, "FromWorker", 7)
    if v == HELLO:
        protocol, p = _uint(buf, p, end, 4, "Hello.protocol")
        pid, p = _uint(buf, p, end, 4, "Hello.pid")
        token, p = _text(buf, p, end, "Hello.token")
        return _done_with(("Hello", protocol, pid, token), p, end, "Hello")
    if v == DONE:
        id, p = _uint(buf, p, end, 8, "Done.id")
        o, p = _variant(buf, p, end, "Outcome", 4)
        if o == OK:
            output, p = _bytes(buf, p, end, "Outcome::Ok")
            return _done_with(("Done", id, ("Ok", output)), p, end, "Done")
        if o == RETRY_AFTER:
            message, p = _text(buf, p, end, "Outcome::RetryAfter.message")
            delay, p = _uint(buf, p, end, 8, "Outcome::RetryAfter.delay_ms")
            return _done_with(("Done", id, ("RetryAfter", message, delay)), p, end, "Done")
        if o == CANCELLED:
            return _done_with(("Done", id, ("Cancelled",)), p, end, "Done")
        retryable, p = _bool(buf, p, end, "Outcome::Err.retryable")
        message, p = _text(buf, p, end, "Outcome::Err.message")
        return _done_with(("Done", id, ("Err", retryable, message)), p, end, "Done")
    if v == CHUNK:
        id, p = _uint(buf, p, end, 8, "Chunk.id")
        data, p = _bytes(buf, p, end, "Chunk.data")
        return _done_with(("Chunk", id, data), p, end, "Chunk")
    if v == WITHDRAWN:
        id, p = _uint(buf, p, end, 8, "Withdrawn.id")
        return _done_with(("Withdrawn", id), p, end, "Withdrawn")
    if v == KEPT:
        id, p = _uint(buf, p, end, 8, "Kept.id")
        return _done_with(("Kept", id), p, end, "Kept")
    if v == BATCHING:
        max, p = _uint(buf, p, end, 4, "Batching.max")
        return _done_with(("Batching", max), p, end, "Batching")
    return _done_with(("Heartbeat",), p, end, "Heartbeat")
