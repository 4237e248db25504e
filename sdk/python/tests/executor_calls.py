"""Calls for the herd.Executor tests, in a module the executor's workers import (they get the
test process's sys.path). The misbehaving objects are CPython's test_concurrent_futures's
(test_deadlock.py in 3.12+): each crashes, exits or raises while it is pickled or unpickled."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pickle import PicklingError, UnpicklingError
from typing import Any, Callable, NoReturn, Tuple, Type


def crash() -> NoReturn:
    """A segfault."""
    ctypes.string_at(0)
    raise AssertionError("unreachable")


def crash_later(delay: float) -> NoReturn:
    time.sleep(delay)
    crash()


def crash_with_data(data: bytes) -> NoReturn:
    crash()


def exit_now() -> NoReturn:
    sys.exit(1)


def hard_exit() -> NoReturn:
    os._exit(3)


def raise_error(err: Type[BaseException]) -> NoReturn:
    raise err()


def return_instance(cls: Callable[[], Any]) -> Any:
    return cls()


def echo(x: Any) -> Any:
    return x


def pid_after(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def mark_and_sleep(path: str, seconds: float) -> None:
    """Writes its pid to `path` (renamed into place), then sleeps."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)


def get_env(name: str) -> str:
    return os.environ.get(name, "")


_initialized = "no"


def init(value: str) -> None:
    global _initialized
    _initialized = value


def initialized() -> str:
    return _initialized


def init_fail() -> None:
    raise ValueError("error in initializer")


class CrashAtPickle:
    def __reduce__(self) -> Tuple[Any, ...]:
        crash()


class CrashAtUnpickle:
    def __reduce__(self) -> Tuple[Any, ...]:
        return crash, ()


class ExitAtPickle:
    def __reduce__(self) -> Tuple[Any, ...]:
        sys.exit(1)


class ExitAtUnpickle:
    def __reduce__(self) -> Tuple[Any, ...]:
        return exit_now, ()


class ErrorAtPickle:
    def __reduce__(self) -> Tuple[Any, ...]:
        raise PicklingError("Error in pickle")


class ErrorAtUnpickle:
    def __reduce__(self) -> Tuple[Any, ...]:
        return raise_error, (UnpicklingError,)


def square_or_exit(i: int, poison: int) -> int:
    """i*i, except for the poison input, which kills its worker (a crash herd must isolate)."""
    if i == poison:
        os._exit(3)
    return i * i


def square_or_raise(i: int) -> int:
    if i % 10 == 3:
        raise ValueError(f"no {i}")
    return i * i
