"""The one-shot flag behind ApplyResult/MapResult (pool_results._Ready), as threading.Event."""

from __future__ import annotations

import time

from p2ppool.pool.results import _Ready
from tests.fixtures.pool import waiting_threads


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
    threads, woke = waiting_threads(5, lambda: ready.wait(10))
    time.sleep(0.05)  # not synchronisation: gives the waiters a chance to block first
    assert woke == []
    ready.set()
    for thread in threads:
        thread.join(10)
    assert woke == [True] * 5


def test_a_waiter_interrupted_just_after_it_woke_still_hands_the_lock_on() -> None:
    # KeyboardInterrupt can land right after the lock was acquired; the waiters behind must
    # still wake, so the interrupted waiter releases the lock on its way out.
    ready = _Ready()
    real = ready._lock

    class InterruptedAfterAcquire:
        def acquire(self, *args: object) -> bool:
            ready.set()  # the result arrives while we wait ...
            assert real.acquire(False)  # ... we take the lock ...
            raise KeyboardInterrupt  # ... and are interrupted before handing it on

        def release(self) -> None:
            real.release()

    ready._lock = InterruptedAfterAcquire()  # type: ignore[assignment]
    try:
        ready.wait()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was swallowed")
    assert not real.locked()  # a waiter blocked on it would wake
