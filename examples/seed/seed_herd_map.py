#!/usr/bin/env python3
"""The seed article's pipeline on herd, one step further than seed_herd.py: instead of a task
per event awaiting `pool.submit`, the subscription goes straight into `pool.map`, which keeps
`--inflight` events in flight and yields results as they complete. Same input and output as
seed_executor.py and seed_herd.py.

    herd serve --control herd.sock -- python3 scripts/pywork.py &
    python3 examples/seed/seed_herd_map.py EVENTS --control herd.sock
"""

import argparse
import asyncio
import sys

import herd


async def subscription(path):
    """Stands in for `async for msg in websocket` / an MQTT subscription."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


async def main(args):
    out = sys.stdout
    async with herd.connect(args.control) as pool:
        results = pool.map(subscription(args.events), window=args.inflight,
                           return_exceptions=True)
        async for i, result in results:
            if isinstance(result, Exception):
                out.write(f"{i} error {type(result).__name__}: {result}\n")
            else:
                out.write(f"{i} {result.decode()}\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("events")
    ap.add_argument("--control", default="herd.sock")
    ap.add_argument("--inflight", type=int, default=1024)
    asyncio.run(main(ap.parse_args()))
