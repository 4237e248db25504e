"""herd_worker: write a herd worker in Python.

    import herd_worker

    def handle(payload: bytes) -> bytes:
        return payload.upper()

    herd_worker.run(handle)

Run it under herd: `herd run -w 4 -- python3 worker.py`. Standard library only, Python 3.9+.
The wire format is in docs/PROTOCOL.md; `herd_worker.codec` implements it.
"""

from . import codec
from .codec import ProtocolError
from ._worker import (Disconnected, Fatal, Retryable, Task, run, serve, worker_index,
                      EXIT_DISCONNECTED, EXIT_ERROR, EXIT_SHUTDOWN)

__version__ = "0.1.0"

__all__ = [
    "run", "Retryable", "Fatal", "Task", "worker_index", "serve", "codec", "ProtocolError",
    "Disconnected", "EXIT_SHUTDOWN", "EXIT_DISCONNECTED", "EXIT_ERROR",
]
