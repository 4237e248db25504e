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

from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from .blocking import Client, connect_sync
    from .client import CONTROL_VERSION, Batch, Chunk, Pool, Stream, connect
    from .daemon import Daemon, find_herd_bin, serve
    from .errors import (ConnectionLost, DaemonError, EventCancelled, EventCrashed,
                         EventDeadline, EventError, EventExpired, EventFailed,
                         EventProtocolError, EventRejected, EventShutdown, EventTimeout,
                         HandshakeError, HerdError, InitializerFailed, ResultError)
    from .executor import Executor
    from .worker import Cancelled, Fatal, Retryable, Task, run, run_batch, worker_index

    __version__: str

# Each name's module, imported on first use (PEP 562): a worker process imports `herd` for
# `herd.run` and must not pay for asyncio, ssl and importlib.metadata (the clients' and
# __version__'s), which were most of a Python worker's start-up (64 ms of 70 measured with
# `python -X importtime`): every restart after a crash pays it again.
_LAZY: Dict[str, str] = {
    **dict.fromkeys(("Client", "connect_sync"), "blocking"),
    **dict.fromkeys(("CONTROL_VERSION", "Batch", "Chunk", "Pool", "Stream", "connect"),
                    "client"),
    **dict.fromkeys(("Daemon", "find_herd_bin", "serve"), "daemon"),
    **dict.fromkeys((
        "ConnectionLost", "DaemonError", "EventCancelled", "EventCrashed", "EventDeadline",
        "EventError", "EventExpired", "EventFailed", "EventProtocolError", "EventRejected",
        "EventShutdown", "EventTimeout", "HandshakeError", "HerdError", "InitializerFailed",
        "ResultError"), "errors"),
    "Executor": "executor",
    **dict.fromkeys(("Cancelled", "Fatal", "Retryable", "Task", "run", "run_batch",
                     "worker_index"), "worker"),
}

_SUBMODULES = frozenset(("blocking", "client", "daemon", "errors", "executor", "executor_worker",
                         "worker", "_codec"))


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib import metadata
        try:
            version = metadata.version("herd")
        except metadata.PackageNotFoundError:  # from a source tree (PYTHONPATH), not installed
            version = "0+unknown"
        globals()[name] = version
        return version
    import importlib
    if name in _SUBMODULES:  # `import herd; herd.worker.…` as when __init__ imported them
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'herd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


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
