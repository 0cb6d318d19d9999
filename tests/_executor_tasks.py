"""Module-level functions the executor conformance tests send to processes (CPython's
``test_concurrent_futures`` cases use the same ones).  They must be importable by reference
for ``concurrent.futures``; on a LocalCluster this module travels to the workers as source.

Nothing here synchronises with ``time.sleep``: a task that must stay running waits for a
file the test creates (``tests._pool_fixtures.wait_for_file``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

from tests._pool_fixtures import wait_for_file

INITIALIZER_STATUS = "uninitialized"


def mul(x: Any, y: Any) -> Any:
    return x * y


def capture(*args: Any, **kwargs: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    return args, kwargs


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: Any) -> MyObject:
    return MyObject()


def init(x: str) -> None:
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = x


def get_init_status() -> str:
    return INITIALIZER_STATUS


def init_fail() -> None:
    raise ValueError("error in initializer")


def raise_runtime_error_123() -> None:
    raise RuntimeError(123)  # some comment


def wait_and_raise(path: str) -> None:
    wait_for_file(path)
    raise Exception("this is an exception")


def started_then_wait(started: str, go: str, value: Any = None) -> Any:
    """Say it runs (``started`` appears, holding this process's pid), then wait for ``go``."""
    Path(started + ".tmp").write_text(str(os.getpid()))
    os.replace(started + ".tmp", started)
    return wait_for_file(go, value=value)


def wait_then_touch(go: str, path: str) -> str:
    wait_for_file(go)
    Path(path).touch()
    return path


def square_where(x: int) -> Tuple[int, Any]:
    """``x * x`` and the worker it ran on (None in a Pool's own local processes)."""
    return x * x, os.environ.get("P2PPOOL_WORKER")


def sleep_and_print(seconds: float, message: str, path: str | None = None) -> None:
    """Sleep (the task's work: it still runs when the interpreter exits), then print
    ``message`` (a cluster worker prints into its own log) and create ``path``."""
    time.sleep(seconds)
    print(message)
    sys.stdout.flush()
    if path is not None:
        Path(path).touch()


def square_plus(offset: int) -> Any:
    """A closure over ``offset`` (concurrent.futures cannot pickle it; p2ppool can)."""
    return lambda x: x * x + offset


def kill_self(_: Any = None) -> None:
    os.kill(os.getpid(), 9)
