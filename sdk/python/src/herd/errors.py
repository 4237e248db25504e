"""The exceptions of the herd package, under one base, HerdError."""

from typing import Any, Dict, Optional, Type


class HerdError(Exception):
    """Base of every error this package raises."""


class HandshakeError(HerdError):
    """The daemon refused the connection, or speaks another control protocol."""


class ConnectionLost(HerdError):
    """The daemon stopped, died or broke the protocol: the event's result will never come."""


class EventError(HerdError):
    """An event's final record is an error. `kind` and `message` are the record's `error`,
    `record` the whole record (a dict)."""

    kind: Optional[str] = None

    def __init__(self, kind: str, message: str, record: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.record: Dict[str, Any] = record if record is not None else {}


class EventFailed(EventError):
    """The handler returned an error (`failed`)."""


class EventTimeout(EventError):
    """The event ran past the daemon's --timeout on every attempt (`timeout`)."""


class EventCrashed(EventError):
    """The worker died running the event, on every attempt (`crashed`)."""


class EventProtocolError(EventError):
    """The worker broke the protocol running the event (`protocol`)."""


class EventRejected(EventError):
    """The daemon refused the event, e.g. longer than its line limit (`rejected`)."""


class EventShutdown(EventError):
    """The daemon stopped before running the event (`shutdown`)."""


class EventCancelled(EventError):
    """The event was cancelled (`cancelled`): by Stream.cancel(), or from another connection
    (`herd ctl cancel`)."""


class EventExpired(EventError):
    """The event waited longer than its max age to start, and did not run (`expired`)."""


class EventDeadline(EventError):
    """The event's deadline, over all its attempts, passed before it had an answer
    (`deadline`)."""


_KINDS: Dict[str, Type[EventError]] = {
    "failed": EventFailed, "timeout": EventTimeout, "crashed": EventCrashed,
    "protocol": EventProtocolError, "rejected": EventRejected, "shutdown": EventShutdown,
    "cancelled": EventCancelled,
    "expired": EventExpired, "deadline": EventDeadline,
}


class ResultError(HerdError):
    """herd.Executor: a call's outcome could not be carried back. Its result (or exception)
    could not be unpickled in this process, or neither it nor its exception could be pickled in
    the worker. `__cause__` holds the error that stopped it, when there is one."""


class InitializerFailed(HerdError):
    """herd.Executor: the executor's `initializer` raised in the worker that took this call,
    so that worker runs no call. The message names the initializer's exception; `__cause__`
    holds the worker's traceback of it."""


class DaemonError(HerdError):
    """`herd.serve()` could not start its daemon: no `herd` binary, or it exited (or did not
    get ready in time) before it was ready. The daemon's log went to the stderr it was
    given."""
