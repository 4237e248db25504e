"""A private `herd serve` for a Python program: `with herd.serve(...) as daemon:` starts the
daemon (the `herd` binary installed with this package), waits until it is ready, and stops it
at the end of the block.

The daemon never outlives the program, however the program ends: it is started with
`--die-with-parent <this pid>`, so herd watches this process through a pidfd and stops at once
(workers killed, control socket removed) when it exits, SIGKILL included. It runs in a session
of its own, so a Ctrl-C meant for the program does not reach it; the program stops it.
Readiness is herd's sd_notify READY=1, sent to a datagram socket in the abstract namespace:
nothing on disk is left behind if the program dies while it waits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from typing import IO, TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

from .errors import DaemonError

if TYPE_CHECKING:  # imported when used: herd.Executor starts a daemon before loading asyncio
    from . import blocking, client

#: The environment variable naming the `herd` binary to use instead of the installed one.
ENV_BIN = "HERD_BIN"

_Stderr = Union[None, int, IO[Any]]


def find_herd_bin() -> str:
    """The `herd` binary: $HERD_BIN if set; else the one installed with this package, in the
    scripts directory of this interpreter's environment (a venv's `bin/`, or the user scheme's
    with `pip install --user`); else `herd` on PATH.

    Raises DaemonError if there is none."""
    env = os.environ.get(ENV_BIN)
    if env:
        return env
    exe = "herd"
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        dirs.append(sysconfig.get_path("scripts", scheme=user_scheme))
    for d in dirs:
        path = os.path.join(d, exe)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    for d in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(d, exe)
        if d and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise DaemonError(
        "no `herd` binary: install the herd package (`pip install herd`), put `herd` on PATH, "
        f"or set {ENV_BIN}")


class Daemon:
    """A running `herd serve` started by herd.serve(): its control socket (`control`), its
    `pid` and `process`, and clients for it."""

    def __init__(self, process: subprocess.Popen[bytes], control: str) -> None:
        self.process = process
        #: The control socket's path: for connect(), `herd submit --control`, `herd status`.
        self.control = control

    @property
    def pid(self) -> int:
        return self.process.pid

    def connect(self, **kwargs: Any) -> client._Connecting:
        """An asyncio client: `async with daemon.connect() as pool` (herd.connect's options)."""
        from . import client
        return client.connect(self.control, **kwargs)

    def connect_sync(self, **kwargs: Any) -> blocking.Client:
        """A blocking client, also a context manager (herd.connect_sync's options)."""
        from . import blocking
        return blocking.connect_sync(self.control, **kwargs)

    def stop(self, timeout: float = 30.0) -> int:
        """Stops the daemon as SIGTERM does (it finishes the events it accepted, within its
        --grace) and returns its exit status. Past `timeout` seconds it is killed (SIGKILL:
        herd's guard still stops its workers). Stopping a stopped daemon returns its
        status."""
        if self.process.poll() is None:
            # Its exit is waited for on a pidfd: Popen.wait(timeout) polls, with sleeps that
            # double up to 50 ms, which made an executor's shutdown twice as long as herd's.
            pidfd = os.pidfd_open(self.process.pid)
            try:
                self.process.send_signal(signal.SIGTERM)
                if not select.select([pidfd], [], [], timeout)[0]:
                    self.process.kill()
            finally:
                os.close(pidfd)
            self.process.wait()
        # Killed, herd could not remove its socket.
        with contextlib.suppress(FileNotFoundError):
            if self.process.returncode == -signal.SIGKILL:
                os.unlink(self.control)
        return self.process.returncode

    def __repr__(self) -> str:
        return f"Daemon(pid={self.pid}, control={self.control!r})"


def _runtime_dir() -> str:
    d = os.environ.get("XDG_RUNTIME_DIR")
    if d and os.path.isdir(d):
        return d
    import tempfile  # here: it loads shutil and random, a tenth of herd.Executor's import
    return tempfile.gettempdir()


def start(*command: str, workers: Optional[int] = None, options: Sequence[str] = (),
          control: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
          stderr: _Stderr = None, timeout: float = 60.0, workers_up: bool = True) -> Daemon:
    """Starts the daemon and waits until it is ready (its workers have started; with
    `workers_up=False`, only its control socket: submissions wait there for the workers): the
    Daemon. herd.serve() is this and Daemon.stop() around a block; the arguments are
    serve()'s."""
    if not command:
        raise ValueError("herd.serve() needs the worker's command, e.g. "
                         "serve(sys.executable, 'worker.py')")
    herd = find_herd_bin()
    token = f"{os.getpid()}-{os.urandom(6).hex()}"
    if control is None:
        control = os.path.join(_runtime_dir(), f"herd-serve-{token}.sock")
    argv = [herd, "serve", "--control", control, "--die-with-parent", str(os.getpid())]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv += [*options, "--", *command]
    notify_name = f"herd-serve-notify-{token}"
    child_env = dict(os.environ if env is None else env)
    child_env["NOTIFY_SOCKET"] = "@" + notify_name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + notify_name)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=stderr, env=child_env,
                                start_new_session=True)
        try:
            _wait_ready(proc, notify, timeout, workers_up)
        except BaseException:
            Daemon(proc, control).stop(timeout=5.0)
            raise
    return Daemon(proc, control)


def _wait_ready(proc: subprocess.Popen[bytes], notify: socket.socket, timeout: float,
                workers_up: bool = True) -> None:
    """Waits for READY=1 on `notify` (or, without `workers_up`, X_HERD_LISTENING=1, which herd
    sends first), or for the daemon to exit (through a pidfd: no polling), for at most
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(proc.pid)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonError(f"herd serve was not ready within {timeout}s (its log is on "
                                  "the stderr it was given)")
            readable, _, _ = select.select([notify.fileno(), pidfd], [], [], left)
            if notify.fileno() in readable:
                lines = notify.recv(4096).split(b"\n")
                if b"READY=1" in lines or (not workers_up and b"X_HERD_LISTENING=1" in lines):
                    return
            elif readable:
                code = proc.wait()
                raise DaemonError(f"herd serve exited with status {code} before it was ready "
                                  "(its log is on the stderr it was given)")
    finally:
        os.close(pidfd)


@contextlib.contextmanager
def serve(*command: str, workers: Optional[int] = None, options: Sequence[str] = (),
          control: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
          stderr: _Stderr = None, timeout: float = 60.0,
          stop_timeout: float = 30.0) -> Iterator[Daemon]:
    """Runs `herd serve -- COMMAND` for the length of a `with` block; yields its Daemon.

        with herd.serve(sys.executable, "worker.py", workers=4) as daemon:
            with daemon.connect_sync() as pool:
                print(pool.submit(b"hello"))

    `workers`: --workers (default: herd's, one per CPU). `options`: more `herd serve` options
    (e.g. ["--retries", "2", "--timeout", "10s"]). `control`: the control socket's path
    (default: a private one in $XDG_RUNTIME_DIR or the temp dir). `env`: the daemon's
    environment, which its workers inherit (default: this process's). `stderr`: where herd's
    log goes (subprocess-style: None inherits, subprocess.DEVNULL, a file). `timeout`: how
    long to wait for it to be ready. On leaving the block the daemon is stopped as
    Daemon.stop(stop_timeout) does; it also stops by itself if this process dies.

    Raises DaemonError if it cannot start, and, leaving the block without an exception, if it
    stopped with a non-zero status."""
    daemon = start(*command, workers=workers, options=options, control=control, env=env,
                   stderr=stderr, timeout=timeout)
    failed = True
    try:
        yield daemon
        failed = False
    finally:
        code = daemon.stop(stop_timeout)
    if not failed and code != 0:
        raise DaemonError(f"herd serve exited with status {code}")
