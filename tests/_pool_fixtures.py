"""Module-level functions that pool tests send to child processes (importable by children).

Nothing here synchronises with ``time.sleep``: a task that must stay pending waits for a file
the test creates (with a timeout), so tests decide exactly when it finishes.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

_init_calls = 0


class CustomError(Exception):
    """A user exception type that must come back as itself."""


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def with_kwds(a: int, b: int = 0, *, c: int = 0) -> tuple[int, int, int]:
    return a, b, c


def raise_value_error(x: Any) -> None:
    raise ValueError(f"bad value {x!r}")


def raise_custom(x: Any) -> None:
    raise CustomError(f"custom {x!r}")


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def return_lock(_: Any = None) -> Any:
    return threading.Lock()


def pid(_: Any = None) -> int:
    return os.getpid()


def count_init() -> None:
    global _init_calls
    _init_calls += 1


def pid_and_init_calls(_: Any = None) -> tuple[int, int]:
    return os.getpid(), _init_calls


def wait_for_file(path: str, timeout: float = 20.0, value: Any = None) -> Any:
    """Block until ``path`` exists (the test creates it when the task may finish)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
    return value


def quick_or_wait(path: str | None) -> str:
    if path is None:
        return "quick"
    wait_for_file(path)
    return "waited"


def touch(path: str) -> str:
    Path(path).touch()
    return path


def touch_or_fail(args: tuple[str, bool]) -> str:
    """Create the file, then raise if asked: proves map waits for every task."""
    path, fail = args
    if fail:
        raise ValueError(f"failing after nothing ({path})")
    wait_for_file(path + ".go")
    Path(path).touch()
    return path


def run_once(path: str, seconds: float = 0.0) -> str:
    """Create ``path`` (failing if it exists: the task ran twice), then burn ``seconds``."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    burn(seconds)
    return path


def kill_self(_: Any = None) -> None:
    os.kill(os.getpid(), 9)


def exit_hard(code: int = 3) -> None:
    os._exit(code)


def burn(seconds: float) -> float:
    """Keep a CPU busy for about ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return seconds


def echo(blob: bytes) -> bytes:
    return blob


def raising_iter(n: int, exc: BaseException) -> Iterator[int]:
    """Yield 0..n-1, then raise ``exc``."""
    yield from range(n)
    raise exc


class Recorder:
    """An iterable that counts how many items were taken from it."""

    def __init__(self, n: int | None = None) -> None:
        self.taken = 0
        self.n = n

    def __iter__(self) -> Iterator[int]:
        i = 0
        while self.n is None or i < self.n:
            self.taken += 1
            yield i
            i += 1


_unpickled = 0


def _rebuild_counting() -> CountingCallable:
    global _unpickled
    _unpickled += 1
    return CountingCallable()


class CountingCallable:
    """A function-like object that counts how often a process unpickled it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_counting, ()

    def __call__(self, _: Any = None) -> int:
        return _unpickled
