#!/usr/bin/env python3
"""The seed article's pipeline: an asyncio event source feeding CPU-heavy work to a process
pool executor through loop.run_in_executor. seed_executor.py is the article's program, on
ProcessPoolExecutor; seed_herd_executor.py is the same file with herd.Executor in its place
and nothing else changed; seed_herd.py is the program rewritten on herd's asyncio client.

    python3 examples/seed/seed_executor.py EVENTS [--workers 2] [--inflight 1024]

EVENTS holds one JSON event a line; the async generator `subscription` yields them as a
websocket or MQTT subscription would. Prints `index output` per event as it completes (or
`index error TYPE: MESSAGE`).
"""

import argparse
import asyncio
import os
import sys
import herd

# The per-event work: the same function the benchmark peers (scripts/peers.py) run.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "scripts"))
from pywork import work  # noqa: E402


async def subscription(path):
    """Stands in for `async for msg in websocket` / an MQTT subscription."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


async def pipeline(events, handle, inflight):
    """Runs handle(event) for every event, at most `inflight` at once, printing each result."""
    room = asyncio.Semaphore(inflight)
    tasks = set()
    out = sys.stdout

    async def one(i, event):
        try:
            result = await handle(event)
            out.write(f"{i} {result}\n")
        except Exception as e:  # noqa: BLE001 - an event's failure is that event's result
            out.write(f"{i} error {type(e).__name__}: {e}\n")
        finally:
            room.release()

    i = 0
    async for event in events:
        await room.acquire()
        task = asyncio.create_task(one(i, event))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)


async def main(args):
    loop = asyncio.get_running_loop()
    with herd.Executor(args.workers) as pool:
        async def handle(event):
            return await loop.run_in_executor(pool, work, event)
        await pipeline(subscription(args.events), handle, args.inflight)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("events")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--inflight", type=int, default=1024)
    asyncio.run(main(ap.parse_args()))
