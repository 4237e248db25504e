"""herd.Executor: a concurrent.futures.Executor whose calls run in herd's workers.

    with herd.Executor(4, timeout=10) as ex:
        print(ex.submit(pow, 2, 8).result())
        print(list(ex.map(work, events, chunksize=64)))

Without an address it starts a private pool: `herd serve --die-with-parent` (herd.daemon) whose
workers run this interpreter on herd.executor_worker with this process's sys.path, main module,
working directory and environment; shutdown() stops it, and it dies with this process however
that ends. With `address=` it uses a running `herd serve -- python -m herd.executor_worker`.

One thread runs an asyncio loop holding the herd asyncio client's connection. Calls are pickled
in submit() (so a call that does not pickle fails its own future), wait in a local queue, and
go to the daemon while fewer than `inflight` are there: a queued future can be cancelled as
the standard library's can. A call the daemon has is RUNNING; its future's cancel() stops it
(herd cancels the event, killing and replacing its worker if it had started) and returns True,
where the standard library's returns False. Every future gets exactly one outcome: the call's
result or exception, or a herd error (EventCrashed, EventTimeout, ...) for that call alone;
the executor keeps serving. Never BrokenProcessPool.

map(chunksize=N) sends N calls as one event (call_chunk: the parent's cost per call stays that
of a pickle), and a chunk whose worker crashed, timed out or broke the protocol again as one
event per call on a batch submission (Batch(N)), so herd finds the call to blame and each of
the others gets its own outcome; for those the parent keeps one _MapChunk per chunk rather than
a Future per call.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import json
import math
import os
import sys
import threading
import time
import weakref
from concurrent.futures import _base
from typing import (TYPE_CHECKING, Any, Callable, Deque, Generator, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar, Union)

from . import daemon as _daemon
from .errors import (EventCrashed, EventProtocolError, EventTimeout, HerdError,
                     ResultError)
from . import executor_worker as _worker
from .executor_worker import (ENV_AUTHKEY, ENV_INIT, ENV_MAIN, ENV_SYS_PATH, MAP_TAG, PICKLER,
                              call_chunk, dumps, loads)

# As importing multiprocessing does (herd.executor no longer imports it): a worker imports the
# main script as `__mp_main__`, so what it sends back from there by reference (a function, an
# instance of the script's class) names `__mp_main__`, which is this program's `__main__`.
if "__main__" in sys.modules:
    sys.modules["__mp_main__"] = sys.modules["__main__"]

# asyncio and the client load after the private pool's daemon is started, while it starts
# its workers (Executor.__init__): a third of the executor's import time, off its start.
if TYPE_CHECKING:
    import asyncio

    from .client import Pool

__all__ = ["Executor", "Future", "PICKLER"]

_T = TypeVar("_T")

# The automatic `inflight` (_Pace): the work to keep with the daemon per worker, in seconds,
# and the most calls per worker.
_AUTO_INFLIGHT_WORK = 0.002
_AUTO_INFLIGHT_MAX = 128

# How long a partial batch of a map may wait for more calls while its worker is busy. map()
# hands the daemon a chunk's calls at once, so only a map's last chunks wait at all.
MAP_BATCH_WAIT = 0.002

# The worker's command: sys.path is the parent's before anything is imported.
_BOOT = ("import json, os, sys; "
         f"sys.path[:] = json.loads(os.environ[{ENV_SYS_PATH!r}]); "
         "from herd.executor_worker import main; main()")

# Set when the interpreter starts to exit: no new calls (as the standard library's executors).
_exiting = False
# The executors not yet collected, shut down (without waiting) when the interpreter exits.
_live: "weakref.WeakSet[Executor]" = weakref.WeakSet()
_hooked = False
_hook_lock = threading.Lock()


def _at_exit() -> None:
    global _exiting
    _exiting = True
    for ex in list(_live):
        ex.shutdown(wait=False)


def _register(ex: Executor) -> None:
    """Shuts `ex` down when the interpreter exits: before it joins the executor's thread
    (not a daemon thread), which ends once the calls already submitted have their outcome
    and the pool is stopped."""
    global _hooked
    with _hook_lock:
        if not _hooked:
            threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
            _hooked = True
        _live.add(ex)


class Future(concurrent.futures.Future[Any]):
    """The future of a herd.Executor call. Unlike the standard library's, cancel() also stops a
    running call: herd cancels the event (its worker is killed and replaced) and the future
    is cancelled at once (True)."""

    _herd_stop: Optional[Callable[[], None]] = None

    def cancel(self) -> bool:
        with self._condition:
            if self._state != _base.RUNNING:
                running = False
            else:
                running = True
                # As set_running_or_notify_cancel() does for a cancelled future: wait() and
                # as_completed() hear of it.
                self._state = _base.CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
        if not running:
            return super().cancel()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        stop = self._herd_stop
        if stop is not None:
            stop()
        return True


def _settle(fut: Future, result: Any = None, exc: Optional[BaseException] = None) -> None:
    """Gives `fut` its outcome unless it has one (a running call cancelled meanwhile)."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _main_spec() -> Optional[str]:
    """How a worker imports this program's main module (as multiprocessing's spawn does)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name:
        return f"name:{name}"
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and os.path.isfile(path):
        return f"path:{os.path.abspath(path)}"
    return None


def _chunks(args: Iterator[Tuple[Any, ...]], size: int) -> Iterator[Tuple[Tuple[Any, ...], ...]]:
    while True:
        chunk = tuple(itertools.islice(args, size))
        if not chunk:
            return
        yield chunk


# The ends of a map chunk's event that say nothing of its calls but that one of them took its
# worker down (or hung): its calls are run again one event each (`Executor._isolate`).
_ISOLATE = (EventCrashed, EventTimeout, EventProtocolError)


class _MapChunk:
    """Up to `chunksize` calls of one Executor.map, sent as one event each on the map's batch
    submission: herd hands a worker up to that many in one handler call, answers each on its
    own, and isolates a call that crashes its worker. One of these per chunk, not a Future per
    call: the loop thread fills `outs` (a call's output, or the error that ends it) and sets
    `done` when the last arrives; the map's generator decodes each as it yields it."""

    __slots__ = ("pool", "payloads", "at", "outs", "left", "done", "first", "cancelled",
                 "on_done")

    def __init__(self, pool: Pool, payloads: List[bytes], outs: List[Any],
                 at: Optional[List[int]]) -> None:
        self.pool = pool
        self.payloads = payloads
        # Where each payload's outcome goes in `outs` (None: in order): a call that did not
        # pickle has its error there already and no payload.
        self.at = at
        self.outs = outs
        self.left = len(payloads)
        self.done = threading.Event()
        self.first = -1  # the seq of its first event, once sent (loop thread)
        self.cancelled = False  # (loop thread)
        self.on_done: Callable[[], None] = _nothing
        if not payloads:
            self.done.set()

    def waiters(self) -> List[Callable[[Optional[bytes], Optional[BaseException]], None]]:
        resolve = self.resolve
        return [functools.partial(resolve, i) for i in (self.at or range(len(self.payloads)))]

    def resolve(self, i: int, out: Optional[bytes], err: Optional[BaseException]) -> None:
        self.outs[i] = out if err is None else err
        self.left -= 1
        if self.left == 0:
            self.done.set()
            self.on_done()

    def fail(self, exc: BaseException) -> None:
        """Ends every call of a chunk that was never sent with `exc`."""
        self.outs[:] = [exc if v is None else v for v in self.outs]
        self.left = 0
        self.done.set()


def _nothing() -> None:
    pass


def _isolation_chunk(pool: Pool, fn: Callable[..., Any],
                     calls: Sequence[Tuple[Any, ...]]) -> _MapChunk:
    """The calls of a map chunk as one event each, ("m", fn_bytes, args) with the callable
    pickled once (the worker unpickles it once); a call that does not pickle has its error in
    place and no event."""
    fn_bytes = _worker._dumps(fn)
    payloads: List[bytes] = []
    outs: List[Any] = [None] * len(calls)
    at: List[int] = []
    for i, args in enumerate(calls):
        try:
            payloads.append(dumps((MAP_TAG, fn_bytes, args)))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - that call's failure
            outs[i] = e
            continue
        at.append(i)
    return _MapChunk(pool, payloads, outs, at if len(at) < len(calls) else None)


# What waits in the executor's queue: a submit()'s call, or a map's chunk.
_Queued = Union[Tuple[Future, bytes], _MapChunk]


class _Pace:
    """The automatic `inflight`, as herd's own automatic window: enough calls with the daemon
    for about 2 ms of work per worker, never fewer than 2 per worker. Slow calls keep 2 per
    worker: the rest wait in the executor, where a cancel is free. Tiny calls get up to 128,
    or the round trip of each call through the daemon bounds the pool (13,000 calls/s at 2 per
    worker, 40,000 at the automatic limit, measured).

    It is told of each outcome that came while calls waited in the executor (the limit held
    them back, so outcomes come at the pool's pace): over every 2 outcomes per worker, the
    time per outcome times the workers is a worker's time per call. Not per outcome: workers
    whose calls take alike answer in bursts."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.limit = 2 * workers
        self._since = 0.0  # when the stretch being measured began (0: none)
        self._outcomes = 0  # outcomes in it so far
        self._gap = 0.0  # the average time per outcome, in seconds (0: none measured)

    def outcome(self, now: float) -> None:
        if not self._since:
            self._since, self._outcomes = now, 0
            return
        self._outcomes += 1
        if self._outcomes < 2 * self.workers:
            return
        gap = (now - self._since) / self._outcomes
        self._since, self._outcomes = now, 0
        # Up by a quarter, down by a sixteenth (herd's window's weight): calls that turn slow
        # after tiny ones bring the limit down within a few stretches.
        if not self._gap:
            self._gap = gap
        else:
            self._gap += (gap - self._gap) / (4 if gap > self._gap else 16)
        per_call = self._gap * self.workers
        per_worker = int(_AUTO_INFLIGHT_WORK / per_call) if per_call > 0 else _AUTO_INFLIGHT_MAX
        self.limit = self.workers * min(max(per_worker, 2), _AUTO_INFLIGHT_MAX)

    def idle(self) -> None:
        """Nothing queued or in flight: the next calls may be slow ones, so the limit starts
        again from 2 per worker (tiny calls regain it within a few outcomes)."""
        self.limit = 2 * self.workers
        self._since = self._gap = 0.0


class Executor(concurrent.futures.Executor):
    """A concurrent.futures.Executor on herd. See the module's doc and docs/PYTHON.md.

    `max_workers`: worker processes (default: one per CPU). `timeout`: seconds one call may run
    before its worker is killed and the call fails with EventTimeout. `retries`: extra attempts
    of a call whose worker crashed or timed out (default 0: such a call fails at once).
    `max_tasks_per_child`, `max_rss` (bytes, or a herd size such as "512MiB"): a worker is
    replaced after so many calls, or once its memory exceeds it, between calls.
    `initializer(*initargs)` runs in each worker before its first call; if it raises, that
    worker's calls fail with InitializerFailed. `address`: the control socket of a running
    `herd serve -- python -m herd.executor_worker` to use instead of a private pool (the
    options above are then the daemon's own). `inflight`: calls handed to the daemon at once
    (default: automatic, about 2 ms of work per worker, 2 to 128 per worker); the rest wait
    here, cancellable. `options`: more `herd serve`
    options for the private pool. `stderr`: where the private pool's log goes
    (subprocess-style; default: this process's stderr). `start_timeout`: seconds to wait for
    the private pool to be ready. `mp_context` is accepted, and ignored, so that code written
    for ProcessPoolExecutor runs unchanged: herd starts its workers itself."""

    def __init__(self, max_workers: Optional[int] = None, *, timeout: Optional[float] = None,
                 retries: int = 0, max_tasks_per_child: Optional[int] = None,
                 max_rss: Union[None, int, str] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Tuple[Any, ...] = (), address: Optional[str] = None,
                 inflight: Optional[int] = None, options: Sequence[str] = (),
                 stderr: _daemon._Stderr = None, start_timeout: float = 60.0,
                 mp_context: Any = None) -> None:
        del mp_context  # ProcessPoolExecutor's: herd starts its workers itself
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if inflight is not None and inflight < 1:
            raise ValueError("inflight must be at least 1")
        private = (timeout, retries or None, max_tasks_per_child, max_rss, initializer,
                   tuple(options) or None)
        if address is not None and any(o is not None for o in private):
            raise ValueError("timeout, retries, max_tasks_per_child, max_rss, initializer and "
                             "options are a private pool's: with an address they are the "
                             "daemon's own")
        if _exiting:
            raise RuntimeError("cannot start an executor after interpreter shutdown")
        if _worker.importing_main:
            raise RuntimeError(
                "a herd.Executor was started while a worker imported the main module: guard "
                "the program's entry point with `if __name__ == \"__main__\":` (as "
                "multiprocessing's spawn needs)")
        self._max_workers = max_workers
        # The automatic `inflight` (loop thread only), unless one is given.
        self._pace: Optional[_Pace] = _Pace(max_workers) if inflight is None else None
        self._inflight_max: int = inflight if inflight is not None else 2 * max_workers
        self._lock = threading.Lock()
        self._queue: Deque[_Queued] = collections.deque()
        self._shutdown = False
        self._pump_scheduled = False
        # Loop thread only:
        self._inflight = 0
        self._closing = False
        self._finishing = False

        self._daemon: Optional[_daemon.Daemon] = None
        if address is None:
            self._daemon = self._start_pool(max_workers, timeout, retries, max_tasks_per_child,
                                            max_rss, initializer, initargs, options, stderr,
                                            start_timeout)
            address = self._daemon.control
        import asyncio

        from .client import Pool
        self.address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="herd-executor")
        self._thread.start()
        try:
            self._pool: Pool = asyncio.run_coroutine_threadsafe(
                Pool._open(address, start_timeout), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            if self._daemon is not None:
                self._daemon.stop(timeout=5.0)
            raise
        _register(self)

    @staticmethod
    def _start_pool(workers: int, timeout: Optional[float], retries: int,
                    max_tasks: Optional[int], max_rss: Union[None, int, str],
                    initializer: Optional[Callable[..., object]], initargs: Tuple[Any, ...],
                    options: Sequence[str], stderr: _daemon._Stderr,
                    start_timeout: float) -> _daemon.Daemon:
        env = dict(os.environ)
        env[ENV_SYS_PATH] = json.dumps(sys.path)
        main = _main_spec()
        if main is not None:
            env[ENV_MAIN] = main
        if "multiprocessing" in sys.modules:
            import multiprocessing
            env[ENV_AUTHKEY] = bytes(multiprocessing.current_process().authkey).hex()
        if initializer is not None:
            env[ENV_INIT] = dumps((initializer, tuple(initargs))).decode("ascii")
        # herd's log at warnings (crashes, timeouts, restarts): its info lines, which carry
        # the workers' stderr, unless asked for.
        verbose = any(o in ("-v", "-vv", "--verbose") for o in options)
        opts = ([] if verbose else ["-q"]) + ["--retries", str(retries)]
        if timeout is not None:
            if timeout <= 0:
                raise ValueError("timeout must be positive")
            opts += ["--timeout", f"{max(1, math.ceil(timeout * 1000))}ms"]
        if max_tasks is not None:
            if max_tasks < 1:
                raise ValueError("max_tasks_per_child must be >= 1")
            opts += ["--max-tasks", str(max_tasks)]
        if max_rss is not None:
            opts += ["--max-rss", str(max_rss)]
        opts += list(options)
        # Once its control socket listens: the workers start while the first calls are made
        # (0.15 s of a 2-worker pool's start, measured; ProcessPoolExecutor starts its own
        # lazily too). A worker that cannot start fails its calls (`crashed`), not this.
        return _daemon.start(sys.executable, "-c", _BOOT, workers=workers, options=opts,
                             env=env, stderr=stderr, timeout=start_timeout, workers_up=False)

    def _run_loop(self) -> None:
        import asyncio
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    # -----------------------------------------------------------------------------------------
    # The caller's side.

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future:
        """Runs fn(*args, **kwargs) in a worker: its Future. A call that does not pickle gets
        its future failed with the pickling error."""
        self._check_open()
        fut = Future()
        try:
            payload = dumps((fn, args, kwargs))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - that call's failure
            fut.set_exception(e)
            return fut
        self._put((fut, payload))
        return fut

    def _check_open(self) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _put(self, item: _Queued) -> None:
        """Queues a call (or a map's chunk) for the loop to hand to the daemon."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(item)
            if self._pump_scheduled:
                return
            self._pump_scheduled = True
        self._loop.call_soon_threadsafe(self._pump)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1,
            buffersize: Optional[int] = None) -> Generator[_T, None, None]:
        """Like the standard library's: results in order, `timeout` seconds from this call
        for all of them. With `chunksize` N > 1, N calls go to a worker as one event (one
        handler call, as ProcessPoolExecutor's chunks: the parent's work per call stays small);
        a call that raises ends its chunk there, so map yields the results before it and
        raises at its position. A chunk whose worker crashed, timed out or broke the protocol
        is run again as N events of one call each in a batch (docs/BATCHES.md): herd finds the
        call to blame and fails it alone, and the others' results arrive. A chunk counts as
        one toward `inflight`. With `buffersize` (as Python 3.14's) at most that many chunks
        (of `chunksize` calls) are submitted ahead of the result being read, and the
        iterables are read lazily; without, every call is submitted now."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        args: Iterator[Tuple[Any, ...]] = zip(*iterables)
        if chunksize > 1:
            self._check_open()
            chunks = self._submit_chunks(fn, args, chunksize)
            sent = collections.deque(itertools.islice(chunks, buffersize))
            return self._chunked_results(fn, chunksize, sent, chunks if buffersize else None,
                                         end_time)
        calls = ((fn, a) for a in args)
        fs = collections.deque(self.submit(f, *a)
                               for f, a in itertools.islice(calls, buffersize))
        return self._results(fs, calls if buffersize else None, end_time)

    def _results(self, fs: Deque[Future], more: Optional[Iterator[Tuple[Callable[..., Any],
                                                                        Tuple[Any, ...]]]],
                 end_time: Optional[float]) -> Generator[Any, None, None]:
        try:
            while fs:
                if more is not None:
                    call = next(more, None)
                    if call is not None:
                        fs.append(self.submit(call[0], *call[1]))
                        del call
                # No reference to the future or its result is kept past the yield.
                yield _result_or_cancel(fs.popleft(), end_time)
        finally:
            for f in fs:
                f.cancel()

    def _submit_chunks(self, fn: Callable[..., Any], args: Iterator[Tuple[Any, ...]],
                       chunksize: int) -> Iterator[Tuple[Optional[Future],
                                                         Tuple[Tuple[Any, ...], ...]]]:
        """Each chunk of a map, submitted as one call of call_chunk as it is read: its future
        (None: it does not pickle, so its calls go one event each, and the one that does not
        pickle fails alone) and its calls."""
        for calls in _chunks(args, chunksize):
            try:
                payload = dumps((call_chunk, (fn, calls), {}))
            except (Exception, SystemExit):  # noqa: BLE001 - found again, call by call
                yield None, calls
                continue
            fut = Future()
            self._put((fut, payload))
            yield fut, calls

    def _chunked_results(self, fn: Callable[..., Any], chunksize: int,
                         chunks: Deque[Tuple[Optional[Future], Tuple[Tuple[Any, ...], ...]]],
                         more: Optional[Iterator[Tuple[Optional[Future],
                                                       Tuple[Tuple[Any, ...], ...]]]],
                         end_time: Optional[float]) -> Generator[Any, None, None]:
        try:
            while chunks:
                if more is not None:
                    nxt = next(more, None)
                    if nxt is not None:
                        chunks.append(nxt)
                    del nxt
                fut, calls = chunks.popleft()
                if fut is None:
                    yield from self._isolate(fn, chunksize, calls, end_time)
                    continue
                try:
                    part = _result_or_cancel(fut, end_time)
                except _ISOLATE:
                    # Which of its calls did it is unknown: each call an event of its own.
                    del fut
                    yield from self._isolate(fn, chunksize, calls, end_time)
                    continue
                del fut, calls
                error: Optional[BaseException] = None
                if type(part) is tuple:  # call_chunk's: a call raised
                    part, error, tb = part
                    if tb and isinstance(error, BaseException):
                        error.__cause__ = _remote_traceback(tb)
                # No reference to a result is kept past its yield.
                part.reverse()
                while part:
                    yield part.pop()
                if error is not None:
                    raise error
        finally:
            for f, _ in chunks:
                if f is not None:
                    f.cancel()

    def _isolate(self, fn: Callable[..., Any], chunksize: int,
                 calls: Tuple[Tuple[Any, ...], ...],
                 end_time: Optional[float]) -> Generator[Any, None, None]:
        """The calls of a chunk that took its worker down, run again as an event each on the
        map's batch submission: herd runs them as a batch, and when the worker dies again,
        each alone, so only the call to blame fails (with retries, after as many)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("map(chunksize>1) cannot be called from the executor's thread")
        import asyncio

        from .client import Batch
        lane = asyncio.run_coroutine_threadsafe(
            self._pool._lane(0, False, Batch(chunksize, MAP_BATCH_WAIT)), self._loop).result()
        chunk = _isolation_chunk(lane, fn, calls)
        del calls
        if not chunk.done.is_set():
            self._put(chunk)
        yield from self._chunk_results(collections.deque((chunk,)), None, end_time)

    def _chunk_results(self, chunks: Deque[_MapChunk], more: Optional[Iterator[_MapChunk]],
                       end_time: Optional[float]) -> Generator[Any, None, None]:
        try:
            while chunks:
                if more is not None:
                    chunk = next(more, None)
                    if chunk is not None:
                        chunks.append(chunk)
                chunk = chunks[0]
                if end_time is None:
                    chunk.done.wait()
                elif not chunk.done.wait(end_time - time.monotonic()):
                    raise concurrent.futures.TimeoutError()
                chunks.popleft()
                outs, chunk.outs = chunk.outs, []
                del chunk
                # No reference to a result is kept past its yield.
                for i in range(len(outs)):
                    out, outs[i] = outs[i], None
                    if type(out) is not bytes:
                        raise out
                    yield _result_of(out)
        finally:
            if chunks:
                self._cancel_chunks(chunks)

    def _cancel_chunks(self, chunks: Iterable[_MapChunk]) -> None:
        """A map's chunks whose results will not be read: the queued ones are not sent, the
        sent ones' events are cancelled (a batch that has started runs to its end)."""
        def cancel(chunks: List[_MapChunk]) -> None:
            for chunk in chunks:
                chunk.cancelled = True
                if chunk.first >= 0 and chunk.left:
                    for seq in range(chunk.first, chunk.first + len(chunk.outs)):
                        chunk.pool._cancel(seq)
        try:
            self._loop.call_soon_threadsafe(cancel, [c for c in chunks if not c.done.is_set()])
        except RuntimeError:  # the loop is closed: every call has its outcome
            pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; the calls submitted run (queued ones are cancelled with
        `cancel_futures`), then the private pool stops. With `wait`, returns once it has."""
        cancelled: List[_Queued] = []
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            if cancel_futures:
                # The calls the loop hands to the daemon next, up to `inflight`, count as
                # started, as the calls ProcessPoolExecutor has already put in its call queue:
                # they run; the rest are cancelled.
                keep = max(0, self._inflight_max - self._inflight)
                while len(self._queue) > keep:
                    cancelled.append(self._queue.pop())
                cancelled.reverse()
        for item in cancelled:
            if isinstance(item, _MapChunk):
                item.fail(concurrent.futures.CancelledError())
            elif item[0].cancel():
                item[0].set_running_or_notify_cancel()
        if first:
            try:
                self._loop.call_soon_threadsafe(self._close)
            except RuntimeError:  # the loop is closed: it stopped already
                pass
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -----------------------------------------------------------------------------------------
    # The loop thread's side.

    def _pump(self) -> None:
        """Hands queued calls to the daemon while fewer than `inflight` are there."""
        with self._lock:
            self._pump_scheduled = False
        queue = self._queue
        while self._inflight < self._inflight_max and queue:
            with self._lock:
                if not queue:
                    break
                item = queue.popleft()
            if isinstance(item, _MapChunk):
                self._send_chunk(item)
                continue
            fut, payload = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                seq = self._pool._enqueue(payload, self._resolver(fut))
            except HerdError as e:  # the daemon went away: every call fails with why
                _settle(fut, exc=e)
                continue
            self._inflight += 1
            fut._herd_stop = self._stopper(seq)
            if fut.cancelled():  # cancelled between set_running and here
                self._pool._cancel(seq)
        if self._closing and not self._finishing and not queue and self._inflight == 0:
            self._finishing = True
            self._loop.create_task(self._finish())

    def _send_chunk(self, chunk: _MapChunk) -> None:
        if chunk.cancelled:
            return
        try:
            chunk.first = chunk.pool._enqueue_many(chunk.payloads, chunk.waiters())
        except HerdError as e:  # the daemon went away: every call fails with why
            chunk.fail(e)
            return
        chunk.payloads = []
        chunk.on_done = self._chunk_done
        self._inflight += 1

    def _chunk_done(self) -> None:
        self._inflight -= 1
        self._answered()

    def _answered(self) -> None:
        """After a call (or chunk) the daemon had is answered and counted out of `inflight`:
        the next ones go, and the automatic `inflight` learns from it (while calls wait) or
        starts over (once nothing is left)."""
        if self._queue or self._closing:
            if self._pace is not None:
                self._pace.outcome(time.monotonic())
                self._inflight_max = self._pace.limit
            self._pump()
        elif not self._inflight and self._pace is not None:
            self._pace.idle()
            self._inflight_max = self._pace.limit

    def _stopper(self, seq: int) -> Callable[[], None]:
        loop, pool = self._loop, self._pool

        def stop() -> None:
            try:
                loop.call_soon_threadsafe(pool._cancel, seq)
            except RuntimeError:  # the loop is closed: the call has its outcome
                pass
        return stop

    def _resolver(self, fut: Future) -> Callable[[Optional[bytes], Optional[BaseException]],
                                                 None]:
        def resolve(out: Optional[bytes], err: Optional[BaseException]) -> None:
            self._inflight -= 1
            fut._herd_stop = None
            if fut.done():
                pass  # cancelled while running: its record (`cancelled`) is dropped
            elif err is not None:
                _settle(fut, exc=err)
            else:
                _settle_output(fut, out)
            self._answered()
        return resolve

    def _close(self) -> None:
        self._closing = True
        self._pump()

    async def _finish(self) -> None:
        try:
            await self._pool.close()
        except HerdError:
            pass  # the daemon went away: every call already has that as its outcome
        finally:
            if self._daemon is not None:
                self._daemon.stop()
            self._loop.stop()

    def __repr__(self) -> str:
        return f"<herd.Executor workers={self._max_workers} address={self.address!r}>"


def _settle_output(fut: Future, out: Optional[bytes]) -> None:
    ok, value = _outcome(out or b"")
    if ok:
        _settle(fut, value)
    else:
        _settle(fut, exc=value)


def _remote_traceback(tb: str) -> BaseException:
    """The cause ProcessPoolExecutor gives a call's exception: the worker's traceback. Its
    class is imported on the first error, not with the executor (it loads multiprocessing)."""
    from concurrent.futures.process import _RemoteTraceback
    return _RemoteTraceback(tb)  # type: ignore[arg-type]  # typeshed: a traceback; it is text


def _result_of(out: bytes) -> Any:
    """A call's result from its output, or raises its exception (in map's own thread)."""
    ok, value = _outcome(out)
    if ok:
        return value
    raise value


def _outcome(out: bytes) -> Tuple[bool, Any]:
    """(True, a call's result) or (False, its exception), from its output. Not raised here: a
    traceback through the loop thread's frames would keep the executor alive with the future."""
    try:
        ok, value, tb = loads(out)
    except BaseException as e:  # noqa: BLE001 - even SystemExit: this call's failure
        err = ResultError(f"the call's outcome could not be unpickled here: "
                          f"{type(e).__name__}: {e}")
        err.__cause__ = e
        return False, err
    if ok:
        return True, value
    if tb and isinstance(value, BaseException):
        # As ProcessPoolExecutor does: the worker's traceback is the exception's cause.
        value.__cause__ = _remote_traceback(tb)
    return False, value if isinstance(value, BaseException) else ResultError(repr(value))


def _result_or_cancel(fut: Future, end_time: Optional[float]) -> Any:
    try:
        try:
            if end_time is None:
                return fut.result()
            return fut.result(end_time - time.monotonic())
        finally:
            fut.cancel()
    finally:
        del fut

