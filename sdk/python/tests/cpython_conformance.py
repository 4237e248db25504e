"""CPython's own concurrent.futures tests, run against herd.Executor.

    /usr/bin/python3.11 sdk/python/tests/cpython_conformance.py [-v]

Debian's libpython3.11-testsuite has `test.test_concurrent_futures`: its cases are mixins
(ExecutorTest, WaitTests, ...) over an `executor_type`. This builds a TestCase per mixin with
`executor_type = herd.Executor` and runs them all. A case that cannot apply to herd is skipped,
with its reason, from SKIPS; every one is listed in docs/PYTHON.md ("CPython conformance"),
which this checks. Exits non-zero on any failure or error. The herd package must be importable
by this interpreter (the wheel installed, or PYTHONPATH=sdk/python/src with `herd` on PATH or
in HERD_BIN).
"""

import os
import sys
import unittest
from typing import Any, Dict, List, Tuple

import herd
from test import test_concurrent_futures as _cf  # type: ignore[import-not-found, unused-ignore]

cf: Any = _cf

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "..", "docs", "PYTHON.md")

INTERNALS = "reads ProcessPoolExecutor internals (_processes, _mp_context, _broken)"
OPPOSITE = ("expects the pool to break (BrokenProcessPool/BrokenExecutor); herd fails only that "
            "call (EventCrashed, InitializerFailed) and keeps serving: the opposite expectation "
            "is tested by test_executor_faults.py")
CHILD_BY_NAME = ("runs a child interpreter doing `from concurrent.futures import "
                 "{executor_type.__name__}`, which names the standard library's abstract "
                 "Executor, not herd's: test_executor.py runs the same scenario with herd.Executor")

# (mixin, test) -> why it cannot apply to herd.
SKIPS: Dict[Tuple[str, str], str] = {
    ("ExecutorShutdownTest", "test_interpreter_shutdown"): CHILD_BY_NAME,
    ("ExecutorShutdownTest", "test_submit_after_interpreter_shutdown"): CHILD_BY_NAME,
    ("ExecutorShutdownTest", "test_hang_gh83386"): CHILD_BY_NAME,
    ("ProcessPoolExecutorTest", "test_killed_child"): INTERNALS + "; " + OPPOSITE,
    ("ProcessPoolExecutorTest", "test_saturation"): INTERNALS,
    ("ProcessPoolExecutorTest", "test_idle_process_reuse_one"): INTERNALS,
    ("ProcessPoolExecutorTest", "test_idle_process_reuse_multiple"): INTERNALS,
    ("ProcessPoolExecutorTest", "test_max_tasks_per_child"): INTERNALS,
    ("ProcessPoolExecutorTest", "test_max_tasks_per_child_defaults_to_spawn_context"):
        INTERNALS,
    ("FailingInitializerMixin", "test_initializer"): INTERNALS + "; " + OPPOSITE,
}

MIXINS = [cf.ExecutorTest, cf.ProcessPoolExecutorTest, cf.WaitTests, cf.AsCompletedTests,
          cf.ExecutorShutdownTest, cf.InitializerMixin, cf.FailingInitializerMixin]


class HerdMixin(cf.ExecutorMixin):  # type: ignore[misc]
    executor_type = herd.Executor

    def get_context(self) -> Any:  # what the cases that build a pool themselves pass as mp_context
        import multiprocessing
        return multiprocessing.get_context("spawn")


def cases() -> List[type]:
    """A TestCase class per mixin, its inapplicable tests replaced by skips."""
    out = []
    for mixin in MIXINS:
        attrs: Dict[str, Any] = {}
        for (owner, test), why in SKIPS.items():
            if owner == mixin.__name__:
                if not hasattr(mixin, test):
                    raise SystemExit(f"SKIPS names {owner}.{test}, which this CPython lacks")
                attrs[test] = unittest.skip(why)(lambda self: None)
        name = f"Herd{mixin.__name__}"
        out.append(type(name, (mixin, HerdMixin, cf.BaseTestCase), attrs))
    return out


# At module level: a worker imports this file as its main module (as multiprocessing's spawn
# does) to unpickle what the cases send, such as a classmethod of one of these classes.
for _case in cases():
    globals()[_case.__name__] = _case


def check_documented() -> None:
    """Every skip is named in docs/PYTHON.md's CPython conformance section."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start = text.find("## CPython conformance")
    if start < 0:
        raise SystemExit(f"{DOC} has no '## CPython conformance' section")
    section = text[start:text.find("\n## ", start + 1)]
    missing = [f"{o}.{t}" for o, t in SKIPS if f"{o}.{t}" not in section]
    if missing:
        raise SystemExit(f"skipped but not documented in {DOC}: {', '.join(missing)}")


def main() -> None:
    check_documented()
    loader = unittest.TestLoader()
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(globals()[f"Herd{m.__name__}"])
                               for m in MIXINS)
    verbosity = 2 if "-v" in sys.argv[1:] else 1
    result = unittest.TextTestRunner(verbosity=verbosity).run(suite)
    print(f"CPython conformance: {result.testsRun} run, {len(result.skipped)} skipped, "
          f"{len(result.failures)} failures, {len(result.errors)} errors")
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
