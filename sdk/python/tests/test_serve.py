"""herd.serve(): a private `herd serve` for the length of a `with` block, with real processes:
it serves, it stops at the end of the block, it reports a daemon that cannot start, and it
dies with the Python process that started it even when that process is SIGKILLed (no orphan
daemon or worker, no socket left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, List

import pytest

import herd
from conftest import TIMEOUT, UPPER, wait_until


@pytest.fixture
def runtime() -> Iterator[str]:
    """A private XDG_RUNTIME_DIR (herd's worker sockets and serve()'s control socket), which
    must be empty again after the test."""
    with tempfile.TemporaryDirectory(prefix="herd-pyserve-") as tmp:
        old = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = tmp
        try:
            yield tmp
        finally:
            if old is None:
                del os.environ["XDG_RUNTIME_DIR"]
            else:
                os.environ["XDG_RUNTIME_DIR"] = old
        assert os.listdir(tmp) == [], "herd left files in its runtime dir"


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count: its parent has yet to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def test_serve_runs_events_and_stops_at_the_end_of_the_block(runtime: str) -> None:
    with herd.serve(sys.executable, UPPER, workers=2, stderr=subprocess.DEVNULL) as daemon:
        assert daemon.control.startswith(runtime) and os.path.exists(daemon.control)
        with daemon.connect_sync() as pool:
            assert pool.submit(b"hello") == b"HELLO"
            outs = dict(pool.map([b"a%d" % i for i in range(500)]))
        assert outs == {i: b"A%d" % i for i in range(500)}
        status = subprocess.run([herd.find_herd_bin(), "status", "--json", "--control",
                                 daemon.control], stdout=subprocess.PIPE, check=True,
                                timeout=TIMEOUT)
        assert len(json.loads(status.stdout)["workers"]) == 2
        workers = children(daemon.pid)
        assert workers, "no workers under the daemon"
        pid = daemon.pid
    assert daemon.process.returncode == 0
    assert not alive(pid) and not any(alive(w) for w in workers)
    assert not os.path.exists(daemon.control)


def test_serve_with_the_asyncio_client(runtime: str) -> None:
    import asyncio

    async def main(daemon: herd.Daemon) -> bytes:
        async with daemon.connect() as pool:
            return await pool.submit("wörld")

    with herd.serve(sys.executable, UPPER, workers=1, stderr=subprocess.DEVNULL) as daemon:
        assert asyncio.run(main(daemon)) == "WÖRLD".encode()


def test_a_daemon_that_cannot_start_is_an_error(runtime: str) -> None:
    with pytest.raises(herd.DaemonError, match="exited with status"):
        with herd.serve(sys.executable, UPPER, options=["--no-such-option"],
                        stderr=subprocess.DEVNULL):
            raise AssertionError("it started")
    with pytest.raises(ValueError):
        with herd.serve():
            pass


def test_the_daemon_dies_with_a_sigkilled_python(runtime: str) -> None:
    """A Python program that started a daemon is SIGKILLed: herd notices through its pidfd,
    stops its workers and removes its control socket; nothing of it is left running."""
    with tempfile.TemporaryDirectory(prefix="herd-pyserve-") as tmp:
        info = os.path.join(tmp, "info.json")
        script = f"""
import json, os, subprocess, sys, time
import herd
with herd.serve(sys.executable, {UPPER!r}, workers=2, stderr=subprocess.DEVNULL) as daemon:
    with daemon.connect_sync() as pool:
        assert pool.submit(b"x") == b"X"
    with open({info!r} + ".tmp", "w") as f:
        json.dump({{"daemon": daemon.pid, "control": daemon.control}}, f)
    os.rename({info!r} + ".tmp", {info!r})
    while True:
        time.sleep(3600)
"""
        owner = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
        try:
            wait_until("the owner's daemon to be ready",
                       lambda: os.path.exists(info) or owner.poll() is not None)
            assert owner.poll() is None, owner.communicate()[1].decode()
            with open(info) as f:
                got: Dict[str, object] = json.load(f)
            pid = got["daemon"]
            control = got["control"]
            assert isinstance(pid, int) and isinstance(control, str)
            workers = children(pid)
            assert len(workers) >= 2, workers
            assert os.path.exists(control)
        finally:
            owner.send_signal(signal.SIGKILL)
            owner.wait(TIMEOUT)
            assert owner.stderr is not None
            owner.stderr.close()
        # The daemon, reparented, is reaped by init (or a subreaper): `alive` skips zombies.
        wait_until("the daemon to exit", lambda: not alive(pid))
        wait_until("its workers to exit", lambda: not any(alive(w) for w in workers))
        wait_until("its control socket to go", lambda: not os.path.exists(control))
        # The runtime fixture checks that its worker socket dir is gone too.
        wait_until("its runtime dir to go", lambda: os.listdir(runtime) == [])


def test_die_with_parent_refuses_a_pid_that_is_not_the_parent(runtime: str) -> None:
    """herd serve --die-with-parent PID must be started by PID: a parent that already died
    (herd was reparented) or another process is refused before anything is made."""
    control = os.path.join(runtime, "control.sock")
    p = subprocess.run([herd.find_herd_bin(), "serve", "--control", control,
                        "--die-with-parent", "1", "--", sys.executable, UPPER],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=TIMEOUT)
    assert p.returncode != 0
    assert b"is not herd's parent" in p.stderr, p.stderr
    assert not os.path.exists(control)
