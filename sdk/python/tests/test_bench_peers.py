"""scripts/bench_peers.py, the benchmark against the Python peers, at its quick sizes for
herd.Executor and ProcessPoolExecutor only (no PyPI peer needed): every workload prints its rows
with the results checked, so the harness cannot rot between benchmark runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

from conftest import REPO, TIMEOUT
from test_serve import runtime  # noqa: F401 - a fixture

BENCH_PEERS = os.path.join(REPO, "scripts", "bench_peers.py")


def test_quick_mode_prints_every_row_with_results_checked(runtime: str) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory(prefix="herd-bench-peers-") as tmp:
        figures = os.path.join(tmp, "peers.json")
        # Its own temporary directory: what the bench and its pools leave there is a leak.
        scratch = os.path.join(tmp, "scratch")
        os.mkdir(scratch)
        p = subprocess.run([sys.executable, BENCH_PEERS, "--quick", "--only",
                            "herd_executor,ppe", "--json", figures],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, TMPDIR=scratch), timeout=TIMEOUT)
        assert p.returncode == 0, p.stdout + p.stderr[-3000:]
        assert os.listdir(scratch) == [], "left behind in TMPDIR"
        with open(figures) as f:
            rows: List[Dict[str, Any]] = json.load(f)["rows"]
    out = p.stdout
    assert "Python peers" in out and "CHECK FAILED" not in p.stderr, out + p.stderr[-3000:]
    groups = ["tiny 2,000, a submit per call", "tiny 2,000, map",
              "cpu 200 x 1 ms, fraction of ideal", "kills 400 x 1 ms, SIGKILL every 150 ms",
              "hangs 200 x 1 ms, every 100th hangs"]
    for group in groups:
        for peer in ("herd_executor", "ppe"):
            row = [r for r in rows if r["group"] == group and r["peer"] == peer]
            assert len(row) == 1, f"no row for {peer} in {group}:\n{out}"
            assert "right" in row[0]["checked"] and "WRONG" not in row[0]["checked"], row
    # herd's rows: every tiny and CPU call right, every call answered under hangs, and no
    # process left. (How many calls herd answers under kills depends on how fast the machine
    # restarts a Python worker: a figure, not checked here.)
    for r in rows:
        if r["peer"] != "herd_executor":
            continue
        n = int(r["group"].split()[1].replace(",", ""))
        if r["group"].startswith(("tiny", "cpu")):
            assert r["checked"] == f"{n:,}/{n:,} right", r
            assert r["figure"] and r["ratio"] and r["ratio"] > 0, r
        elif r["group"].startswith("kills"):
            assert " answered, " in r["text"] and " kills" in r["text"], r
        else:
            assert r["text"].startswith(f"{n:,} answered ({n - n // 100:,} right)"), r
            assert ", 0 processes left" in r["text"], r
    # The table prints each row, and the chunk size sweeps under it.
    table, sweeps = out.split("chunk size sweeps")
    assert table.count("herd.Executor") == len(groups), out
    assert table.count("ProcessPoolExecutor") == len(groups), out
    assert "ProcessPoolExecutor, tiny 2,000, map: 16: " in sweeps, out
