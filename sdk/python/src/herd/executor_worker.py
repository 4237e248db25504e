"""The worker of herd.Executor: `python -m herd.executor_worker` under `herd serve` or `herd run`.

Each event is one call, `(fn, args, kwargs)` pickled (cloudpickle when it is installed, so
lambdas and closures travel) and base64-encoded, since an event is one line. The output is
`(ok, value, traceback)`, pickled by plain pickle when it can and else as the call was,
base64-encoded too: the call's result, or the exception it raised
(anything, SystemExit included, so that an exit in a call fails that call only) with the
worker's formatted traceback. Whatever cannot be carried back (a result or exception that does
not pickle) becomes an error the parent can always unpickle. A crash (a segfault, os._exit) is
herd's to record: that event gets a `crashed` record and herd starts a new worker.

A private pool (herd.Executor without an address) gives its workers, through the environment,
the parent's sys.path (HERDPY_SYS_PATH), its main module (HERDPY_MAIN, imported as
`__mp_main__` as multiprocessing's spawn does, so that functions of the main script unpickle;
but on first use, not at the start: `_LazyMain`),
the initializer (HERDPY_INIT) and multiprocessing's authkey (HERDPY_AUTHKEY, so that proxies of
the parent's multiprocessing managers work in calls). Not HERD_*: herd keeps its own settings
from its workers. The working directory and the rest of the environment are inherited.
Started by hand (`herd serve -- python -m herd.executor_worker`) a worker uses its own.

The worker is a batch handler (`herd.run_batch`, up to HERDPY_BATCH_MAX calls per batch,
default 4096): under `--batch N` herd hands it up to N calls at once, each answered on its own
(one call's exception stays that call's); otherwise it gets single calls. A call of
Executor.map may also come as `("m", fn_bytes, args)` pickled and base64-encoded as above:
`fn_bytes` is the callable pickled once by the parent for the whole map, which the worker
unpickles once and keeps (the last few, by those bytes), so a call carries only its arguments.
"""

from __future__ import annotations

import binascii
import importlib
import importlib.util
import json
import os
import pickle
import runpy
import sys
import traceback
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

ENV_SYS_PATH = "HERDPY_SYS_PATH"
ENV_MAIN = "HERDPY_MAIN"
ENV_INIT = "HERDPY_INIT"
ENV_AUTHKEY = "HERDPY_AUTHKEY"
ENV_BATCH_MAX = "HERDPY_BATCH_MAX"

#: Calls per batch the worker takes (herd sends at most its own --batch).
BATCH_MAX = 4096
#: The tag of a map call, ("m", fn_bytes, args).
MAP_TAG = "m"
# How many unpickled map callables a worker keeps.
_FN_CACHE = 8

#: The pickler of calls: "cloudpickle" when it is installed, else "pickle". Found without
#: importing it (a tenth of the executor's import); it is imported by the first call pickled.
PICKLER = "cloudpickle" if importlib.util.find_spec("cloudpickle") is not None else "pickle"
_cloudpickle_dumps: Optional[Callable[[Any], bytes]] = None


def _dumps(obj: Any) -> bytes:
    """`obj` pickled by PICKLER."""
    global _cloudpickle_dumps
    if PICKLER == "pickle":
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    if _cloudpickle_dumps is None:
        import cloudpickle  # type: ignore[import-untyped, import-not-found, unused-ignore]
        _cloudpickle_dumps = cloudpickle.dumps
    return _cloudpickle_dumps(obj)


#: True while a worker imports the parent's main module: an Executor made then (a main script
#: without an `if __name__ == "__main__":` guard) would start pools from every worker.
importing_main = False

# (ok, value, traceback text or None)
Outcome = Tuple[bool, Any, Optional[str]]


def dumps(obj: Any) -> bytes:
    """`obj` pickled and base64-encoded: one line of ASCII."""
    return binascii.b2a_base64(_dumps(obj), newline=False)


def _dump_outcome(obj: Any) -> bytes:
    """A call's outcome, as `dumps`, but by plain pickle when it can: results are data far
    more often than lambdas, pickle's C pickler is several times faster on small ones, and a
    worker whose calls' functions travel by reference then never imports cloudpickle. Plain
    pickle refuses what it cannot carry (a lambda, a class made by cloudpickle in this worker:
    it checks the name leads to that very object); cloudpickle takes those."""
    try:
        raw = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any refusal: cloudpickle's turn (its error is the call's)
        raw = _dumps(obj)
    return binascii.b2a_base64(raw, newline=False)


def loads(data: bytes) -> Any:
    return pickle.loads(binascii.a2b_base64(data))


def call_chunk(fn: Callable[..., Any], chunk: Sequence[Tuple[Any, ...]]) -> Any:
    """One event of Executor.map(chunksize=N): fn over N argument tuples. The results, a list;
    or, when call i raises, `(results of the calls before it, its exception, its traceback)`, a
    tuple, so that map yields those results and raises at the call's own position (the calls
    after it are not run: map would not read them)."""
    results: List[Any] = []
    for args in chunk:
        try:
            results.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 - that call's outcome, SystemExit included
            tb = _format(e)
            e.__traceback__ = None  # frames do not pickle; their text travels beside
            return (results, e, tb)
    return results


class RemoteErrorText(Exception):
    """Stands in for an exception that could not be pickled in the worker: its type and text."""


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _dump_error(exc: BaseException, tb: str) -> bytes:
    """The outcome of a call that raised `exc`; if `exc` does not pickle, its text does."""
    exc.__traceback__ = None  # frames do not pickle; their text travels beside
    try:
        return _dump_outcome((False, exc, tb))
    except BaseException as e:  # noqa: BLE001 - a failed pickle must not lose the call
        text = f"{type(exc).__name__}: {exc}"
        stand_in = RemoteErrorText(f"{text} (the exception could not be pickled: "
                                   f"{type(e).__name__}: {e})")
        return _dump_outcome((False, stand_in, tb))


class _Worker:
    def __init__(self) -> None:
        # The initializer's failure: every call gets it.
        self.init_error: Optional[Tuple[BaseException, str]] = None
        # Map callables by their pickled bytes, oldest first (at most _FN_CACHE).
        self.fns: Dict[bytes, Callable[..., Any]] = {}

    def setup(self) -> None:
        path = os.environ.get(ENV_SYS_PATH)
        if path:
            sys.path[:] = json.loads(path)
        authkey = os.environ.get(ENV_AUTHKEY)
        if authkey:
            # The parent's multiprocessing authkey, as spawn hands it to its children: proxies
            # of the parent's multiprocessing managers work in calls.
            import multiprocessing
            multiprocessing.current_process().authkey = bytes.fromhex(authkey)
        main = os.environ.get(ENV_MAIN)
        if main:
            _LazyMain.install(main)
        init = os.environ.get(ENV_INIT)
        if init:
            try:
                fn, args = loads(init.encode("ascii"))
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - reported with every call
                self.init_error = (e, _format(e))

    def handle(self, payload: bytes) -> bytes:
        if self.init_error is not None:
            exc, tb = self.init_error
            return _dump_error(_initializer_failed(exc), tb)
        try:
            call = loads(payload)
            del payload
            if (type(call) is tuple and len(call) == 3 and type(call[0]) is str
                    and call[0] == MAP_TAG):
                fn = self.map_fn(call[1])
                args, kwargs = call[2], {}
            else:
                fn, args, kwargs = call
            del call
            result = fn(*args, **kwargs)
            del fn, args, kwargs
        except BaseException as e:  # noqa: BLE001 - the call's outcome, whatever it is
            return _dump_error(e, _format(e))
        try:
            return _dump_outcome((True, result, None))
        except BaseException as e:  # noqa: BLE001 - a result that does not pickle
            return _dump_error(e, _format(e))


    def handle_batch(self, payloads: List[bytes]) -> Iterator[bytes]:
        """A batch of calls: each payload as `handle` takes it, each outcome as it returns it
        (so one call's exception fails that call only)."""
        # An iterator: each call's outcome goes to herd as soon as it is made, so `timeout`
        # times a call from the end of the one before it, not from the batch's start.
        return (self.handle(p) for p in payloads)

    def map_fn(self, fn_bytes: bytes) -> Callable[..., Any]:
        """The callable of a map call, unpickled once per pickled form."""
        fn = self.fns.get(fn_bytes)
        if fn is None:
            fn = pickle.loads(fn_bytes)
            if len(self.fns) >= _FN_CACHE:
                del self.fns[next(iter(self.fns))]
            self.fns[fn_bytes] = fn
        return fn


def _batch_max() -> int:
    raw = os.environ.get(ENV_BATCH_MAX)
    if raw:
        try:
            n = int(raw)
            if n >= 1:
                return n
        except ValueError:
            pass
        sys.stderr.write(f"herd.executor_worker: ignoring {ENV_BATCH_MAX}={raw!r}: not a whole "
                         f"number of calls >= 1\n")
    return BATCH_MAX


def _initializer_failed(exc: BaseException) -> BaseException:
    from .errors import InitializerFailed
    return InitializerFailed("the executor's initializer failed in this worker: "
                             f"{type(exc).__name__}: {exc}")


class _LazyMain(types.ModuleType):
    """Stands for the parent's main module as `__main__` and `__mp_main__` until something
    is looked up in it (a call whose function pickle names there), then imports it as
    multiprocessing's spawn does. Spawn imports it at the start; most calls never need it
    (cloudpickle sends the main script's functions by value), and a main script may take long
    to import, which every worker would pay before its first call and after every restart."""

    def __init__(self, spec: str, boot: Optional[types.ModuleType]) -> None:
        super().__init__("__mp_main__")
        self._herd_spec = spec
        self._herd_boot = boot
        self._herd_loading = False

    @classmethod
    def install(cls, spec: str) -> None:
        kind, _, what = spec.partition(":")
        if kind == "name" and (what == "__main__" or what.endswith(".__main__")):
            return  # a package's __main__ run with -m: spawn does not import it either
        lazy = cls(spec, sys.modules.get("__main__"))
        sys.modules["__main__"] = sys.modules["__mp_main__"] = lazy

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_herd_") or self._herd_loading:
            raise AttributeError(name)  # the main module's own code, while it is imported
        self._herd_loading = True
        global importing_main
        importing_main = True
        try:
            module = _import_main(self._herd_spec)
        except BaseException as e:  # noqa: BLE001 - the call that needed it fails with it
            sys.stderr.write(f"herd.executor_worker: cannot import the main module "
                             f"{self._herd_spec}: {type(e).__name__}: {e}\n")
            if self._herd_boot is not None:
                sys.modules["__main__"] = self._herd_boot
            sys.modules.pop("__mp_main__", None)
            # Not an AttributeError, which pickle would replace with its own "Can't get
            # attribute": the call that needed the module fails with why it is missing.
            raise ImportError(f"cannot import the main module {self._herd_spec} "
                              f"(for its {name!r}): {type(e).__name__}: {e}") from e
        finally:
            importing_main = False
        sys.modules["__main__"] = sys.modules["__mp_main__"] = module
        return getattr(module, name)


def _import_main(spec: str) -> types.ModuleType:
    """The parent's main module, `name:MODULE` (run with -m: imported under its name) or
    `path:FILE` (run as `__mp_main__`): either way its `if __name__ == "__main__":` block does
    not run."""
    kind, _, what = spec.partition(":")
    if kind == "name":
        return importlib.import_module(what)
    main = types.ModuleType("__mp_main__")
    main.__dict__.update(runpy.run_path(what, run_name="__mp_main__"))
    return main


def main() -> None:
    from .worker import run_batch

    worker = _Worker()
    worker.setup()
    run_batch(worker.handle_batch, _batch_max())


if __name__ == "__main__":
    # Run with -m this file is __main__, which the main module's fixup replaces and whose
    # classes would not unpickle in the parent: serve from the module under its own name.
    from herd.executor_worker import main as _main
    _main()
