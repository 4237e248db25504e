"""The blocking client: the asyncio client on an event loop of its own, in a thread."""

import asyncio
import queue
import threading

from ._client import Pool, ConnectionLost, EventError, _limits_ms


def connect_sync(path, *, timeout=30.0, max_age=None, deadline=None):
    """Connects to the daemon's control socket at `path`; a Client, also a context manager.
    `max_age` and `deadline` as for connect()."""
    return Client(path, timeout=timeout, max_age=max_age, deadline=deadline)


class Client:
    """submit() and map() that block. Safe to call from several threads at once."""

    def __init__(self, path, *, timeout=30.0, max_age=None, deadline=None):
        limits = _limits_ms(max_age, deadline)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="herd-client",
                                        daemon=True)
        self._thread.start()
        try:
            self._pool = self._call(Pool._open(path, timeout, 0, limits))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(self, event, timeout=None, *, priority=0):
        """Runs one event; its output as bytes, or raises EventError / ConnectionLost.
        `timeout` (seconds) bounds only this wait (concurrent.futures.TimeoutError).
        `priority`: -128 to 127, higher runs first."""
        return self._call(self._pool.submit(event, priority=priority), timeout)

    def map(self, events, *, ordered=False, window=1024, return_exceptions=False, priority=0):
        """Like Pool.map, for a plain iterable: yields (index, output)."""
        if window < 1:
            raise ValueError("window must be at least 1")
        done = queue.SimpleQueue()
        inflight = 0
        held = {}
        want = 0

        def sent(i, cf):
            cf.add_done_callback(lambda f: done.put((i, f)))

        def take():
            i, f = done.get()
            err = f.exception()
            if err is not None and (isinstance(err, ConnectionLost) or not return_exceptions
                                    or not isinstance(err, EventError)):
                raise err
            return i, (err if err is not None else f.result())

        def drain_one():
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
            sent(i, asyncio.run_coroutine_threadsafe(self._pool.submit(ev, priority=priority),
                                                     self._loop))
            inflight += 1
        while inflight:
            yield from drain_one()

    @property
    def pid(self):
        return self._pool.pid

    def close(self):
        """Waits for every pending event's record, then disconnects."""
        try:
            self._call(self._pool.close())
        finally:
            self._stop_loop()

    def abort(self):
        """Disconnects now; pending calls raise ConnectionLost."""
        try:
            self._loop.call_soon_threadsafe(self._pool.abort)
        finally:
            self._stop_loop()

    def _stop_loop(self):
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
