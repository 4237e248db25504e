"""Fixtures for the Python SDK's tests: the real `herd` binary (HERD_BIN, else the one
installed with the herd package, as herd.serve() finds it), Python workers run by this
interpreter (where the herd package is installed), a private runtime dir per test, and a fake
supervisor for the cases herd never produces (EOF, garbage, a peer that stops reading)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

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

_T = TypeVar("_T")

# The variable that makes a worker run the pure-Python serve loop (herd.worker.ENV_PURE_PYTHON).
PURE = "HERD_PURE_PYTHON"

# Generous: CI machines are small and loaded. Nothing waits this long unless something is wrong.
TIMEOUT = 180


def herd_bin() -> str:
    path = find_herd_bin()
    if not os.access(path, os.X_OK):
        pytest.fail(f"no herd binary at {path}: install the herd package or set HERD_BIN")
    return path


class Run:
    """A finished `herd run`: its records (by seq) and JSON log lines."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes], n: int) -> None:
        self.code = proc.returncode
        self.stdout: bytes = proc.stdout
        self.stderr: bytes = proc.stderr
        self.records: List[Dict[str, Any]] = [json.loads(line) for line in proc.stdout.splitlines()]
        self.logs: List[Dict[str, Any]] = []
        for line in proc.stderr.splitlines():
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"message": line.decode("utf-8", "replace")})
        self.n = n

    def dump(self) -> str:
        return (b"\n".join(self.stderr.splitlines()[-60:])).decode("utf-8", "replace")

    def by_seq(self) -> List[Dict[str, Any]]:
        """Exactly one record per event, in seq order."""
        seqs = [r["seq"] for r in self.records]
        assert sorted(seqs) == list(range(self.n)), \
            f"{len(seqs)} records for {self.n} events, or duplicates\n{self.dump()}"
        return sorted(self.records, key=lambda r: r["seq"])

    def log(self, message: str) -> List[Dict[str, Any]]:
        return [entry for entry in self.logs if entry.get("message") == message]


class Herd:
    """Per-test helper: runs `herd` with its runtime dir in a private temp dir."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.bin = herd_bin()
        self.env = dict(os.environ, XDG_RUNTIME_DIR=tmp, RUST_BACKTRACE="0")
        self.env.pop("RUST_LOG", None)

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def run(self, opts: Sequence[str], events: Union[bytes, Sequence[str]],
            worker: Optional[str] = None) -> Run:
        """`herd run --log-format json OPTS -- python3 WORKER` with `events` (lines) on stdin."""
        data = events if isinstance(events, bytes) else "".join(
            e + "\n" for e in events).encode()
        n = data.count(b"\n")
        cmd = [self.bin, "run", "--log-format", "json", *loop_opts(), *opts, "--",
               sys.executable, worker or CHAOS]
        proc = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=self.env, timeout=TIMEOUT)
        return Run(proc, n)

    def leftovers(self) -> List[str]:
        return [e for e in os.listdir(self.tmp) if e.startswith("herd-")]


@pytest.fixture
def herd() -> Iterator[Herd]:
    with tempfile.TemporaryDirectory(prefix="herd-pysdk-") as tmp:
        h = Herd(tmp)
        yield h
        assert h.leftovers() == [], "herd left its runtime dir behind"


def loop_opts() -> List[str]:
    """herd's options that give its workers the serve loop this test asked for: herd passes no
    HERD_* variable of its own environment to its workers, so HERD_PURE_PYTHON goes by --env."""
    pure = os.environ.get(PURE)
    return ["--env", f"{PURE}={pure}"] if pure else []


def worker_env(socket_path: str, token: str = "tok",
               max_frame: Optional[int] = None) -> Dict[str, str]:
    # As herd does, without its HERD_* settings; the serve loop the test asked for stays.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERD_") or k == PURE}
    env.update(HERD_SOCKET=socket_path, HERD_TOKEN=token, HERD_WORKER="0")
    if max_frame is not None:
        env["HERD_MAX_FRAME"] = str(max_frame)
    return env


class FakeSupervisor:
    """A listening socket standing in for herd, and the worker process connected to it.

    The worker runs for real (a subprocess of this interpreter); this side speaks the protocol
    by hand with herd._codec, so it can also break it."""

    def __init__(self, tmp: str, script: str, max_frame: int = 1 << 20,
                 env_extra: Optional[Dict[str, str]] = None) -> None:
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

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.conn.recv(1 << 20)
            if not chunk:
                raise EOFError(f"worker closed the connection ({len(self.buf)} bytes left)")
            self.buf += chunk

    def recv(self) -> Tuple[Any, ...]:
        """The next message from the worker, decoded."""
        self._fill(4)
        n = struct.unpack_from("<I", self.buf)[0]
        assert n <= self.max_frame, f"worker sent a frame of {n} bytes"
        self._fill(4 + n)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return codec.decode_from_worker(body)

    def wait(self) -> Tuple[int, str]:
        """(exit code, stderr) of the worker."""
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, err.decode("utf-8", "replace")

    def close(self) -> None:
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


#: The `fake` fixture: fake(script, **kw) starts a worker against a FakeSupervisor.
Fake = Callable[..., "FakeSupervisor"]


@pytest.fixture(params=["native", "pure"])
def serve_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each of the worker's serve loops in turn, for the workers this test starts (they inherit
    the environment) and for herd.worker.serve called in-process: the native one (herd._native,
    which must be built: a missing one fails, not skips) and the pure-Python one
    (HERD_PURE_PYTHON=1). A module opts in with `pytestmark = pytest.mark.usefixtures(...)`."""
    if request.param == "pure":
        monkeypatch.setenv(PURE, "1")
    else:
        monkeypatch.delenv(PURE, raising=False)
        try:
            from herd import _native  # noqa: F401
        except ImportError as e:
            pytest.fail(f"herd._native is not built ({e}): install the package (pip install "
                        f"./sdk/python) or build it in place (scripts/native-dev.sh)")
    return str(request.param)


@pytest.fixture
def fake() -> Iterator[Fake]:
    """fake(script) starts a worker running `script` against a fake supervisor."""
    with tempfile.TemporaryDirectory(prefix="herd-pysdk-") as tmp:
        made = []

        def start(script: str, **kw: Any) -> FakeSupervisor:
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


def wait_until(what: str, cond: Callable[[], _T], timeout: float = TIMEOUT,
               every: float = 0.02) -> _T:
    """Polls `cond` until it returns a true value (returned) or `timeout` passes (a failure)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def background(fn: Callable[[], _T]) -> Callable[[], _T]:
    """Runs fn in a thread; returns a function that joins it and returns its result (or
    re-raises its exception)."""
    values: List[_T] = []
    errors: List[BaseException] = []

    def target() -> None:
        try:
            values.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the joining test
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join() -> _T:
        t.join(TIMEOUT)
        assert not t.is_alive(), "background call did not finish"
        if errors:
            raise errors[0]
        return values[0]

    return join


__all__ = ["codec"]
