"""herd from Python: the `herd` command (in this distribution's scripts), the worker SDK, and
clients for a running daemon.

    import herd

    def handle(payload: bytes) -> bytes:        # a worker: `herd run -- python worker.py`
        return payload.upper()

    herd.run(handle)

    async with herd.connect("herd.sock") as pool:         # hand events to `herd serve`
        out = await pool.submit(b'{"op":"square","n":7}')

    with herd.Executor(4) as ex:                          # a concurrent.futures executor
        print(list(ex.map(pow, range(10), range(10))))

    with herd.serve("python", "worker.py", workers=4) as daemon:   # a private daemon
        with daemon.connect_sync() as pool:
            out = pool.submit(b"hello")

Modules: `herd.worker` (the worker SDK), `herd.client` (asyncio client), `herd.blocking` (the
same, blocking), `herd.executor` (`herd.Executor`) and `herd.executor_worker` (its workers), `herd.daemon` (`herd.serve`), `herd.errors` (every exception, under
HerdError), `herd._codec` (the wire format in pure Python: the reference implementation,
checked against the protocol's test vectors). docs/PYTHON.md has the details.
"""

from importlib import metadata as _metadata

from .blocking import Client, connect_sync
from .client import CONTROL_VERSION, Batch, Chunk, Pool, Stream, connect
from .daemon import Daemon, find_herd_bin, serve
from .errors import (ConnectionLost, DaemonError, EventCancelled, EventCrashed, EventDeadline,
                     EventError, EventExpired, EventFailed, EventProtocolError, EventRejected,
                     EventShutdown, EventTimeout, HandshakeError, HerdError, InitializerFailed,
                     ResultError)
from .executor import Executor
from .worker import Cancelled, Fatal, Retryable, Task, run, run_batch, worker_index

try:
    __version__ = _metadata.version("herd")
except _metadata.PackageNotFoundError:  # imported from a source tree (PYTHONPATH), not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # Workers.
    "run", "run_batch", "Retryable", "Fatal", "Cancelled", "Task", "worker_index",
    # Clients of a daemon.
    "connect", "connect_sync", "Pool", "Client", "Stream", "Chunk", "Batch", "CONTROL_VERSION",
    # A concurrent.futures executor.
    "Executor",
    # A private daemon.
    "serve", "Daemon", "find_herd_bin",
    # Errors.
    "HerdError", "HandshakeError", "ConnectionLost", "DaemonError", "EventError", "EventFailed",
    "EventTimeout", "EventCrashed", "EventProtocolError", "EventRejected", "EventShutdown",
    "EventCancelled", "EventExpired", "EventDeadline", "ResultError", "InitializerFailed",
]
