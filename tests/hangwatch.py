"""When a test runs far longer than any test should, print every asyncio task's stack (once per test).

pytest-timeout (``timeout`` in pyproject.toml) then fails the test instead of letting CI hang; this dump is
what makes such a failure readable, since a hung asyncio test shows only the event loop's select() in a
thread dump. ``RTHUB_TEST_DUMP_S`` sets the delay (default 240 s)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest

DUMP_AFTER_S = float(os.environ.get("RTHUB_TEST_DUMP_S", "240"))
_current: dict = {"test": None, "since": 0.0, "loop": None}


def _dump_tasks(test: str) -> None:
    print(f"\n=== hangwatch: {test} has run {DUMP_AFTER_S:.0f}+ s; asyncio tasks ===", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(limit=15, file=sys.stderr)
    sys.stderr.flush()


def _watch() -> None:
    dumped = None
    while True:
        time.sleep(2)
        test, loop = _current["test"], _current["loop"]
        if test and test != dumped and time.monotonic() - _current["since"] > DUMP_AFTER_S and loop:
            dumped = test
            try:
                loop.call_soon_threadsafe(_dump_tasks, test)
            except RuntimeError:  # the loop closed meanwhile
                pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _current.update(test=item.nodeid, since=time.monotonic())
    yield
    _current["test"] = None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    try:
        _current["loop"] = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        _current["loop"] = None


threading.Thread(target=_watch, name="hangwatch", daemon=True).start()
