"""herd.executor_worker's batch mode, in process: each call of a batch is answered on its own,
and map calls (("m", fn_bytes, args)) unpickle their callable once."""

from __future__ import annotations

import pickle
from typing import Any, List

import pytest

from herd import executor_worker as ew


def outcome(data: bytes) -> Any:
    return ew.loads(data)


def boom(x: int, y: int = 0) -> int:
    raise ValueError(f"no {x}")


def test_a_call_raising_in_the_middle_of_a_batch_fails_only_that_call() -> None:
    w = ew._Worker()
    calls = [ew.dumps((pow, (2, 3), {})), ew.dumps((boom, (7,), {})),
             ew.dumps((divmod, (7, 2), {})), ew.dumps((exit, (3,), {}))]
    got = [outcome(o) for o in w.handle_batch(calls)]
    assert got[0] == (True, 8, None)
    ok, exc, tb = got[1]
    assert not ok and isinstance(exc, ValueError) and str(exc) == "no 7" and "boom" in tb
    assert got[2] == (True, (3, 1), None)
    # SystemExit in a call is that call's outcome too: the batch goes on.
    ok, exc, _ = got[3]
    assert not ok and isinstance(exc, SystemExit)
    assert list(w.handle_batch([])) == []


def test_map_calls_unpickle_their_callable_once_per_pickled_form(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = ew._Worker()
    seen: List[bytes] = []
    real = pickle.loads

    def counting(data: bytes, *a: Any, **k: Any) -> Any:
        seen.append(bytes(data))
        return real(data, *a, **k)

    fns = [pickle.dumps(f) for f in (pow, divmod, boom)]
    batch = [ew.dumps((ew.MAP_TAG, fns[i % 3], (i, 2))) for i in range(9)]
    monkeypatch.setattr(pickle, "loads", counting)
    got = [outcome(o) for o in w.handle_batch(batch)]
    monkeypatch.undo()
    for i, (ok, value, _) in enumerate(got):
        if i % 3 == 0:
            assert (ok, value) == (True, i ** 2)
        elif i % 3 == 1:
            assert (ok, value) == (True, divmod(i, 2))
        else:
            assert not ok and isinstance(value, ValueError)
    # Each callable unpickled once (besides the 9 calls themselves).
    assert sum(1 for d in seen if d in fns) == 3
    # The cache is bounded.
    for i in range(3 * ew._FN_CACHE):
        w.map_fn(pickle.dumps((pow, i)))
    assert len(w.fns) == ew._FN_CACHE


def test_a_plain_call_whose_first_argument_is_m_is_not_a_map_call() -> None:
    w = ew._Worker()
    ok, value, _ = outcome(w.handle(ew.dumps((str.upper, ("m",), {}))))
    assert (ok, value) == (True, "M")
