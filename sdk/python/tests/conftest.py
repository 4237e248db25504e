"""Fixtures for the Python SDK's tests: the real `herd` binary (HERD_BIN, else the one
installed with the herd package, as herd.serve() finds it), Python workers run by this
interpreter (where the herd package is installed), a private runtime dir per test, and a fake
supervisor for the cases herd never produces (EOF, garbage, a peer that stops reading)."""

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from herd import _codec as codec
from herd import examples as _examples
from herd.daemon import find_herd_bin

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(SDK))
# The examples as installed with the package (herd.examples), not the source tree's.
EXAMPLES = os.path.dirname(os.path.abspath(_examples.__file__))
CHAOS = os.path.join(EXAMPLES, "chaos.py")
UPPER = os.path.join(EXAMPLES, "upper.py")

# Generous: CI machines are small and loaded. Nothing waits this long unless something is wrong.
TIMEOUT = 180


def herd_bin() -> str:
    path = find_herd_bin()
    if not os.access(path, os.X_OK):
        pytest.fail(f"no herd binary at {path}: install the herd package or set HERD_BIN")
    return path


class Run:
    """A finished `herd run`: its records (by seq) and JSON log lines."""

    def __init__(self, proc, n):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.records = [json.loads(line) for line in proc.stdout.splitlines()]
        self.logs = []
        for line in proc.stderr.splitlines():
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"message": line.decode("utf-8", "replace")})
        self.n = n

    def dump(self):
        return (b"\n".join(self.stderr.splitlines()[-60:])).decode("utf-8", "replace")

    def by_seq(self):
        """Exactly one record per event, in seq order."""
        seqs = [r["seq"] for r in self.records]
        assert sorted(seqs) == list(range(self.n)), \
            f"{len(seqs)} records for {self.n} events, or duplicates\n{self.dump()}"
        return sorted(self.records, key=lambda r: r["seq"])

    def log(self, message):
        return [entry for entry in self.logs if entry.get("message") == message]


class Herd:
    """Per-test helper: runs `herd` with its runtime dir in a private temp dir."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.bin = herd_bin()
        self.env = dict(os.environ, XDG_RUNTIME_DIR=tmp, RUST_BACKTRACE="0")
        self.env.pop("RUST_LOG", None)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def run(self, opts, events, worker=None):
        """`herd run --log-format json OPTS -- python3 WORKER` with `events` (lines) on stdin."""
        data = events if isinstance(events, bytes) else "".join(
            e + "\n" for e in events).encode()
        n = data.count(b"\n")
        cmd = [self.bin, "run", "--log-format", "json", *opts, "--", sys.executable,
               worker or CHAOS]
        proc = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=self.env, timeout=TIMEOUT)
        return Run(proc, n)

    def leftovers(self):
        return [e for e in os.listdir(self.tmp) if e.startswith("herd-")]


@pytest.fixture
def herd():
    with tempfile.TemporaryDirectory(prefix="herd-pysdk-") as tmp:
        h = Herd(tmp)
        yield h
        assert h.leftovers() == [], "herd left its runtime dir behind"


def worker_env(socket_path, token="tok", max_frame=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
    env.update(HERD_SOCKET=socket_path, HERD_TOKEN=token, HERD_WORKER="0")
    if max_frame is not None:
        env["HERD_MAX_FRAME"] = str(max_frame)
    return env


class FakeSupervisor:
    """A listening socket standing in for herd, and the worker process connected to it.

    The worker runs for real (a subprocess of this interpreter); this side speaks the protocol
    by hand with herd._codec, so it can also break it."""

    def __init__(self, tmp, script, max_frame=1 << 20, env_extra=None):
        self.path = tempfile.mktemp(prefix="sup-", suffix=".sock", dir=tmp)
        self.max_frame = max_frame
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        env = worker_env(self.path, max_frame=max_frame)
        env.update(env_extra or {})
        self.proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(TIMEOUT)
        self.buf = b""

    def send(self, data):
        self.conn.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.conn.recv(1 << 20)
            if not chunk:
                raise EOFError(f"worker closed the connection ({len(self.buf)} bytes left)")
            self.buf += chunk

    def recv(self):
        """The next message from the worker, decoded."""
        self._fill(4)
        n = struct.unpack_from("<I", self.buf)[0]
        assert n <= self.max_frame, f"worker sent a frame of {n} bytes"
        self._fill(4 + n)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return codec.decode_from_worker(body)

    def wait(self):
        """(exit code, stderr) of the worker."""
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, err.decode("utf-8", "replace")

    def close(self):
        for s in (self.conn, self.listener):
            try:
                s.close()
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def fake():
    """fake(script) starts a worker running `script` against a fake supervisor."""
    with tempfile.TemporaryDirectory(prefix="herd-pysdk-") as tmp:
        made = []

        def start(script, **kw):
            sup = FakeSupervisor(tmp, script, **kw)
            made.append(sup)
            return sup

        yield start
        for sup in made:
            sup.close()


ECHO_WORKER = """
import herd
def handle(p):
    if p == b"boom":
        raise ValueError("boom")
    return p
herd.run(handle)
"""


def wait_until(what, cond, timeout=TIMEOUT, every=0.02):
    """Polls `cond` until it returns a true value (returned) or `timeout` passes (a failure)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def background(fn):
    """Runs fn in a thread; returns a function that joins it and returns its result (or
    re-raises its exception)."""
    out = {}

    def target():
        try:
            out["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the joining test
            out["e"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join():
        t.join(TIMEOUT)
        assert not t.is_alive(), "background call did not finish"
        if "e" in out:
            raise out["e"]
        return out["v"]

    return join


__all__ = ["codec"]
