"""examples/seed: the article's program (ProcessPoolExecutor), the same file with herd.Executor in
its place, and its rewrite on herd's client give the same result for every event, on a small
input with an event that fails; the rewrite runs against a real `herd serve` whose workers run
the same work() (scripts/pywork.py)."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
from typing import Dict, Tuple, Union

from conftest import REPO, TIMEOUT
from test_client import Daemon

EXAMPLE = os.path.join(REPO, "examples", "seed")
PYWORK = os.path.join(REPO, "scripts", "pywork.py")


def results(stdout: bytes) -> Dict[int, Union[str, Tuple[str]]]:
    """index -> output, or ("error",) for a failed event; every index exactly once."""
    out = {}
    for line in stdout.decode().splitlines():
        i, rest = line.split(" ", 1)
        assert int(i) not in out, f"two results for event {i}"
        out[int(i)] = ("error",) if rest.startswith("error ") else rest
    return out


def test_seed_executor_and_herd_agree() -> None:
    events = [b'{"op":"square","n":%d}' % i for i in range(300)]
    events += [b'{"op":"spin","ms":1}', b'{"op":"nope"}', b'{"op":"square","n":-7}']
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="herd-seed-") as tmp:
        path = os.path.join(tmp, "events")
        with open(path, "wb") as f:
            f.write(b"".join(e + b"\n" for e in events))
        article = subprocess.run(
            [sys.executable, os.path.join(EXAMPLE, "seed_executor.py"), path, "--workers", "2",
             "--inflight", "16"], stdout=subprocess.PIPE, env=env, timeout=TIMEOUT, check=True)
        swapped = subprocess.run(
            [sys.executable, os.path.join(EXAMPLE, "seed_herd_executor.py"), path, "--workers",
             "2", "--inflight", "16"], stdout=subprocess.PIPE, env=env, timeout=TIMEOUT,
            check=True)
        daemon = Daemon(tmp, workers=2, worker=[sys.executable, PYWORK])
        try:
            rewrite = subprocess.run(
                [sys.executable, os.path.join(EXAMPLE, "seed_herd.py"), path, "--control",
                 daemon.sock, "--inflight", "16"],
                stdout=subprocess.PIPE, env=env, timeout=TIMEOUT, check=True)
            mapped = subprocess.run(
                [sys.executable, os.path.join(EXAMPLE, "seed_herd_map.py"), path, "--control",
                 daemon.sock, "--inflight", "16"],
                stdout=subprocess.PIPE, env=env, timeout=TIMEOUT, check=True)
        finally:
            daemon.close()
        assert daemon.proc.returncode == 0
    a, b = results(article.stdout), results(rewrite.stdout)
    assert sorted(a) == list(range(len(events)))
    assert a == b
    assert results(mapped.stdout) == a
    assert results(swapped.stdout) == a
    assert a[7] == "49" and a[300] == "1" and a[301] == ("error",) and a[302] == "49"


def test_the_executor_version_changes_only_the_executor() -> None:
    """seed_herd_executor.py is the article's program with herd.Executor in place of
    ProcessPoolExecutor, and nothing else changed (the README shows this diff)."""
    with open(os.path.join(EXAMPLE, "seed_executor.py")) as f:
        article = f.read().splitlines()
    with open(os.path.join(EXAMPLE, "seed_herd_executor.py")) as f:
        swapped = f.read().splitlines()
    changed = [line for line in difflib.unified_diff(article, swapped, lineterm="", n=0)
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-from concurrent.futures import ProcessPoolExecutor",
        "+import herd",
        "-    with ProcessPoolExecutor(args.workers) as pool:",
        "+    with herd.Executor(args.workers) as pool:",
    ]
    with open(os.path.join(EXAMPLE, "README.md")) as f:
        readme = f.read()
    for line in changed:
        assert line in readme, f"examples/seed/README.md does not show {line!r}"
