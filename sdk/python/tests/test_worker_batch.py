"""Batch handlers (herd.run_batch), on both serve loops: against a fake supervisor for the
conversation (Batching after Hello, one Done per task in order, per-event failures, the
iterator form streaming, withdrawals from a batch not started), and under a real
`herd run --batch` for what herd makes of it (batches seen, one record per event, a crash
bisected down to its poison event)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

import pytest

import herd
from herd import _codec as codec

from conftest import Fake, Herd

# Every test here runs on both serve loops, the native one and the pure-Python one.
pytestmark = pytest.mark.usefixtures("serve_loop")

# Per payload: an output (the batch's size in it), or a per-event failure; "boom" makes the
# handler raise, "short" return too few results, "bytes" return the wrong type.
BATCH_WORKER = """
import os, sys, herd
def handle(batch):
    if b"boom" in batch:
        raise RuntimeError("boom")
    if b"short" in batch:
        return [b"only one"]
    if b"bytes" in batch:
        return b"not a list"
    out = []
    for p in batch:
        if p == b"bad":
            out.append(ValueError("bad input"))
        elif p == b"fatal":
            out.append(herd.Fatal("exactly this"))
        elif p == b"retry":
            out.append(herd.Retryable("again", retry_after=0.01))
        elif p == b"cancelled":
            out.append(herd.Cancelled())
        elif p == b"none":
            out.append(None)
        elif p == b"crash":
            os._exit(3)
        elif p == b"json":
            out.append({"n": len(batch)})
        else:
            out.append("%s/%d" % (p.decode(), len(batch)))
    return out
herd.run_batch(handle, max=int(os.environ.get("MAX", "8")))
"""


def batch(*payloads: bytes, first: int = 1) -> bytes:
    return codec.encode_batch([(first + i, 1, p) for i, p in enumerate(payloads)])


def test_batching_follows_hello_and_each_task_gets_its_own_done(fake: Fake) -> None:
    sup = fake(BATCH_WORKER)
    assert sup.recv() == ("Hello", 3, sup.proc.pid, "tok")
    assert sup.recv() == ("Batching", 8)
    sup.send(batch(b"a", b"bad", b"fatal", b"retry", b"cancelled", b"none", b"json"))
    assert [sup.recv() for _ in range(7)] == [
        ("Done", 1, ("Ok", b"a/7")),
        ("Done", 2, ("Err", False, "ValueError: bad input")),
        ("Done", 3, ("Err", False, "exactly this")),
        ("Done", 4, ("RetryAfter", "again", 10)),
        ("Done", 5, ("Err", False, "the handler raised Cancelled, but herd did not cancel "
                                   "this task")),
        ("Done", 6, ("Err", False, "batch handler's result: handler returned NoneType, "
                                   "expected bytes, bytearray, memoryview, str, dict or list")),
        ("Done", 7, ("Ok", b'{"n":7}')),
    ]
    # A lone Task is a batch of one.
    sup.send(codec.encode_task(10, 1, b"x"))
    assert sup.recv() == ("Done", 10, ("Ok", b"x/1"))
    # A handler that raises fails every task of its batch, and the worker keeps serving.
    sup.send(batch(b"a", b"boom", first=20))
    assert [sup.recv() for _ in range(2)] == [
        ("Done", 20, ("Err", False, "handler raised RuntimeError: boom")),
        ("Done", 21, ("Err", False, "handler raised RuntimeError: boom"))]
    # Too few results: the ones left out fail, saying so.
    sup.send(batch(b"short", b"b", b"c", first=30))
    msg = "the batch handler returned 1 results for a batch of 3 tasks"
    assert [sup.recv() for _ in range(3)] == [
        ("Done", 30, ("Ok", b"only one")), ("Done", 31, ("Err", False, msg)),
        ("Done", 32, ("Err", False, msg))]
    sup.send(batch(b"bytes", b"b", first=40))
    for id in (40, 41):
        done = sup.recv()
        assert done[:2] == ("Done", id) and "batch handler returned bytes" in done[2][2], done
    sup.send(codec.encode_task(50, 1, b"still serving") + codec.encode_shutdown())
    assert sup.recv() == ("Done", 50, ("Ok", b"still serving/1"))
    code, err = sup.wait()
    assert code == 0, err
    # The raised exception's traceback went to stderr once; returned ones print nothing.
    assert err.count("RuntimeError: boom") == 1 and "bad input" not in err, err


def test_max_1_declares_nothing_and_gets_single_tasks(fake: Fake) -> None:
    sup = fake(BATCH_WORKER, env_extra={"MAX": "1"})
    assert sup.recv()[0] == "Hello"
    # No Batching: the next frame is the answer to the first task.
    sup.send(codec.encode_task(1, 1, b"a") + codec.encode_shutdown())
    assert sup.recv() == ("Done", 1, ("Ok", b"a/1"))
    code, err = sup.wait()
    assert code == 0, err


def test_the_iterator_form_sends_each_result_as_it_comes(fake: Fake, tmp_path: Any) -> None:
    # The handler yields the first result, then waits until the supervisor has seen it: its
    # Done went out while the batch still ran.
    go = tmp_path / "go"
    script = f"""
import os, time, herd
def handle(batch):
    yield b"first"
    deadline = time.monotonic() + 60
    while not os.path.exists({str(go)!r}):
        if time.monotonic() > deadline:
            raise TimeoutError("never told to go on")
        time.sleep(0.005)
    yield b"second"
    raise ValueError("after two")
herd.run_batch(handle)
"""
    sup = fake(script)
    assert sup.recv()[0] == "Hello"
    assert sup.recv() == ("Batching", 64)
    sup.send(batch(b"a", b"b", b"c"))
    assert sup.recv() == ("Done", 1, ("Ok", b"first"))
    go.touch()
    assert sup.recv() == ("Done", 2, ("Ok", b"second"))
    assert sup.recv() == ("Done", 3, ("Err", False, "handler raised ValueError: after two"))
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err


def test_tasks_chunks_and_the_end_of_a_batch_task(fake: Fake) -> None:
    script = """
import sys, herd
def handle(tasks):
    for t in tasks:
        t.chunk(b"part of %d" % t.id)
        yield b"attempt %d" % t.attempt
        try:
            t.chunk(b"too late")
        except herd.Fatal as e:
            print("refused:", e, file=sys.stderr, flush=True)
herd.run_batch(handle, 4, pass_task=True)
"""
    sup = fake(script)
    assert sup.recv()[0] == "Hello"
    assert sup.recv() == ("Batching", 4)
    sup.send(codec.encode_batch([(1, 2, b"a"), (2, 1, b"b")]) + codec.encode_shutdown())
    assert [sup.recv() for _ in range(4)] == [
        ("Chunk", 1, b"part of 1"), ("Done", 1, ("Ok", b"attempt 2")),
        ("Chunk", 2, b"part of 2"), ("Done", 2, ("Ok", b"attempt 1"))]
    code, err = sup.wait()
    assert code == 0, err
    assert err.count("refused: a chunk of a task that was answered already") == 2, err


def test_system_exit_in_a_batch_still_sends_the_results_made(fake: Fake) -> None:
    script = """
import sys, herd
def handle(batch):
    yield b"made"
    sys.exit(7)
herd.run_batch(handle)
"""
    sup = fake(script)
    sup.recv()
    sup.recv()
    sup.send(batch(b"a", b"b"))
    assert sup.recv() == ("Done", 1, ("Ok", b"made"))
    code, _ = sup.wait()
    assert code == 7


def test_a_task_of_a_batch_not_started_can_be_withdrawn_alone(fake: Fake) -> None:
    # A head that waits for its cancel; a batch queued behind it loses one task to a Withdraw
    # and one to a Cancel, and runs with the rest.
    script = """
import herd
def handle(tasks):
    for t in tasks:
        if t.payload == b"wait-cancel":
            t.wait_cancelled()
            yield herd.Cancelled()
        else:
            yield b"%s/%d" % (t.payload, len(tasks))
herd.run_batch(handle, pass_task=True)
"""
    sup = fake(script)
    sup.recv()
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"wait-cancel")
             + codec.encode_batch([(2, 1, b"two"), (3, 1, b"three"), (4, 1, b"four")]))
    sup.send(codec.encode_withdraw(3) + codec.encode_withdraw(1) + codec.encode_cancel(4))
    assert sup.recv() == ("Withdrawn", 3)
    assert sup.recv() == ("Kept", 1)
    assert sup.recv() == ("Done", 4, ("Cancelled",))
    sup.send(codec.encode_cancel(1))
    assert sup.recv() == ("Done", 1, ("Cancelled",))
    assert sup.recv() == ("Done", 2, ("Ok", b"two/1"))
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err


def test_run_batch_refuses_a_bad_max() -> None:
    for bad in (0, -1, 2 ** 32, 1.5, True):
        with pytest.raises(ValueError):
            herd.run_batch(lambda b: b, bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Under a real herd.


def write_worker(h: Herd, script: str = BATCH_WORKER) -> str:
    path = h.path("batch_worker.py")
    with open(path, "w") as f:
        f.write(script)
    return path


def sizes(records: List[Dict[str, Any]]) -> Counter[int]:
    """How many ok records came from batches of each size (the size is in the output)."""
    return Counter(int(r["output"].rsplit("/", 1)[1]) for r in records if r.get("ok"))


def test_herd_batches_and_answers_every_event_once(herd: Herd) -> None:
    worker = write_worker(herd)
    events = [f"e{i}" for i in range(400)]
    for opts in (["--batch", "8"], ["--batch", "8", "--batch-wait", "20ms"]):
        run = herd.run(["-w", "2", *opts], events, worker)
        assert run.code == 0, run.dump()
        recs = run.by_seq()
        assert [r["output"].split("/")[0] for r in recs] == events
        got = sizes(recs)
        assert max(got) <= 8 and max(got) > 1, got
        assert run.log("done")[0]["batches"] > 0


def test_without_batch_the_handler_gets_lists_of_one(herd: Herd) -> None:
    worker = write_worker(herd)
    run = herd.run(["-w", "2"], [f"e{i}" for i in range(100)], worker)
    assert run.code == 0, run.dump()
    assert sizes(run.by_seq()) == Counter({1: 100})


def test_per_event_failures_each_get_one_record(herd: Herd) -> None:
    worker = write_worker(herd)
    events = [f"e{i}" for i in range(60)]
    events[10], events[20], events[30] = "bad", "retry", "boom"
    run = herd.run(["-w", "1", "--batch", "8", "--retries", "1"], events, worker)
    recs = run.by_seq()
    assert recs[10]["error"] == {"kind": "failed", "message": "ValueError: bad input"}
    assert recs[10]["attempts"] == 1
    assert recs[20]["error"]["message"] == "again" and recs[20]["attempts"] == 2
    boom = "handler raised RuntimeError: boom"
    assert recs[30]["error"] == {"kind": "failed", "message": boom}
    # The events that shared a batch with "boom" failed with it; every other one is ok.
    failed_with_boom = [r["seq"] for r in recs if r.get("error", {}).get("message") == boom]
    assert 30 in failed_with_boom and len(failed_with_boom) <= 8, failed_with_boom
    for r in recs:
        if r["seq"] not in (10, 20) and r["seq"] not in failed_with_boom:
            assert r["ok"] and r["output"].startswith(events[r["seq"]] + "/"), r


# Dies in a batch holding "crash". Like examples/chaos.py it first writes out the replies
# still held from earlier batches (Task._flush; held for up to 1 ms), so that the worker's death
# costs only the batch in hand, which herd bisects.
CRASH_WORKER = """
import os, herd
def handle(tasks):
    for t in tasks:
        if t.payload == b"crash":
            t._flush()
            os._exit(3)
    return ["%s/%d" % (t.payload.decode(), len(tasks)) for t in tasks]
herd.run_batch(handle, 8, pass_task=True)
"""


def test_a_crash_in_a_batch_is_bisected_to_its_poison_event(herd: Herd) -> None:
    worker = write_worker(herd, CRASH_WORKER)
    events = [f"e{i}" for i in range(200)]
    for poison in (37, 150):
        events[poison] = "crash"
    run = herd.run(["-w", "2", "--batch", "8", "--retries", "2"], events, worker)
    recs = run.by_seq()
    kinds = Counter("ok" if r["ok"] else r["error"]["kind"] for r in recs)
    assert kinds == Counter({"ok": 198, "crashed": 2}), (kinds, run.dump())
    for poison in (37, 150):
        assert recs[poison]["error"]["kind"] == "crashed"
        assert recs[poison]["attempts"] >= 3, recs[poison]
    for r in recs:
        if r["ok"]:
            assert r["output"].startswith(events[r["seq"]] + "/"), r


def test_the_executor_worker_serves_batches(herd: Herd) -> None:
    # herd.executor_worker is a batch handler: under --batch its calls come many at once, and
    # one call's exception stays that call's.
    from herd import executor_worker as ew
    calls = [ew.dumps((pow, (i, 2), {})) for i in range(50)]
    calls[7] = ew.dumps((int, ("x",), {}))
    data = b"".join(c + b"\n" for c in calls)
    path = herd.path("exw.py")
    with open(path, "w") as f:
        f.write("from herd.executor_worker import main\nmain()\n")
    run = herd.run(["-w", "1", "--batch", "16"], data, path)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    outs = [ew.loads(r["output"].encode()) for r in recs]
    for i, (ok, value, _) in enumerate(outs):
        if i == 7:
            assert not ok and isinstance(value, ValueError)
        else:
            assert (ok, value) == (True, i * i)
    assert run.log("done")[0]["batches"] > 0

