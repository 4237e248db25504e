#!/usr/bin/env python3
"""Measure the Python alternatives herd is compared against, on this machine.

Each peer runs the same herd-chaos events through a pool of worker processes and every result is
checked. The worker function mirrors what a herd worker does per event: parse the JSON line,
compute, serialize a small JSON result.

  peers.py tiny --events FILE [--seed-n 20000] [--c1-n 100000] [--full]
  peers.py cpu [--n 20000] [--ms 1]
  peers.py latency [--n 2000] [--warmup 4]
  peers.py memory [--n 100000] [--bounded | --unbounded]    (neither: both, each in a fresh process)
Common options: --workers 2, --only PEER,PEER, --repeat R (tiny, cpu: report the median run).

One JSON object goes to stdout, a human summary to stderr. A wrong or missing result exits 1.
Standard library only.
"""

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from pywork import spin, work  # noqa: F401 - the peers' per-event work

# Explicit, although it is the Linux default in 3.11 (not in 3.14+): these patterns fork their
# workers by default on Linux, so that is what a user of them gets.
CTX = mp.get_context("fork")

# How many events the seed pattern keeps in flight: a careful user bounds it with a semaphore.
INFLIGHT = 64


class CheckFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The work: same per-event shape as a herd worker (parse in, compute, small serialized result out).

# spin() and work() live in pywork.py, which is also the herd worker of bench.py's Python rows
# (there it imports only what the work needs, so its start-up is a worker's, not this script's).


def work_indexed(item):
    # For unordered peers: the index travels with the event so the check can be exact.
    i, line = item
    return i, work(line)


def expected_value(line):
    event = json.loads(line)
    if event.get("op") == "square":
        return event["n"] * event["n"]
    if event.get("op") == "spin":
        return event["ms"]
    raise CheckFailed(f"unsupported event (only square and spin): {line!r}")


# ---------------------------------------------------------------------------------------------
# Checking.

def check(name, results, expected):
    """Every event has exactly one result, and it is right (results[i] belongs to event i)."""
    try:
        if len(results) == len(expected) and list(map(json.loads, results)) == expected:
            return
    except (TypeError, ValueError):
        pass  # a missing (None) or unparsable result; located below
    if len(results) != len(expected):
        raise CheckFailed(f"{name}: {len(results)} results for {len(expected)} events")
    for i, (got, want) in enumerate(zip(results, expected)):
        if got is None:
            raise CheckFailed(f"{name}: no result for event {i}")
        try:
            value = json.loads(got)
        except (TypeError, ValueError):
            raise CheckFailed(f"{name}: event {i}: result {got!r} is not JSON") from None
        if value != want:
            raise CheckFailed(f"{name}: event {i}: got {value!r}, expected {want!r}")
    raise CheckFailed(f"{name}: results do not match")  # unreachable


def collect_unordered(name, pairs, n):
    """Place (index, result) pairs; an index seen twice or out of range is a failure."""
    results = [None] * n
    for i, r in pairs:
        if not 0 <= i < n or results[i] is not None:
            raise CheckFailed(f"{name}: unexpected or duplicate result for event {i}")
        results[i] = r
    return results


# ---------------------------------------------------------------------------------------------
# The peers. Each returns the results list (index i = event i); the caller times and checks.

async def event_source(lines):
    """The seed's asynchronous event stream, here never slower than the pool."""
    for line in lines:
        yield line


async def seed_async(lines, workers, inflight):
    loop = asyncio.get_running_loop()
    results = [None] * len(lines)
    sem = asyncio.Semaphore(inflight) if inflight else None
    tasks = set()

    async def one(i, line):
        try:
            results[i] = await loop.run_in_executor(pool, work, line)
        finally:
            if sem:
                sem.release()

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=CTX) as pool:
        i = 0
        async for line in event_source(lines):
            if sem:
                await sem.acquire()
            task = asyncio.create_task(one(i, line))
            tasks.add(task)
            if sem:  # bounded: forget finished tasks; unbounded: every task stays referenced
                task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
    return results


def seed(lines, workers, inflight=INFLIGHT):
    """The seed pattern: asyncio stream -> run_in_executor on a ProcessPoolExecutor."""
    return asyncio.run(seed_async(lines, workers, inflight))


def imap_unordered(lines, workers, chunksize):
    with CTX.Pool(workers) as pool:
        name = f"imap_unordered_c{chunksize}"
        results = collect_unordered(
            name, pool.imap_unordered(work_indexed, enumerate(lines), chunksize), len(lines))
        pool.close()
        pool.join()
    return results


def executor_map(lines, workers, chunksize):
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=CTX) as pool:
        return list(pool.map(work, lines, chunksize=chunksize))


def _bare_child(part, conn):
    conn.send([work(line) for line in part])
    conn.close()


def bare(lines, workers):
    """No dispatcher at all: each process gets its share up front and reports once at the end."""
    n = len(lines)
    procs = []
    for k in range(workers):
        parent_end, child_end = CTX.Pipe(duplex=False)
        part = lines[k * n // workers:(k + 1) * n // workers]
        p = CTX.Process(target=_bare_child, args=(part, child_end))
        p.start()
        child_end.close()
        procs.append((p, parent_end))
    results = []
    for p, conn in procs:
        results.extend(conn.recv())
        p.join()
    return results


# ---------------------------------------------------------------------------------------------
# Running and reporting.

def cpu_seconds():
    """(CPU seconds used by the whole machine, by this process and its reaped children)."""
    try:
        with open("/proc/stat") as f:
            jiffies = [int(x) for x in f.readline().split()[1:]]
        busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
        machine = busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        machine = float("nan")
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        ours += ru.ru_utime + ru.ru_stime
    return machine, ours


def run_peer(name, fn, lines, expected, workers, repeat=1):
    """Time one peer from pool creation to all results checked; also report check-free time.

    With repeat > 1 the peer runs that many times and the run with the median time is reported
    (this machine's figures can vary by tens of percent from one run to the next)."""
    n = len(lines)
    runs = []
    for _ in range(repeat):
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        results = fn(lines, workers)
        t1 = time.perf_counter()
        check(name, results, expected)
        t2 = time.perf_counter()
        cpu1 = cpu_seconds()
        del results
        seconds = t2 - t0
        rec = {"events": n, "seconds": round(seconds, 4),
               "events_per_sec": round(n / seconds, 1),
               "seconds_excl_check": round(t1 - t0, 4),
               "events_per_sec_excl_check": round(n / (t1 - t0), 1),
               # CPU the peer used (parent + workers), and what the rest of the machine used
               # meanwhile (incl. steal): if the latter is large, the figures were disturbed.
               "cpu_seconds": round(cpu1[1] - cpu0[1], 3),
               "other_cpu_seconds": round(max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])), 2)}
        say(f"  {name:<22} {n:>9} events  {seconds:8.3f} s  {n / seconds:>11,.0f} ev/s"
            f"  (excl. check {n / (t1 - t0):,.0f} ev/s)"
            f"  other CPU {rec['other_cpu_seconds']:.1f} s")
        runs.append(rec)
    rec = dict(sorted(runs, key=lambda r: r["seconds"])[(repeat - 1) // 2])
    if repeat > 1:
        rec["repeat"] = repeat
        rec["all_events_per_sec"] = [r["events_per_sec"] for r in runs]
    return rec


def calibrate(n=100_000):
    """Microseconds per square event for work() called in-process on one core: how fast this
    machine is right now (on a shared VM it drifts by tens of percent; compare like with like)."""
    lines = ['{"op":"square","n":%d}' % i for i in range(n)]
    t = time.perf_counter()
    for line in lines:
        work(line)
    return round((time.perf_counter() - t) / n * 1e6, 3)


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def wanted(args, name):
    return not args.only or name in args.only.split(",")


def cmd_tiny(args):
    with open(args.events) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    expected = [expected_value(line) for line in lines]
    w = args.workers
    n_c1 = len(lines) if args.full else min(len(lines), args.c1_n)
    n_seed = len(lines) if args.full else min(len(lines), args.seed_n)
    say(f"tiny: {len(lines)} events from {args.events}, {w} workers")
    plan = [
        ("seed", seed, n_seed),
        ("imap_unordered_c1", lambda ls, w: imap_unordered(ls, w, 1), n_c1),
        ("imap_unordered_c256", lambda ls, w: imap_unordered(ls, w, 256), len(lines)),
        ("executor_map_c256", lambda ls, w: executor_map(ls, w, 256), len(lines)),
    ]
    peers = {}
    for name, fn, n in plan:
        if wanted(args, name):
            peers[name] = run_peer(name, fn, lines[:n], expected[:n], w, args.repeat)
    return peers


def cmd_cpu(args):
    lines = ['{"op":"spin","ms":%d}' % args.ms] * args.n
    expected = [args.ms] * args.n
    w = args.workers
    ideal = args.n * args.ms / 1000 / w  # wall seconds if every worker burned CPU all the time
    say(f"cpu: {args.n} spin events of {args.ms} ms, {w} workers, ideal {ideal:.2f} s")
    plan = [
        ("seed", seed),
        ("imap_unordered_c1", lambda ls, w: imap_unordered(ls, w, 1)),
        ("executor_map_c1", lambda ls, w: executor_map(ls, w, 1)),
        ("bare", bare),
    ]
    peers = {}
    for name, fn in plan:
        if wanted(args, name):
            rec = run_peer(name, fn, lines, expected, w, args.repeat)
            rec["efficiency"] = round(ideal / rec["seconds"], 4)
            say(f"  {'':<22} efficiency {rec['efficiency']:.3f}")
            peers[name] = rec
    return peers


def latency_stats(name, samples, n_total, seconds, warmup):
    us = sorted(s * 1e6 for s in samples)
    p = statistics.quantiles(us, n=100, method="inclusive")
    rec = {"events": n_total, "seconds": round(seconds, 4),
           "events_per_sec": round(n_total / seconds, 1), "warmup_events": warmup,
           "p50_us": round(p[49], 1), "p99_us": round(p[98], 1), "max_us": round(us[-1], 1)}
    say(f"  {name:<22} p50 {rec['p50_us']:8.1f} us  p99 {rec['p99_us']:8.1f} us"
        f"  max {rec['max_us']:8.1f} us  ({n_total} events, {seconds:.2f} s)")
    return rec


async def seed_latency_async(lines, workers, warmup):
    loop = asyncio.get_running_loop()
    samples, results = [], []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=CTX) as pool:
        async for line in event_source(lines):
            t = time.perf_counter()
            results.append(await loop.run_in_executor(pool, work, line))
            samples.append(time.perf_counter() - t)
    return samples[warmup:], results


def cmd_latency(args):
    lines = ['{"op":"square","n":%d}' % i for i in range(args.n)]
    expected = [i * i for i in range(args.n)]
    w, warmup = args.workers, args.warmup
    say(f"latency: {args.n} square events one at a time, {w} workers,"
        f" first {warmup} not sampled (pool start-up)")
    peers = {}
    if wanted(args, "seed"):
        t0 = time.perf_counter()
        samples, results = asyncio.run(seed_latency_async(lines, w, warmup))
        seconds = time.perf_counter() - t0
        check("seed", results, expected)
        peers["seed"] = latency_stats("seed", samples, args.n, seconds, warmup)
    if wanted(args, "pool_apply"):
        t0 = time.perf_counter()
        samples, results = [], []
        with CTX.Pool(w) as pool:
            for line in lines:
                t = time.perf_counter()
                results.append(pool.apply(work, (line,)))
                samples.append(time.perf_counter() - t)
            pool.close()
            pool.join()
        seconds = time.perf_counter() - t0
        check("pool_apply", results, expected)
        peers["pool_apply"] = latency_stats("pool_apply", samples[warmup:], args.n, seconds, warmup)
    return peers


def cmd_memory(args):
    if args.mode is None:
        # ru_maxrss is a high-water mark for the whole process: run each mode in a fresh one.
        peers = {}
        for mode in ("bounded", "unbounded"):
            cmd = [sys.executable, os.path.abspath(__file__), "memory", "--n", str(args.n),
                   "--workers", str(args.workers), f"--{mode}"]
            child = subprocess.run(cmd, stdout=subprocess.PIPE)
            if child.returncode != 0:
                raise CheckFailed(f"memory --{mode} exited with status {child.returncode}")
            peers.update(json.loads(child.stdout)["peers"])
        return peers
    lines = ['{"op":"square","n":%d}' % i for i in range(args.n)]
    expected = [i * i for i in range(args.n)]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    name = f"seed_{args.mode}"
    inflight = INFLIGHT if args.mode == "bounded" else 0
    say(f"memory: {args.n} square events, {args.workers} workers, {name}"
        f" (in flight: {inflight or 'all'})")
    rec = run_peer(name, lambda ls, w: seed(ls, w, inflight), lines, expected, args.workers)
    rec["baseline_rss_kb"] = baseline
    rec["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    say(f"  {'':<22} parent peak RSS {rec['peak_rss_kb'] / 1024:,.0f} MiB"
        f" (before the pool {baseline / 1024:,.0f} MiB)")
    return {name: rec}


MEASURED = {
    "tiny": "wall seconds from pool creation to every result collected and checked, pool shut "
            "down; reading the events file and computing expected values are excluded. "
            "seconds_excl_check stops when the last result is in hand (pool shut down).",
    "cpu": "wall seconds from pool (or process) creation to every result collected and checked; "
           "efficiency = (n * ms / 1000 / workers) / seconds",
    "latency": "per-event round trip (perf_counter) with exactly one event in flight in total, "
               "submit to result in hand; seconds covers the whole run incl. pool start-up",
    "memory": "ru_maxrss of the parent (KB, high-water mark of a fresh interpreter) after the "
              "seed pattern ran all events; seconds as in tiny",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="workload", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workers", type=int, default=2)
    common.add_argument("--only", help="comma-separated peer names to run (default: all)")
    common.add_argument("--repeat", type=int, default=1,
                        help="runs per peer; the median run is reported (tiny, cpu)")
    p = sub.add_parser("tiny", parents=[common], help="many trivial square events from a file")
    p.add_argument("--events", required=True)
    p.add_argument("--seed-n", type=int, default=20_000, help="events for the seed peer")
    p.add_argument("--c1-n", type=int, default=100_000, help="events for imap_unordered_c1")
    p.add_argument("--full", action="store_true", help="every peer on all events")
    p = sub.add_parser("cpu", parents=[common], help="spin events: how well are the CPUs used")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--ms", type=int, default=1)
    p = sub.add_parser("latency", parents=[common], help="round trip with one event in flight")
    p.add_argument("--n", type=int, default=2_000)
    p.add_argument("--warmup", type=int, default=4, help="leading events not sampled")
    p = sub.add_parser("memory", parents=[common], help="parent RSS: bounded vs unbounded seed")
    p.add_argument("--n", type=int, default=100_000)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bounded", dest="mode", action="store_const", const="bounded")
    g.add_argument("--unbounded", dest="mode", action="store_const", const="unbounded")
    args = ap.parse_args()

    def loadavg():
        return [round(x, 2) for x in os.getloadavg()]

    load_before = loadavg()
    calibration = calibrate()
    run = {"tiny": cmd_tiny, "cpu": cmd_cpu, "latency": cmd_latency, "memory": cmd_memory}
    try:
        say(f"calibration: work() in-process {calibration} us per square event")
        peers = run[args.workload](args)
    except CheckFailed as e:
        say(f"peers.py: RESULT CHECK FAILED: {e}")
        sys.exit(1)
    # Load before and after: the figures mean little if something else was using the CPUs.
    json.dump({"workload": args.workload, "workers": args.workers, "cpus": os.cpu_count(),
               "python": platform.python_version(), "start_method": "fork",
               "loadavg_before": load_before, "loadavg_after": loadavg(),
               "calibration_us_per_event": calibration,
               "measured": MEASURED[args.workload], "peers": peers}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
