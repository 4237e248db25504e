#!/usr/bin/env python3
"""A vectorised workload for scripts/bench.py's `vector` rows, as a herd worker on the Python
SDK: each event is a vector v of 64 float32s (their bytes in hex: an event is one line), its
output the index of the largest component of M·v for one fixed 64x64 matrix M. One event per
call does a numpy dot product per event; `--batch N` takes up to N events per call and does one
decode and one matrix product for the batch, which is what batch handlers are for. Needs numpy.

    PYTHONPATH=sdk/python/src herd run --batch 64 -- python3 scripts/pyvector.py --batch 64 < events
"""

import binascii
import sys

import numpy as np

import herd

# Fixed, so that every worker (and both modes) compute the same outputs.
M = np.random.default_rng(7).standard_normal((64, 64))


def one(payload: bytes) -> str:
    v = np.frombuffer(binascii.unhexlify(payload), dtype=np.float32)
    return str(int(np.argmax(M @ v)))


def many(payloads: list) -> list:
    # One decode and one matrix product for the whole batch.
    x = np.frombuffer(binascii.unhexlify(b"".join(payloads)), dtype=np.float32).reshape(-1, 64)
    return [str(i) for i in (x @ M.T).argmax(axis=1).tolist()]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--batch":
        herd.run_batch(many, int(sys.argv[2]))
    herd.run(one)
