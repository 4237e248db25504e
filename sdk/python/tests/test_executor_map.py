"""herd.Executor.map(chunksize=N): N calls an event, and a chunk whose worker died or timed out
run again as a batch of one event per call (docs/BATCHES.md), so one call's crash, exception or
timeout fails that call alone and the others' results arrive; results stay in order, and map
stays lazy with a buffersize."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from concurrent.futures import CancelledError, TimeoutError
from concurrent.futures.process import _RemoteTraceback
from typing import Any, Dict, Iterator, List, Optional

import pytest

import executor_calls as calls
import herd
from conftest import TIMEOUT, wait_until
from test_serve import runtime  # noqa: F401 - a fixture


def status(ex: herd.Executor) -> Dict[str, Any]:
    out = subprocess.run([herd.find_herd_bin(), "status", "--json", "--control", ex.address],
                         stdout=subprocess.PIPE, timeout=TIMEOUT, check=True)
    st: Dict[str, Any] = json.loads(out.stdout)
    return st


@pytest.mark.parametrize("inflight", [None, 4])
def test_a_poison_call_fails_alone_and_every_other_result_arrives(
        runtime: str, inflight: Optional[int]) -> None:  # noqa: F811
    """With the automatic `inflight` most of the map's chunks are with herd when the poison
    strikes, and the workers' windows full of them: its chunk's calls then go one at a time as
    room opens, and herd's solo reruns find the poison. With 4 in flight they go as a batch."""
    n, poison = 1000, 500
    with herd.Executor(2, retries=2, inflight=inflight) as ex:
        got = []
        with pytest.raises(herd.EventCrashed) as crashed:
            for value in ex.map(calls.square_or_exit, range(n), itertools.repeat(poison),
                                chunksize=8):
                got.append(value)
        # 496 to 503 were one chunk, whose worker died: run again an event each, in a batch,
        # then alone, the calls before the poison have their results.
        assert got == [i * i for i in range(poison)]
        assert crashed.value.kind == "crashed"
        if inflight == 4:
            st = status(ex)
            assert st["batches"] > 0 and st["batch_mean_size"] > 1.0, st
        # The chunk's event and then the poison's own: the others' events were answered.
        wait_until("the poison's chunk-mates' records",
                   lambda: status(ex)["totals"]["crashed"] == 2 or None)
        # The pool serves on.
        assert list(ex.map(calls.square_or_exit, range(poison - 8, poison + 8),
                           itertools.repeat(-1), chunksize=8)) == \
            [i * i for i in range(poison - 8, poison + 8)]


def test_each_call_raises_its_own_exception_at_its_position(runtime: str) -> None:  # noqa: F811
    with herd.Executor(2) as ex:
        got = []
        with pytest.raises(ValueError, match="no 3") as e:
            for value in ex.map(calls.square_or_raise, range(100), chunksize=8):
                got.append(value)
        assert got == [0, 1, 4]
        assert isinstance(e.value.__cause__, _RemoteTraceback)
        # A call whose arguments do not pickle fails at its position; the one before ran.
        out = ex.map(calls.echo, [1, calls.ErrorAtPickle(), 3], chunksize=4)
        assert next(out) == 1
        with pytest.raises(Exception, match="Error in pickle"):
            next(out)
        # Every call a chunk of its own, the chunk short, more chunks than `inflight`: in order.
        assert list(ex.map(pow, range(1001), itertools.repeat(2), chunksize=7)) == \
            [i * i for i in range(1001)]
        assert list(ex.map(pow, [], [], chunksize=7)) == []


def test_a_call_past_the_timeout_fails_alone(runtime: str) -> None:  # noqa: F811
    with herd.Executor(1, timeout=0.5) as ex:
        out = ex.map(time.sleep, [0, 0, 0, 60, 0], chunksize=8)
        assert [next(out) for _ in range(3)] == [None, None, None]
        with pytest.raises(herd.EventTimeout):
            next(out)
        assert status(ex)["totals"]["ok"] == 4
    with herd.Executor(1) as ex:
        # map's own timeout: from the call of map, for every result.
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            list(ex.map(time.sleep, [0, 2, 0], chunksize=2, timeout=0.3))
        assert time.monotonic() - t0 < 1.8


def test_buffersize_bounds_what_is_read_ahead_in_chunks(runtime: str) -> None:  # noqa: F811
    read: List[int] = []

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            read.append(i)
            yield i

    with herd.Executor(2) as ex:
        out = ex.map(pow, numbers(), itertools.repeat(2), chunksize=10, buffersize=3)
        assert len(read) == 30  # three chunks of ten, at once
        assert [next(out) for _ in range(25)] == [i * i for i in range(25)]
        # One more chunk per chunk read: at most buffersize + 1 chunks ahead of the reader.
        assert len(read) <= 10 * (3 + 3)
        out.close()  # the chunks not read are cancelled
        assert list(ex.map(abs, range(-5, 5), chunksize=3)) == [abs(i) for i in range(-5, 5)]


def test_shutdown_cancels_the_chunks_still_queued(runtime: str) -> None:  # noqa: F811
    ex = herd.Executor(1, inflight=1)
    out = ex.map(time.sleep, [0.2] * 40, chunksize=4)
    wait_until("the first chunk to run", lambda: status(ex)["inflight"] >= 1)
    ex.shutdown(wait=True, cancel_futures=True)
    got: List[None] = []
    with pytest.raises(CancelledError):
        for value in out:
            got.append(value)
    # The chunks handed to the daemon ran (inflight: one chunk, and the next it takes).
    assert got and len(got) % 4 == 0 and len(got) < 40, got
    with pytest.raises(RuntimeError):
        ex.map(abs, [1], chunksize=2)
