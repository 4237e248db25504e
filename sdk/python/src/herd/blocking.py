"""The blocking client: the asyncio client on an event loop of its own, in a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import (Any, Coroutine, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar,
                    Union)

from .client import Batch, Event, Pool, _check_batch, _limits_ms
from .errors import ConnectionLost, EventError

_T = TypeVar("_T")


def connect_sync(path: str, *, timeout: float = 30.0, max_age: Optional[float] = None,
                 deadline: Optional[float] = None, batch: Optional[Batch] = None) -> Client:
    """Connects to the daemon's control socket at `path`; a Client, also a context manager.
    `max_age`, `deadline` and `batch` as for connect()."""
    return Client(path, timeout=timeout, max_age=max_age, deadline=deadline, batch=batch)


class Client:
    """submit() and map() that block. Safe to call from several threads at once."""

    def __init__(self, path: str, *, timeout: float = 30.0, max_age: Optional[float] = None,
                 deadline: Optional[float] = None, batch: Optional[Batch] = None) -> None:
        limits = _limits_ms(max_age, deadline)
        _check_batch(batch)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="herd-client",
                                        daemon=True)
        self._thread.start()
        try:
            self._pool = self._call(Pool._open(path, timeout, 0, limits, batch=batch))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: Optional[float] = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(self, event: Event, timeout: Optional[float] = None, *,
               priority: int = 0, key: Union[str, bytes, None] = None,
               batch: Optional[Batch] = None) -> bytes:
        """Runs one event; its output as bytes, or raises EventError / ConnectionLost.
        `timeout` (seconds) bounds only this wait (concurrent.futures.TimeoutError).
        `priority`: -128 to 127, higher runs first; `key`: the event's key (docs/KEYS.md);
        `batch`: a Batch (docs/BATCHES.md), default the client's."""
        return self._call(self._pool.submit(event, priority=priority, key=key, batch=batch),
                          timeout)

    def map(self, events: Iterable[Event], *, ordered: bool = False, window: int = 1024,
            return_exceptions: bool = False, priority: int = 0,
            batch: Optional[Batch] = None) -> Iterator[Tuple[int, Union[bytes, EventError]]]:
        """Like Pool.map, for a plain iterable: yields (index, output)."""
        if window < 1:
            raise ValueError("window must be at least 1")
        _check_batch(batch)
        done: queue.SimpleQueue[Tuple[int, concurrent.futures.Future[bytes]]] = \
            queue.SimpleQueue()
        inflight = 0
        held: Dict[int, Union[bytes, EventError]] = {}
        want = 0

        def sent(i: int, cf: concurrent.futures.Future[bytes]) -> None:
            cf.add_done_callback(lambda f: done.put((i, f)))

        def take() -> Tuple[int, Union[bytes, EventError]]:
            i, f = done.get()
            err = f.exception()
            if err is not None:
                if isinstance(err, ConnectionLost) or not return_exceptions \
                        or not isinstance(err, EventError):
                    raise err
                return i, err
            return i, f.result()

        def drain_one() -> List[Tuple[int, Union[bytes, EventError]]]:
            nonlocal inflight, want
            i, value = take()
            if not ordered:
                inflight -= 1
                return [(i, value)]
            held[i] = value
            out = []
            while want in held:
                out.append((want, held.pop(want)))
                want += 1
                inflight -= 1
            return out

        for i, ev in enumerate(events):
            while inflight >= window:
                yield from drain_one()
            sent(i, asyncio.run_coroutine_threadsafe(
                self._pool.submit(ev, priority=priority, batch=batch), self._loop))
            inflight += 1
        while inflight:
            yield from drain_one()

    @property
    def pid(self) -> int:
        return self._pool.pid

    def close(self) -> None:
        """Waits for every pending event's record, then disconnects."""
        try:
            self._call(self._pool.close())
        finally:
            self._stop_loop()

    def abort(self) -> None:
        """Disconnects now; pending calls raise ConnectionLost."""
        try:
            self._loop.call_soon_threadsafe(self._pool.abort)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
