#!/usr/bin/env python3
"""herd against the Python process pools a Python user would pick instead (issue 22, point 6):
herd.Executor (a call per submit(), and map() with a chunksize), herd with Python workers
(`herd run -w 2 -- python scripts/pywork.py`), ProcessPoolExecutor, loky, pebble, mpire and
joblib, 2 workers each, on the same events, every result checked:

- tiny: 200,000 tiny calls, a submit() per call, and a map at each peer's best chunk size;
- cpu: 20,000 calls of 1 ms CPU, as a fraction of ideal (the CPU work / the workers);
- kills: 10,000 calls of 1 ms with a worker SIGKILLed every 150 ms: answered, lost, pool alive;
- hangs: 2,000 calls of which every 100th hangs, with a 2 s per-call timeout where the peer has
  one: answered, time, and the processes left behind once the program has ended.

    bench_peers.py [--quick] [--python PY] [--only herd_executor,ppe,...] [--workloads tiny,...]
                   [--json FILE]

The best chunk size is found by a sweep in the same run (tiny: at full size; cpu: on a tenth of
the calls, then the best is run at full size); the row names it. Each run is a fresh
interpreter (`PY bench_peers.py _run SPEC OUT`) so no pool outlives its row, and a run still
going at its deadline is stopped and reported as such. The runs use whatever `herd` package and
binary PY finds (the installed wheel, or HERD_BIN and PYTHONPATH); the PyPI peers are imported
from PY's environment, and one that is not installed is reported and left out. This process
is a child subreaper, so a pool's processes that outlive their program are found and counted
(then killed). Standard library only here; a wrong result makes the exit status 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import importlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pywork import work  # noqa: E402 - the peers' per-event work, also herd's Python worker

PYWORK = os.path.join(HERE, "pywork.py")

#: The peers installed from PyPI (the others ship with Python or with herd).
PYPI = {"loky": "loky", "pebble": "pebble", "mpire": "mpire", "joblib": "joblib"}
HERD_PEERS = ("herd_executor", "herd_run")
OTHER_PEERS = ("ppe", "loky", "pebble", "mpire", "joblib")
LABELS = {"herd_executor": "herd.Executor", "herd_run": "herd run, Python workers",
          "ppe": "ProcessPoolExecutor", "loky": "loky", "pebble": "pebble", "mpire": "mpire",
          "joblib": "joblib"}


@dataclass
class Sizes:
    tiny: int = 200_000
    tiny_chunks: Tuple[int, ...] = (256, 1024, 4096, 16384)
    cpu: int = 20_000
    cpu_chunks: Tuple[int, ...] = (1, 4, 16, 64)
    # herd run's chunk size is --batch: a batch is one handler call, so a few hundred suffice.
    tiny_batches: Tuple[int, ...] = (1, 64, 256, 1024)
    kills: int = 10_000
    kill_every: float = 0.15
    hangs: int = 2_000
    hang_timeout: float = 2.0
    slow: float = 180.0  # tiny, cpu: a run still going then is stopped (its rate so far shown)
    deadline: float = 45.0  # kills, hangs: a run still going then is stopped, and says so
    hang_deadline: float = 45.0  # hangs: the peers without a per-call timeout
    exit_grace: float = 5.0  # a program that has not exited this long after its last line hung


QUICK = Sizes(tiny=2_000, tiny_chunks=(16, 256), cpu=200, cpu_chunks=(16,),
              tiny_batches=(1, 64), kills=400,
              hangs=200, hang_timeout=0.5, slow=60.0, deadline=20.0, hang_deadline=2.0,
              exit_grace=1.0)


# ---------------------------------------------------------------------------------------------
# The events: JSON lines, as herd's; work() parses one and returns its result as JSON text.

def events(workload: str, n: int) -> List[str]:
    if workload == "tiny":
        return ['{"op":"square","n":%d}' % i for i in range(n)]
    spin = '{"op":"spin","ms":1}'
    if workload == "hangs":
        return ['{"op":"hang"}' if i % 100 == 99 else spin for i in range(n)]
    return [spin] * n


def expected(line: str) -> Optional[str]:
    """The right result of an event, computed here (not by work()); None: it hangs."""
    event = json.loads(line)
    if event["op"] == "square":
        return str(event["n"] * event["n"])
    if event["op"] == "spin":
        return str(event["ms"])
    return None


class Failed:
    """A call that got an error instead of a result (its type's name, or herd's error kind)."""

    def __init__(self, why: str) -> None:
        self.why = why


def failed(e: BaseException) -> Failed:
    return Failed(type(e).__name__)


def indexed(item: Tuple[int, str]) -> Tuple[int, str]:
    """work() for a peer whose results come unordered: the index travels with the call."""
    return item[0], work(item[1])


# ---------------------------------------------------------------------------------------------
# The peers: one small adapter each. open() starts the pool, close() stops it (abort: at once,
# the peer's own way of giving up on what is running); map() yields results in order (an error
# ends it); call() runs one call and hands its outcome to `done`.

Done = Callable[[Any], None]


def children(pid: int) -> List[int]:
    """The live child processes of `pid` (every thread's)."""
    out: List[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return [c for c in out if state(c) not in ("Z", "X", "")]


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def exe(pid: int) -> str:
    try:
        return os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return ""


PYTHON = os.path.realpath(sys.executable)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def connected(pid: int) -> bool:
    """Whether a herd worker has connected to herd (it holds a socket): a worker that is still
    starting is not one a kill is meant for (the peers' forked workers are up at once)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def module(name: str) -> Any:
    return importlib.import_module(name)


class Peer:
    """The defaults, for a pool whose workers are this process's children."""

    per_call = True  # has a submit() per call
    has_timeout = True  # has a per-call timeout
    retries_under_kills = 0  # retries (herd's) of a call whose worker was killed
    each_how = "a submit per call"  # how each() gets every call's outcome as it comes

    def __init__(self, workers: int, timeout: Optional[float], retries: int) -> None:
        self.workers = workers
        self.timeout = timeout  # per call, where the peer has one
        self.retries = retries  # where the peer has them (herd)

    def setting(self) -> str:
        """What a row says of this peer's own options (beyond the chunk size)."""
        return ""

    def open(self) -> None:
        raise NotImplementedError

    def open_for(self, chunk: int) -> None:
        """Opens the pool for map() at this chunk size (where the pool, not map, takes it)."""
        self.open()

    def map(self, fn: Callable[[str], str], items: List[str],
            chunk: int) -> Iterable[Tuple[int, Any]]:
        """(index, result) in order; an error ends it."""
        return enumerate(self.ordered(fn, items, chunk))

    def ordered(self, fn: Callable[[str], str], items: List[str], chunk: int) -> Iterable[Any]:
        raise NotImplementedError

    def call(self, fn: Callable[[str], str], item: str, done: Done) -> None:
        raise NotImplementedError

    def each(self, items: List[str]) -> Iterator[Tuple[int, Any]]:
        """(index, result or Failed) of every call as it comes, submitted all at once (as a
        user writes it)."""
        q: "queue.SimpleQueue[Tuple[int, Any]]" = queue.SimpleQueue()

        def to(i: int) -> Done:
            return lambda v: q.put((i, v))
        for i, item in enumerate(items):
            self.call(work, item, to(i))
        for _ in items:
            yield q.get()

    def close(self, abort: bool) -> None:
        raise NotImplementedError

    def decode(self, raw: Any) -> Any:
        """A result as work() returns it (JSON text), or Failed, from what map()/call() gave."""
        return raw

    def answers(self) -> bool:
        """Whether the pool answers a next call (within 10 s), after the kills."""
        box: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        probe = '{"op":"square","n":7}'
        try:
            if self.per_call:
                self.call(work, probe, box.put)
            else:
                box.put(next(iter(self.map(work, [probe], 1)))[1])
            return bool(box.get(timeout=10) == "49")
        except BaseException:  # noqa: BLE001 - a broken pool raises here
            return False

    def worker_pids(self) -> List[int]:
        # Python processes, but not a resource or semaphore tracker (multiprocessing's,
        # loky's); not a helper the pool runs either (loky runs pgrep).
        return [p for p in children(os.getpid())
                if exe(p) == PYTHON and "tracker" not in cmdline(p)]


def on_future(fut: "concurrent.futures.Future[Any]", done: Done) -> None:
    def settle(f: "concurrent.futures.Future[Any]") -> None:
        try:
            done(f.result())
        except BaseException as e:  # noqa: BLE001 - that call's outcome
            done(failed(e))
    fut.add_done_callback(settle)


class ExecutorPeer(Peer):
    """A concurrent.futures.Executor: submit() per call, map(chunksize=)."""

    ex: Any

    def ordered(self, fn: Callable[[str], str], items: List[str], chunk: int) -> Iterable[Any]:
        return self.ex.map(fn, items, chunksize=chunk)  # type: ignore[no-any-return]

    def call(self, fn: Callable[[str], str], item: str, done: Done) -> None:
        on_future(self.ex.submit(fn, item), done)

    def close(self, abort: bool) -> None:
        self.ex.shutdown(wait=not abort, cancel_futures=abort)


class Ppe(ExecutorPeer):
    has_timeout = False

    def open(self) -> None:
        import multiprocessing
        # The Linux default in 3.11 (not from 3.14 on): what the article's users got.
        self.ex = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("fork"))


class Loky(ExecutorPeer):
    has_timeout = False

    def open(self) -> None:
        self.ex = module("loky").get_reusable_executor(max_workers=self.workers)

    def close(self, abort: bool) -> None:
        self.ex.shutdown(wait=not abort, kill_workers=abort)


class HerdExecutor(ExecutorPeer):
    retries_under_kills = 3

    def setting(self) -> str:
        return f"retries={self.retries}" if self.retries else ""

    def open(self) -> None:
        self.ex = module("herd").Executor(self.workers, timeout=self.timeout,
                                          retries=self.retries, stderr=subprocess.DEVNULL)

    def worker_pids(self) -> List[int]:
        return [p for p in children(self.ex._daemon.pid) if connected(p)]


class Pebble(Peer):
    def open(self) -> None:
        self.pool = module("pebble").ProcessPool(max_workers=self.workers)

    def ordered(self, fn: Callable[[str], str], items: List[str], chunk: int) -> Iterable[Any]:
        return self.pool.map(fn, items, chunksize=chunk).result()  # type: ignore[no-any-return]

    def call(self, fn: Callable[[str], str], item: str, done: Done) -> None:
        on_future(self.pool.schedule(fn, args=(item,), timeout=self.timeout), done)

    def close(self, abort: bool) -> None:
        if abort:
            self.pool.stop()
        else:
            self.pool.close()
        self.pool.join()


class Mpire(Peer):
    def open(self) -> None:
        self.pool = module("mpire").WorkerPool(n_jobs=self.workers, start_method="fork")

    def ordered(self, fn: Callable[[str], str], items: List[str], chunk: int) -> Iterable[Any]:
        return self.pool.imap(fn, items, chunk_size=chunk,  # type: ignore[no-any-return]
                              task_timeout=self.timeout)

    def call(self, fn: Callable[[str], str], item: str, done: Done) -> None:
        self.pool.apply_async(fn, (item,), callback=done,
                              error_callback=lambda e: done(failed(e)),
                              task_timeout=self.timeout)

    def close(self, abort: bool) -> None:
        if abort:
            self.pool.terminate()
        else:
            self.pool.stop_and_join()


class Joblib(Peer):
    per_call = False  # Parallel runs a batch of delayed calls; no submit()
    has_timeout = False
    each_how = "generator_unordered, batch 1"

    def open(self) -> None:
        self.joblib = module("joblib")
        self.gen: Any = None

    def ordered(self, fn: Callable[[str], str], items: List[str], chunk: int) -> Iterable[Any]:
        return self._run(fn, items, chunk, "generator")

    def each(self, items: List[str]) -> Iterator[Tuple[int, Any]]:
        return iter(self._run(indexed, list(enumerate(items)), 1, "generator_unordered"))

    def _run(self, fn: Callable[..., Any], items: List[Any], batch: int,
             how: str) -> Iterable[Any]:
        par = self.joblib.Parallel(n_jobs=self.workers, batch_size=batch, return_as=how)
        call = self.joblib.delayed(fn)
        self.gen = par(call(x) for x in items)
        return self.gen  # type: ignore[no-any-return]

    def close(self, abort: bool) -> None:
        if abort and self.gen is not None:
            try:
                self.gen.close()  # joblib's abort: its loky workers are killed
            except ValueError:  # "generator already executing": in the collecting thread
                pass
        # joblib keeps loky's reusable executor for the next Parallel; a program stops it so.
        self.joblib.externals.loky.get_reusable_executor().shutdown(
            wait=not abort, kill_workers=abort)


class HerdRun(Peer):
    """`herd run -w 2 -- python scripts/pywork.py`, the events on its stdin: map() only (a
    stream), results are its records. Its chunk size is `--batch N` (a worker's handler takes
    up to N events at once, docs/BATCHES.md; 1: one event per call): the sweep picks it as it
    picks the others' chunksize."""

    per_call = False
    each_how = "stream"
    retries_under_kills = 3

    def setting(self) -> str:
        return f"--retries {self.retries}" if self.retries else ""

    def open(self) -> None:
        self.open_for(1)

    def open_for(self, batch: int) -> None:
        herd = module("herd.daemon").find_herd_bin()
        opts = ["-w", str(self.workers), "--retries", str(self.retries)]
        if self.timeout is not None:
            opts += ["--timeout", f"{int(self.timeout * 1000)}ms"]
        worker = [sys.executable, PYWORK]
        if batch > 1:
            opts += ["--batch", str(batch)]
            worker += ["--batch", str(batch)]
        self.proc = subprocess.Popen([herd, "run", "-q", *opts, "--", *worker],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)

    def each(self, items: List[str]) -> Iterator[Tuple[int, Any]]:
        return iter(self.map(work, items, 1))

    def map(self, fn: Callable[[str], str], items: List[str],
            chunk: int) -> Iterable[Tuple[int, Any]]:
        data = "".join(x + "\n" for x in items).encode()
        stdin = self.proc.stdin
        assert stdin is not None and self.proc.stdout is not None

        def feed() -> None:
            try:
                stdin.write(data)
                stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        threading.Thread(target=feed, daemon=True).start()
        return self._records(self.proc.stdout.fileno(), len(items))

    @staticmethod
    def _records(fd: int, n: int) -> Iterator[Tuple[int, bytes]]:
        """(seq, record) as they come; the record is decoded after the clock stops."""
        rest = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:  # {"seq":N,...
                yield int(line[7:line.index(b",")]), line

    def decode(self, raw: Any) -> Any:
        rec = json.loads(raw)
        if rec["ok"]:
            return json.dumps(rec["output"])
        return Failed(rec.get("error", {}).get("kind", "error"))

    def close(self, abort: bool) -> None:
        if abort:
            self.proc.kill()
        self.proc.wait()

    def answers(self) -> bool:
        """The stream has ended: whether herd ran it to the end (exit status 0)."""
        return self.proc.wait() == 0

    def worker_pids(self) -> List[int]:
        return [p for p in children(self.proc.pid) if connected(p)]


ADAPTERS: Dict[str, Callable[[int, Optional[float], int], Peer]] = {
    "herd_executor": HerdExecutor, "herd_run": HerdRun, "ppe": Ppe, "loky": Loky,
    "pebble": Pebble, "mpire": Mpire, "joblib": Joblib}


# ---------------------------------------------------------------------------------------------
# One run, in a fresh interpreter: `bench_peers.py _run SPEC OUT`.

@dataclass
class Spec:
    peer: str
    workload: str  # tiny, cpu, kills, hangs
    mode: str  # each (every call's outcome as it comes: Peer.each) or map
    n: int
    chunk: int = 1
    workers: int = 2
    timeout: Optional[float] = None
    retries: int = 0
    kill_every: float = 0.0
    deadline: float = 45.0


@dataclass
class Outcome:
    spec: Dict[str, Any]
    setting: str = ""
    seconds: float = 0.0
    finished: bool = False  # every call had its outcome before the deadline
    answered: int = 0  # calls with an outcome: a result or an error
    right: int = 0  # calls with the right result
    wrong: int = 0  # a wrong result, or a second outcome for a call
    errors: Dict[str, int] = field(default_factory=dict)  # per-call errors, by type
    error: Optional[str] = None  # what ended the run early (a broken pool)
    alive: Optional[bool] = None  # kills: the pool answered a next call afterwards
    kills: int = 0
    exit_hung: bool = False  # set by the parent: the program did not end after its last line
    left: int = 0  # set by the parent: processes alive after the program ended


def run(spec: Spec) -> Outcome:
    peer = ADAPTERS[spec.peer](spec.workers, spec.timeout, spec.retries)
    out = Outcome(spec=asdict(spec), setting=peer.setting())
    items = events(spec.workload, spec.n)
    got: List[Tuple[int, Any]] = []
    opened, done, stop = threading.Event(), threading.Event(), threading.Event()

    def collect() -> None:
        t0 = time.perf_counter()
        try:
            if spec.mode == "map":
                peer.open_for(spec.chunk)
            else:
                peer.open()
            opened.set()
            it = peer.each(items) if spec.mode == "each" else peer.map(work, items, spec.chunk)
            for pair in it:
                got.append(pair)
        except BaseException as e:  # noqa: BLE001 - a broken pool ends the run: reported
            out.error = f"{type(e).__name__}: {e}"[:200]
        out.seconds = time.perf_counter() - t0  # every outcome in hand
        if out.error is None and spec.workload != "kills":
            peer.close(abort=False)
            out.seconds = time.perf_counter() - t0  # and the pool shut down
        done.set()

    killer = None
    if spec.kill_every > 0:
        killer = threading.Thread(target=kill_loop,
                                  args=(peer, spec.kill_every, opened, stop, out), daemon=True)
    threading.Thread(target=collect, daemon=True).start()
    if killer:
        killer.start()
    out.finished = done.wait(spec.deadline) and out.error is None
    stop.set()
    # What came by the deadline (not what an abort below fails on its way out).
    answered = list(got)
    if not done.is_set():
        out.seconds = spec.deadline
    if killer:
        killer.join()
    if spec.workload == "kills" and (out.finished or out.error is not None):
        out.alive = peer.answers()
    if not (out.finished and spec.workload != "kills"):
        within(lambda: peer.close(abort=not out.finished), 10.0)
    tally(peer, items, answered, out)
    return out


def kill_loop(peer: Peer, every: float, opened: threading.Event, stop: threading.Event,
              out: Outcome) -> None:
    """A random worker of the pool SIGKILLed `every` seconds, from its start to the last
    outcome or the deadline."""
    rng = random.Random(7)
    while not opened.wait(0.01):
        if stop.is_set():
            return
    while not stop.wait(every):
        pids = peer.worker_pids()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                out.kills += 1
            except ProcessLookupError:
                pass


def within(fn: Callable[[], None], seconds: float) -> None:
    """Runs fn, giving up on it after `seconds` (a pool that hangs in its shutdown)."""
    def quietly() -> None:
        try:
            fn()
        except BaseException:  # noqa: BLE001 - a broken pool may fail its shutdown too
            pass
    t = threading.Thread(target=quietly, daemon=True)
    t.start()
    t.join(seconds)


def tally(peer: Peer, items: List[str], got: List[Tuple[int, Any]], out: Outcome) -> None:
    seen = bytearray(len(items))
    for i, raw in got:
        value = peer.decode(raw)
        if not 0 <= i < len(items) or seen[i]:
            out.wrong += 1
            continue
        seen[i] = 1
        out.answered += 1
        if isinstance(value, Failed):
            out.errors[value.why] = out.errors.get(value.why, 0) + 1
        elif value == expected(items[i]):
            out.right += 1
        else:
            out.wrong += 1


def run_main(spec_json: str, path: str) -> None:
    out = run(Spec(**json.loads(spec_json)))
    with open(path + ".tmp", "w") as f:
        json.dump(asdict(out), f)
    os.rename(path + ".tmp", path)
    # Then the program ends as a user's would: a pool that keeps it alive is found by the parent.


# ---------------------------------------------------------------------------------------------
# The parent: runs, sweeps, leftovers, the table.

def subreaper() -> None:
    """Orphans of a run (pool processes whose program has ended) become this process's
    children, where leftovers() finds them."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"bench_peers: prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def descendants(pid: int) -> List[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def leftovers(settle: float) -> int:
    """The processes a finished run left behind (after `settle` seconds for a pool that stops
    by itself), killed once counted."""
    deadline = time.monotonic() + settle
    while True:
        reap()
        left = descendants(os.getpid())
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    while True:
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        reap()
        rest = descendants(os.getpid())
        if not rest:
            return len(left)
        left += [p for p in rest if p not in left]


class Runner:
    def __init__(self, python: str, sizes: Sizes, workers: int) -> None:
        self.python = python
        self.sizes = sizes
        self.workers = workers
        # Where each run writes its outcome; removed at the end (or at exit, if it fails).
        self._tmp = tempfile.TemporaryDirectory(prefix="herd-bench-peers-")
        self.tmp = self._tmp.name

    def close(self) -> None:
        self._tmp.cleanup()

    def __call__(self, spec: Spec) -> Outcome:
        spec.workers = self.workers
        path = os.path.join(self.tmp, "out.json")
        if os.path.exists(path):
            os.unlink(path)
        say(f"  {spec.peer} {spec.workload} {spec.mode} n={spec.n} chunk={spec.chunk}")
        proc = subprocess.Popen([self.python, os.path.abspath(__file__), "_run",
                                 json.dumps(asdict(spec)), path])
        # The outcome is written once the run has its figures; then the program should end.
        limit = time.monotonic() + spec.deadline + 30
        while not os.path.exists(path) and proc.poll() is None and time.monotonic() < limit:
            time.sleep(0.02)
        try:
            with open(path) as f:
                out = Outcome(**json.load(f))
        except (OSError, ValueError):
            out = Outcome(spec=asdict(spec), error=f"the run ended without an outcome "
                                                   f"(exit {proc.poll()})")
        try:
            proc.wait(self.sizes.exit_grace)
        except subprocess.TimeoutExpired:
            out.exit_hung = True
            proc.kill()
            proc.wait()
        out.left = leftovers(settle=1.0)
        if out.left and spec.workload != "hangs":
            say(f"bench_peers: {spec.peer} {spec.workload} left {out.left} processes behind")
        return out


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def installed(python: str, name: str) -> bool:
    return subprocess.run([python, "-c", f"import {name}"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


@dataclass
class Row:
    group: str  # rows of one group are compared with the group's best peer
    peer: str
    setting: str
    figure: Optional[float]  # higher is better
    text: str  # the figures, as printed
    checked: str
    ratio: Optional[float] = None


def checked(out: Outcome) -> str:
    n = out.spec["n"]
    if out.wrong:
        return f"WRONG: {out.wrong} results"
    return f"{out.right:,}/{n:,} right"


class Section:
    """The "Python peers" section: a function per workload, each adding its rows."""

    def __init__(self, python: str, sizes: Sizes, workers: int, peers: List[str]) -> None:
        self.sizes = sizes
        self.workers = workers
        self.peers = peers
        self.run_one = Runner(python, sizes, workers)
        self.rows: List[Row] = []
        self.bad: List[str] = []  # what failed its check, or failed outright
        self.sweeps: List[str] = []  # chunk size: calls/s, per peer and workload
        self.runs: List[Dict[str, Any]] = []  # every run's figures

    def adapter(self, name: str) -> Peer:
        return ADAPTERS[name](self.workers, None, 0)

    def run(self, spec: Spec) -> Outcome:
        out = self.run_one(spec)
        self.runs.append(asdict(out))
        if out.wrong:
            self.bad.append(f"{spec.peer} {spec.workload}: {checked(out)}")
        return out

    def tiny(self) -> None:
        """200,000 tiny calls: a submit() per call where the peer has one, then map() at the
        best chunk size of a sweep at full size."""
        n = self.sizes.tiny
        for name in self.peers:
            if self.adapter(name).per_call:
                o = self.run(Spec(name, "tiny", "each", n, deadline=self.sizes.slow))
                self.rows.append(self.throughput(f"tiny {n:,}, a submit per call", o, "submit"))
        for name in self.peers:
            chunks = self.sizes.tiny_batches if name == "herd_run" else self.sizes.tiny_chunks
            best = self.sweep(name, "tiny", n, chunks, f"tiny {n:,}, map")
            if best is not None:
                self.rows.append(self.throughput(f"tiny {n:,}, map", best,
                                                 self.chunk_setting(name, best)))

    def cpu(self) -> None:
        """20,000 calls of 1 ms CPU, map() at the best chunk size of a sweep on a tenth of
        them: the fraction of ideal (the CPU work over the workers)."""
        n, small = self.sizes.cpu, max(self.sizes.cpu // 10, 1)
        ideal = n * 0.001 / self.workers
        g = f"cpu {n:,} x 1 ms, fraction of ideal"
        for name in self.peers:
            best = self.sweep(name, "cpu", small, self.sizes.cpu_chunks,
                              f"cpu (sweep on {small:,} calls)")
            if best is None:
                continue
            o = self.run(Spec(name, "cpu", "map", n, chunk=best.spec["chunk"],
                              deadline=self.sizes.slow))
            r = self.throughput(g, o, self.chunk_setting(name, o))
            if r.figure:  # the CPU work done over the workers' wall time
                r.figure = o.right * 0.001 / self.workers / o.seconds
                stopped = "" if o.finished else ", stopped"
                r.text = f"{r.figure:.3f} ({o.seconds:.2f} s{stopped}, ideal {ideal:.2f} s)"
            self.rows.append(r)

    def kills(self) -> None:
        """10,000 calls of 1 ms, a worker SIGKILLed every 150 ms: the calls answered right, the
        calls lost, whether the pool answers a next call; stopped at the deadline."""
        n, sz = self.sizes.kills, self.sizes
        g = f"kills {n:,} x 1 ms, SIGKILL every {sz.kill_every * 1000:.0f} ms"
        for name in self.peers:
            a = self.adapter(name)
            o = self.run(Spec(name, "kills", "each", n, retries=a.retries_under_kills,
                              kill_every=sz.kill_every, deadline=sz.deadline))
            end = "" if o.finished else (
                f", {o.error[:60]}" if o.error else f", stopped at {sz.deadline:.0f} s")
            # A run stopped at the deadline still holds its calls: no next call is tried.
            after = "" if o.alive is None else \
                f", next call {'answered' if o.alive else 'FAILED'}"
            text = f"{o.right:,} answered, {n - o.right:,} lost{after}, {o.kills} kills{end}"
            setting = ", ".join(x for x in (a.each_how, o.setting) if x)
            self.rows.append(Row(g, name, setting, float(o.right), text, checked(o)))

    def hangs(self) -> None:
        """2,000 calls of 1 ms, every 100th of which hangs, with the per-call timeout where the
        peer has one (else only the deadline): calls answered (a result or an error), time,
        and the processes left once the program has ended."""
        n, sz = self.sizes.hangs, self.sizes
        g = f"hangs {n:,} x 1 ms, every 100th hangs"
        for name in self.peers:
            t = sz.hang_timeout if self.adapter(name).has_timeout else None
            deadline = sz.deadline if t else sz.hang_deadline
            o = self.run(Spec(name, "hangs", "each", n, timeout=t, deadline=deadline))
            how = f"timeout {t:g} s" if t else f"no per-call timeout: deadline {deadline:.0f} s"
            end = "all answered" if o.finished else f"stopped at {deadline:.0f} s"
            text = (f"{o.answered:,} answered ({o.right:,} right), {o.seconds:.1f} s, "
                    f"{o.left} processes left{', exit hung' if o.exit_hung else ''}; "
                    f"{o.error[:60] if o.error else end}")
            self.rows.append(Row(g, name, how, float(o.answered), text, checked(o)))

    def throughput(self, group: str, out: Outcome, setting: str) -> Row:
        n = out.spec["n"]
        if out.finished and out.right == n and not out.wrong:
            eps = n / out.seconds
            return Row(group, out.spec["peer"], setting, eps,
                       f"{eps:,.0f} calls/s ({out.seconds:.2f} s)", checked(out))
        if not out.finished and not out.error and not out.wrong:  # too slow: its rate so far
            eps = out.right / out.seconds
            return Row(group, out.spec["peer"], setting, eps,
                       f"{eps:,.0f} calls/s: stopped at {out.seconds:.0f} s", checked(out))
        self.bad.append(f"{out.spec['peer']} {group}: {out.error or checked(out)}")
        return Row(group, out.spec["peer"], setting, None, f"FAILED: {out.error}",
                   checked(out))

    def chunk_setting(self, name: str, out: Outcome) -> str:
        chunk = out.spec["chunk"]
        if name != "herd_run":
            parts = [f"chunksize {chunk}"]
        else:
            parts = [f"--batch {chunk}" if chunk > 1 else "no --batch"]
        return ", ".join(parts + ([out.setting] if out.setting else []))

    def sweep(self, name: str, workload: str, n: int, chunks: Tuple[int, ...],
              label: str) -> Optional[Outcome]:
        """map() at each chunk size once (herd run: each `--batch`): the fastest run whose
        results are all right, or None (then a FAILED row)."""
        best: Optional[Outcome] = None
        notes = []
        for c in chunks:
            o = self.run(Spec(name, workload, "map", n, chunk=c, deadline=self.sizes.slow))
            ok = o.finished and o.right == n and not o.wrong
            notes.append(f"{c}: {n / o.seconds:,.0f}" if ok else f"{c}: failed")
            if not ok:
                self.bad.append(f"{name} {workload} chunksize {c}: {o.error or checked(o)}")
            elif best is None or o.seconds < best.seconds:
                best = o
        if len(notes) > 1:
            self.sweeps.append(f"{LABELS[name]}, {label}: {'; '.join(notes)}")
        if best is None:
            self.rows.append(Row(label, name, "", None, "FAILED at every chunk size", "-"))
        return best

    def ratios(self) -> None:
        for r in self.rows:
            top = max((x.figure for x in self.rows if x.group == r.group
                       and x.peer in OTHER_PEERS and x.figure), default=None)
            if r.figure and top:
                r.ratio = r.figure / top


def bench(args: argparse.Namespace) -> int:
    subreaper()
    if not installed(args.python, "herd"):
        say(f"bench_peers: the herd package is not importable by {args.python}")
        return 1
    missing = []
    peers = []
    for name in (*HERD_PEERS, *OTHER_PEERS):
        if args.only and name not in args.only:
            continue
        if name in PYPI and not installed(args.python, PYPI[name]):
            say(f"\nbench_peers: ***** {name} IS NOT INSTALLED in {args.python}: its rows are "
                f"left out *****\n")
            missing.append(name)
        else:
            peers.append(name)
    sizes = QUICK if args.quick else Sizes()
    sec = Section(args.python, sizes, args.workers, peers)
    load = [os.getloadavg()[0]]
    workloads = {"tiny": sec.tiny, "cpu": sec.cpu, "kills": sec.kills, "hangs": sec.hangs}
    try:
        for w in args.workloads.split(","):
            workloads[w]()
    finally:
        sec.run_one.close()
    sec.ratios()
    load.append(os.getloadavg()[0])
    sec.rows += [Row("-", name, "", None, "NOT INSTALLED: left out", "-") for name in missing]
    print_rows(sec.rows, args.workers)
    # The figures mean little if the machine was busy with something else.
    print(f"\nload average (1 min) at the start / end: {load[0]:.1f} / {load[1]:.1f} on "
          f"{os.cpu_count()} CPUs")
    if sec.sweeps:
        print("\nchunk size sweeps (chunk size: calls/s; the best is the row's):")
        for line in sec.sweeps:
            print(f"  {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": asdict(sizes), "loadavg": load, "rows": [asdict(r) for r in sec.rows],
                       "sweeps": sec.sweeps, "runs": sec.runs}, f, indent=1)
    for b in sec.bad:
        say(f"bench_peers: CHECK FAILED: {b}")
    # A peer that breaks is a figure; herd failing, or any wrong result, is a failure.
    return 1 if any(b.startswith(HERD_PEERS) or "WRONG" in b for b in sec.bad) else 0


def print_rows(rows: List[Row], workers: int) -> None:
    print(f"\nPython peers ({workers} workers each, same events, every result checked; "
          "vs best peer: the figure over the best non-herd peer's in its group)\n")
    head = ["workload", "peer", "setting", "figures", "vs best peer", "checked"]
    cells = [head] + [[r.group, LABELS.get(r.peer, r.peer), r.setting, r.text,
                       "-" if r.ratio is None else f"{r.ratio:.2f}", r.checked] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for i, c in enumerate(cells):
        print("  ".join(x.ljust(widths[j]) for j, x in enumerate(c)).rstrip())
        if i == 0:
            print("  ".join("-" * wd for wd in widths))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_run":
        return run_main(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a check of the harness)")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter the runs use (with the peers and herd installed)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="comma-separated peers: " + ",".join(ADAPTERS))
    ap.add_argument("--workloads", default="tiny,cpu,kills,hangs")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()
    if args.only:
        args.only = args.only.split(",")
        unknown = [p for p in args.only if p not in ADAPTERS]
        if unknown:
            ap.error(f"unknown peers: {unknown}")
    sys.exit(bench(args))


if __name__ == "__main__":
    main()
