#!/usr/bin/env python3
"""herd's side of the benchmarks: drives the release `herd` binary with `herd-chaos` workers and
prints one JSON object per workload on stdout (details on stderr). Every workload checks that
every record arrived and is right, so a fast wrong answer cannot pass.

    python3 scripts/bench.py tiny     --herd H --chaos C --events FILE [--window 64]
    python3 scripts/bench.py latency  --herd H --chaos C [--n 200000]
    python3 scripts/bench.py cpu      --herd H --chaos C [--n 20000 --ms 1] [--kill-every 0.15]
    python3 scripts/bench.py memory   --herd H --chaos C --events FILE
    python3 scripts/bench.py recovery --herd H --chaos C [--kills 40]

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


def herd_cmd(args, *opts):
    return [args.herd, "run", "-q", *opts, "--", args.chaos]


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


def tiny(args):
    n = sum(1 for _ in open(args.events, "rb"))
    with open(args.events, "rb") as f:
        t0 = time.perf_counter()
        p = subprocess.run(herd_cmd(args, "-w", str(args.workers), "--window", str(args.window)),
                           stdin=f, stdout=subprocess.PIPE)
        secs = time.perf_counter() - t0
    if p.returncode != 0:
        die(f"herd exited {p.returncode}")
    check_squares(p.stdout, n)
    return {"events": n, "seconds": secs, "events_per_sec": n / secs, "window": args.window}


def latency(args):
    """Per-event round trip with one task in flight per worker: herd's `micros` (dispatch to
    result, measured by herd) for square events, whose handler takes well under 1 us."""
    data = "".join(f'{{"op":"square","n":{i}}}\n' for i in range(args.n)).encode()
    p = subprocess.run(herd_cmd(args, "-w", str(args.workers), "--window", "1"),
                       input=data, stdout=subprocess.PIPE)
    if p.returncode != 0:
        die(f"herd exited {p.returncode}")
    check_squares(p.stdout, args.n)
    micros = sorted(json.loads(l)["micros"] for l in p.stdout.splitlines())
    pct = lambda q: micros[min(len(micros) - 1, int(q * len(micros)))]
    return {"events": args.n, "p50_us": pct(0.50), "p99_us": pct(0.99), "max_us": micros[-1]}


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
    cmd = [args.herd, "run", "--log-format", "json", "-w", str(args.workers), "--retries", "1000",
           "--", args.chaos]
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
                            "--window", str(args.window))], stdin=f, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    if p.returncode != 0:
        die(f"herd exited {p.returncode}: {p.stderr[-500:]!r}")
    check_squares(p.stdout, n)
    kb = int(p.stderr.decode().strip().splitlines()[-1])
    return {"events": n, "peak_rss_kb": kb, "peak_rss_mb": kb / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["tiny", "latency", "cpu", "recovery", "memory"])
    ap.add_argument("--herd", default="target/release/herd")
    ap.add_argument("--chaos", default="target/release/herd-chaos")
    ap.add_argument("--events")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--ms", type=int, default=1)
    ap.add_argument("--kill-every", type=float, default=0)
    ap.add_argument("--kills", type=int, default=40)
    args = ap.parse_args()
    if args.workload == "latency" and args.n == 20000:
        args.n = 200000
    result = globals()[args.workload](args)
    result["workload"] = args.workload
    print(json.dumps(result))


if __name__ == "__main__":
    main()
