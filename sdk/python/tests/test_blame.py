"""Black-box: crash blame with Python workers that hold replies. Both serve loops hold a quick
handler's reply for up to 1 ms while more tasks are buffered (one write for many); a handler
that then kills the process with os._exit, without task._flush(), loses those replies, so the
oldest task herd sees unanswered may be an innocent one that finished. herd must blame none of
them and rerun them alone, so that only the poison event is charged."""

from __future__ import annotations

import pytest

from conftest import Herd

# Both serve loops, the native one and the pure-Python one.
pytestmark = pytest.mark.usefixtures("serve_loop")

POISON_WORKER = """\
import os
import herd.worker as w


def handle(payload: bytes) -> bytes:
    if payload == b"poison":
        os._exit(1)  # no task._flush(): the replies held back are lost, as in a segfault
    return payload


w.run(handle)
"""


def test_a_poison_event_that_loses_held_replies_is_the_only_one_charged(herd: Herd) -> None:
    worker = herd.path("poison.py")
    with open(worker, "w") as f:
        f.write(POISON_WORKER)
    n = 2000
    poison = {i for i in range(n) if i % 100 == 50}
    events = ["poison" if i in poison else str(i) for i in range(n)]
    run = herd.run(["-w", "2", "--retries", "2"], events, worker=worker)
    assert run.code == 0, run.dump()
    records = run.by_seq()
    wrong = [r["seq"] for r in records if r["seq"] not in poison and not r["ok"]]
    assert wrong == [], f"{len(wrong)} innocent events not answered ok: {wrong[:20]}"
    for r in records:
        if r["seq"] in poison:
            assert r["error"]["kind"] == "crashed", r
            assert r["attempts"] == 3, r  # 1 + --retries: the ambiguous death is no attempt
        else:
            assert r["output"] == r["seq"], r
