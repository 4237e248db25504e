"""herd.client against the real daemon: `herd serve` with herd-chaos workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import threading
import pathlib
from typing import (Any, AsyncIterator, Callable, Coroutine, Dict, Iterator, List, Optional,
                    Sequence, TypeVar)

import pytest

import herd
from conftest import REPO, TIMEOUT, herd_bin, wait_until


_R = TypeVar("_R")


def square(i: int) -> bytes:
    return b'{"op":"square","n":%d}' % i


class Daemon:
    """`herd serve` in a private dir, once it has logged `ready`; its log lines collected."""

    def __init__(self, tmp: str, workers: int = 2, extra: Sequence[str] = (),
                 worker: Optional[Sequence[str]] = None) -> None:
        self.bin = herd_bin()
        self.sock = os.path.join(tmp, "herd.sock")
        chaos = os.path.join(os.path.dirname(self.bin), "herd-chaos")
        env = dict(os.environ, XDG_RUNTIME_DIR=tmp, RUST_BACKTRACE="0")
        env.pop("RUST_LOG", None)
        self.env = env
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--log-format", "json", "--control", self.sock,
             "-w", str(workers), *extra, "--", *(worker or [chaos])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env)
        self.logs: List[Dict[str, Any]] = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read_logs, daemon=True).start()
        self.wait_log("ready")

    def _read_logs(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"message": line.decode("utf-8", "replace")}
            with self.cv:
                self.logs.append(entry)
                self.cv.notify_all()
        with self.cv:
            self.logs.append({"message": "<eof>"})
            self.cv.notify_all()

    def wait_log(self, message: str) -> None:
        with self.cv:
            ok = self.cv.wait_for(
                lambda: any(e.get("message") in (message, "<eof>") for e in self.logs),
                TIMEOUT)
            assert ok and any(e.get("message") == message for e in self.logs), self.logs[-30:]

    def status(self) -> Dict[str, Any]:
        out = subprocess.run([self.bin, "status", "--json", "--control", self.sock],
                             stdout=subprocess.PIPE, env=self.env, timeout=TIMEOUT, check=True)
        st: Dict[str, Any] = json.loads(out.stdout)
        return st

    def ctl(self, *args: str) -> None:
        subprocess.run([self.bin, "ctl", "--control", self.sock, *args], env=self.env,
                       stdout=subprocess.DEVNULL, timeout=TIMEOUT, check=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


#: The `daemon` fixture: daemon(**kw) starts a Daemon(tmp, **kw), closed after the test.
StartDaemon = Callable[..., Daemon]


@pytest.fixture
def daemon() -> Iterator[StartDaemon]:
    with tempfile.TemporaryDirectory(prefix="herd-pyclient-") as tmp:
        made = []

        def start(**kw: Any) -> Daemon:
            d = Daemon(tmp, **kw)
            made.append(d)
            return d

        yield start
        for d in made:
            d.close()


def run(coro: Coroutine[Any, Any, _R]) -> _R:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_submit_the_readme_example(daemon: StartDaemon) -> None:
    d = daemon()

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            assert pool.pid == d.proc.pid
            assert await pool.submit(b'{"op":"square","n":7}') == b"49"
            # A JSON output comes back as the worker wrote it; a string as its text.
            assert await pool.submit('{"op":"echo","v":{"a":[1,2]}}') == b'{"a":[1,2]}'
            assert await pool.submit(b'{"op":"echo","v":"h\\u00e9"}') == "h\u00e9".encode()
            # The output is sliced out of the record: keys of the record's own inside it, and
            # JSON strings with escapes, come back whole.
            tricky = b'{"attempts":[1,{"seq":2}],"s":",\\"attempts\\":3","t":"a\\nb"}'
            assert await pool.submit(b'{"op":"echo","v":' + tricky + b'}') == tricky
            assert await pool.submit(b'{"op":"echo","v":",\\"attempts\\":1}"}') == \
                b',"attempts":1}'
            assert pool.pending == 0

    run(main())


def test_64_coroutines_submit_concurrently(daemon: StartDaemon) -> None:
    d = daemon()

    async def caller(pool: herd.Pool, k: int) -> int:
        for i in range(200):
            n = k * 1000 + i
            assert await pool.submit(square(n)) == str(n * n).encode()
        return k

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            done = await asyncio.gather(*(caller(pool, k) for k in range(64)))
            assert done == list(range(64))

    run(main())
    assert d.status()["totals"]["ok"] == 64 * 200


def test_map_100k_events_unordered_and_ordered(daemon: StartDaemon) -> None:
    d = daemon()
    n = 100_000

    async def source(count: int) -> AsyncIterator[bytes]:
        for i in range(count):
            yield square(i)

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            seen = bytearray(n)
            async for i, out in pool.map(source(n), window=2048):
                assert out == str(i * i).encode()
                assert not seen[i]
                seen[i] = 1
                # The window bounds what is in flight (and what the daemon holds for us).
                assert pool.pending <= 2048
            assert all(seen)
            # In order, from a plain iterable.
            got = [i async for i, out in pool.map((square(i) for i in range(5000)),
                                                  ordered=True, window=64)]
            assert got == list(range(5000))

    run(main())


def test_every_error_kind(daemon: StartDaemon) -> None:
    # Lines over about 4 KiB are rejected; hangs time out; no retries.
    d = daemon(extra=["--timeout", "500ms", "--retries", "0", "--max-frame", "4KiB"])
    cases = [
        (b'{"op":"fail","retryable":false}', herd.EventFailed, "failed"),
        (b'{"op":"hang"}', herd.EventTimeout, "timeout"),
        (b'{"op":"crash"}', herd.EventCrashed, "crashed"),
        (b'{"op":"garbage"}', herd.EventProtocolError, "protocol"),
        (b'{"op":"echo","v":"' + b"x" * 8192 + b'"}', herd.EventRejected, "rejected"),
    ]

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            for event, cls, kind in cases:
                with pytest.raises(cls) as e:
                    await pool.submit(event)
                assert e.value.kind == kind and e.value.message, e.value
                assert isinstance(e.value, herd.EventError)
                assert e.value.record["ok"] is False
            # map: raised, or yielded in place with return_exceptions.
            events = [square(3), cases[0][0], square(4)]
            got = dict([x async for x in pool.map(events, ordered=True, return_exceptions=True)])
            assert got[0] == b"9" and got[2] == b"16"
            assert isinstance(got[1], herd.EventFailed)
            with pytest.raises(herd.EventFailed):
                async for _ in pool.map(events, ordered=True):
                    pass
            # The pool still serves.
            assert await pool.submit(square(5)) == b"25"

    run(main())


def test_shutdown_records_then_connection_lost_when_the_daemon_stops(daemon: StartDaemon) -> None:
    d = daemon()

    async def main() -> Any:
        pool = await herd.connect(d.sock)
        hung = [asyncio.ensure_future(pool.submit(b'{"op":"hang"}')) for _ in range(6)]
        # Both workers hold a hang and the rest wait in the queue.
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_until("events in flight", lambda: d.status()["inflight"] >= 2))
        await asyncio.get_running_loop().run_in_executor(None, d.ctl, "stop", "--fast")
        got = await asyncio.gather(*hung, return_exceptions=True)
        assert all(isinstance(e, (herd.EventShutdown, herd.ConnectionLost))
                   for e in got), got
        assert any(isinstance(e, herd.EventShutdown) for e in got), got
        # After the daemon is gone, a new submit fails at once, and so does close.
        await asyncio.get_running_loop().run_in_executor(None, d.proc.wait, TIMEOUT)
        with pytest.raises(herd.ConnectionLost):
            await pool.submit(square(1))
        with pytest.raises(herd.ConnectionLost):
            await pool.close()

    run(main())
    assert d.proc.returncode == 0


def test_daemon_sigkilled_with_awaits_pending(daemon: StartDaemon) -> None:
    d = daemon()

    async def main() -> Any:
        pool = await herd.connect(d.sock)
        assert await pool.submit(square(2)) == b"4"
        waits = [asyncio.ensure_future(pool.submit(b'{"op":"sleep","ms":600000}'))
                 for _ in range(50)]
        it = pool.map((square(i) for i in range(10**9)), window=100)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_until("events in flight", lambda: d.status()["inflight"] >= 2))
        os.kill(d.proc.pid, signal.SIGKILL)
        got = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(e, herd.ConnectionLost) for e in got), got
        assert "went away" in str(got[0])
        # A map in progress ends with the same error, however many it had yielded.
        with pytest.raises(herd.ConnectionLost):
            async for _ in it:
                pass

    run(main())


def test_missing_daemon_and_waiting_over_the_cap(daemon: StartDaemon, tmp_path: pathlib.Path) -> None:
    async def missing() -> None:
        with pytest.raises(herd.ConnectionLost, match="no herd daemon"):
            await herd.connect(str(tmp_path / "nobody.sock"))

    run(missing())
    d = daemon(extra=["--max-connections", "1"])

    async def over_the_cap() -> None:
        first = await herd.connect(d.sock)
        # The daemon does not accept a second connection while the first is open: it waits
        # for its turn (bounded by the connect timeout), and is served once the first closes.
        connecting = asyncio.ensure_future(herd.connect(d.sock))
        assert await first.submit(square(6)) == b"36"
        assert not connecting.done()
        await first.close()
        second = await asyncio.wait_for(connecting, TIMEOUT)
        assert await second.submit(square(7)) == b"49"
        await second.close()
        with pytest.raises(herd.HandshakeError, match="not take the connection"):
            async with herd.connect(d.sock):
                await herd.connect(d.sock, timeout=0.5)

    run(over_the_cap())


def test_blocking_client(daemon: StartDaemon) -> None:
    d = daemon()
    with herd.connect_sync(d.sock) as pool:
        assert pool.submit(square(9)) == b"81"
        with pytest.raises(herd.EventFailed):
            pool.submit(b'{"op":"fail","retryable":false}')
        got = list(pool.map((square(i) for i in range(20_000)), ordered=True, window=256))
        assert got == [(i, str(i * i).encode()) for i in range(20_000)]
        # Several threads at once.
        out = {}

        def worker(k: int) -> None:
            out[k] = [pool.submit(square(k * 100 + i)) for i in range(50)]

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert all(out[k] == [str((k * 100 + i) ** 2).encode() for i in range(50)]
                   for k in range(8))


def test_submit_stream_yields_chunks_then_ends_with_the_final_record(daemon: StartDaemon) -> None:
    d = daemon()

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            stream = pool.submit_stream(b'{"op":"stream","n":4}')
            got = [c async for c in stream]
            assert got == [herd.Chunk(1, i, b'{"i":%d}' % i) for i in range(4)]
            assert stream.output == b"4"
            # Text chunks come back as their text, like outputs.
            s = pool.submit_stream(b'{"op":"stream","n":2,"size":3}')
            assert [c.data async for c in s] == [b"xxx", b"xxx"]
            # A worker dying mid-stream: attempt 1's chunks, then the retry's from index 0.
            s = pool.submit_stream(b'{"op":"stream","n":3,"crash_after":2}')
            seen = [(c.attempt, c.index) async for c in s]
            assert seen == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)], seen
            assert s.output == b"3"
            # A final error record ends the iteration with its error.
            s = pool.submit_stream(b'{"op":"stream","n":2,"crash_after":1,"fails":99}')
            with pytest.raises(herd.EventCrashed):
                async for _ in s:
                    pass
            # Streams, plain submits and map share the connection; the others see finals only.
            streams = [pool.submit_stream(b'{"op":"stream","n":%d}' % (i % 5))
                       for i in range(300)]
            plain = await asyncio.gather(*(pool.submit(b'{"op":"stream","n":3}')
                                           for _ in range(100)))
            assert plain == [b"3"] * 100
            outs = [out async for _, out in pool.map([b'{"op":"stream","n":2}'] * 500)]
            assert outs == [b"2"] * 500
            for i, s in enumerate(streams):
                assert [c.index async for c in s] == list(range(i % 5))
                assert await s.result() == str(i % 5).encode()
            assert pool.pending == 0 and not pool._streams
            # At another priority, on that priority's own submission.
            s = pool.submit_stream(b'{"op":"stream","n":3}', priority=5)
            assert [c.index async for c in s] == [0, 1, 2] and s.output == b"3"
            late = pool.submit_stream(b'{"op":"stream","n":2}', priority=-3)
        # close() waited for the stream still running at its own priority.
        assert [c.index async for c in late] == [0, 1] and late.output == b"2"
        with pytest.raises(ValueError):
            pool.submit_stream(b"x", priority=1000)

    run(main())


def test_priority_events_overtake_a_flood(daemon: StartDaemon) -> None:
    d = daemon(workers=1)
    sleep = b'{"op":"sleep","ms":2}'

    def queued_at(st: Dict[str, Any], p: int) -> int:
        return int(st["queued_by_priority"].get(str(p), 0))

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            # About 4 s of work for the one worker, at priority -1, on a connection of its own.
            flood = asyncio.gather(*(pool.submit(sleep, priority=-1) for _ in range(2000)))
            while queued_at(await asyncio.to_thread(d.status), -1) == 0:
                await asyncio.sleep(0.01)  # polling the daemon, not synchronizing
            assert await pool.submit(square(12), priority=5) == b"144"
            # The default priority (0) goes ahead of -1 too.
            assert await pool.submit(square(3)) == b"9"
            got = sorted([x async for x in pool.map((square(i) for i in range(50)), priority=9)])
            assert got == [(i, str(i * i).encode()) for i in range(50)]
            st = await asyncio.to_thread(d.status)
            assert queued_at(st, -1) > 0, st
            assert st["submissions"] == 4  # priorities 0, -1, 5 and 9
            with pytest.raises(ValueError):
                await pool.submit(square(1), priority=128)
            assert await flood == [b"2"] * 2000

    run(main())
    with herd.connect_sync(d.sock) as pool:
        assert pool.submit(square(9), priority=-128) == b"81"
        assert sorted(pool.map([square(2), square(3)], priority=127)) == [(0, b"4"), (1, b"9")]
    assert d.status()["totals"]["ok"] == 2000 + 2 + 50 + 3


def test_cancelling_the_awaiting_coroutine_cancels_the_event(daemon: StartDaemon) -> None:
    # One worker, one task at a time: the first sleep runs, the second waits in the queue.
    d = daemon(workers=1, extra=["--window", "1"])
    pid0 = d.status()["workers"][0]["pid"]

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            running = asyncio.ensure_future(pool.submit(b'{"op":"sleep","ms":60000}'))
            queued = asyncio.ensure_future(pool.submit(b'{"op":"sleep","ms":60000}'))
            await asyncio.get_running_loop().run_in_executor(
                None, wait_until, "one sleep running, one queued",
                lambda: (lambda st: st["inflight"] == 1 and st["queued"] == 1)(d.status()))
            queued.cancel()
            running.cancel()
            for t in (queued, running):
                with pytest.raises(asyncio.CancelledError):
                    await t
            # The worker was stopped and replaced; the pool serves on, and close() returns
            # once the two cancelled records came.
            assert await pool.submit(square(6)) == b"36"

    run(main())
    st = d.status()
    assert st["totals"]["cancelled"] == 2, st
    assert st["restarts"]["cancelled"] == 1, st
    assert st["workers"][0]["pid"] != pid0, st


def test_stream_cancel_ends_the_stream_with_event_cancelled(daemon: StartDaemon) -> None:
    d = daemon(workers=1)

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            stream = pool.submit_stream(b'{"op":"stream","n":1000,"ms":50}')
            async for chunk in stream:
                assert chunk.index == 0
                stream.cancel()
                break
            with pytest.raises(herd.EventCancelled) as e:
                async for _ in stream:
                    pass
            assert e.value.kind == "cancelled" and e.value.record["ok"] is False

    run(main())


def test_max_age_and_deadline_per_connection_raise_typed_errors(daemon: StartDaemon) -> None:
    # One worker taking one task at a time: what waits behind a slow event stays queued.
    d = daemon(workers=1, extra=("--window", "1"))
    with pytest.raises(ValueError):
        herd.connect(d.sock, max_age=0)
    with pytest.raises(ValueError):
        herd.connect_sync(d.sock, deadline="1s")  # type: ignore[arg-type]

    async def main() -> Any:
        async with herd.connect(d.sock, max_age=0.3) as pool:
            slow = asyncio.ensure_future(pool.submit(b'{"op":"sleep","ms":1500}'))
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until("the slow event running",
                                         lambda: d.status()["inflight"] >= 1))
            with pytest.raises(herd.EventExpired) as e:
                await pool.submit(square(3))
            assert e.value.kind == "expired" and e.value.record["attempts"] == 0
            # Started before its max age passed: it runs to the end.
            assert await slow == b"1500"
        async with herd.connect(d.sock, deadline=0.5) as pool:
            with pytest.raises(herd.EventDeadline) as past:
                await pool.submit(b'{"op":"hang"}')
            assert past.value.kind == "deadline"
            # The worker holding it was replaced; the pool still serves.
            assert await pool.submit(square(4)) == b"16"

    run(main())
    totals = d.status()["totals"]
    assert totals.get("expired") == 1 and totals.get("deadline") == 1, totals


def test_keyed_events_run_one_at_a_time_per_key_in_order(daemon: StartDaemon) -> None:
    """`key=`: the daemon's --max-inflight-per-key 1 runs each key's events in turn, in the
    order they were submitted, while other keys and unkeyed events go on beside them."""
    d = daemon(workers=3, extra=["--max-inflight-per-key", "1"])
    clock = b'{"op":"clock"}'

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            keyed = [pool.submit(clock, key=f"k{i % 3}") for i in range(30)]
            plain = [pool.submit(square(i)) for i in range(30)]
            starts = [int(x) for x in await asyncio.gather(*keyed)]
            assert await asyncio.gather(*plain) == [str(i * i).encode() for i in range(30)]
            for k in range(3):
                mine = starts[k::3]
                assert mine == sorted(mine), f"key k{k} started out of order: {mine}"
            with pytest.raises(ValueError):
                await pool.submit(clock, key="a\tb")
            st = await asyncio.to_thread(d.status)
            assert st["keys"]["max_inflight"] == 1 and st["keys"]["parked"] == 0, st

    run(main())
    with herd.connect_sync(d.sock) as pool:
        assert pool.submit(square(4), key=b"bytes-key") == b"16"


def chaos_batching(n: int) -> List[str]:
    """herd-chaos with a batch handler of up to `n` events per call."""
    return [os.path.join(os.path.dirname(herd_bin()), "herd-chaos"), "--batch", str(n)]


def batch_op(i: int, key: str = "") -> bytes:
    """herd-chaos's `batch` op: answers with the batch it ran in, {"n":size,"k":[..],"i":[..]}."""
    return b'{"op":"batch","k":"%s","i":%d}' % (key.encode(), i)


def test_batch_option_bytes_match_the_control_vectors() -> None:
    """Open's body for a batched submission is the protocol's (docs/control-vectors.json)."""
    from herd.client import _open_options
    with open(os.path.join(REPO, "docs", "control-vectors.json")) as f:
        vectors = {v["name"]: v for v in json.load(f)["vectors"]}
    frame = bytes.fromhex(vectors["open_batch"]["frame_hex"])
    assert _open_options(0, (0, 0), False, herd.Batch(64, 0.005, by_key=True)) == frame[4:]
    # Every option a Python submission sends, in the Rust client's order.
    body = _open_options(-3, (1000, 300000), True, herd.Batch(300, wait=0.25))
    assert body == bytes.fromhex("0f0501fd04fbe80305fce09304000709fb2c01fa00")
    assert herd.Batch(8) == herd.Batch(8, 0.005, False)  # a lane's key: equal, same lane


@pytest.mark.parametrize("bad", [dict(max=0), dict(max=-1), dict(max=True), dict(max=2.0),
                                 dict(max=1 << 32), dict(max=4, wait=-0.001),
                                 dict(max=4, wait=float("nan")), dict(max=4, wait="5ms")])
def test_bad_batches_raise_value_error(bad: Dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        herd.Batch(**bad)


def test_a_batch_lane_forms_batches_and_a_plain_lane_does_not(daemon: StartDaemon) -> None:
    """Events submitted with batch= run in batches of up to `max` (the worker names the batch
    each ran in), beside events without, on the same pool, which run one per call."""
    d = daemon(workers=2, worker=chaos_batching(16))
    n = 2000

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            plain = [json.loads(out) async for _, out in pool.map(  # type: ignore[arg-type]
                (batch_op(i) for i in range(n)), ordered=True)]
            assert [o["i"] for o in plain] == [[i] for i in range(n)]
            assert await asyncio.to_thread(lambda: d.status()["batches"]) == 0
            sizes = []
            async for i, out in pool.map((batch_op(i) for i in range(n)), ordered=True,
                                         batch=herd.Batch(16, wait=0.001)):
                o = json.loads(out)  # type: ignore[arg-type]  # errors are raised
                assert i in o["i"] and len(o["i"]) == o["n"], o
                sizes.append(o["n"])
            assert all(1 <= s <= 16 for s in sizes), sizes
            assert max(sizes) > 1, "no batch of more than one event formed"
            # submit() and submit_stream() take one too: the same lane.
            outs = await asyncio.gather(*(pool.submit(batch_op(i), batch=herd.Batch(16, 0.001))
                                          for i in range(200)))
            assert all(json.loads(o)["n"] >= 1 for o in outs)
            stream = pool.submit_stream(batch_op(7), batch=herd.Batch(16, 0.001))
            assert 7 in json.loads(await stream.result() or b"")["i"]
            assert len(pool._lanes) == 1
            with pytest.raises(TypeError):
                await pool.submit(batch_op(0), batch=16)  # type: ignore[arg-type]

    run(main())
    st = d.status()
    assert st["batches"] > 0 and st["batch_mean_size"] > 1.0, st
    # A pool-wide default, in the blocking client: every event of it is batched.
    with herd.connect_sync(d.sock, batch=herd.Batch(16, wait=0.001)) as pool:
        got = list(pool.map((batch_op(i) for i in range(n)), ordered=True))
        assert max(json.loads(out)["n"] for _, out in got) > 1  # type: ignore[arg-type]
        # Batch(1): no batches, for this submission alone.
        assert json.loads(pool.submit(batch_op(1), batch=herd.Batch(1)))["n"] == 1


def test_batches_by_key_hold_one_keys_events(daemon: StartDaemon) -> None:
    d = daemon(workers=2, worker=chaos_batching(16))
    n = 4000
    by_key = herd.Batch(16, wait=0.002, by_key=True)

    async def main() -> Any:
        async with herd.connect(d.sock) as pool:
            keys = [f"key-{i % 4}" for i in range(n)]
            outs = await asyncio.gather(*(pool.submit(batch_op(i, keys[i]), key=keys[i],
                                                      batch=by_key) for i in range(n)))
            largest = 0
            for i, raw in enumerate(outs):
                o = json.loads(raw)
                assert set(o["k"]) == {keys[i]}, f"mixed batch: {o}"
                assert i in o["i"], o
                largest = max(largest, o["n"])
            assert largest > 1, "no batch of more than one event formed"

    run(main())
