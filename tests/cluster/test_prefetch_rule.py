"""cluster.link.PrefetchRule: how many tasks a worker session may hold (issue 16)."""

from __future__ import annotations

from p2ppool import defaults
from p2ppool.cluster.link import PrefetchRule


def test_no_prefetch_until_tasks_are_known_to_be_quick() -> None:
    rule = PrefetchRule(1, extra=2, below_s=0.02)
    assert rule.capacity == 1
    assert rule.took(0.002) is True
    assert rule.capacity == 3


def test_one_slow_task_stops_the_prefetch_at_once_and_quick_ones_restart_it() -> None:
    rule = PrefetchRule(2, extra=2, below_s=0.02)
    rule.took(0.001)
    assert rule.capacity == 4
    assert rule.took(0.5) is True
    assert rule.capacity == 2
    while rule.capacity == 2:  # the average has to come down again
        rule.took(0.001)
    assert rule.capacity == 4
    assert rule.took(0.001) is False


def test_never_more_than_a_worker_accepts_beyond_its_slots() -> None:
    rule = PrefetchRule(1, extra=10)
    rule.took(0.0)
    assert rule.capacity == 1 + defaults.WORKER_TASKS_PREFETCH
