#!/usr/bin/env python3
"""The seed article's pipeline on herd: an asyncio event source feeding CPU-heavy work to a
`herd serve` daemon through the herd package's client. seed_executor.py is the same program as the article.

    herd serve --control herd.sock -- python3 scripts/pywork.py &
    python3 examples/seed/seed_herd.py EVENTS --control herd.sock

EVENTS holds one JSON event a line; the async generator `subscription` yields them as a
websocket or MQTT subscription would. Prints `index output` per event as it completes (or
`index error TYPE: MESSAGE`).
"""

import argparse
import asyncio
import sys

# The per-event work runs in the daemon's workers: scripts/pywork.py, the same work().
import herd


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
    async with herd.connect(args.control) as pool:
        async def handle(event):
            return (await pool.submit(event)).decode()
        await pipeline(subscription(args.events), handle, args.inflight)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("events")
    ap.add_argument("--control", default="herd.sock")
    ap.add_argument("--inflight", type=int, default=1024)
    asyncio.run(main(ap.parse_args()))
