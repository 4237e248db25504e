"""herd_client: hand events to a running `herd serve` from Python, and get their results.

    async with herd_client.connect("/run/herd.sock") as pool:
        out = await pool.submit(b'{"op":"square","n":7}')   # bytes, or raises an EventError
        async for seq, out in pool.map(events):             # bounded in flight
            ...
        async for chunk in pool.submit_stream(event):        # a streaming handler's parts
            ...
        task.cancel()   # a task awaiting pool.submit(): the daemon cancels the event too

    with herd_client.connect_sync("/run/herd.sock") as pool:   # the same, blocking
        out = pool.submit(b"...")

Standard library only, Python 3.9+. The control protocol is in crates/proto/src/control.rs
(docs/CONTROL.md); the frames and varints are herd_worker.codec's.
"""

from ._client import (CONTROL_VERSION, Chunk, ConnectionLost, EventCancelled, EventCrashed,
                      EventDeadline, EventError, EventExpired, EventFailed, EventProtocolError,
                      EventRejected, EventShutdown, EventTimeout, HerdError, HandshakeError,
                      Pool, Stream, connect)
from ._sync import Client, connect_sync

__version__ = "0.1.0"

__all__ = [
    "connect", "connect_sync", "Pool", "Client", "CONTROL_VERSION", "HerdError",
    "HandshakeError", "ConnectionLost", "EventError", "EventFailed", "EventTimeout",
    "EventCrashed", "EventProtocolError", "EventRejected", "EventShutdown", "EventCancelled",
    "EventExpired", "EventDeadline", "Chunk", "Stream",
]
