"""chaos.py: the Python twin of herd-chaos, a worker whose behaviour each event chooses, so tests
and benchmarks can reproduce every failure a supervisor must survive with a Python worker.
Events are the same JSON objects as herd-chaos's (`python3 chaos.py --help`); outputs are JSON.
An unknown op or a malformed event is a non-retryable error.

    herd run -w 2 -- python3 -m herd.examples.chaos < events.jsonl
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict, Generator, List, NoReturn, Optional, Union

import herd
from herd import _codec as codec

HELP = """\
chaos.py: a herd worker (Python SDK) whose behaviour each event chooses.
Run it under `herd run -- python3 chaos.py`; events are JSON objects, one per line:
  {"op":"echo","v":X}            returns X
  {"op":"square","n":N}          returns N*N
  {"op":"spin","ms":M}           burns M ms of CPU, returns M
  {"op":"sleep","ms":M}          sleeps M ms, returns M
  {"op":"cancellable","ms":M}    waits M ms or until herd cancels it (then ends cancelled),
                                   returns M
  {"op":"fail","retryable":B}    handler error
  {"op":"flaky","fails":K}       retryable error while attempt <= K, then the attempt
  {"op":"retry_after","ms":M,"log":P}  appends "<attempt> <unix microseconds>" to file P;
                                   while the attempt is at most "fails" (default 1), asks
                                   for a retry after M ms; then returns the attempt
  {"op":"panic"}                  raises an exception in the handler
  {"op":"crash","signal":S}      aborts, or raises signal S (e.g. "SEGV")
  {"op":"exit","code":C}         exits with code C mid-task (os._exit)
  {"op":"hang"}                   busy-loops forever, ignoring SIGTERM/SIGINT/SIGHUP
  {"op":"garbage"}                writes an invalid frame to the socket
  {"op":"oversize"}               writes a frame header claiming 4 GiB
  {"op":"stderr","text":S}       writes S to stderr, returns S
  {"op":"alloc","mb":M}          allocates and keeps M MiB, returns M
  {"op":"pid"}                    returns its own pid
  {"op":"stream","n":N}          sends N chunks {"i":0}..{"i":N-1}, returns N; options:
                                   "size":B  each chunk a JSON string of B bytes instead
                                   "ms":M    sleeps M ms before each chunk
                                   "crash_after":K  exits with code 3 after K chunks while
                                             the attempt is at most "fails" (default 1)
  {"op":"stray_chunk"}            sends a chunk for a task it does not hold, then sleeps;
                                   with "after_done":true, its own Done then a chunk for it
"""

_loads = json.loads
_HOARD: List[bytes] = []


def need(event: Dict[str, Any], op: str, name: str) -> Any:
    value = event.get(name)
    if value is None:
        raise herd.Fatal(f"op {op!r} needs the field {name!r}")
    return value


def spin(ms: float) -> None:
    """Burns `ms` ms of this thread's CPU time (the thread clock, as herd-chaos)."""
    clock = time.thread_time
    end = clock() + ms / 1000
    while clock() < end:
        pass


def handle(task: herd.Task) -> Union[bytes, str, Generator[Any, None, Any]]:
    try:
        event = _loads(task.payload)
        op = event["op"]
    except (ValueError, TypeError, KeyError) as e:
        raise herd.Fatal(f"malformed event: {e!r}") from None
    if op == "square":
        n = event.get("n")
        if type(n) is not int:
            raise herd.Fatal("op 'square' needs the field 'n'")
        return str(n * n)
    if op == "echo":
        return json.dumps(event.get("v"), separators=(",", ":"), ensure_ascii=False)
    if op == "spin":
        ms = need(event, op, "ms")
        spin(ms)
        return str(ms)
    if op == "sleep":
        ms = need(event, op, "ms")
        time.sleep(ms / 1000)
        return str(ms)
    if op == "cancellable":
        ms = need(event, op, "ms")
        if task.wait_cancelled(ms / 1000):
            raise herd.Cancelled()
        return str(ms)
    if op == "retry_after":
        ms = need(event, op, "ms")
        with open(need(event, op, "log"), "a") as f:
            f.write(f"{task.attempt} {time.time_ns() // 1000}\n")
        if task.attempt <= event.get("fails", 1):
            raise herd.Retryable("asked to retry later", retry_after=ms / 1000)
        return str(task.attempt)
    if op == "fail":
        if event.get("retryable"):
            raise herd.Retryable("failed on request")
        raise herd.Fatal("failed on request")
    if op == "flaky":
        fails = need(event, op, "fails")
        if task.attempt <= fails:
            raise herd.Retryable(
                f"flaky: attempt {task.attempt} of {fails} planned failures")
        return str(task.attempt)
    if op == "panic":
        raise RuntimeError("chaos.py: exception on request")
    if op == "crash":
        sig = event.get("signal")
        task._flush()
        crash(parse_signal(sig) if sig is not None else None)
    if op == "exit":
        code = need(event, op, "code")
        task._flush()
        os._exit(code)
    if op == "hang":
        task._flush()
        hang()
    if op == "garbage":
        # A frame of 60 bytes whose variant (127) no message has, then random bytes.
        task._write_raw((60).to_bytes(4, "little") + b"\x7f" + os.urandom(59))
        sleep_forever()
    if op == "oversize":
        task._write_raw(b"\xff\xff\xff\xff\x01\x02\x03\x04")
        sleep_forever()
    if op == "stderr":
        text = need(event, op, "text")
        print(text, file=sys.stderr, flush=True)
        return json.dumps(text, ensure_ascii=False)
    if op == "alloc":
        mb = need(event, op, "mb")
        block = bytearray(b"\xa5") * (mb * 1024 * 1024)  # written, so really resident
        _HOARD.append(block)
        return str(mb)
    if op == "pid":
        return str(os.getpid())
    if op == "stream":
        return stream(task, event)
    if op == "stray_chunk":
        if event.get("after_done"):
            frames = codec.encode_done_ok(task.id, b'"done"') + codec.encode_chunk(task.id, b'"stray"')
        else:
            frames = codec.encode_chunk(task.id ^ (1 << 62), b'"stray"')
        task._write_raw(frames)
        sleep_forever()
    raise herd.Fatal(
        f"unknown op {op!r} (expected echo, square, spin, sleep, fail, flaky, panic, crash, "
        f"exit, hang, garbage, oversize, stderr, alloc, pid, stream or stray_chunk)")


def stream(task: herd.Task, event: Dict[str, Any]) -> str:
    n = need(event, "stream", "n")
    size, ms = event.get("size"), event.get("ms")
    dies = event.get("crash_after") if task.attempt <= event.get("fails", 1) else None
    for i in range(n):
        if dies == i:
            task._flush()
            os._exit(3)
        if ms:
            time.sleep(ms / 1000)
        task.chunk(b'"' + b"x" * size + b'"' if size is not None else '{"i":%d}' % i)
    if dies == n:
        task._flush()
        os._exit(3)
    return str(n)


def parse_signal(name: object) -> signal.Signals:
    """Accepts "SEGV", "SIGSEGV", "segv" or a signal number."""
    try:
        if isinstance(name, int) or str(name).isdigit():
            return signal.Signals(int(str(name)))
        upper = str(name).upper()
        return signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper]
    except (KeyError, ValueError):
        raise herd.Fatal(f"crash: unknown signal {name!r}") from None


def crash(sig: Optional[signal.Signals]) -> NoReturn:
    """Dies by `sig` (default disposition restored first), or by abort."""
    if sig is not None:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL/SIGSTOP cannot be changed; raise regardless
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os.abort()


def hang() -> NoReturn:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        pass


def sleep_forever() -> NoReturn:
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        sys.stdout.write(HELP)
        sys.exit(0)
    herd.run(handle, pass_task=True)
