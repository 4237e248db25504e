"""The Python twin of crates/worker/examples/upper.rs: upper-cases each event.

    printf 'hello\n' | herd run -- python3 -m herd.examples.upper
"""
import herd


def handle(payload: bytes) -> str:
    return payload.decode("utf-8").upper()  # a str is sent as UTF-8


herd.run(handle)
