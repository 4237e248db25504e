#!/usr/bin/env python3
"""The per-event work of the Python peers (scripts/peers.py), and, run as a script, the same
work as a herd worker on the Python SDK (sdk/python): scripts/bench.py's Python-worker rows put
it under `herd run` beside the peers, on the same events. It needs the herd package importable
(installed, or from the source tree: bench.py sets PYTHONPATH=sdk/python/src):

    PYTHONPATH=sdk/python/src herd run -w 2 -- python3 scripts/pywork.py < events
    PYTHONPATH=sdk/python/src herd run -w 2 --batch 64 -- python3 scripts/pywork.py --batch 64 < events

Same per-event shape as a herd worker: parse the JSON event, compute, a small JSON result.
"""

import json
import time


def spin(ms: float) -> None:
    """Burn `ms` milliseconds of this process's CPU time, like herd-chaos's spin."""
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass


def work(line: str) -> str:
    event = json.loads(line)
    op = event["op"]
    if op == "square":
        out = event["n"] * event["n"]
    elif op == "spin":
        spin(event["ms"])
        out = event["ms"]
    elif op == "hang":  # a call that never ends (scripts/bench_peers.py's hangs workload)
        time.sleep(3600)
        out = None
    else:
        raise ValueError(f"unknown op {op!r}")
    return json.dumps(out)


if __name__ == "__main__":
    import sys

    import herd

    if len(sys.argv) == 3 and sys.argv[1] == "--batch":
        # A batch handler of up to N events per call (bench.py's `pybatch` rows).
        herd.run_batch(lambda payloads: [work(p.decode()) for p in payloads], int(sys.argv[2]))
    # The peers get each line as str (decoded outside their timing); herd hands over bytes.
    herd.run(lambda payload: work(payload.decode()))
