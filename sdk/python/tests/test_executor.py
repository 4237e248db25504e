"""herd.Executor with real processes: the concurrent.futures API (submit, map with chunksize and
buffersize, shutdown, cancel), the pool's options (timeout, max_tasks_per_child,
initializer), a running daemon's executor workers (address=), and a private pool that dies
with its Python process, SIGKILL included. The fault matrix is test_executor_faults.py;
CPython's own tests are cpython_conformance.py (run by scripts/test.sh)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import CancelledError, wait
from typing import Any, Dict, Iterator, List

import pytest

import executor_calls as calls
import herd
from conftest import TIMEOUT, wait_until
from test_serve import alive, children, runtime  # noqa: F401 - runtime is a fixture

HERE = os.path.dirname(os.path.abspath(__file__))


def test_submit_map_and_results(runtime: str) -> None:  # noqa: F811
    with herd.Executor(2) as ex:
        assert isinstance(ex, __import__("concurrent.futures").futures.Executor)
        assert ex.submit(pow, 2, 8).result(timeout=TIMEOUT) == 256
        assert ex.submit(calls.echo, x={"a": [1, 2]}).result(timeout=TIMEOUT) == {"a": [1, 2]}
        want = [i ** i for i in range(50)]
        assert list(ex.map(pow, range(50), range(50))) == want
        assert list(ex.map(pow, range(50), range(50), chunksize=7)) == want
        # The calls run with this process's working directory and environment.
        assert ex.submit(os.getcwd).result(timeout=TIMEOUT) == os.getcwd()
        assert ex.submit(calls.get_env, "PATH").result(timeout=TIMEOUT) == os.environ["PATH"]
        workers = children(ex._daemon.pid) if ex._daemon else []
        assert len(workers) == 2
        control = ex.address
        assert os.path.exists(control)
    assert not os.path.exists(control)
    assert not any(alive(w) for w in workers)


def test_lambdas_and_closures_travel_with_cloudpickle(runtime: str) -> None:  # noqa: F811
    # The test venv installs cloudpickle (scripts/test.sh); without it calls go by pickle.
    assert herd.executor.PICKLER == "cloudpickle"
    k = 3
    with herd.Executor(1) as ex:
        assert ex.submit(lambda x: x * k, 14).result(timeout=TIMEOUT) == 42
        assert list(ex.map(lambda x: x + k, range(3))) == [3, 4, 5]
        # Outcomes go by plain pickle when they can; what it refuses, cloudpickle carries.
        add = ex.submit(lambda: (lambda y: y + k)).result(timeout=TIMEOUT)
        assert add(1) == 4
        local = ex.submit(lambda: ValueError(lambda: None)).result(timeout=TIMEOUT)
        assert type(local) is ValueError and local.args[0]() is None


def test_the_automatic_inflight_follows_the_calls_time() -> None:
    """_Pace on made-up outcome times (no processes): the limit the executor keeps."""
    pace = herd.executor._Pace(2)
    assert pace.limit == 4

    def outcomes(pairs: int, every: float, t: float) -> float:
        """Outcomes in pairs (two workers answering together), a pair every `every` s."""
        for _ in range(pairs):
            t += every
            pace.outcome(t)
            pace.outcome(t + 1e-5)
        return t
    # 20 ms calls: 2 per worker, however the pairs fall.
    t = outcomes(50, 0.02, 100.0)
    assert pace.limit == 4
    # Calls of 40 µs a worker (outcomes every 20 µs): 2 ms / 40 µs = 50 per worker.
    pace.idle()
    t = outcomes(2000, 4e-5, t + 1)
    assert 90 <= pace.limit <= 110, pace.limit
    # 1 µs calls: the ceiling, 128 per worker.
    t = outcomes(2000, 2e-6, t)
    assert pace.limit == 256
    # Calls that turn slow bring it down within a few stretches of 4 outcomes.
    t = outcomes(6, 0.02, t)
    assert pace.limit == 4
    # Idle: back to 2 per worker, and a first slow stretch keeps it there.
    t = outcomes(2000, 2e-6, t)
    pace.idle()
    assert pace.limit == 4
    outcomes(4, 0.02, t + 1)
    assert pace.limit == 4


def test_tiny_and_slow_calls_under_the_automatic_inflight(runtime: str) -> None:  # noqa: F811
    """The executor with its automatic `inflight`: a burst of tiny calls, then slow ones (which
    must not all go to herd at once, so that cancelling them is free), all answered."""
    with herd.Executor(2) as ex:
        tiny = [ex.submit(abs, -i) for i in range(20_000)]
        assert [f.result(timeout=TIMEOUT) for f in tiny] == list(range(20_000))
        wait_until("the executor idle again", lambda: ex._inflight_max == 4 or None)
        slow = [ex.submit(time.sleep, 0.02) for _ in range(30)]
        slow[-1].result(timeout=TIMEOUT)
        assert ex._inflight_max == 4
        wait(slow, timeout=TIMEOUT)
        assert all(f.result() is None for f in slow)
        # Queued behind slow ones in the executor (4 with herd): cancelled for free, herd
        # never sees them.
        more = [ex.submit(time.sleep, 0.05) for _ in range(20)]
        assert sum(f.cancel() for f in more[8:]) == 12
        wait(more, timeout=TIMEOUT)
        assert [f.cancelled() for f in more] == [False] * 8 + [True] * 12
        st = json.loads(subprocess.run(
            [herd.find_herd_bin(), "status", "--json", "--control", ex.address],
            stdout=subprocess.PIPE, timeout=TIMEOUT, check=True).stdout)
        assert st["totals"]["cancelled"] == 0 and st["totals"]["ok"] == 20_000 + 30 + 8, st


def test_map_with_buffersize_reads_its_input_lazily(runtime: str) -> None:  # noqa: F811
    read: List[int] = []

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            read.append(i)
            yield i

    with herd.Executor(2) as ex:
        out = ex.map(abs, numbers(), buffersize=4)
        assert len(read) == 4  # submitted at once, as 3.14's
        assert [next(out) for _ in range(10)] == list(range(10))
        assert len(read) <= 15
        out.close()  # the calls still pending are cancelled
        chunked = ex.map(pow, numbers(), itertools.repeat(2), chunksize=5, buffersize=2)
        assert [next(chunked) for _ in range(12)] == [(i - 14) ** 2 for i in range(14, 26)]
        chunked.close()
        with pytest.raises(ValueError):
            ex.map(abs, [1], buffersize=0)
        with pytest.raises(ValueError):
            ex.map(abs, [1], chunksize=0)


def test_a_timeout_fails_that_call_and_the_pool_serves_on(runtime: str) -> None:  # noqa: F811
    with herd.Executor(2, timeout=0.5) as ex:
        slow = ex.submit(time.sleep, 60)
        quick = [ex.submit(pow, 2, i) for i in range(20)]
        with pytest.raises(herd.EventTimeout):
            slow.result(timeout=TIMEOUT)
        assert [f.result(timeout=TIMEOUT) for f in quick] == [2 ** i for i in range(20)]
        assert ex.submit(pow, 3, 2).result(timeout=TIMEOUT) == 9


def test_retries_run_a_crashed_call_again(runtime: str) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory() as tmp:
        mark = os.path.join(tmp, "first")
        with herd.Executor(1, retries=1) as ex:
            # Crashes its first worker only: the retry finds the mark and returns.
            f = ex.submit(_crash_once, mark)
            assert f.result(timeout=TIMEOUT) == "second attempt"


def _crash_once(mark: str) -> str:
    if not os.path.exists(mark):
        open(mark, "w").close()
        calls.crash()
    return "second attempt"


def test_cancel_queued_and_running_calls(runtime: str) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory() as tmp, herd.Executor(1, inflight=1) as ex:
        first_pid = ex.submit(os.getpid).result(timeout=TIMEOUT)
        started = os.path.join(tmp, "started")
        running = ex.submit(calls.mark_and_sleep, started, 120)
        queued = ex.submit(pow, 2, 2)
        # Queued here (inflight=1): cancelled as the standard library's.
        assert queued.cancel() and queued.cancelled()
        wait_until("the call to start", lambda: os.path.exists(started))
        assert running.running()
        # Running: herd's cancel() stops it (the standard library's would return False).
        t0 = time.monotonic()
        assert running.cancel()
        assert running.cancelled() and running.done()
        with pytest.raises(CancelledError):
            running.result(timeout=0)
        done, _ = wait([running], timeout=0)
        assert done == {running}
        # Its worker was killed and replaced: the next call runs at once, elsewhere.
        assert ex.submit(os.getpid).result(timeout=TIMEOUT) != first_pid
        assert time.monotonic() - t0 < 60


def test_max_tasks_per_child_and_initializer(runtime: str) -> None:  # noqa: F811
    with herd.Executor(1, max_tasks_per_child=2, initializer=calls.init,
                       initargs=("ready",)) as ex:
        pids = [ex.submit(os.getpid).result(timeout=TIMEOUT) for _ in range(6)]
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
        assert len(set(pids)) == 3, pids
        # Every new worker ran the initializer.
        assert ex.submit(calls.initialized).result(timeout=TIMEOUT) == "ready"


def test_a_failing_initializer_fails_calls_not_the_pool(runtime: str) -> None:  # noqa: F811
    with herd.Executor(1, initializer=calls.init_fail) as ex:
        for _ in range(2):
            with pytest.raises(herd.InitializerFailed, match="error in initializer") as info:
                ex.submit(pow, 2, 2).result(timeout=TIMEOUT)
            assert "init_fail" in str(info.value.__cause__)


def test_an_executor_on_a_running_daemon(runtime: str) -> None:  # noqa: F811
    # Its workers have their own sys.path: this directory is on it for executor_calls.
    path = os.pathsep.join([HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    with herd.serve(sys.executable, "-m", "herd.executor_worker", workers=2, options=["-q"],
                    env=dict(os.environ, PYTHONPATH=path)) as daemon:
        with herd.Executor(2, address=daemon.control) as ex:
            assert ex._daemon is None
            assert list(ex.map(pow, range(10), range(10), chunksize=3)) == \
                [i ** i for i in range(10)]
            pids = {ex.submit(calls.pid_after, 0.2).result(timeout=TIMEOUT) for _ in range(2)}
            assert pids <= set(children(daemon.pid))
        # The daemon is the caller's: it still serves.
        assert daemon.process.poll() is None
        with herd.Executor(2, address=daemon.control) as ex:
            assert ex.submit(pow, 2, 3).result(timeout=TIMEOUT) == 8
    with pytest.raises(ValueError):
        herd.Executor(2, address=daemon.control, timeout=1)


def test_bad_arguments() -> None:
    for n in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            herd.Executor(n)
    with pytest.raises(TypeError):
        herd.Executor(1, initializer=3)  # type: ignore[arg-type]


def _script(body: str) -> List[str]:
    """A Python program (this interpreter, this sys.path) running `body`."""
    return [sys.executable, "-c",
            f"import sys; sys.path[:0] = {[HERE] + sys.path!r}\n" + body]


def _run_main(path: str, source: str) -> "subprocess.CompletedProcess[bytes]":
    """Writes `source` to `path` and runs it as a program's main script (this interpreter,
    this sys.path): what workers import as the main module."""
    with open(path, "w") as f:
        f.write(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=TIMEOUT)


def test_the_pool_dies_with_a_sigkilled_python(runtime: str) -> None:  # noqa: F811
    """A Python program with an executor is SIGKILLed mid-call: no daemon, worker or socket
    is left."""
    with tempfile.TemporaryDirectory(prefix="herd-pyexec-") as tmp:
        info = os.path.join(tmp, "info.json")
        started = os.path.join(tmp, "started")
        body = f"""
import json, os, time
import herd, executor_calls
ex = herd.Executor(2)
pids = {{ex.submit(executor_calls.pid_after, 0.3).result() for _ in range(4)}}
ex.submit(executor_calls.mark_and_sleep, {started!r}, 3600)
with open({info!r} + ".tmp", "w") as f:
    json.dump({{"daemon": ex._daemon.pid, "control": ex.address, "workers": sorted(pids)}}, f)
os.rename({info!r} + ".tmp", {info!r})
time.sleep(3600)
"""
        owner = subprocess.Popen(_script(body), stderr=subprocess.PIPE)
        try:
            wait_until("the executor to be ready",
                       lambda: os.path.exists(info) and os.path.exists(started)
                       or owner.poll() is not None)
            assert owner.poll() is None, owner.communicate()[1].decode()
            with open(info) as f:
                got: Dict[str, object] = json.load(f)
            pid, control = got["daemon"], got["control"]
            assert isinstance(pid, int) and isinstance(control, str)
            workers = children(pid)
            assert len(workers) == 2 and alive(pid) and os.path.exists(control)
        finally:
            owner.send_signal(signal.SIGKILL)
            owner.wait(TIMEOUT)
            assert owner.stderr is not None
            owner.stderr.close()
        wait_until("the daemon to exit", lambda: not alive(pid))
        wait_until("its workers to exit", lambda: not any(alive(w) for w in workers))
        wait_until("its control socket to go", lambda: not os.path.exists(control))
        wait_until("its runtime dir to go", lambda: os.listdir(runtime) == [])


def test_calls_submitted_run_when_the_program_just_exits(runtime: str) -> None:  # noqa: F811
    """CPython's test_interpreter_shutdown, test_hang_gh83386 and
    test_submit_after_interpreter_shutdown with herd.Executor: a program that submits and
    exits (no shutdown, or shutdown(wait=False)) still gets its calls run; a submit from an
    atexit hook is refused; nothing is printed on stderr."""
    with tempfile.TemporaryDirectory(prefix="herd-pyexec-") as tmp:
        for i, end in enumerate(["", "t.shutdown(wait=False)"]):
            out = os.path.join(tmp, f"apple{i}")
            body = f"""
import herd, executor_calls
if __name__ == "__main__":
    t = herd.Executor(3)
    t.submit(executor_calls.mark_and_sleep, {out!r}, 1.0)
    {end}
"""
            p = subprocess.run(_script(body), stderr=subprocess.PIPE, timeout=TIMEOUT)
            assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
            assert os.path.exists(out)
        body = """
import atexit, herd
@atexit.register
def run_last():
    try:
        t.submit(id, None)
    except RuntimeError:
        print("runtime-error")
        raise
if __name__ == "__main__":
    t = herd.Executor(2)
    t.submit(id, 42).result()
"""
        p = subprocess.run(_script(body), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=TIMEOUT)
        assert p.stdout.strip() == b"runtime-error"
        assert b"RuntimeError: cannot schedule new futures" in p.stderr
        assert os.listdir(runtime) == []


def test_a_worker_imports_the_main_script_only_when_a_call_needs_it(
        runtime: str) -> None:  # noqa: F811
    """Spawn imports the main script in every worker at its start; herd's workers import it
    when a call names something in it, as a function pickled by reference does: calls that do
    not need it (cloudpickle sends the script's functions by value) never pay for it."""
    with tempfile.TemporaryDirectory(prefix="herd-pyexec-") as tmp:
        p = _run_main(os.path.join(tmp, "marked.py"),
                      "import os, pickle, sys, herd\n"
                      "if __name__ == '__mp_main__':\n"
                      f"    open(os.path.join({tmp!r}, f'imported-{{os.getpid()}}'), 'w').close()\n"
                      "def double(x):\n"
                      "    return 2 * x\n"
                      "if __name__ == '__main__':\n"
                      "    with herd.Executor(1) as ex:\n"
                      "        print(ex.submit(abs, -3).result(), ex.submit(double, 21).result())\n"
                      f"        print(sorted(n for n in os.listdir({tmp!r}) if 'imported' in n))\n"
                      "        # By reference: the worker imports this script to find it, once.\n"
                      "        by_ref = pickle.dumps(double)\n"
                      "        print(ex.submit(pickle.loads, by_ref).result() is double,\n"
                      "              ex.submit(pickle.loads, by_ref).result() is double)\n"
                      f"        print(len([n for n in os.listdir({tmp!r}) if 'imported' in n]))\n")
        lines = p.stdout.decode().splitlines()
        assert p.returncode == 0, p.stderr.decode()
        assert lines[0] == "3 42", (lines, p.stderr.decode())
        assert herd.executor.PICKLER == "cloudpickle"  # the test venv has it (scripts/test.sh)
        assert lines[1] == "[]", "no call needed the main script"
        assert lines[2] == "True True"
        assert lines[3] == "1", "one worker, one import"
        assert os.listdir(runtime) == []


def test_a_main_script_that_fails_to_import_fails_only_the_calls_that_need_it(
        runtime: str) -> None:  # noqa: F811
    """The worker imports the main script when a call needs it; if that import raises, that
    call fails with the error as its cause, and the worker serves the next calls."""
    with tempfile.TemporaryDirectory(prefix="herd-pyexec-") as tmp:
        script = os.path.join(tmp, "broken.py")
        p = _run_main(script,
                      "import pickle, herd\n"
                      "def double(x):\n"
                      "    return 2 * x\n"
                      "if __name__ == '__mp_main__':\n"
                      "    raise RuntimeError('not in a worker')\n"
                      "if __name__ == '__main__':\n"
                      "    with herd.Executor(1) as ex:\n"
                      "        f = ex.submit(pickle.loads, pickle.dumps(double))\n"
                      "        e = f.exception()\n"
                      "        print(type(e).__name__, '|', e)\n"
                      "        print('not in a worker' in str(e.__cause__))\n"
                      "        print(ex.submit(double, 4).result(), ex.submit(abs, -5).result())\n")
        err = p.stderr.decode()
        assert p.returncode == 0, err
        lines = p.stdout.decode().splitlines()
        assert lines == [f"ImportError | cannot import the main module path:{script} (for "
                         "its 'double'): RuntimeError: not in a worker",
                         "True",  # the worker's traceback, the call's cause, has it too
                         "8 5"], (lines, err)
        assert os.listdir(runtime) == []


def test_a_main_script_without_a_guard_starts_no_pool_in_its_workers(
        runtime: str) -> None:  # noqa: F811
    """As with multiprocessing's spawn, a worker imports the program's main script; one that
    starts an executor unguarded gets an error from the executor it would start there, not
    a pool per worker."""
    with tempfile.TemporaryDirectory(prefix="herd-pyexec-") as tmp:
        p = _run_main(os.path.join(tmp, "unguarded.py"),
                      "import herd\n"
                      "def double(x):\n"
                      "    return 2 * x\n"
                      "with herd.Executor(1) as ex:\n"
                      "    print(ex.submit(double, 21).result())\n")
        # With cloudpickle `double` travels by value, so the call itself works.
        assert p.stdout.strip() == b"42", p.stderr.decode()
        assert os.listdir(runtime) == []
