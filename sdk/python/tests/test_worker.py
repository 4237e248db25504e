"""The worker process against a fake supervisor: the conversation, the exit codes, batching,
and a supervisor that breaks the protocol, stops reading or vanishes."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import pathlib
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import pytest

import herd
from herd import _codec as codec

from conftest import ECHO_WORKER, TIMEOUT, Fake, background, wait_until, worker_env

# Every test here runs on both serve loops, the native one and the pure-Python one.
pytestmark = pytest.mark.usefixtures("serve_loop")


def test_hello_tasks_errors_then_shutdown_exits_0(fake: Fake) -> None:
    sup = fake(ECHO_WORKER + "\n", max_frame=4096)
    hello = sup.recv()
    assert hello == ("Hello", herd.worker.HELLO_PROTOCOL, sup.proc.pid, "tok")
    sup.send(codec.encode_task(1, 1, b"hi"))
    assert sup.recv() == ("Done", 1, ("Ok", b"hi"))
    sup.send(codec.encode_task(2, 1, b"boom"))
    assert sup.recv() == ("Done", 2, ("Err", False, "handler raised ValueError: boom"))
    sup.send(codec.encode_task(3, 2, b"still serving"))
    assert sup.recv() == ("Done", 3, ("Ok", b"still serving"))
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err
    # The failure's traceback went to stderr, which herd logs.
    assert "ValueError: boom" in err and "Traceback" in err


def test_the_worker_runs_the_serve_loop_asked_for(fake: Fake, serve_loop: str) -> None:
    sup = fake("import herd.worker as w\n"
               "w.run(lambda p: 'pure' if w._native_module() is None else 'native')\n")
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"x") + codec.encode_shutdown())
    assert sup.recv() == ("Done", 1, ("Ok", serve_loop.encode()))
    code, err = sup.wait()
    assert code == 0, err


def test_handler_results_of_every_kind(fake: Fake) -> None:
    script = """
import herd
class Weird: pass
def handle(task):
    p = task.payload
    if p == b"str": return "h\u00e9llo"
    if p == b"bytearray": return bytearray(b"ba")
    if p == b"memoryview": return memoryview(b"xmvx")[1:3]
    if p == b"dict": return {"n": 1, "s": "h\u00e9", "l": [1.5, None, True]}
    if p == b"list": return [1, {"a": []}, "x y"]
    if p == b"unjsonable": return {"s": {1, 2}}
    if p == b"none": return None
    if p == b"weird": return Weird()
    if p == b"retry": raise herd.Retryable("later")
    if p == b"retry-empty": raise herd.Retryable()
    if p == b"fatal": raise herd.Fatal("nope")
    if p == b"attempt": return str(task.attempt)
    if p == b"id": return str(task.id)
    if p == b"big": return b"x" * 5000
    if p == b"big-error": raise herd.Fatal("\u00e9" * 3000)
    if p == b"worker": return str(herd.worker_index())
    return p
herd.run(handle, pass_task=True)
"""
    sup = fake(script, max_frame=4096)
    sup.recv()
    cases = [
        (b"str", ("Ok", "h\u00e9llo".encode())),
        (b"bytearray", ("Ok", b"ba")),
        (b"memoryview", ("Ok", b"mv")),
        # Compact JSON, UTF-8.
        (b"dict", ("Ok", '{"n":1,"s":"h\u00e9","l":[1.5,null,true]}'.encode())),
        (b"list", ("Ok", b'[1,{"a":[]},"x y"]')),
        (b"retry", ("Err", True, "later")),
        (b"retry-empty", ("Err", True, "Retryable")),
        (b"fatal", ("Err", False, "nope")),
        (b"worker", ("Ok", b"0")),
    ]
    for i, (payload, outcome) in enumerate(cases):
        sup.send(codec.encode_task(i, 1, payload))
        assert sup.recv() == ("Done", i, outcome), payload
    sup.send(codec.encode_task(100, 7, b"attempt"))
    assert sup.recv() == ("Done", 100, ("Ok", b"7"))
    sup.send(codec.encode_task(2**64 - 1, 1, b"id"))
    assert sup.recv() == ("Done", 2**64 - 1, ("Ok", str(2**64 - 1).encode()))
    for i, payload, want in [(200, b"none", "handler raised TypeError: handler returned "
                                            "NoneType, expected bytes"),
                             (201, b"weird", "handler raised TypeError: handler returned Weird"),
                             (204, b"unjsonable", "handler raised TypeError: Object of type set "
                                                  "is not JSON serializable"),
                             (202, b"big", "handler output of 5000 bytes exceeds the maximum "
                                           "frame of 4096 bytes"),
                             (203, b"big-error", "handler error message of 6000 bytes exceeds "
                                                 "the maximum frame of 4096 bytes; it began: "
                                                 + "\u00e9" * 100)]:
        sup.send(codec.encode_task(i, 1, payload))
        tag, id, (kind, retryable, message) = sup.recv()
        assert (tag, id, kind, retryable) == ("Done", i, "Err", False)
        assert message.startswith(want), message
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err


def test_pipelined_tasks_and_shutdown_in_one_write(fake: Fake) -> None:
    sup = fake(ECHO_WORKER, max_frame=4096)
    sup.recv()
    n = 20_000
    sent = background(lambda: sup.send(
        b"".join(codec.encode_task(i, 1, b"%d" % i) for i in range(n))
        + codec.encode_shutdown()))
    for i in range(n):
        assert sup.recv() == ("Done", i, ("Ok", b"%d" % i))
    sent()
    code, err = sup.wait()
    assert code == 0, err


def test_eof_exits_1(fake: Fake) -> None:
    sup = fake(ECHO_WORKER)
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"x"))
    assert sup.recv() == ("Done", 1, ("Ok", b"x"))
    sup.conn.close()
    code, err = sup.wait()
    assert code == 1
    assert "the supervisor closed the connection; exiting" in err


def test_eof_while_idle_exits_1_promptly(fake: Fake) -> None:
    # Waiting for a task (the native loop waits without the GIL), the worker sees herd go away
    # at once: no timer is involved, only the end of the stream.
    sup = fake(ECHO_WORKER)
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"x"))
    assert sup.recv() == ("Done", 1, ("Ok", b"x"))
    t0 = time.monotonic()
    sup.conn.close()
    code, err = sup.wait()
    assert code == 1, err
    assert time.monotonic() - t0 < 10, "the worker took its time to see herd gone"


def test_eof_mid_frame_exits_2(fake: Fake) -> None:
    sup = fake(ECHO_WORKER)
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"hello")[:7])
    sup.conn.shutdown(socket.SHUT_WR)
    code, err = sup.wait()
    assert code == 2
    assert "connection closed in the middle of a frame" in err


def test_garbage_from_the_supervisor_exits_2(fake: Fake) -> None:
    # Each codec words the first one its own way.
    for bad, why in [(bytes.fromhex("030000007f0102"), ("unknown ToWorker variant 127",
                                                        "integer `127`, expected variant index")),
                     (bytes.fromhex("0200000001") + b"\x00", ("trailing bytes",)),
                     (bytes.fromhex("ffffffff01"), ("exceeds the maximum of 65536 bytes",))]:
        sup = fake(ECHO_WORKER, max_frame=65536)
        sup.recv()
        # A valid task first: its reply still comes, the garbage after it ends the worker.
        sup.send(codec.encode_task(1, 1, b"ok") + bad)
        assert sup.recv() == ("Done", 1, ("Ok", b"ok"))
        code, err = sup.wait()
        assert code == 2, err
        assert "protocol error" in err and any(w in err for w in why), err
        sup.close()


def test_not_under_herd_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    p = subprocess.run([sys.executable, "-c", ECHO_WORKER], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert p.returncode == 2
    assert p.stderr.decode() == ("-c: this program is a herd worker: run it under "
                                 "`herd run -- <cmd>` (HERD_SOCKET is not set)\n")
    assert p.stdout == b""


def test_bad_environment_exits_2(tmp_path: pathlib.Path) -> None:
    cases: List[Tuple[Dict[str, Optional[str]], str]] = [({"HERD_TOKEN": None}, "HERD_TOKEN is not set"),
             ({"HERD_MAX_FRAME": "lots"}, "environment variable HERD_MAX_FRAME is invalid"),
             ({}, "cannot connect to the supervisor at " + str(tmp_path / "nothing.sock"))]
    for change, want in cases:
        env = worker_env(str(tmp_path / "nothing.sock"))
        for k, v in change.items():
            if v is None:
                env.pop(k)
            else:
                env[k] = v
        p = subprocess.run([sys.executable, "-c", ECHO_WORKER], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
        assert p.returncode == 2, p.stderr
        assert want in p.stderr.decode(), p.stderr


def test_large_payloads_both_ways(fake: Fake) -> None:
    # Bigger than a read (64 KiB): read straight into a buffer of the frame's size.
    sup = fake(ECHO_WORKER, max_frame=16 << 20)
    sup.recv()
    big = [os.urandom(1) * (5 << 20), bytes(range(256)) * 4096, b"y" * 65_531, b"z" * 65_532]
    # Sent from a thread: like herd, this side reads replies while it writes tasks.
    sent = background(lambda: sup.send(
        b"".join(codec.encode_task(i, 1, p) for i, p in enumerate(big))
        + codec.encode_shutdown()))
    for i, p in enumerate(big):
        assert sup.recv() == ("Done", i, ("Ok", p))
    sent()
    code, err = sup.wait()
    assert code == 0, err


def wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def test_a_supervisor_that_stops_reading_then_leaves(fake: Fake) -> None:
    # Replies fill the socket buffer while nobody reads: the worker blocks in its write. When
    # the supervisor goes away it must exit 1 (not hang, not spin).
    sup = fake(ECHO_WORKER, max_frame=1 << 20)
    sup.recv()
    task = codec.encode_task(1, 1, b"r" * (512 << 10))

    def feed() -> None:
        try:
            for _ in range(64):
                sup.conn.sendall(task)
        except OSError:
            pass  # the test closed the socket under us

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    wait_until("the worker blocked writing a reply nobody reads",
               lambda: "send" in wchan(sup.proc.pid))
    sup.conn.shutdown(socket.SHUT_RDWR)
    sup.conn.close()
    code, err = sup.wait()
    assert code == 1, err
    t.join(TIMEOUT)


class CountingSocket:
    """A socket wrapper for an in-process worker that counts reads and writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0
        self.writes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, n: int, flags: int = 0) -> bytes:
        self.reads += 1
        return self.sock.recv(n, flags)

    def recv_into(self, view: memoryview, n: int = 0, flags: int = 0) -> int:
        self.reads += 1
        return self.sock.recv_into(view, n, flags)

    def sendall(self, data: bytes) -> None:
        self.writes += 1
        self.sock.sendall(data)


def serve_in_thread(handler: Callable[[bytes], Any], max_frame: int = 1 << 20
                    ) -> Tuple[socket.socket, FrameReader, CountingSocket, Callable[[], None]]:
    sup, wsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    counting = CountingSocket(wsock)
    join = background(lambda: herd.worker.serve(cast(socket.socket, counting), handler, "tok",
                                                   max_frame))
    sup.settimeout(TIMEOUT)
    reader = FrameReader(sup)
    assert reader.recv()[0] == "Hello"
    return sup, reader, counting, join


class FrameReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def recv(self) -> Tuple[Any, ...]:
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack_from("<I", self.buf)[0]
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return codec.decode_from_worker(body)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk


# The pure-Python loop's batching, seen through its socket; the native loop's is herd-worker's,
# tested with the Rust SDK (it writes through the descriptor, past this wrapper).
@pytest.mark.parametrize("serve_loop", ["pure"], indirect=True)
def test_tiny_tasks_are_answered_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the time bounds out of the way, replies go out only when the input runs dry: at most
    # one write per read. Both bounds measure wall time, which is not a property of the
    # batching: MAX_HOLD flushes on a slow machine, and BATCH_ONLY_UNDER after any handler
    # that merely looked slow because its thread was preempted or waited for the GIL (this
    # test's own supervisor threads share it). Under load that made this test fail (issue 19:
    # `assert 4 <= 3`), so the handler here stalls now and then, as a preempted one does.
    monkeypatch.setattr(herd.worker, "MAX_HOLD", 3600.0)
    monkeypatch.setattr(herd.worker, "BATCH_ONLY_UNDER", float("inf"))

    def handler(p: bytes, calls: List[int] = [0]) -> bytes:
        calls[0] += 1
        if calls[0] % 1000 == 0:
            time.sleep(0.001)  # a stall of the handler's thread, not a wait for anything
        return p

    sup, reader, counting, join = serve_in_thread(handler)
    n = 5000
    sent = background(lambda: sup.sendall(
        b"".join(codec.encode_task(i, 1, b"e") for i in range(n)) + codec.encode_shutdown()))
    for i in range(n):
        assert reader.recv() == ("Done", i, ("Ok", b"e"))
    sent()
    join()
    writes = counting.writes - 1  # the Hello
    assert writes <= counting.reads + 1, (writes, counting.reads)
    assert writes < n // 10, (writes, counting.reads)


def test_a_quick_reply_is_not_held_behind_a_slow_handler() -> None:
    # Both tasks arrive in one write, so the first reply is held while the second runs. The
    # second handler finishes only once the first reply has reached the supervisor: only the
    # flusher thread can send it. Once with a handler that sleeps (releases the GIL), once with
    # one that spins in Python (holds it, gives it up at the switch interval).
    for mode in ("sleep", "spin"):
        got_first = threading.Event()

        def handler(p: bytes) -> bytes:
            if p == b"slow":
                if mode == "sleep":
                    assert got_first.wait(TIMEOUT), "the first reply was held back"
                else:
                    deadline = time.monotonic() + TIMEOUT
                    while not got_first.is_set():
                        assert time.monotonic() < deadline, "the first reply was held back"
            return p

        sup, reader, counting, join = serve_in_thread(handler)
        sup.sendall(codec.encode_task(1, 1, b"quick") + codec.encode_task(2, 1, b"slow"))
        assert reader.recv() == ("Done", 1, ("Ok", b"quick"))
        got_first.set()
        assert reader.recv() == ("Done", 2, ("Ok", b"slow"))
        sup.sendall(codec.encode_shutdown())
        join()
        sup.close()


def test_serve_reports_a_vanished_supervisor() -> None:
    sup, reader, counting, join = serve_in_thread(lambda p: p)
    sup.close()
    try:
        join()
    except herd.worker.Disconnected:
        pass
    else:
        raise AssertionError("serve returned normally after EOF")


def test_system_exit_in_a_handler_still_sends_earlier_replies(fake: Fake) -> None:
    script = """
import sys, herd
def handle(p):
    if p == b"exit":
        sys.exit(7)
    return p
herd.run(handle)
"""
    sup = fake(script)
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"a") + codec.encode_task(2, 1, b"b")
             + codec.encode_task(3, 1, b"exit"))
    assert sup.recv() == ("Done", 1, ("Ok", b"a"))
    assert sup.recv() == ("Done", 2, ("Ok", b"b"))
    code, _ = sup.wait()
    assert code == 7


def test_a_generator_handler_streams_chunks_before_its_done(fake: Fake) -> None:
    script = """
import herd
def handle(p):
    if p == b"rows":
        for i in range(3):
            yield '{"row":%d}' % i
        return b"3"
    if p == b"none":
        yield b"only"
    if p == b"raises":
        yield b"sent"
        raise ValueError("half way")
    if p == b"big":
        yield b"fits"
        yield b"x" * 5000
    if p == b"weird":
        yield 42
herd.run(handle)
"""
    sup = fake(script, max_frame=4096)
    sup.recv()
    sup.send(codec.encode_task(1, 1, b"rows"))
    assert [sup.recv() for _ in range(4)] == [
        ("Chunk", 1, b'{"row":0}'), ("Chunk", 1, b'{"row":1}'), ("Chunk", 1, b'{"row":2}'),
        ("Done", 1, ("Ok", b"3"))]
    sup.send(codec.encode_task(2, 1, b"none"))
    assert [sup.recv() for _ in range(2)] == [("Chunk", 2, b"only"), ("Done", 2, ("Ok", b""))]
    # A chunk sent stays sent; the failure is the task's one Done.
    sup.send(codec.encode_task(3, 1, b"raises"))
    assert sup.recv() == ("Chunk", 3, b"sent")
    assert sup.recv() == ("Done", 3, ("Err", False, "handler raised ValueError: half way"))
    sup.send(codec.encode_task(4, 1, b"big"))
    assert sup.recv() == ("Chunk", 4, b"fits")
    assert sup.recv() == ("Done", 4, ("Err", False, "chunk of 5000 bytes exceeds the maximum "
                                                    "frame of 4096 bytes"))
    sup.send(codec.encode_task(5, 1, b"weird"))
    done = sup.recv()
    assert done[:2] == ("Done", 5) and "handler returned int" in done[2][2], done
    # Tasks pipelined behind streams are answered in order.
    sup.send(b"".join(codec.encode_task(10 + i, 1, b"rows") for i in range(50)))
    for i in range(50):
        msgs = [sup.recv() for _ in range(4)]
        assert [m[:2] for m in msgs] == [("Chunk", 10 + i)] * 3 + [("Done", 10 + i)], msgs
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err


V3_WORKER = """
import herd
def handle(task):
    p = task.payload
    if p == b"wait-cancel":
        task.wait_cancelled()
        assert task.cancelled
        raise herd.Cancelled()
    if p == b"cancelled-uncalled-for":
        raise herd.Cancelled()
    if p == b"retry-after":
        raise herd.Retryable("busy", retry_after=1.5)
    if p == b"retry-after-0":
        raise herd.Retryable(retry_after=0)
    return p
herd.run(handle, pass_task=True)
"""


def test_withdraw_and_cancel_while_a_handler_runs(fake: Fake) -> None:
    sup = fake(V3_WORKER)
    assert sup.recv() == ("Hello", 3, sup.proc.pid, "tok")
    # A head that waits for its cancel, three tasks queued behind it, then the questions: the
    # watcher answers them while the head runs, in order.
    sup.send(codec.encode_task(1, 1, b"wait-cancel") + codec.encode_task(2, 1, b"two")
             + codec.encode_task(3, 1, b"three") + codec.encode_task(4, 1, b"four"))
    sup.send(codec.encode_withdraw(3) + codec.encode_withdraw(1) + codec.encode_cancel(4))
    assert sup.recv() == ("Withdrawn", 3)
    assert sup.recv() == ("Kept", 1)
    assert sup.recv() == ("Done", 4, ("Cancelled",))
    # A task sent while the head runs is kept in order behind the ones still queued.
    sup.send(codec.encode_task(5, 1, b"five"))
    sup.send(codec.encode_cancel(1))
    assert sup.recv() == ("Done", 1, ("Cancelled",))
    assert sup.recv() == ("Done", 2, ("Ok", b"two"))
    assert sup.recv() == ("Done", 5, ("Ok", b"five"))
    # Read between handlers: the task ran already (Kept); a cancel of it changes nothing.
    sup.send(codec.encode_withdraw(2) + codec.encode_cancel(5))
    assert sup.recv() == ("Kept", 2)
    sup.send(codec.encode_task(6, 1, b"cancelled-uncalled-for"))
    assert sup.recv() == ("Done", 6, ("Err", False, "the handler raised Cancelled, but herd "
                                      "did not cancel this task"))
    sup.send(codec.encode_task(7, 1, b"retry-after") + codec.encode_task(8, 1, b"retry-after-0"))
    assert sup.recv() == ("Done", 7, ("RetryAfter", "busy", 1500))
    assert sup.recv() == ("Done", 8, ("RetryAfter", "Retryable", 0))
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err


def test_a_withdraw_racing_the_start_of_its_task_gets_exactly_one_answer(fake: Fake) -> None:
    # Many short heads (a few ms, around the watcher's 10 ms), each with a task behind it that
    # is withdrawn at once: either it was given back (and never runs) or it ran (Kept, and its
    # Done comes); never both, never neither.
    script = """
import time, herd
def handle(task):
    if task.payload.startswith(b"head"):
        time.sleep(int(task.payload[4:]) / 1000)
    return task.payload
herd.run(handle, pass_task=True)
"""
    sup = fake(script)
    assert sup.recv()[0] == "Hello"
    rounds = 60
    for r in range(rounds):
        head, tail = 2 * r + 1, 2 * r + 2
        sup.send(codec.encode_task(head, 1, b"head%d" % (r % 20))
                 + codec.encode_task(tail, 1, b"t"))
        sup.send(codec.encode_withdraw(tail))
        got = [sup.recv(), sup.recv()]
        if ("Withdrawn", tail) in got:
            assert sorted(got, key=str) == sorted([("Done", head, ("Ok", b"head%d" % (r % 20))),
                                                   ("Withdrawn", tail)], key=str), got
        else:
            assert ("Kept", tail) in got or ("Done", tail, ("Ok", b"t")) in got, got
            got.append(sup.recv())
            assert sorted(got, key=str) == sorted([
                ("Done", head, ("Ok", b"head%d" % (r % 20))), ("Done", tail, ("Ok", b"t")),
                ("Kept", tail)], key=str), got
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err


def test_retryable_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError):
        herd.Retryable("x", retry_after=-1)
    with pytest.raises(ValueError):
        herd.Retryable("x", retry_after=float("nan"))
    assert herd.Retryable("x", retry_after=2).retry_after == 2.0


def test_a_slow_handler_after_many_tiny_ones_is_still_watched(fake: Fake) -> None:
    # While tiny tasks flow the watcher looks seldom (it would cost them the GIL); a handler
    # that then hangs is still found, and the task behind it given back.
    sup = fake(V3_WORKER)
    assert sup.recv()[0] == "Hello"
    n = 20_000
    sup.send(b"".join(codec.encode_task(i, 1, b"t") for i in range(1, n + 1))
             + codec.encode_task(n + 1, 1, b"wait-cancel") + codec.encode_task(n + 2, 1, b"t")
             + codec.encode_withdraw(n + 2))
    for i in range(1, n + 1):
        assert sup.recv() == ("Done", i, ("Ok", b"t"))
    assert sup.recv() == ("Withdrawn", n + 2)
    sup.send(codec.encode_cancel(n + 1))
    assert sup.recv() == ("Done", n + 1, ("Cancelled",))
    sup.send(codec.encode_shutdown())
    code, err = sup.wait()
    assert code == 0, err
