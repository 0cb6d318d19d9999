"""The one-shot flag behind ApplyResult/MapResult (pool_results._Ready), as threading.Event."""

from __future__ import annotations

import threading
import time

from p2ppool.pool_results import _Ready


def test_wait_times_out_until_set() -> None:
    ready = _Ready()
    assert not ready.is_set()
    started = time.monotonic()
    assert ready.wait(0.05) is False
    assert time.monotonic() - started >= 0.04
    assert ready.wait(0) is False
    assert ready.wait(-1) is False  # as Event.wait: a negative timeout does not block
    ready.set()
    assert ready.is_set()
    assert ready.wait(0) is True
    assert ready.wait() is True
    ready.set()  # a second set is harmless
    assert ready.wait(0) is True


def test_set_wakes_every_waiter() -> None:
    ready = _Ready()
    woke: list[bool] = []
    lock = threading.Lock()

    def waiter() -> None:
        got = ready.wait(10)
        with lock:
            woke.append(got)

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # not synchronisation: gives the waiters a chance to block first
    assert woke == []
    ready.set()
    for thread in threads:
        thread.join(10)
    assert woke == [True] * 5
