"""How a pool's manager thread is woken: an :class:`Inbox` of calls with a wakeup pipe, and a
:class:`~p2ppool.execution.waiter.Waiter` that waits on the pipe and the executors' readables
with one lasting poll."""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Callable, Deque, List, Tuple

from ..errors import PoolNotRunning
from ..execution.waiter import Waiter

__all__ = ["Inbox", "Waiter"]


class Inbox:
    """Thread-safe calls for the manager thread: ``post(fn, *args)`` then wake it up.

    Callers' requests and (issue 4) remote session events arrive here; the manager runs
    them in order on its own thread.
    """

    def __init__(self) -> None:
        self._calls: Deque[Tuple[Callable[..., Any], Tuple[Any, ...]]] = collections.deque()
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._writer, False)
        os.set_blocking(self._reader, False)
        self._closed = False
        self.sleeping = False  # the manager is (about to be) blocked in wait
        self._lock = threading.Lock()  # no write to a closed (maybe reused) descriptor

    @property
    def readable(self) -> int:
        """The file descriptor to include in ``wait``."""
        return self._reader

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the manager thread soon.

        Raises:
            PoolNotRunning: the manager has exited (nothing would run the call).
        """
        with self._lock:  # not between close()'s last drain and its return: lost
            if self._closed:
                raise PoolNotRunning()
            self._calls.append((fn, args))
        # The manager sets ``sleeping`` before it checks for calls and blocks, so either it
        # sees this call, or we see the flag and write (no lost wake-up, no needless write).
        if self.sleeping:
            self.wake()

    def pending(self) -> bool:
        """True if calls wait (the manager must not block)."""
        return bool(self._calls)

    def wake(self) -> None:
        """Wake the manager without a call."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._writer, b"\0")
            except OSError:
                pass  # the pipe is full: it is awake anyway

    def drain(self, woken: bool) -> List[Tuple[Callable[..., Any], Tuple[Any, ...]]]:
        """Take every posted call (manager thread only); ``woken``: the pipe was readable."""
        if woken:
            try:
                os.read(self._reader, 65536)  # one read: more bytes only mean another turn
            except OSError:
                pass
        calls = []
        while self._calls:
            calls.append(self._calls.popleft())
        return calls

    def close(self) -> List[Tuple[Callable[..., Any], Tuple[Any, ...]]]:
        """Refuse further calls; return those posted but never drained."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._reader)
                os.close(self._writer)
        return self.drain(False)
