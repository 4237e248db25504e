"""The Python twin of crates/worker/examples/upper.rs: upper-cases each event.

    printf 'hello\n' | herd run -- python3 sdk/python/examples/upper.py
"""
import herd_worker


def handle(payload: bytes) -> bytes:
    return payload.decode("utf-8").upper()  # a str is sent as UTF-8


herd_worker.run(handle)
