"""The scheduler as a pure machine: events in (with explicit ``now``), exact commands out."""

from __future__ import annotations

from typing import Any, Callable, List

import pytest

from p2ppool.errors import ChunkFailed
from p2ppool.pool.scheduler import Assign, Cancel, Fail, Resolve, Scheduler, WakeAt


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
    # (and a's free slot could take a copy if it runs 2 s: see the speculation tests)
    assert s.task_lost(0, "a", "lost", now=1.0) == [Assign(0, "b", 2), WakeAt(3.0)]


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
    s.got_executor("w1", 1, now=0.0)
    s.got_chunk(0, now=0.0)
    return s


FAILURE_CASES: List[Any] = [
    ("result from a peer that never had it", lambda s: s.got_result(0, "w9", "x", now=1.0), []),
    ("loss reported by a peer that never had it", lambda s: s.task_lost(0, "w9", "x", 1.0), []),
    ("executor lost", lambda s: s.executor_lost("w1", "SIGKILL(-9)", now=1.0), []),
    ("task lost", lambda s: s.task_lost(0, "w1", "exceeded the 5 s task time limit", 1.0),
     [Assign(0, "w1", 2)]),
    ("nothing due when the timer fires", lambda s: s.timer_expired(now=10.0), []),
]


@pytest.mark.parametrize("name,event,expected", FAILURE_CASES, ids=[c[0] for c in FAILURE_CASES])
def test_failure_table(name: str, event: Callable[[Scheduler], Any], expected: List[Any]) -> None:
    s = _assigned(Scheduler(max_attempts=3))
    assert failed(event(s)) == expected


def test_failure_table_exhausted_attempts() -> None:
    s = _assigned(Scheduler(max_attempts=2))
    assert s.task_lost(0, "w1", "SIGKILL(-9)", now=1.0) == [Assign(0, "w1", 2)]
    assert failed(s.task_lost(0, "w1", "SIGSEGV(-11)", now=2.0)) == [
        (0, 2, ["w1: SIGKILL(-9)", "w1: SIGSEGV(-11)"])
    ]


# --- speculative runs: no silent executor holds a map (issue 17) ------------------------------


def tail_of_a_job(s: Scheduler) -> None:
    """a and b (1 slot each); chunk 0 runs on a from 0.0, chunks 1-3 ran 0.1 s each on b."""
    s.got_executor("a", 1, now=0.0)
    s.got_executor("b", 1, now=0.0)
    assert s.got_chunks([0, 1, 2, 3], now=0.0, group="job") == [
        Assign(0, "a", 1), Assign(1, "b", 1)]
    assert s.got_result(1, "b", "r1", now=0.1) == [Resolve(1, "r1"), Assign(2, "b", 1)]
    assert s.got_result(2, "b", "r2", now=0.2) == [Resolve(2, "r2"), Assign(3, "b", 1)]
    # the median is 0.1 s: chunk 0 is overdue at 4 x 0.1 s, but at least 2 s after it began
    assert s.got_result(3, "b", "r3", now=0.3) == [Resolve(3, "r3"), WakeAt(2.0)]


def test_a_chunk_far_longer_than_its_jobs_others_runs_again_on_an_idle_executor() -> None:
    s = Scheduler()
    tail_of_a_job(s)
    assert s.next_deadline() == 2.0
    assert s.timer_expired(1.9) == []
    assert s.timer_expired(2.0) == [Assign(0, "b", 1, speculative=True)]
    # the first result wins; the other run is cancelled and never delivered
    assert s.got_result(0, "b", "from b", now=2.5) == [Resolve(0, "from b"), Cancel(0, "a")]
    assert s.got_result(0, "a", "late from a", now=9.0) == []
    assert s.overtaken("a") == 1 and s.overtaken("b") == 0
    assert s.active_count == 0 and s.free_slots == 2


def test_the_first_run_may_still_win_and_the_copy_is_cancelled() -> None:
    s = Scheduler()
    tail_of_a_job(s)
    s.timer_expired(2.0)
    assert s.got_result(0, "a", "from a", now=2.1) == [Resolve(0, "from a"), Cancel(0, "b")]
    assert s.got_result(0, "b", "from b", now=2.2) == []
    assert s.overtaken("b") == 1


def test_losing_one_of_two_runs_costs_no_attempt_and_the_other_goes_on() -> None:
    s = Scheduler(max_attempts=1)
    tail_of_a_job(s)
    s.timer_expired(2.0)
    # (the copy is the only run now: overdue in its turn 2 s after it began)
    assert s.task_lost(0, "a", "SIGKILL(-9)", now=2.1) == [WakeAt(4.0)]
    assert s.got_result(0, "b", "from b", now=2.3) == [Resolve(0, "from b")]


def test_the_executor_of_the_first_run_lost_leaves_the_copy_running() -> None:
    s = Scheduler()
    tail_of_a_job(s)
    s.timer_expired(2.0)
    assert s.executor_lost("a", "session closed", now=2.1) == []
    assert s.running_on("b") == {0}
    assert s.got_result(0, "b", "from b", now=2.3) == [Resolve(0, "from b")]


def test_task_timeout_copies_a_chunk_even_before_any_finished() -> None:
    s = Scheduler(task_timeout=5.0)
    s.got_executor("a", 1, now=0.0)
    s.got_executor("b", 1, now=0.0)
    assert s.got_chunks([0], now=0.0, group="job") == [Assign(0, "a", 1), WakeAt(5.0)]
    assert s.timer_expired(5.0) == [Assign(0, "b", 1, speculative=True)]


def test_the_median_rule_and_task_timeout_whichever_comes_first() -> None:
    s = Scheduler(task_timeout=1.0)  # the median rule alone would say 2 s
    s.got_executor("a", 1, now=0.0)
    s.got_executor("b", 1, now=0.0)
    s.got_chunks([0, 1, 2, 3], now=0.0, group="job")
    s.got_result(1, "b", "r1", now=0.1)
    s.got_result(2, "b", "r2", now=0.2)
    assert s.got_result(3, "b", "r3", now=0.3) == [Resolve(3, "r3"), WakeAt(1.0)]
    assert s.next_deadline() == 1.0


def test_no_copy_while_chunks_wait_in_line_or_with_one_executor() -> None:
    s = Scheduler(task_timeout=1.0)
    s.got_executor("a", 2, now=0.0)
    s.got_chunks([0, 1, 2], now=0.0)
    assert s.timer_expired(5.0) == []  # one executor: nowhere else to run it
    assert s.next_deadline() is None
    s.got_executor("b", 0, now=5.0)  # another executor, but no free slot
    assert s.timer_expired(6.0) == []
    assert s.got_executor("b", 1, now=7.0) == [Assign(2, "b", 1)]  # the line goes first


def test_an_overdue_chunk_that_cannot_be_copied_does_not_spin_the_timer() -> None:
    s = Scheduler(task_timeout=1.0)
    s.got_executor("a", 2, now=0.0)
    s.got_executor("b", 1, now=0.0)
    s.got_chunks([0, 1], now=0.0)  # 0 on a, 1 on b
    s.got_result(1, "b", "r1", now=0.5)
    assert s.timer_expired(1.0) == [Assign(0, "b", 1, speculative=True)]
    # both runs of 0 are overdue; a's free slot cannot take a third: nothing is due
    assert s.next_deadline() is None
    assert s.timer_expired(3.0) == []


def test_new_work_goes_to_executors_that_were_not_overtaken_first() -> None:
    s = Scheduler()
    tail_of_a_job(s)
    s.timer_expired(2.0)
    s.got_result(0, "b", "from b", now=2.5)  # a was overtaken
    assert s.got_chunks([10, 11], now=3.0, group="job2") == [
        Assign(10, "b", 1), Assign(11, "a", 1)]


def test_forgotten_groups_keep_no_durations() -> None:
    s = Scheduler()
    tail_of_a_job(s)
    s.forget_group("job")
    assert s.next_deadline() is None  # no median any more, and no task_timeout


def test_chunks_go_to_the_executor_with_the_most_free_slots() -> None:
    # Executors that hold chunks ahead (a cluster's prefetch) fill evenly, not one first.
    s = Scheduler()
    s.got_executor("a", 3, 0.0)
    s.got_executor("b", 3, 0.0)
    commands = s.got_chunks(range(4), 0.0)
    assert [c.executor for c in commands if isinstance(c, Assign)] == ["a", "b", "a", "b"]


def test_an_executor_whose_slots_shrink_takes_no_more_until_it_drains() -> None:
    s = Scheduler()
    s.got_executor("a", 3, 0.0)
    assert len([c for c in s.got_chunks(range(4), 0.0) if isinstance(c, Assign)]) == 3
    assert s.got_executor("a", 1, 0.0) == []
    assert not [c for c in s.got_result(0, "a", "r", 0.1) if isinstance(c, Assign)]
    assert not [c for c in s.got_result(1, "a", "r", 0.1) if isinstance(c, Assign)]
    assert [c for c in s.got_result(2, "a", "r", 0.1) if isinstance(c, Assign)] == [
        Assign(3, "a", 1)]


def test_prefetched_chunks_of_a_lost_executor_run_again_once_each() -> None:
    # A cluster session holding chunks beyond its slot (prefetch) dies: every chunk it held,
    # started or not, goes back to the front of the line in order, and resolves once.
    s = Scheduler()
    s.got_executor("a", 3, 0.0)  # 1 slot + 2 prefetched
    s.got_executor("b", 1, 0.0)
    assert s.got_chunks(range(5), 0.0) == [
        Assign(0, "a", 1), Assign(1, "a", 1), Assign(2, "a", 1), Assign(3, "b", 1)]
    assert s.executor_lost("a", "session lost", 0.5) == []
    assert s.pending_count == 4
    assert s.got_result(1, "a", "late from a", 0.6) == []
    resolved = []
    for chunk_id, now in ((3, 0.7), (0, 0.8), (1, 0.9), (2, 1.0), (4, 1.1)):
        commands = s.got_result(chunk_id, "b", f"r{chunk_id}", now)
        resolved += [c.chunk_id for c in commands if isinstance(c, Resolve)]
    assert resolved == [3, 0, 1, 2, 4]
    assert s.active_count == 0 and s.pending_count == 0


def test_a_chunk_held_behind_a_slow_one_is_copied_and_resolves_once() -> None:
    # Prefetched chunks wait on a behind a slow one (a's capacity then shrinks to its slot):
    # the idle executor b takes copies, one at a time, and the first result of each wins.
    s = Scheduler(task_timeout=1.0)
    s.got_executor("a", 3, 0.0)
    s.got_executor("b", 1, 0.0)
    assert s.got_chunks([0, 1, 2, 3], 0.0, group="job") == [
        Assign(0, "a", 1), Assign(1, "a", 1), Assign(2, "a", 1), Assign(3, "b", 1)]
    assert s.got_result(3, "b", "r3", 0.1) == [Resolve(3, "r3"), WakeAt(1.0)]
    assert s.timer_expired(1.0) == [Assign(0, "b", 1, speculative=True)]
    assert s.got_executor("a", 1, 1.0) == []  # a slow task: no more prefetch on a
    assert s.got_result(0, "b", "r0", 1.1) == [
        Resolve(0, "r0"), Cancel(0, "a"), Assign(1, "b", 1, speculative=True)]
    assert s.got_result(0, "a", "late", 1.2) == []
    assert s.got_result(1, "a", "r1", 1.3) == [
        Resolve(1, "r1"), Cancel(1, "b"), Assign(2, "b", 1, speculative=True)]
    assert s.got_result(2, "b", "r2", 1.4) == [Resolve(2, "r2"), Cancel(2, "a")]
    assert s.got_result(2, "a", "late", 1.5) == []
    assert s.active_count == 0 and s.free_slots == 2
