"""Black-box: the real `herd` binary with Python workers (examples/chaos.py on herd.worker)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import CHAOS, TIMEOUT, UPPER, Herd, loop_opts, wait_until

# Every test here runs on both serve loops, the native one and the pure-Python one.
pytestmark = pytest.mark.usefixtures("serve_loop")


def square(i: int) -> str:
    return '{"op":"square","n":%d}' % i


def test_workers_run_the_serve_loop_asked_for(herd: Herd, serve_loop: str) -> None:
    worker = herd.path("which_loop.py")
    with open(worker, "w") as f:
        f.write("import herd.worker as w\n"
                "w.run(lambda p: 'pure' if w._native_module() is None else 'native')\n")
    run = herd.run(["-w", "2"], ["x"] * 4, worker=worker)
    assert run.code == 0, run.dump()
    assert [r["output"] for r in run.by_seq()] == [serve_loop] * 4


def test_ok(herd: Herd) -> None:
    run = herd.run(["-w", "2"], [square(i) for i in range(1000)])
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    assert all(r["ok"] and r["output"] == r["seq"] ** 2 and r["attempts"] == 1 for r in recs)
    # Both workers left through the termination frame (exit 0).
    exits = run.log("worker exited")
    assert len(exits) == 2 and all(e.get("code") == 0 for e in exits), run.dump()


def test_the_readme_example(herd: Herd) -> None:
    run = herd.run([], b"hello\n\xc3\xa9t\xc3\xa9\n", worker=UPPER)
    assert run.code == 0, run.dump()
    assert [r["output"] for r in run.by_seq()] == ["HELLO", "\u00c9T\u00c9"]


def test_fatal_errors_are_failed_records_and_the_worker_keeps_serving(herd: Herd) -> None:
    events = []
    for i in range(300):
        events.append(['{"op":"panic"}', '{"op":"fail","retryable":false}', "not json",
                       square(i)][i % 4])
    run = herd.run(["-w", "1"], events)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    for r in recs:
        if r["seq"] % 4 == 3:
            assert r["ok"] and r["output"] == r["seq"] ** 2, r
            continue
        assert not r["ok"] and r["error"]["kind"] == "failed" and r["attempts"] == 1, r
        want = ["handler raised RuntimeError: chaos.py: exception on request",
                "failed on request", "malformed event"][r["seq"] % 4]
        assert r["error"]["message"].startswith(want), r
    # One worker did it all: an exception never costs a process.
    assert len({r["pid"] for r in recs if r["ok"]}) == 1
    assert not run.log("worker lost while holding work")


def test_retryable_errors_are_retried(herd: Herd) -> None:
    events = ['{"op":"flaky","fails":2}', '{"op":"fail","retryable":true}',
              '{"op":"flaky","fails":5}', square(3)]
    run = herd.run(["-w", "2", "--retries", "2", "--retry-backoff", "1ms"], events)
    assert run.code == 0, run.dump()
    r = run.by_seq()
    assert r[0]["ok"] and r[0]["output"] == 3 and r[0]["attempts"] == 3
    assert r[1]["error"] == {"kind": "failed", "message": "failed on request"}
    assert r[1]["attempts"] == 3
    assert r[2]["error"]["message"] == "flaky: attempt 3 of 5 planned failures"
    assert r[3]["output"] == 9


def test_crashes_are_retried_then_recorded(herd: Herd) -> None:
    events = [square(0), '{"op":"exit","code":3}', square(2), '{"op":"crash","signal":"SEGV"}',
              square(4), '{"op":"crash"}'] + [square(i) for i in range(6, 200)]
    run = herd.run(["-w", "2", "--retries", "1"], events)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    assert recs[1]["error"]["kind"] == "crashed" and recs[1]["attempts"] == 2
    assert "exited with code 3" in recs[1]["error"]["message"]
    assert "killed by SIGSEGV" in recs[3]["error"]["message"]
    assert "killed by SIGABRT" in recs[5]["error"]["message"]
    for r in recs:
        if r["seq"] not in (1, 3, 5):
            assert r["ok"] and r["output"] == r["seq"] ** 2, r


def test_a_handler_that_calls_sys_exit_is_recorded_with_its_exit_code(herd: Herd) -> None:
    """`sys.exit(3)` in a handler closes the socket before the interpreter has shut down; herd
    waits for the exit instead of killing the process at the socket's end, so the record gives
    the real cause, not herd's own SIGKILL (issue 19)."""
    worker = herd.path("exits.py")
    with open(worker, "w") as f:
        f.write("import sys\nimport herd\n\n\n"
                "def handle(payload):\n"
                "    if payload == b'exit':\n"
                "        sys.exit(3)\n"
                "    return payload\n\n\n"
                "herd.run(handle)\n")
    run = herd.run(["-w", "1", "--retries", "1"], ["a", "exit", "b"], worker=worker)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    assert recs[1]["error"]["kind"] == "crashed" and recs[1]["attempts"] == 2, recs[1]
    assert recs[1]["error"]["message"].endswith("exited with code 3"), recs[1]
    assert [r["output"] for r in (recs[0], recs[2])] == ["a", "b"]
    codes = [e.get("code") for e in run.log("worker exited")]
    # 1 + --retries exits charged to it, alone, and one more before them when the first held
    # "b" unanswered too: that death blames neither (a reply may have been held back), and
    # reruns both alone.
    assert codes.count(3) in (2, 3), run.dump()


def test_a_hang_is_killed_by_the_timeout(herd: Herd) -> None:
    events = [square(1), '{"op":"hang"}', square(3), '{"op":"sleep","ms":10}']
    run = herd.run(["-w", "2", "--timeout", "2s", "--retries", "1"], events)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    assert recs[1]["error"]["kind"] == "timeout" and recs[1]["attempts"] == 2, recs[1]
    assert [recs[i]["ok"] for i in (0, 2, 3)] == [True, True, True]
    assert len(run.log("task timed out; killing worker")) == 2


def test_garbage_from_a_broken_worker(herd: Herd) -> None:
    events = ['{"op":"garbage"}', square(1), '{"op":"oversize"}', square(3)]
    run = herd.run(["-w", "2", "--retries", "1"], events)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    assert recs[0]["error"]["kind"] == "protocol", recs[0]
    assert "malformed frame" in recs[0]["error"]["message"]
    assert recs[2]["error"]["kind"] == "protocol", recs[2]
    assert "exceeds the maximum" in recs[2]["error"]["message"]
    assert recs[1]["ok"] and recs[3]["ok"]


def test_oversize_output_is_a_failed_record(herd: Herd) -> None:
    script = herd.path("times1000.py")
    with open(script, "w") as f:
        f.write("import herd\nherd.run(lambda p: p * 1000)\n")
    run = herd.run(["-w", "1", "--max-frame", "4096"], ["abcde", "x"], worker=script)
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    assert recs[0]["error"]["kind"] == "failed"
    assert recs[0]["error"]["message"] == (
        "handler output of 5000 bytes exceeds the maximum frame of 4096 bytes")
    assert recs[1]["output"] == "x" * 1000


def test_large_payloads(herd: Herd) -> None:
    # 64 events of 1 MiB each: every one bigger than a read, echoed back whole.
    lines = [b'{"op":"echo","v":"%s"}' % (b"%06d" % i * 174_762) for i in range(64)]
    run = herd.run(["-w", "2"], b"\n".join(lines) + b"\n")
    assert run.code == 0, run.dump()
    for r in run.by_seq():
        assert r["ok"] and r["output"] == ("%06d" % r["seq"]) * 174_762, r["seq"]


def test_volume_200k_tiny_events_through_2_python_workers(herd: Herd) -> None:
    n = 200_000
    run = herd.run(["-w", "2"], [square(i) for i in range(n)])
    assert run.code == 0, run.dump()
    recs = run.by_seq()
    bad = [r for r in recs if not r["ok"] or r["output"] != r["seq"] ** 2]
    assert not bad, bad[:3]
    assert run.log("worker lost while holding work") == []


def test_stderr_is_forwarded(herd: Herd) -> None:
    run = herd.run(["-w", "1"], ['{"op":"stderr","text":"hi there"}'])
    assert run.code == 0, run.dump()
    assert run.by_seq()[0]["output"] == "hi there"
    assert [entry for entry in run.logs if entry.get("message") == "hi there"], run.dump()


def must(st: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    assert st is not None, "herd status failed"
    return st


class Daemon:
    """`herd serve` with Python workers, its JSON log read as it comes."""

    def __init__(self, herd: Herd, workers: int, extra: Sequence[str] = ()) -> None:
        self.herd = herd
        self.sock = herd.path("control.sock")
        self.proc = subprocess.Popen(
            [herd.bin, "serve", "--log-format", "json", *loop_opts(), "--control", self.sock,
             "-w", str(workers), *extra, "--", sys.executable, CHAOS],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=herd.env)
        self.logs: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_until(f"{workers} workers up", lambda: self.live_workers() == workers)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"message": line.decode("utf-8", "replace")}
            with self.lock:
                self.logs.append(entry)

    def logged(self, message: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [e for e in self.logs if e.get("message") == message]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.herd.bin, args[0], "--control", self.sock, *args[1:]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=self.herd.env, timeout=TIMEOUT)

    def status(self) -> Optional[Dict[str, Any]]:
        p = self.ctl("status", "--json")
        if p.returncode != 0:
            return None
        st: Dict[str, Any] = json.loads(p.stdout)
        return st

    def wait_status(self, what: str, cond: Callable[[Dict[str, Any]], bool]) -> Dict[str, Any]:
        """Polls the status until `cond` holds; returns that status."""
        def ready() -> Optional[Dict[str, Any]]:
            st = self.status()
            return st if st is not None and cond(st) else None
        st: Optional[Dict[str, Any]] = wait_until(what, ready)
        return must(st)

    def live_workers(self) -> int:
        st = self.status()
        if st is None:
            return 0
        return sum(w["state"] in ("idle", "busy") for w in st["workers"])

    def stop(self) -> int:
        p = subprocess.run([self.herd.bin, "ctl", "--control", self.sock, "stop"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.herd.env,
                           timeout=TIMEOUT)
        assert p.returncode == 0, p.stderr
        code = self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rolling_reload(herd: Herd, how: str) -> None:
    """A submission runs while every worker is replaced (HUP or `herd ctl reload`): nothing
    is lost, every worker is new, and the old ones left through the termination frame (exit 0).
    The second half of the events is sent only once the reload is complete, so both
    generations of workers serve the submission whatever the machine's speed."""
    d = Daemon(herd, 2)
    try:
        before = {w["pid"] for w in must(d.status())["workers"]}
        n = 20_000
        lines = [('{"op":"sleep","ms":2}' if i % 100 == 0 else square(i)) + "\n"
                 for i in range(n)]
        sub = subprocess.Popen([herd.bin, "submit", "--control", d.sock],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=herd.env)
        out: Dict[str, bytes] = {}
        assert sub.stdin is not None

        def drain(name: str, stream: Any) -> None:
            out[name] = stream.read()

        readers = [threading.Thread(target=drain, args=(k, getattr(sub, k)), daemon=True)
                   for k in ("stdout", "stderr")]
        for t in readers:
            t.start()
        sub.stdin.write("".join(lines[:n // 2]).encode())
        sub.stdin.flush()
        wait_until("the submission is flowing",
                   lambda: (d.status() or {"totals": {"ok": 0}})["totals"]["ok"] > 500)
        if how == "hup":
            d.proc.send_signal(signal.SIGHUP)
        else:
            p = d.ctl("ctl", "reload")
            assert p.returncode == 0, p.stderr
        wait_until("reload complete", lambda: d.logged("reload complete"))
        sub.stdin.write("".join(lines[n // 2:]).encode())
        sub.stdin.close()
        assert sub.wait(TIMEOUT) == 0
        for t in readers:
            t.join(TIMEOUT)
        recs = sorted((json.loads(line) for line in out["stdout"].splitlines()),
                      key=lambda r: r["seq"])
        assert [r["seq"] for r in recs] == list(range(n)), out["stderr"]
        for r in recs:
            assert r["ok"], r
            assert r["output"] == (2 if r["seq"] % 100 == 0 else r["seq"] ** 2), r
        pids = {r["pid"] for r in recs}
        after = {w["pid"] for w in must(d.status())["workers"]}
        assert len(after) == 2 and not (before & after), (before, after)
        assert after <= pids and pids <= before | after, (before, after, pids)
        assert d.stop() == 0
        exits = d.logged("worker exited")
        assert len(exits) == 4 and all(e.get("code") == 0 for e in exits), exits
    finally:
        d.kill()


def test_rolling_reload_with_ctl_loses_nothing(herd: Herd) -> None:
    rolling_reload(herd, "ctl")


def test_rolling_reload_with_hup_loses_nothing(herd: Herd) -> None:
    rolling_reload(herd, "hup")


def test_herd_killed_takes_its_python_workers_along(herd: Herd) -> None:
    d = Daemon(herd, 2)
    pids = [w["pid"] for w in must(d.status())["workers"]]
    d.proc.kill()
    d.proc.wait(TIMEOUT)

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until("the workers to die with herd", lambda: all(gone(p) for p in pids))
    # The guard removes the runtime dir; the fixture checks it is gone.
    wait_until("the runtime dir to go", lambda: herd.leftovers() == [])


def test_streamed_chunks_through_herd_and_a_crash_mid_stream(herd: Herd) -> None:
    events = ['{"op":"stream","n":5}'] * 300 + ['{"op":"stream","n":4,"crash_after":2}'] * 5
    run = herd.run(["-w", "2"], events)
    assert run.code == 0, run.dump()
    finals = [r for r in run.records if "chunk" not in r]
    assert sorted(r["seq"] for r in finals) == list(range(305)), run.dump()
    chunks: Dict[int, List[Tuple[int, int, Any]]] = {}
    for r in run.records:
        if "chunk" in r:
            chunks.setdefault(r["seq"], []).append((r["attempt"], r["chunk"], r["output"]))
    for r in finals:
        # A consumer keeps the chunks of the final attempt: numbered from 0, as many as it says.
        kept = [c for c in chunks[r["seq"]] if c[0] == r["attempts"]]
        assert [c[1] for c in kept] == list(range(r["chunks"])), (r, chunks[r["seq"]])
        assert [c[2] for c in kept] == [{"i": i} for i in range(r["chunks"])]
        if r["seq"] < 300:
            assert r["ok"] and r["attempts"] == 1 and r["chunks"] == 5, r
        else:
            assert r["ok"] and r["attempts"] == 2 and r["chunks"] == 4, r
            assert [c[:2] for c in chunks[r["seq"]] if c[0] == 1] == [(1, 0), (1, 1)]


class Submission:
    """`herd submit --print-id` of `events` in the background: its id, then its records."""

    def __init__(self, d: Daemon, events: Sequence[str]) -> None:
        path = d.herd.path("in.jsonl")
        with open(path, "w") as f:
            f.write("".join(e + "\n" for e in events))
        self.proc = subprocess.Popen(
            [d.herd.bin, "submit", "--control", d.sock, "--print-id", "-i", path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=d.herd.env)
        assert self.proc.stderr is not None
        # The id comes on stderr as soon as the daemon names the submission.
        line = self.proc.stderr.readline().decode()
        assert line.startswith("herd: submission "), line
        self.id = line[len("herd: submission "):].strip()

    def cancel(self, d: Daemon, seq: int) -> str:
        p = d.ctl("ctl", "cancel", "--submission", self.id, str(seq))
        text = (p.stdout + p.stderr).decode()
        assert p.returncode == 0, text
        return text

    def records(self) -> Dict[int, Dict[str, Any]]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        return {r["seq"]: r for r in map(json.loads, out.splitlines())}


def totals(st: Dict[str, Any], kind: str) -> int:
    n: int = st["totals"].get(kind, 0)
    return n


def test_events_behind_a_hung_head_finish_on_the_idle_worker_and_a_cancel_keeps_it(
        herd: Herd) -> None:
    # No --timeout: the head waits for its cancel for 10 minutes. herd withdraws the events
    # queued behind it (the head has run over 8 times the pool's average and 1 s), and they
    # finish on the other worker; the head's worker, which answered every Withdraw, is kept.
    n = 20
    d = Daemon(herd, 2)
    try:
        pids = sorted(w["pid"] for w in must(d.status())["workers"])
        sub = Submission(d, ['{"op":"cancellable","ms":600000}']
                         + ['{"op":"sleep","ms":20}'] * n)
        st = d.wait_status("every event but the hung one answered",
                           lambda st: totals(st, "ok") == n)
        busy = [w for w in st["workers"] if w["inflight"] == 1]
        assert len(busy) == 1, st
        assert d.logged("head task stalled; withdrawing the tasks behind it"), d.logs
        assert not st["restarts"], st

        # The handler sees its cancel flag and ends: a `cancelled` record, the same worker.
        asked = time.monotonic()
        text = sub.cancel(d, 0)
        assert "stopping it" in text, text
        records = sub.records()
        assert time.monotonic() - asked < 4, "the worker ended the task, not herd's kill"
        assert len(records) == n + 1
        assert records[0]["error"]["kind"] == "cancelled", records[0]
        assert all(r["ok"] for seq, r in records.items() if seq), records
        st = must(d.status())
        assert sorted(w["pid"] for w in st["workers"]) == pids, st
        assert not st["restarts"], st
        assert totals(st, "cancelled") == 1, st
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_cancelled_running_task_ends_cancelled_on_the_same_worker(herd: Herd) -> None:
    d = Daemon(herd, 1, ["--window", "1"])
    try:
        pid = must(d.status())["workers"][0]["pid"]
        sub = Submission(d, ['{"op":"cancellable","ms":600000}', '{"op":"pid"}'])
        d.wait_status("the cancellable event running", lambda st: st["inflight"] == 1)
        assert "stopping it" in sub.cancel(d, 0)
        records = sub.records()
        assert records[0]["error"]["kind"] == "cancelled", records[0]
        assert records[0]["attempts"] == 1, records[0]
        assert records[1]["output"] == pid, "the same worker ran the next event"
        st = must(d.status())
        assert st["workers"][0]["pid"] == pid and not st["restarts"], st
        assert d.stop() == 0
    finally:
        d.kill()


def attempt_times(path: str) -> List[int]:
    with open(path) as f:
        return [int(line.split()[1]) for line in f]


def test_retry_after_is_honoured_and_clamped(herd: Herd) -> None:
    # 700 ms is waited for (not the 50 ms backoff); 10 minutes is clamped to the longest
    # backoff (32 x 50 ms = 1.6 s).
    honoured, clamped = herd.path("honoured.log"), herd.path("clamped.log")
    run = herd.run(["-w", "2", "--retry-backoff", "50ms"], [
        json.dumps({"op": "retry_after", "ms": 700, "log": honoured}),
        json.dumps({"op": "retry_after", "ms": 600000, "log": clamped})])
    assert run.code == 0, run.dump()
    assert [r["output"] for r in run.by_seq()] == [2, 2], run.dump()
    t = attempt_times(honoured)
    assert len(t) == 2 and t[1] - t[0] >= 700_000, t
    t = attempt_times(clamped)
    assert len(t) == 2 and 1_500_000 <= t[1] - t[0] < 10_000_000, t
