#!/usr/bin/env python3
"""herd's side of the benchmarks: drives the release `herd` binary with `herd-chaos` workers (or,
with --python, Python workers: scripts/pywork.py, the peers' own work() on the Python SDK in
sdk/python) and prints one JSON object per workload on stdout (details on stderr). Every workload checks that
every record arrived and is right, so a fast wrong answer cannot pass.

    python3 scripts/bench.py tiny     --herd H --chaos C --events FILE [--window 64] [--python [--pure]]
    python3 scripts/bench.py submit   --herd H --chaos C --events FILE   (herd serve + herd submit)
    python3 scripts/bench.py rate     --herd H --chaos C --events FILE   (--rate cost and accuracy)
    python3 scripts/bench.py keys     --herd H --chaos C --events FILE   (10,000 keys, one in flight each)
    python3 scripts/bench.py batch    --herd H --chaos C --events FILE   (--batch 64 against none)
    python3 scripts/bench.py pybatch  --herd H --chaos C --events FILE [--pure]
                                                  (the same, Python workers: herd.run_batch)
    python3 scripts/bench.py vector   --herd H --chaos C [--n 100000] [--peers-python PY]
                                                  (numpy: a dot product per event or per batch)
    python3 scripts/bench.py latency  --herd H --chaos C [--n 200000]
    python3 scripts/bench.py cpu      --herd H --chaos C [--n 20000 --ms 1] [--kill-every 0.15] [--python]
    python3 scripts/bench.py memory   --herd H --chaos C --events FILE
    python3 scripts/bench.py jetstream --herd H --chaos C [--n 100000]  (needs nats-server)
    python3 scripts/bench.py redis --herd H --chaos C [--n 100000]  (needs redis-server)
    python3 scripts/bench.py cancel   --herd H --chaos C [--n 100]   (request to record)
    python3 scripts/bench.py recovery --herd H --chaos C [--kills 40]
    python3 scripts/bench.py seed     --herd H [--n 20000 --cpu-n 2000] [--kill-every 0.15]
                                                            (examples/seed, both programs)
    python3 scripts/bench.py stdio    --herd H --chaos C --events FILE [--stdio S] [--n 20000]
                                                            (herd-stdio + cat / a Python filter)
    python3 scripts/bench.py all      --out DIR [--quick]   (everything, plus the Python peers
                                                             and the socket limit, rawsock)
    python3 scripts/bench.py peers    --out DIR [--quick] [--peers-python PY]
                                      (only the "Python peers" section: scripts/bench_peers.py)

Standard library only.
"""

import argparse
import datetime
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg):
    log(f"bench: FAILED: {msg}")
    sys.exit(1)


HERE = os.path.dirname(os.path.abspath(__file__))


def worker_cmd(args):
    """herd-chaos, or with --python the Python SDK worker running the peers' work()."""
    if getattr(args, "python", False):
        return [sys.executable, os.path.join(HERE, "pywork.py")]
    return [args.chaos]


def herd_cmd(args, *opts):
    # herd passes no HERD_* variable of its own environment to its workers: --env does.
    pure = ["--env", "HERD_PURE_PYTHON=1"] if getattr(args, "pure", False) else []
    return [args.herd, "run", "-q", *pure, *opts, "--", *worker_cmd(args)]


def check_squares(stdout_bytes, n):
    """Every seq in [0, n) exactly once, ok, with output seq*seq (event i is square n=i)."""
    seen = bytearray(n)
    count = 0
    for line in stdout_bytes.splitlines():
        r = json.loads(line)
        seq = r["seq"]
        if not r["ok"]:
            die(f"record not ok: {line!r}")
        if r["output"] != seq * seq:
            die(f"wrong output: {line!r}")
        if seen[seq]:
            die(f"duplicate record for seq {seq}")
        seen[seq] = 1
        count += 1
    if count != n:
        die(f"{count} records for {n} events")


def window_opts(args):
    return [] if args.window == 0 else ["--window", str(args.window)]


def tiny(args):
    """1,000,000 square events, stdin to stdout (a pipe read by this script), full records.
    The median of --repeat runs, as for the peers."""
    n = sum(1 for _ in open(args.events, "rb"))
    runs = []
    for _ in range(args.repeat):
        with open(args.events, "rb") as f:
            t0 = time.perf_counter()
            p = subprocess.run(herd_cmd(args, "-w", str(args.workers), *window_opts(args)),
                               stdin=f, stdout=subprocess.PIPE)
            secs = time.perf_counter() - t0
        if p.returncode != 0:
            die(f"herd exited {p.returncode}")
        check_squares(p.stdout, n)
        runs.append(secs)
    secs = statistics.median(runs)
    return {"events": n, "seconds": secs, "events_per_sec": n / secs,
            "window": args.window or "auto", "runs": runs}


def submit(args):
    """The tiny workload through the daemon: `herd serve` is started once and waited for
    until its workers are up, then `herd submit` sends the same events file, with its records
    to a pipe read by this script. The median of --repeat submissions (the daemon's start-up
    is not in them; the run row's pool start-up is a few milliseconds)."""
    n = sum(1 for _ in open(args.events, "rb"))
    tmp = scratch("herd-bench-")
    sock = os.path.join(tmp, "control.sock")
    daemon = serve(args, sock, *window_opts(args), worker=[args.chaos])
    try:
        runs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            p = subprocess.run([args.herd, "submit", "--control", sock, "-i", args.events],
                               stdout=subprocess.PIPE)
            secs = time.perf_counter() - t0
            if p.returncode != 0:
                die(f"herd submit exited {p.returncode}")
            check_squares(p.stdout, n)
            runs.append(secs)
        subprocess.run([args.herd, "ctl", "--control", sock, "stop"], stdout=subprocess.DEVNULL)
        if daemon.wait(timeout=60) != 0:
            die(f"herd serve exited {daemon.returncode}")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    secs = statistics.median(runs)
    return {"events": n, "seconds": secs, "events_per_sec": n / secs, "runs": runs}


def rate(args):
    """Rate limits. Dispatch cost: the tiny events with a --rate far above what the pool can
    reach beside the same run without one (alternating, median of --repeat each). Accuracy:
    2,000 `clock` events (each answers with its worker-side start time) at 200/s,burst=10;
    after the burst the starts should come at exactly the asked rate."""
    n = sum(1 for _ in open(args.events, "rb"))
    high = "100000000/s,burst=1000"
    runs = {"none": [], "high": []}
    for _ in range(args.repeat):
        for name, opts in (("none", []), ("high", ["--rate", high])):
            with open(args.events, "rb") as f:
                t0 = time.perf_counter()
                p = subprocess.run(herd_cmd(args, "-w", str(args.workers), *window_opts(args),
                                            *opts), stdin=f, stdout=subprocess.PIPE)
                secs = time.perf_counter() - t0
            if p.returncode != 0:
                die(f"herd exited {p.returncode}")
            check_squares(p.stdout, n)
            runs[name].append(n / secs)
    none, limited = statistics.median(runs["none"]), statistics.median(runs["high"])
    asked, burst, k = 200.0, 10, 2000
    p = subprocess.run(herd_cmd(args, "-w", str(args.workers), "--window", "1", "--rate",
                                f"{asked:g}/s,burst={burst}"),
                       input=b'{"op":"clock"}\n' * k, stdout=subprocess.PIPE)
    if p.returncode != 0:
        die(f"herd exited {p.returncode}")
    starts = sorted(json.loads(line)["output"] for line in p.stdout.splitlines())
    if len(starts) != k:
        die(f"{len(starts)} records for {k} clock events")
    # The burst starts at once; the other k - burst follow at the asked rate.
    achieved = (k - burst) / ((starts[-1] - starts[0]) / 1e6)
    return {"events": n, "none_events_per_sec": none, "high_rate_events_per_sec": limited,
            "high_rate": high, "runs": runs, "asked_per_sec": asked, "burst": burst,
            "achieved_per_sec": achieved, "accuracy": achieved / asked}


def keys(args):
    """Per-key limits: the tiny events, each with one of 10,000 keys as a `--line-key`
    prefix, under --max-inflight-per-key 1 (each key one at a time, in order), beside the same
    events without keys (alternating, median of --repeat each)."""
    with open(args.events, "rb") as f:
        lines = f.read().splitlines()
    n = len(lines)
    keyed = b"".join(b"k%d\t%s\n" % (i % 10000, line) for i, line in enumerate(lines))
    plain = b"".join(line + b"\n" for line in lines)
    runs = {"none": [], "keyed": []}
    for _ in range(args.repeat):
        for name, data, opts in (("none", plain, []),
                                 ("keyed", keyed, ["--line-key", "--max-inflight-per-key", "1"])):
            t0 = time.perf_counter()
            p = subprocess.run(herd_cmd(args, "-w", str(args.workers), *window_opts(args), *opts),
                               input=data, stdout=subprocess.PIPE)
            secs = time.perf_counter() - t0
            if p.returncode != 0:
                die(f"herd exited {p.returncode}")
            check_squares(p.stdout, n)
            runs[name].append(n / secs)
    return {"events": n, "keys": 10000, "none_events_per_sec": statistics.median(runs["none"]),
            "keyed_events_per_sec": statistics.median(runs["keyed"]), "runs": runs}


def batch(args):
    """Batches: the tiny events with `--batch 64` to herd-chaos's batch handler
    (`herd-chaos --batch 64`), beside the same events one per call (alternating, median of
    --repeat each)."""
    n, runs = batch_runs(args, [], [args.chaos])
    return {"events": n, "batch": 64, "none_events_per_sec": statistics.median(runs["none"]),
            "batch_events_per_sec": statistics.median(runs["batch"]), "runs": runs}


def batch_runs(args, herd_opts, worker):
    """The tiny events through `herd run -q HERD_OPTS -- WORKER`, one per call ("none") and
    with `--batch 64` to the worker's batch handler (`WORKER --batch 64`), alternating,
    --repeat times each: (events, {"none": [events/s], "batch": [events/s]})."""
    n = sum(1 for _ in open(args.events, "rb"))
    runs = {"none": [], "batch": []}
    for _ in range(args.repeat):
        for name, opts, more in (("none", [], []),
                                 ("batch", ["--batch", "64"], ["--batch", "64"])):
            with open(args.events, "rb") as f:
                t0 = time.perf_counter()
                p = subprocess.run([args.herd, "run", "-q", *herd_opts, "-w", str(args.workers),
                                    *window_opts(args), *opts, "--", *worker, *more],
                                   stdin=f, stdout=subprocess.PIPE)
                secs = time.perf_counter() - t0
            if p.returncode != 0:
                die(f"herd exited {p.returncode}")
            check_squares(p.stdout, n)
            runs[name].append(n / secs)
    return n, runs


def pybatch(args):
    """Batches on the Python SDK: the tiny events with `--batch 64` to scripts/pywork.py's
    batch handler (`pywork.py --batch 64`, herd.run_batch), beside the same events one per
    call (herd.run), alternating, median of --repeat each. The native serve loop (--pure: the
    pure-Python one)."""
    pure = ["--env", "HERD_PURE_PYTHON=1"] if args.pure else []
    n, runs = batch_runs(args, pure, [sys.executable, os.path.join(HERE, "pywork.py")])
    return {"events": n, "batch": 64, "loop": "pure" if args.pure else "native",
            "none_events_per_sec": statistics.median(runs["none"]),
            "batch_events_per_sec": statistics.median(runs["batch"]), "runs": runs}


def vector(args):
    """A vectorised workload on Python workers (scripts/pyvector.py, numpy): --n events of 64
    float32s, each answered with the argmax of M·v for one 64x64 matrix, by a handler that
    does one dot product per event (herd.run) or one by batches of up to 64 that does one
    matrix product per batch (herd.run_batch under --batch 64). Events/s: from the first
    record to the last (so the workers' start, numpy's import, is left out), the median of
    --repeat runs each, alternating. Latency: both at the same offered load (half the per-event
    handler's rate), from each event's write to herd's stdin to its record's read from herd's
    stdout, p50 and p99. The workers run on --peers-python when numpy imports there (bench.sh
    installs it in its venv), else on this interpreter; without numpy the result says so."""
    python = next((py for py in (args.peers_python, sys.executable)
                   if subprocess.run([py, "-c", "import numpy"], stderr=subprocess.DEVNULL)
                   .returncode == 0), None)
    if python is None:
        log("bench: vector: skipped, numpy does not import")
        return {"skipped": "numpy not installed"}
    import struct
    rng = random.Random(1)
    vec = struct.Struct("<64f")
    data = b"".join(vec.pack(*(rng.uniform(-1, 1) for _ in range(64))).hex().encode() + b"\n"
                    for _ in range(args.n))
    worker = [python, os.path.join(HERE, "pyvector.py")]
    modes = (("none", [], []), ("batch", ["--batch", "64"], ["--batch", "64"]))

    def cmd(opts, extra):
        return [args.herd, "run", "-w", str(args.workers), *opts, "--", *worker, *extra]

    def outputs(stdout, n):
        out = [None] * n
        for line in stdout.splitlines():
            r = json.loads(line)
            if not r["ok"] or not 0 <= r["output"] < 64 or out[r["seq"]] is not None:
                die(f"vector: bad or duplicate record {line!r}")
            out[r["seq"]] = r["output"]
        if None in out:
            die(f"vector: {out.count(None)} events without a record")
        return out

    runs = {"none": [], "batch": []}
    seen = {}
    for _ in range(args.repeat):
        for name, opts, extra in modes:
            secs, stdout = first_to_last(cmd(opts, extra), data)
            seen[name] = outputs(stdout, args.n)
            runs[name].append((args.n - 1) / secs)
    # The same answers both ways (a product's summation order may flip a near tie).
    differ = sum(a != b for a, b in zip(seen["none"], seen["batch"]))
    if differ > args.n // 1000:
        die(f"vector: {differ} of {args.n} outputs differ between the two handlers")
    eps = {name: statistics.median(r) for name, r in runs.items()}
    offered = eps["none"] / 2
    lines = data.splitlines(keepends=True)[:max(1000, int(offered * 3))]
    lat = {name: paced_latency(cmd(opts, extra), lines, offered, args.workers)
           for name, opts, extra in modes}
    return {"events": args.n, "batch": 64, "python": python,
            "none_events_per_sec": eps["none"], "batch_events_per_sec": eps["batch"],
            "offered_per_sec": offered, "latency_events": len(lines),
            "none_latency": lat["none"], "batch_latency": lat["batch"], "runs": runs,
            "outputs_differing": differ}


def first_to_last(cmd, data):
    """Runs `cmd` with `data` on stdin: the seconds from its first record to its last (read
    in large chunks, parsed after), and its stdout."""
    path = os.path.join(scratch("herd-bench-"), "events")
    with open(path, "wb") as f:
        f.write(data)
    with open(path, "rb") as f:
        p = subprocess.Popen(cmd, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    chunks, first, last = [], None, None
    while True:
        chunk = p.stdout.read1(1 << 20)
        if not chunk:
            break
        last = time.perf_counter()
        if first is None:
            first = last
        chunks.append(chunk)
    if p.wait() != 0:
        die(f"herd exited {p.returncode}")
    if first is None or last == first:
        die("too few records to time")
    return last - first, b"".join(chunks)


def paced_latency(cmd, lines, rate, workers):
    """Writes `lines` to `cmd`'s stdin at `rate` per second (what is due each millisecond in
    one write) and times each record from its event's write to its read: p50/p99 in ms. The
    first write waits for `workers` "worker ready" log lines (so a worker's start-up, numpy's
    import, is not in the figures); `cmd` must not be quiet (-q)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    written = [0.0] * len(lines)
    ready = threading.Event()

    def logs():
        seen = 0
        for line in p.stderr:
            if b"worker ready" in line:
                seen += 1
                if seen == workers:
                    ready.set()
        ready.set()  # herd ended: the reader below finds out why

    def feed():
        threading.Thread(target=logs, daemon=True).start()
        ready.wait()
        t0 = time.perf_counter()
        i = 0
        while i < len(lines):
            due = min(len(lines), int((time.perf_counter() - t0) * rate) + 1)
            if due > i:
                now = time.perf_counter()
                for j in range(i, due):
                    written[j] = now
                p.stdin.write(b"".join(lines[i:due]))
                p.stdin.flush()
                i = due
            time.sleep(0.001)
        p.stdin.close()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    lat = []
    for line in p.stdout:
        lat.append(time.perf_counter() - written[json.loads(line)["seq"]])
    t.join()
    if p.wait() != 0:
        die(f"herd exited {p.returncode}")
    if len(lat) != len(lines):
        die(f"{len(lat)} records for {len(lines)} paced events")
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def latency(args):
    """Per-event round trip with one task in flight per worker: herd's `micros` (dispatch to
    result, measured by herd) for square events, whose handler takes well under 1 us. Records
    go to a file, so no reader process competes with the round trip for the two CPUs. The
    median p50 and p99 of --repeat runs."""
    os.makedirs(args.out, exist_ok=True)
    src = os.path.join(args.out, f"latency-{args.n}.txt")
    dst = os.path.join(args.out, f"latency-{args.n}.jsonl")
    with open(src, "w") as f:
        f.writelines(f'{{"op":"square","n":{i}}}\n' for i in range(args.n))
    runs = []
    for _ in range(args.repeat):
        p = subprocess.run(herd_cmd(args, "-w", str(args.workers), "--window", "1", "-i", src,
                                    "-o", dst))
        if p.returncode != 0:
            die(f"herd exited {p.returncode}")
        with open(dst, "rb") as f:
            out = f.read()
        check_squares(out, args.n)
        micros = sorted(json.loads(l)["micros"] for l in out.splitlines())
        pct = lambda q: micros[min(len(micros) - 1, int(q * len(micros)))]
        runs.append({"p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": micros[-1]})
    return {"events": args.n, "p50_us": statistics.median(r["p50_us"] for r in runs),
            "p99_us": statistics.median(r["p99_us"] for r in runs), "runs": runs}


STDIO_FILTER = """\
import json, sys
write = sys.stdout.write
for line in sys.stdin:
    write(str(json.loads(line)["n"] ** 2) + "\\n")
"""


def stdio(args):
    """herd-stdio, the line-filter adapter, against the native herd-chaos worker on the same
    events, run by run: tiny events/s through `cat` (records echo the event), through a Python
    filter that squares (python3 -u, so one write per line) and through herd-chaos; then the
    round trip at --window 1 (herd's `micros`, records to a file) for the same three."""
    os.makedirs(args.out, exist_ok=True)
    n = sum(1 for _ in open(args.events, "rb"))
    filt = os.path.join(args.out, "stdio_filter.py")
    with open(filt, "w") as f:
        f.write(STDIO_FILTER)
    workers = {"native": [args.chaos], "cat": [args.stdio, "--", "cat"],
               "python": [args.stdio, "--", sys.executable, "-u", filt]}

    def check(name, out, count):
        if name != "cat":
            return check_squares(out, count)
        seen = 0
        for line in out.splitlines():
            r = json.loads(line)
            if r["output"] != {"op": "square", "n": r["seq"]}:
                die(f"wrong output: {line!r}")
            seen += 1
        if seen != count:
            die(f"{seen} records for {count} events")

    def cmd(name, *opts):
        return [args.herd, "run", "-q", "-w", str(args.workers), *opts, "--", *workers[name]]

    tput = {k: [] for k in workers}
    for _ in range(args.repeat):
        for name in workers:
            with open(args.events, "rb") as f:
                t0 = time.perf_counter()
                p = subprocess.run(cmd(name), stdin=f, stdout=subprocess.PIPE)
                secs = time.perf_counter() - t0
            if p.returncode != 0:
                die(f"herd with {name} exited {p.returncode}")
            check(name, p.stdout, n)
            tput[name].append(n / secs)
    src = os.path.join(args.out, f"stdio-latency-{args.n}.txt")
    dst = os.path.join(args.out, f"stdio-latency-{args.n}.jsonl")
    with open(src, "w") as f:
        f.writelines(f'{{"op":"square","n":{i}}}\n' for i in range(args.n))
    lat = {k: [] for k in workers}
    for _ in range(args.repeat):
        for name in workers:
            p = subprocess.run(cmd(name, "--window", "1", "-i", src, "-o", dst))
            if p.returncode != 0:
                die(f"herd with {name} exited {p.returncode}")
            with open(dst, "rb") as f:
                out = f.read()
            check(name, out, args.n)
            micros = sorted(json.loads(l)["micros"] for l in out.splitlines())
            lat[name].append({"p50_us": micros[len(micros) // 2],
                              "p99_us": micros[min(len(micros) - 1, int(0.99 * len(micros)))]})
    res = {"events": n, "latency_events": args.n}
    for name in workers:
        res[name] = {"events_per_sec": statistics.median(tput[name]),
                     "p50_us": statistics.median(r["p50_us"] for r in lat[name]),
                     "p99_us": statistics.median(r["p99_us"] for r in lat[name]),
                     "runs": {"events_per_sec": tput[name], "latency": lat[name]}}
    return res


class Live:
    """A running `herd run` fed from a thread, with its JSON log parsed as it comes."""

    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.cv = threading.Condition()
        self.ready = []  # (timestamp, worker, pid)
        self.exited = set()
        self.records = []
        threading.Thread(target=self._logs, daemon=True).start()
        threading.Thread(target=self._out, daemon=True).start()

    def _logs(self):
        for line in self.p.stderr:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.cv:
                if e.get("message") == "worker ready":
                    ts = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                    self.ready.append((ts.timestamp(), e["worker"], e["pid"]))
                elif e.get("message") == "worker exited":
                    self.exited.add(e["pid"])
                self.cv.notify_all()

    def _out(self):
        for line in self.p.stdout:
            self.records.append(line)

    def live(self):
        with self.cv:
            return [(w, p) for (_, w, p) in self.ready if p not in self.exited]

    def wait_ready_after(self, worker, t, timeout=30):
        """Time at which `worker`'s slot next became ready after t."""
        deadline = time.time() + timeout
        with self.cv:
            while True:
                for (ts, w, _) in self.ready:
                    if w == worker and ts > t:
                        return ts
                left = deadline - time.time()
                if left <= 0:
                    die(f"worker {worker} not replaced within {timeout}s")
                self.cv.wait(left)

    def wait_workers(self, n, timeout=30):
        deadline = time.time() + timeout
        with self.cv:
            while len([1 for (_, _, p) in self.ready if p not in self.exited]) < n:
                left = deadline - time.time()
                if left <= 0:
                    die("workers did not start")
                self.cv.wait(left)


def spin_events(n, ms):
    return "".join(f'{{"op":"spin","ms":{ms}}}\n' for _ in range(n)).encode()


def cpu(args):
    """N x spin M ms on W workers; efficiency = ideal / wall. With --kill-every, a random worker
    is SIGKILLed at that interval for the whole run."""
    if args.kill_every <= 0:
        return cpu_plain(args)
    cmd = [args.herd, "run", "--log-format", "json", "-w", str(args.workers), "--retries", "1000",
           *window_opts(args), "--", *worker_cmd(args)]
    live = Live(cmd)
    live.wait_workers(args.workers)
    kills = 0
    t0 = time.perf_counter()
    feeder = threading.Thread(target=lambda: (live.p.stdin.write(spin_events(args.n, args.ms)),
                                              live.p.stdin.close()))
    feeder.start()
    rng = random.Random(7)
    while live.p.poll() is None:
        if args.kill_every > 0:
            time.sleep(args.kill_every)
            pids = live.live()
            if pids and live.p.poll() is None:
                try:
                    os.kill(rng.choice(pids)[1], signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        else:
            live.p.wait()
    secs = time.perf_counter() - t0
    feeder.join()
    time.sleep(0.05)  # let the stdout reader drain the pipe after exit
    recs = [json.loads(l) for l in live.records]
    if len(recs) != args.n or not all(r["ok"] and r["output"] == args.ms for r in recs):
        die(f"cpu: {len(recs)} records for {args.n} events, or a wrong one")
    if len({r["seq"] for r in recs}) != args.n:
        die("cpu: duplicate records")
    ideal = args.n * args.ms / 1000 / args.workers
    return {"events": args.n, "seconds": secs, "events_per_sec": args.n / secs,
            "efficiency": ideal / secs, "kills": kills}


def cpu_plain(args):
    """The CPU workload from a file to a pipe, with nothing else running (no log parsing)."""
    path = os.path.join(args.out, f"spin-{args.n}x{args.ms}.txt")
    os.makedirs(args.out, exist_ok=True)
    with open(path, "wb") as f:
        f.write(spin_events(args.n, args.ms))
    runs = []
    for _ in range(args.repeat):
        with open(path, "rb") as f:
            t0 = time.perf_counter()
            p = subprocess.run(herd_cmd(args, "-w", str(args.workers), *window_opts(args)),
                               stdin=f, stdout=subprocess.PIPE)
            runs.append(time.perf_counter() - t0)
        if p.returncode != 0:
            die(f"herd exited {p.returncode}")
        recs = [json.loads(l) for l in p.stdout.splitlines()]
        if len(recs) != args.n or len({r["seq"] for r in recs}) != args.n or \
                not all(r["ok"] and r["output"] == args.ms for r in recs):
            die(f"cpu: {len(recs)} records for {args.n} events, or a wrong one")
    secs = statistics.median(runs)
    ideal = args.n * args.ms / 1000 / args.workers
    return {"events": args.n, "seconds": secs, "events_per_sec": args.n / secs,
            "efficiency": ideal / secs, "kills": 0, "runs": runs}


def scratch(prefix):
    """A temporary directory removed when this process exits, however it exits."""
    import atexit
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


SEED = os.path.join(os.path.dirname(HERE), "examples", "seed")


SLEEP_LONG = b'{"op":"sleep","ms":600000}'


def cancel(args):
    """Cancel latency, from Stream.cancel() in herd.client to its `cancelled` record: an event
    running (its worker is stopped; the record comes once it has exited) and an event queued
    (every worker busy with a long sleep: it is only taken out of the queue). --n of each, one
    at a time, each waited for in `herd status` before it is cancelled."""
    import asyncio
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "sdk", "python", "src"))
    import herd  # the source tree's, like the Python workers'
    tmp = scratch("herd-bench-")
    sock = os.path.join(tmp, "control.sock")
    daemon = serve(args, sock, "--window", "1", worker=[args.chaos])

    def wait_status(cond, what):
        deadline = time.time() + 60
        while True:
            p = subprocess.run([args.herd, "status", "--json", "--control", sock],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            if p.returncode == 0 and cond(json.loads(p.stdout)):
                return
            if time.time() > deadline:
                die(f"cancel: timed out waiting for {what}")
            time.sleep(0.002)

    def ready(st):
        return sum(w["state"] in ("idle", "busy") for w in st["workers"]) == args.workers

    async def timed_cancel(loop, stream):
        t0 = time.perf_counter()
        stream.cancel()
        try:
            async for _ in stream:
                pass
        except herd.EventCancelled:
            return time.perf_counter() - t0
        die("cancel: the event was not cancelled")

    async def main():
        loop = asyncio.get_running_loop()
        running, queued = [], []
        async with herd.connect(sock) as pool:
            for _ in range(args.n):
                await loop.run_in_executor(None, wait_status,
                                           lambda st: ready(st) and st["inflight"] == 0,
                                           "the workers to be ready")
                stream = pool.submit_stream(SLEEP_LONG)
                await loop.run_in_executor(None, wait_status, lambda st: st["inflight"] == 1,
                                           "the sleep to run")
                running.append(await timed_cancel(loop, stream))
            await loop.run_in_executor(None, wait_status, ready, "the workers to be ready")
            blockers = [pool.submit_stream(SLEEP_LONG) for _ in range(args.workers)]
            await loop.run_in_executor(None, wait_status,
                                       lambda st: st["inflight"] == args.workers,
                                       "every worker to be busy")
            for _ in range(args.n):
                stream = pool.submit_stream(SLEEP_LONG)
                await loop.run_in_executor(None, wait_status, lambda st: st["queued"] == 1,
                                           "the event to be queued")
                queued.append(await timed_cancel(loop, stream))
            for b in blockers:
                await timed_cancel(loop, b)
        return running, queued

    try:
        running, queued = asyncio.run(main())
        subprocess.run([args.herd, "ctl", "--control", sock, "stop"], stdout=subprocess.DEVNULL)
        if daemon.wait(timeout=60) != 0:
            die(f"herd serve exited {daemon.returncode}")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000
    return {"n": args.n, "running_p50_ms": pct(running, 0.5), "running_p99_ms": pct(running, 0.99),
            "queued_p50_ms": pct(queued, 0.5), "queued_p99_ms": pct(queued, 0.99)}


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def serve(args, sock, *opts, worker=None):
    """`herd serve` with WORKER (default: pywork.py, the seed's own work()), once all of its
    workers are up."""
    worker = worker or [sys.executable, os.path.join(HERE, "pywork.py")]
    daemon = subprocess.Popen([args.herd, "serve", "-q", "--control", sock, "-w",
                               str(args.workers), *opts, "--", *worker])
    deadline = time.time() + 60
    while True:
        p = subprocess.run([args.herd, "status", "--json", "--control", sock],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if p.returncode == 0:
            st = json.loads(p.stdout)
            if sum(w["state"] in ("idle", "busy") for w in st["workers"]) == args.workers:
                return daemon
        if daemon.poll() is not None:
            die(f"herd serve exited {daemon.returncode}")
        if time.time() > deadline:
            daemon.kill()
            die("herd serve did not get its workers up within 60 s")
        time.sleep(0.05)


def seed_run(args, program, path, expect, n, kill_pid=None, *opts):
    """Runs examples/seed/PROGRAM on PATH; with kill_pid, SIGKILLs a random child of that
    process (or of the program itself, for the executor) every --kill-every seconds. Returns
    seconds, and how many events got the right result (each index at most once)."""
    cmd = [sys.executable, os.path.join(SEED, program), path, *opts]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    kills = 0
    stop = threading.Event()

    def killer():
        nonlocal kills
        rng = random.Random(7)
        while not stop.wait(args.kill_every):
            pids = children(kill_pid or p.pid)
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass

    k = threading.Thread(target=killer) if args.kill_every > 0 else None
    if k:
        k.start()
    out = p.stdout.read()
    p.wait()
    secs = time.perf_counter() - t0
    stop.set()
    if k:
        k.join()
    seen = bytearray(n)
    ok = 0
    for line in out.splitlines():
        i, rest = line.split(b" ", 1)
        i = int(i)
        if seen[i]:
            die(f"seed {program}: two results for event {i}")
        seen[i] = 1
        ok += rest == expect(i)
    return {"events": n, "seconds": secs, "events_per_sec": n / secs, "answered_ok": ok,
            "exit": p.returncode, "kills": kills}


def seed(args):
    """The seed example's two programs (examples/seed) in the same run: the article's
    (ProcessPoolExecutor) and herd.client's (against `herd serve` with pywork.py workers, up
    before the clock starts), on --n tiny events and --cpu-n spin-1ms events; with
    --kill-every, both on the spin events while a worker is SIGKILLed at that interval."""
    tmp = scratch("herd-bench-seed-")
    sock = os.path.join(tmp, "control.sock")
    tiny_path = os.path.join(tmp, "tiny.txt")
    with open(tiny_path, "w") as f:
        f.writelines(f'{{"op":"square","n":{i}}}\n' for i in range(args.n))
    spin_path = os.path.join(tmp, "spin.txt")
    with open(spin_path, "wb") as f:
        f.write(spin_events(args.cpu_n, args.ms))
    square = lambda i: b"%d" % (i * i)
    spun = lambda i: b"%d" % args.ms
    ideal = args.cpu_n * args.ms / 1000 / args.workers
    w = ["--workers", str(args.workers)]
    r = {}
    daemon = serve(args, sock, "--retries", "1000")
    try:
        h = ["--control", sock]
        kill_every, args.kill_every = args.kill_every, 0
        for label, path, n, expect in (("tiny", tiny_path, args.n, square),
                                       ("cpu", spin_path, args.cpu_n, spun)):
            for name, prog, opts in (("executor", "seed_executor.py", w),
                                     ("herd", "seed_herd.py", h),
                                     ("herd_map", "seed_herd_map.py", h)):
                runs = [seed_run(args, prog, path, expect, n, None, *opts)
                        for _ in range(args.repeat)]
                for x in runs:
                    if x["answered_ok"] != n or x["exit"] != 0:
                        die(f"seed {label} {name}: {x}")
                best = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
                best["runs"] = [x["seconds"] for x in runs]
                if label == "cpu":
                    best["efficiency"] = ideal / best["seconds"]
                r[f"{label}_{name}"] = best
        args.kill_every = kill_every
        if args.kill_every > 0:
            r["kills_herd"] = seed_run(args, "seed_herd.py", spin_path, spun, args.cpu_n,
                                       daemon.pid, *h)
            if r["kills_herd"]["answered_ok"] != args.cpu_n:
                die(f"seed kills herd: {r['kills_herd']}")
            # The article's pool breaks at the first kill (BrokenProcessPool): count what it
            # still answers.
            r["kills_executor"] = seed_run(args, "seed_executor.py", spin_path, spun,
                                           args.cpu_n, None, *w)
        subprocess.run([args.herd, "ctl", "--control", sock, "stop"], stdout=subprocess.DEVNULL)
        if daemon.wait(timeout=60) != 0:
            die(f"herd serve exited {daemon.returncode}")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    return r


def recovery(args):
    """Median time from SIGKILL of a busy worker to its replacement's handshake."""
    cmd = [args.herd, "run", "--log-format", "json", "-w", str(args.workers), "--retries", "1000",
           "--", args.chaos]
    live = Live(cmd)
    live.wait_workers(args.workers)
    stop = threading.Event()

    def feed():
        chunk = spin_events(100, 1)
        try:
            while not stop.is_set():
                live.p.stdin.write(chunk)
                live.p.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            live.p.stdin.close()
        except BrokenPipeError:
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    rng = random.Random(11)
    deltas = []
    for _ in range(args.kills):
        time.sleep(0.15)
        worker, pid = rng.choice(live.live())
        t = time.time()
        os.kill(pid, signal.SIGKILL)
        ready = live.wait_ready_after(worker, t)
        deltas.append((ready - t) * 1000)
    stop.set()
    feeder.join()
    live.p.wait()
    deltas.sort()
    return {"kills": len(deltas), "median_ms": statistics.median(deltas),
            "p90_ms": deltas[int(0.9 * len(deltas))], "max_ms": deltas[-1]}


def memory(args):
    n = sum(1 for _ in open(args.events, "rb"))
    with open(args.events, "rb") as f:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", *herd_cmd(args, "-w", str(args.workers),
                            *window_opts(args))], stdin=f, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    if p.returncode != 0:
        die(f"herd exited {p.returncode}: {p.stderr[-500:]!r}")
    check_squares(p.stdout, n)
    kb = int(p.stderr.decode().strip().splitlines()[-1])
    return {"events": n, "peak_rss_kb": kb, "peak_rss_mb": kb / 1024}


def jetstream(args):
    """Tiny events end to end through NATS JetStream (events in a stream, a record published
    per event, PubAck, then the event acknowledged), against a nats-server on 127.0.0.1: the
    bare async-nats consumer (examples/nats_bare.rs: no worker, the engine's own limit), then
    herd serve --nats with 1 and 2 daemons sharing the consumer. The events are published
    first; the clock runs from starting the consumers to the last record stored. Medians of
    --repeat runs; each run's records are checked (each event once, each result right)."""
    import shutil
    server_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(server_bin):
        die("jetstream needs nats-server (apt-get install nats-server)")
    return broker(args, "jetstream", args.nats_bare, "--nats",
                  lambda port, tmp: [server_bin, "-a", "127.0.0.1", "-p", str(port), "-js",
                                     "-sd", os.path.join(tmp, "store")],
                  lambda port: f"nats://127.0.0.1:{port}")


def redis(args):
    """Tiny events end to end through a Redis stream and consumer group (entries in the stream,
    a record written to the results stream per entry, the entry acknowledged), against a
    redis-server on 127.0.0.1: the bare consumer (examples/redis_bare.rs: no worker, the
    engine's own limit), then herd serve --redis with 1 and 2 daemons in the group. The entries
    are added first; the clock runs from starting the consumers to the last record written.
    Medians of --repeat runs; each run's records are checked (each entry once, each result
    right)."""
    import shutil
    server_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(server_bin):
        die("redis needs redis-server (apt-get install redis-server)")
    return broker(args, "redis", args.redis_bare, "--redis",
                  lambda port, tmp: [server_bin, "--port", str(port), "--bind", "127.0.0.1",
                                     "--dir", tmp, "--save", "", "--appendonly", "no"],
                  lambda port: f"redis://127.0.0.1:{port}")


def broker(args, name, bare, flag, server_cmd, url_of):
    """The broker workloads' one procedure: a server on a free loopback port, then the bare
    consumer `bare` and herd serve `flag` URL with 1 and 2 daemons, each run's events published
    first by `bare publish` and counted done by `bare wait`."""
    import shutil
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = scratch(f"herd-bench-{name}-")
    server = subprocess.Popen(server_cmd(port, tmp), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = url_of(port)
    n = args.n

    def tool(mode):
        p = subprocess.run([bare, mode, url, str(n)], stdout=subprocess.PIPE)
        if p.returncode != 0:
            die(f"{os.path.basename(bare)} {mode} failed")
        return p.stdout

    def once(daemons):
        tool("publish")
        procs = []
        t0 = time.time()
        if daemons == 0:
            procs.append(subprocess.Popen([bare, "consume", url, str(n)]))
        for d in range(daemons):
            w = max(1, args.workers // daemons)
            procs.append(subprocess.Popen(
                [args.herd, "serve", "-q", "--control", os.path.join(tmp, f"herd-{d}.sock"),
                 "-w", str(w), flag, url, "--", args.chaos],
                env={**os.environ, "XDG_RUNTIME_DIR": tmp}))
        done_at = json.loads(tool("wait"))["done_at"]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            if p.wait(timeout=60) != 0:
                die(f"a consumer exited {p.returncode}")
        return n / (done_at - t0)

    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    die(f"the {name} server did not start")
                time.sleep(0.05)
        out = {"events": n}
        for label, daemons in (("bare", 0), ("herd_1", 1), ("herd_2", 2)):
            runs = [once(daemons) for _ in range(args.repeat)]
            out[label] = {"events_per_sec": statistics.median(runs), "runs": runs}
            log(f"bench: {name} {label}: {out[label]['events_per_sec']:,.0f} events/s")
        return out
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def sub(args, workload, *extra):
    """Runs one herd workload in a fresh interpreter (so threads and pipes never leak between
    workloads) and returns its JSON."""
    cmd = [sys.executable, __file__, workload, "--herd", args.herd, "--chaos", args.chaos,
           "--workers", str(args.workers), *extra]
    log(f"bench: {' '.join(cmd[2:])}")
    p = subprocess.run(cmd, stdout=subprocess.PIPE)
    if p.returncode != 0:
        die(f"{workload} failed")
    return json.loads(p.stdout)


def raw(args, *opts):
    """The socket limit and bare processes (examples/rawsock.rs), on the same machine."""
    cmd = [args.rawsock, *opts, "--workers", str(args.workers)]
    log(f"bench: rawsock {' '.join(cmd[1:])}")
    p = subprocess.run(cmd, stdout=subprocess.PIPE)
    if p.returncode != 0:
        die("rawsock failed")
    return json.loads(p.stdout)


def peers(args, workload, *extra):
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "peers.py"), workload, "--workers",
           str(args.workers), *extra]
    log(f"bench: peers.py {' '.join(cmd[3:])}")
    p = subprocess.run(cmd, stdout=subprocess.PIPE)
    if p.returncode != 0:
        die(f"peers.py {workload} failed")
    return json.loads(p.stdout)["peers"]


def python_peers(args):
    """scripts/bench_peers.py, run by --peers-python (the bench's venv, with the PyPI peers and
    herd's wheel): (its figures, its table)."""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "peers.json")
    cmd = [args.peers_python, os.path.join(HERE, "bench_peers.py"), "--json", path,
           "--workers", str(args.workers), *(["--quick"] if args.quick else [])]
    log(f"bench: {' '.join(cmd)}")
    # The herd package and binary of that interpreter (the wheel), not the source tree's.
    sdk = os.path.join(os.path.dirname(HERE), "sdk", "python", "src")
    path_ = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != sdk]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path_)}
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        log(p.stdout)
        die("bench_peers.py: a herd row failed, or a result was wrong")
    with open(path) as f:
        return json.load(f), p.stdout


def peers_only(args):
    _, section = python_peers(args)
    print(section, end="")


def run_all(args):
    os.makedirs(args.out, exist_ok=True)
    n = 100_000 if args.quick else 1_000_000
    cpu_n = 2_000 if args.quick else 20_000
    events = os.path.join(args.out, f"square-{n}.txt")
    if not os.path.exists(events):
        with open(events, "w") as f:
            f.writelines(f'{{"op":"square","n":{i}}}\n' for i in range(n))
    r = {}
    r["tiny"] = sub(args, "tiny", "--events", events, "--repeat", str(args.repeat))
    r["submit"] = sub(args, "submit", "--events", events, "--repeat", str(args.repeat))
    r["tiny_peers"] = peers(args, "tiny", "--events", events, "--repeat", str(args.repeat),
                            "--seed-n", str(n // 50), "--c1-n", str(n // 10))
    # Python workers (sdk/python) on the same events, doing the peers' own work(): on the
    # native serve loop (herd._native), and on the pure-Python one.
    r["tiny_py"] = sub(args, "tiny", "--python", "--events", events, "--repeat", str(args.repeat))
    r["tiny_py_pure"] = sub(args, "tiny", "--python", "--pure", "--events", events, "--repeat",
                            str(args.repeat))
    # The socket limit: a thread per child, or one thread for all of them (herd's shape).
    r["raw"] = {
        "pipelined": raw(args, "--inflight", "64", "--n", str(n)),
        "round_trip": raw(args, "--inflight", "1", "--n", str(n // 5)),
        "round_trip_single": raw(args, "--inflight", "1", "--n", str(n // 5), "--single"),
        "dispatch_spin_single": raw(args, "--inflight", "2", "--n", str(cpu_n), "--spin-ms",
                                    "1", "--single"),
        "bare_spin": raw(args, "bare", "--n", str(cpu_n), "--ms", "1"),
    }
    r["rate"] = sub(args, "rate", "--events", events, "--repeat", str(args.repeat))
    r["keys"] = sub(args, "keys", "--events", events, "--repeat", str(args.repeat))
    r["batch"] = sub(args, "batch", "--events", events, "--repeat", str(args.repeat))
    # The same with Python workers (herd.run_batch), and a numpy workload that gains by it.
    r["pybatch"] = sub(args, "pybatch", "--events", events, "--repeat", str(args.repeat))
    r["vector"] = sub(args, "vector", "--n", str(n // 10), "--repeat", str(args.repeat),
                      "--peers-python", args.peers_python)
    r["latency"] = sub(args, "latency", "--n", str(n // 5), "--out", args.out, "--repeat",
                       str(args.repeat))
    r["latency_peers"] = peers(args, "latency", "--n", "2000")
    r["cpu"] = sub(args, "cpu", "--n", str(cpu_n), "--ms", "1", "--repeat", "2",
                   "--out", args.out)
    r["cpu_peers"] = peers(args, "cpu", "--n", str(cpu_n), "--ms", "1", "--repeat", "2")
    # Python workers (sdk/python) on the same events, doing the peers' own work().
    r["cpu_py"] = sub(args, "cpu", "--python", "--n", str(cpu_n), "--ms", "1", "--repeat", "2",
                      "--out", args.out)
    r["memory"] = sub(args, "memory", "--events", events)
    r["memory_peers"] = peers(args, "memory", "--n", str(n // 5))
    r["recovery"] = sub(args, "recovery", "--kills", "10" if args.quick else "40")
    r["cpu_kills"] = sub(args, "cpu", "--n", str(cpu_n), "--ms", "1", "--kill-every", "0.15")
    r["stdio"] = sub(args, "stdio", "--stdio", args.stdio, "--events", events, "--out", args.out,
                     "--n", str(n // 50), "--repeat", str(args.repeat))
    r["jetstream"] = sub(args, "jetstream", "--n", "20000" if args.quick else "100000",
                         "--repeat", str(args.repeat), "--nats-bare", args.nats_bare)
    r["redis"] = sub(args, "redis", "--n", "20000" if args.quick else "100000",
                     "--repeat", str(args.repeat), "--redis-bare", args.redis_bare)
    # 100,000 tiny events: the interpreter's own start (~0.15 s here, the same for both
    # programs) is then a tenth of herd's time, not a third.
    r["seed"] = sub(args, "seed", "--n", str(n // 10), "--cpu-n", str(cpu_n // 2), "--ms", "1",
                    "--repeat", "1", "--kill-every", "0.15")
    r["cancel"] = sub(args, "cancel", "--n", "20" if args.quick else "100")
    # The Python peers (scripts/bench_peers.py): its own section, printed after the table.
    r["python_peers"], peers_table = python_peers(args)
    rows = table(r)
    r["table"] = rows
    r["machine"] = {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "model": cpu_model(), "quick": args.quick}
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(r, f, indent=1)
    print_table(rows)
    print(peers_table, end="")
    print(f"\nwritten: {path}")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def table(r):
    """One row per figure: what, herd's figure, the peer, the peer's figure, herd's advantage
    (>1 means herd is better), and the issue's goal where there is one."""
    rows = []
    tp = r["tiny_peers"]
    herd_eps = r["tiny"]["events_per_sec"]
    for name, goal in [("imap_unordered_c256", 4.0), ("executor_map_c256", None),
                       ("imap_unordered_c1", None), ("seed", None)]:
        if name in tp:
            peer = tp[name]["events_per_sec"]
            rows.append(["tiny events/s", herd_eps, name, peer, herd_eps / peer, goal])
    sub_eps = r["submit"]["events_per_sec"]
    rows.append(["tiny events/s, serve + submit", sub_eps, "herd run, same events", herd_eps,
                 sub_eps / herd_eps, ">= 0.8"])
    if "rate" in r:
        rt = r["rate"]
        rows.append(["tiny events/s, --rate far above reach", rt["high_rate_events_per_sec"],
                     "herd run, no --rate", rt["none_events_per_sec"],
                     rt["high_rate_events_per_sec"] / rt["none_events_per_sec"], ">= 0.95"])
        rows.append(["rate accuracy, achieved / asked (200/s,burst=10)", rt["accuracy"],
                     "-", None, None, "1 +- 0.02"])
    if "keys" in r:
        kt = r["keys"]
        rows.append(["tiny events/s, 10,000 keys, --max-inflight-per-key 1",
                     kt["keyed_events_per_sec"], "herd run, no keys", kt["none_events_per_sec"],
                     kt["keyed_events_per_sec"] / kt["none_events_per_sec"], None])
    if "batch" in r:
        bt = r["batch"]
        rows.append(["tiny events/s, --batch 64", bt["batch_events_per_sec"],
                     "herd run, no --batch", bt["none_events_per_sec"],
                     bt["batch_events_per_sec"] / bt["none_events_per_sec"], None])
    if "pybatch" in r:
        bt = r["pybatch"]
        rows.append(["tiny events/s, Python workers, --batch 64", bt["batch_events_per_sec"],
                     "Python workers, no --batch", bt["none_events_per_sec"],
                     bt["batch_events_per_sec"] / bt["none_events_per_sec"], None])
    if "vector" in r:
        vt = r["vector"]
        what = "numpy 64x64 dot, Python workers"
        if "skipped" in vt:
            rows.append([what, "skipped: " + vt["skipped"], "-", None, None, None])
        else:
            rows.append([f"{what}: events/s, --batch 64", vt["batch_events_per_sec"],
                         "one event per call", vt["none_events_per_sec"],
                         vt["batch_events_per_sec"] / vt["none_events_per_sec"], None])
            for q in ("p50_ms", "p99_ms"):
                rows.append([f"{what}: latency {q[:3]} ms at {vt['offered_per_sec']:,.0f}/s, "
                             f"--batch 64", vt["batch_latency"][q], "one event per call",
                             vt["none_latency"][q], vt["none_latency"][q] / vt["batch_latency"][q],
                             None])
    rw = r["raw"]
    rows.append(["tiny events/s", herd_eps, "raw socket, 64 in flight",
                 rw["pipelined"]["frames_per_sec"],
                 herd_eps / rw["pipelined"]["frames_per_sec"], None])
    lat, lp = r["latency"], r["latency_peers"]
    for q, goal_us in [("p50_us", 25), ("p99_us", 60)]:
        for name in ("seed", "pool_apply"):
            if name in lp:
                rows.append([f"latency {q} (window 1)", lat[q], name, lp[name][q],
                             lp[name][q] / lat[q], f"<= {goal_us} us"])
        for key, name in (("round_trip_single", "raw socket, 1 in flight, 1 thread"),
                          ("round_trip", "raw socket, 1 in flight, 2 threads")):
            rows.append([f"latency {q} (window 1)", lat[q], name, rw[key][q],
                         rw[key][q] / lat[q], f"<= {goal_us} us"])
    cp = r["cpu_peers"]
    eff = r["cpu"]["efficiency"]
    for name in ("bare", "imap_unordered_c1", "executor_map_c1", "seed"):
        if name in cp:
            label = "bare Python processes" if name == "bare" else name
            rows.append(["cpu efficiency (spin 1ms)", eff, label,
                         cp[name]["efficiency"], eff / cp[name]["efficiency"], ">= 0.98"])
    for key, name in (("dispatch_spin_single", "raw socket, 2 in flight, 1 thread"),
                      ("bare_spin", "bare Rust processes")):
        rows.append(["cpu efficiency (spin 1ms)", eff, name, rw[key]["efficiency"],
                     eff / rw[key]["efficiency"], ">= 0.98"])
    if "tiny_py" in r:
        for key, label, goal in (("tiny_py", "tiny events/s, Python workers", ">= 1.5"),
                                 ("tiny_py_pure", "tiny events/s, Python workers (pure-Python "
                                  "loop)", None)):
            if key not in r:
                continue
            py_eps = r[key]["events_per_sec"]
            for name in ("imap_unordered_c256", "executor_map_c256"):
                if name in tp:
                    peer = tp[name]["events_per_sec"]
                    rows.append([label, py_eps, name, peer, py_eps / peer, goal])
        py_eff = r["cpu_py"]["efficiency"]
        for name in ("imap_unordered_c1", "executor_map_c1", "seed", "bare"):
            if name in cp:
                label = "bare Python processes" if name == "bare" else name
                rows.append(["cpu efficiency (spin 1ms), Python workers", py_eff, label,
                             cp[name]["efficiency"], py_eff / cp[name]["efficiency"], ">= 0.97"])
    mp_ = r["memory_peers"]
    for name in ("seed_unbounded", "seed_bounded"):
        if name in mp_:
            peer_mb = mp_[name]["peak_rss_kb"] / 1024
            rows.append([f"peak RSS MiB (herd {r['memory']['events']} ev, peer "
                         f"{mp_[name]['events']} ev)", r["memory"]["peak_rss_mb"], name, peer_mb,
                         peer_mb / r["memory"]["peak_rss_mb"], "<= 16"])
    rows.append(["recovery median ms", r["recovery"]["median_ms"], "-", None, None, "<= 5"])
    if "cancel" in r:
        for state in ("queued", "running"):
            for q in ("p50", "p99"):
                rows.append([f"cancel latency {q} ms, {state} (request to record)",
                             r["cancel"][f"{state}_{q}_ms"], "-", None, None, None])
    if "jetstream" in r:
        js = r["jetstream"]
        bare = js["bare"]["events_per_sec"]
        for name, label in (("herd_1", "1 daemon"), ("herd_2", "2 daemons")):
            eps = js[name]["events_per_sec"]
            rows.append([f"JetStream tiny events/s, {label}", eps, "bare async-nats consumer",
                         bare, eps / bare, ">= 0.7"])
    if "redis" in r:
        rd = r["redis"]
        bare = rd["bare"]["events_per_sec"]
        for name, label in (("herd_1", "1 daemon"), ("herd_2", "2 daemons")):
            eps = rd[name]["events_per_sec"]
            rows.append([f"Redis Streams tiny events/s, {label}", eps, "bare Rust redis consumer",
                         bare, eps / bare, ">= 0.7"])
    rows.append(["spin 1ms events/s, kill every 150ms", r["cpu_kills"]["events_per_sec"],
                 "herd, no kills", r["cpu"]["events_per_sec"],
                 r["cpu_kills"]["events_per_sec"] / r["cpu"]["events_per_sec"], None])
    if "seed" in r:
        sd = r["seed"]
        rows.append(["seed example tiny events/s, herd.client", sd["tiny_herd"]["events_per_sec"],
                     "seed example, ProcessPoolExecutor", sd["tiny_executor"]["events_per_sec"],
                     sd["tiny_herd"]["events_per_sec"] / sd["tiny_executor"]["events_per_sec"],
                     ">= 10"])
        rows.append(["seed example tiny events/s, herd.client map", sd["tiny_herd_map"]["events_per_sec"],
                     "seed example, ProcessPoolExecutor", sd["tiny_executor"]["events_per_sec"],
                     sd["tiny_herd_map"]["events_per_sec"] / sd["tiny_executor"]["events_per_sec"],
                     None])
        rows.append(["seed example cpu efficiency (spin 1ms), herd.client",
                     sd["cpu_herd"]["efficiency"], "seed example, ProcessPoolExecutor",
                     sd["cpu_executor"]["efficiency"],
                     sd["cpu_herd"]["efficiency"] / sd["cpu_executor"]["efficiency"], ">= 0.95"])
        rows.append(["seed example cpu efficiency (spin 1ms), herd.client map",
                     sd["cpu_herd_map"]["efficiency"], "seed example, ProcessPoolExecutor",
                     sd["cpu_executor"]["efficiency"],
                     sd["cpu_herd_map"]["efficiency"] / sd["cpu_executor"]["efficiency"], None])
        if "kills_herd" in sd:
            kh, ke = sd["kills_herd"], sd["kills_executor"]
            rows.append([f"seed example events answered of {kh['events']}, kill every 150ms",
                         kh["answered_ok"], "seed example, ProcessPoolExecutor",
                         ke["answered_ok"], kh["answered_ok"] / max(ke["answered_ok"], 1),
                         "all"])
    if "stdio" in r:
        st = r["stdio"]
        for name, label in (("cat", "herd-stdio + cat"), ("python", "herd-stdio + python3 -u")):
            rows.append([f"tiny events/s, {label}", st[name]["events_per_sec"],
                         "herd-chaos, same run", st["native"]["events_per_sec"],
                         st[name]["events_per_sec"] / st["native"]["events_per_sec"], None])
        for name, label in (("cat", "herd-stdio + cat"), ("python", "herd-stdio + python3 -u")):
            for q in ("p50_us", "p99_us"):
                rows.append([f"latency {q} (window 1), {label}", st[name][q],
                             "herd-chaos, same run", st["native"][q],
                             st["native"][q] / st[name][q], None])
    return rows


def print_table(rows):
    def f(v):
        if v is None:
            return "-"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
        return str(v)
    head = ["figure", "herd", "peer", "peer figure", "herd advantage", "goal"]
    cells = [head] + [[f(c) for c in row] for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for i, c in enumerate(cells):
        print("  ".join(x.ljust(widths[j]) if j in (0, 2) else x.rjust(widths[j])
                        for j, x in enumerate(c)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def compare(args):
    """Before/after in one run: the tiny, latency, cpu and memory workloads for a baseline
    build (--baseline DIR holding its herd and herd-chaos) and for this one, interleaved
    (baseline, current, baseline, current, ...) so that the host's noise falls on both alike.
    Prints one table and writes it to OUT/compare.json."""
    os.makedirs(args.out, exist_ok=True)
    n_tiny = 200_000 if args.quick else 1_000_000
    events = os.path.join(args.out, f"tiny-{n_tiny}.txt")
    if not os.path.exists(events):
        with open(events, "w") as f:
            f.writelines(f'{{"op":"square","n":{i}}}\n' for i in range(n_tiny))
    builds = {"before": (os.path.join(args.baseline, "herd"), os.path.join(args.baseline, "herd-chaos")),
              "after": (args.herd, args.chaos)}
    lat_n = "20000" if args.quick else "200000"
    cpu_n = "2000" if args.quick else "20000"
    work = [("tiny", ["--events", events, "--repeat", "1"], "events_per_sec", "tiny events/s"),
            ("latency", ["--n", lat_n, "--repeat", "1"], "p50_us", "latency p50 us (window 1)"),
            ("latency", ["--n", lat_n, "--repeat", "1"], "p99_us", "latency p99 us (window 1)"),
            ("cpu", ["--n", cpu_n, "--ms", "1"], "efficiency", "cpu efficiency (spin 1ms)"),
            ("memory", ["--events", events], "peak_rss_mb", "peak RSS MiB")]
    results = {b: {} for b in builds}
    for rep in range(args.repeat):
        done = set()
        for workload, extra, _key, _label in work:
            if (workload, tuple(extra)) in done:
                continue
            done.add((workload, tuple(extra)))
            for name, (herd, chaos) in builds.items():
                sub_args = argparse.Namespace(**{**vars(args), "herd": herd, "chaos": chaos})
                r = sub(sub_args, workload, "--out", args.out, *extra)
                results[name].setdefault(workload, []).append(r)
    rows = []
    for workload, _extra, key, label in work:
        before = statistics.median(r[key] for r in results["before"][workload])
        after = statistics.median(r[key] for r in results["after"][workload])
        rows.append([label, before, after, after / before])
    head = ["figure", "before", "after", "after / before"]
    fmt = lambda v: f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"
    cells = [head] + [[r[0]] + [fmt(v) for v in r[1:]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for i, c in enumerate(cells):
        print("  ".join(x.ljust(widths[j]) if j == 0 else x.rjust(widths[j])
                        for j, x in enumerate(c)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"rows": rows, "raw": results, "repeat": args.repeat}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["tiny", "submit", "rate", "keys", "batch", "pybatch", "vector", "latency", "cpu", "recovery", "memory",
                                         "stdio", "jetstream", "redis", "seed", "cancel", "all",
                                         "compare", "peers"])
    ap.add_argument("--peers-python", default=sys.executable,
                    help="all, peers: the interpreter of bench_peers.py's runs (with loky, "
                         "pebble, mpire, joblib and the herd wheel installed)")
    ap.add_argument("--nats-bare", default="target/release/examples/nats_bare")
    ap.add_argument("--redis-bare", default="target/release/examples/redis_bare")
    ap.add_argument("--out", default="target/bench")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--herd", default="target/release/herd")
    ap.add_argument("--chaos", default="target/release/herd-chaos")
    ap.add_argument("--rawsock", default="target/release/examples/rawsock")
    ap.add_argument("--stdio", default="target/release/herd-stdio")
    ap.add_argument("--events")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=int, default=0, help="0: herd's automatic window")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--ms", type=int, default=1)
    ap.add_argument("--cpu-n", type=int, default=2000, help="seed: spin events")
    ap.add_argument("--kill-every", type=float, default=0)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--baseline", help="compare: a directory with the baseline herd, herd-chaos")
    ap.add_argument("--python", action="store_true",
                    help="Python workers (pywork.py on sdk/python) instead of herd-chaos")
    ap.add_argument("--pure", action="store_true",
                    help="with --python: the SDK's pure-Python serve loop (HERD_PURE_PYTHON=1), "
                         "not the native one")
    args = ap.parse_args()
    # The Python workers import the herd package straight from the source tree (sdk/python/src),
    # with its native module built in place (scripts/native-dev.sh, which bench.sh runs).
    sdk = os.path.join(os.path.dirname(HERE), "sdk", "python", "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (sdk, os.environ.get("PYTHONPATH")) if p)
    if not args.pure:
        if (args.python or args.workload == "pybatch") and not os.path.exists(os.path.join(sdk, "herd", "_native.abi3.so")):
            die("no herd._native in sdk/python/src: run scripts/native-dev.sh (or --pure)")
    if args.workload == "all":
        return run_all(args)
    if args.workload == "peers":
        return peers_only(args)
    if args.workload == "compare":
        if not args.baseline:
            die("compare needs --baseline DIR")
        return compare(args)
    if args.workload == "latency" and args.n == 20000:
        args.n = 200000
    result = globals()[args.workload](args)
    result["workload"] = args.workload
    print(json.dumps(result))


if __name__ == "__main__":
    main()
