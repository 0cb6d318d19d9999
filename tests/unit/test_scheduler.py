"""The scheduler as a pure machine: events in (with explicit ``now``), exact commands out."""

from __future__ import annotations

from typing import Any, Callable, List

import pytest

from p2ppool.errors import ChunkFailed
from p2ppool.scheduler import Assign, Cancel, Fail, Resolve, Scheduler, WakeAt


def failed(commands: List[Any]) -> List[Any]:
    """Fail commands as comparable tuples (ChunkFailed compares by identity)."""
    return [
        (c.chunk_id, c.error.attempts, c.error.causes) if isinstance(c, Fail) else c
        for c in commands
    ]


def test_chunks_wait_for_slots_and_run_in_order() -> None:
    s = Scheduler()
    assert s.got_chunks([0, 1, 2], now=0.0) == []
    assert s.pending_count == 3
    assert s.got_executor("local", 2, now=1.0) == [Assign(0, "local", 1), Assign(1, "local", 1)]
    assert s.got_result(0, "local", "r0", now=2.0) == [Resolve(0, "r0"), Assign(2, "local", 1)]
    assert s.got_result(1, "local", "r1", now=2.0) == [Resolve(1, "r1")]
    assert s.got_result(2, "local", "r2", now=3.0) == [Resolve(2, "r2")]
    assert s.active_count == 0 and s.free_slots == 2


def test_duplicate_and_late_results_are_ignored_first_wins() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0)
    s.got_executor("b", 1, now=0.0)
    assert s.got_chunk(7, now=0.0) == [Assign(7, "a", 1)]
    assert s.task_lost(7, "a", "slow", now=1.0) == [Assign(7, "b", 2)]
    assert s.got_result(7, "a", "late from a", now=2.0) == []
    assert s.got_result(7, "b", "from b", now=2.0) == [Resolve(7, "from b")]
    assert s.got_result(7, "b", "again", now=3.0) == []
    assert s.got_result(99, "b", "unknown", now=3.0) == []


def test_a_user_error_is_a_result_not_a_retry() -> None:
    s = Scheduler()
    s.got_executor("local", 1, now=0.0)
    s.got_chunk(1, now=0.0)
    error = ValueError("user code raised")
    assert s.got_result(1, "local", error, now=1.0) == [Resolve(1, error)]


def test_lost_chunk_goes_to_the_front_of_the_line() -> None:
    s = Scheduler()
    s.got_executor("local", 1, now=0.0)
    s.got_chunks([0, 1, 2], now=0.0)
    assert s.task_lost(0, "local", "SIGKILL(-9)", now=1.0) == [Assign(0, "local", 2)]


def test_retries_are_bounded_and_the_error_names_every_cause() -> None:
    s = Scheduler(max_attempts=3)
    s.got_executor("local", 1, now=0.0)
    s.got_chunk(5, now=0.0)
    assert s.task_lost(5, "local", "process 1 died with SIGKILL(-9)", 1.0) == [
        Assign(5, "local", 2)
    ]
    assert s.task_lost(5, "local", "process 2 died with exit code 3", 2.0) == [
        Assign(5, "local", 3)
    ]
    commands = s.task_lost(5, "local", "process 3 died with SIGSEGV(-11)", 3.0)
    assert failed(commands) == [(5, 3, [
        "local: process 1 died with SIGKILL(-9)",
        "local: process 2 died with exit code 3",
        "local: process 3 died with SIGSEGV(-11)",
    ])]
    error = commands[0].error
    assert isinstance(error, ChunkFailed)
    assert "chunk 5 failed after 3 attempt(s)" in str(error)
    assert s.active_count == 0


def test_an_uncharged_loss_costs_no_attempt() -> None:
    s = Scheduler(max_attempts=1)
    s.got_executor("local", 2, now=0.0)
    s.got_chunks([0, 1], now=0.0)
    assert s.task_lost(1, "local", "not started", now=1.0, charged=False) == [
        Assign(1, "local", 1)
    ]


def test_executor_lost_returns_all_its_chunks() -> None:
    s = Scheduler()
    s.got_executor("peer-a", 2, now=0.0)
    s.got_chunks([0, 1, 2], now=0.0)
    s.got_executor("local", 1, now=0.0)
    assert s.running_on("local") == {2}
    assert s.executor_lost("peer-a", "connection dropped", now=1.0) == []
    assert s.pending_count == 2  # no slot free: local is busy
    assert s.got_result(2, "local", "r2", now=2.0) == [Resolve(2, "r2"), Assign(0, "local", 2)]
    assert s.executor_lost("peer-a", "again", now=2.0) == []  # unknown: nothing


def test_a_retried_chunk_prefers_another_executor() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0)
    s.got_executor("b", 1, now=0.0)
    s.got_chunks([0, 1], now=0.0)  # 0 -> a, 1 -> b
    s.got_result(1, "b", "r1", now=0.5)
    assert s.task_lost(0, "a", "lost", now=1.0) == [Assign(0, "b", 2)]


def test_leases_expire_without_heartbeats() -> None:
    s = Scheduler()
    assert s.got_executor("peer", 1, now=0.0, lease_s=5.0) == []
    assert s.got_chunks([0, 1], now=10.0) == [Assign(0, "peer", 1), WakeAt(15.0)]
    assert s.got_heartbeat("peer", now=12.0) == [WakeAt(17.0)]
    assert s.timer_expired(now=16.0) == []
    assert s.timer_expired(now=17.0) == [
        Cancel(0, "peer"), Assign(0, "peer", 2), WakeAt(22.0)
    ]
    assert s.next_deadline() == 22.0
    assert s.got_result(0, "peer", "r0", now=18.0) == [Resolve(0, "r0"), Assign(1, "peer", 1),
                                                       WakeAt(23.0)]


def test_cancel_removes_pending_and_stops_running_chunks() -> None:
    s = Scheduler()
    s.got_executor("local", 1, now=0.0)
    s.got_chunks([0, 1, 2], now=0.0)
    assert s.cancel([0, 2], now=1.0) == [Cancel(0, "local"), Assign(1, "local", 1)]
    assert s.got_result(0, "local", "late", now=2.0) == []
    assert s.got_result(1, "local", "r1", now=2.0) == [Resolve(1, "r1")]
    assert s.pending_count == 0 and s.active_count == 0


def test_a_chunk_id_cannot_be_added_twice() -> None:
    s = Scheduler()
    s.got_chunk(1, now=0.0)
    with pytest.raises(ValueError, match="already known"):
        s.got_chunk(1, now=0.0)
    with pytest.raises(ValueError):
        Scheduler(max_attempts=0)


# --- failures as data: (what happens, expected commands as failed() renders them) -----------

def _assigned(s: Scheduler) -> Scheduler:
    s.got_executor("w1", 1, now=0.0, lease_s=10.0)
    s.got_chunk(0, now=0.0)
    return s


FAILURE_CASES: List[Any] = [
    ("lease runs out", lambda s: s.timer_expired(now=10.0),
     [Cancel(0, "w1"), Assign(0, "w1", 2), WakeAt(20.0)]),
    ("result from a peer that never had it", lambda s: s.got_result(0, "w9", "x", now=1.0), []),
    ("loss reported by a peer that never had it", lambda s: s.task_lost(0, "w9", "x", 1.0), []),
    ("executor lost", lambda s: s.executor_lost("w1", "SIGKILL(-9)", now=1.0), []),
    ("task lost", lambda s: s.task_lost(0, "w1", "exceeded the 5 s task time limit", 1.0),
     [Assign(0, "w1", 2), WakeAt(11.0)]),
    ("late heartbeat from a gone peer", lambda s: s.got_heartbeat("w9", now=1.0), []),
]


@pytest.mark.parametrize("name,event,expected", FAILURE_CASES, ids=[c[0] for c in FAILURE_CASES])
def test_failure_table(name: str, event: Callable[[Scheduler], Any], expected: List[Any]) -> None:
    s = _assigned(Scheduler(max_attempts=3))
    assert failed(event(s)) == expected


def test_failure_table_exhausted_attempts() -> None:
    s = _assigned(Scheduler(max_attempts=2))
    s.timer_expired(now=10.0)
    assert failed(s.timer_expired(now=20.0)) == [
        Cancel(0, "w1"), (0, 2, ["w1: no heartbeat for 10 s", "w1: no heartbeat for 10 s"])
    ]
