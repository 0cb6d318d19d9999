"""The scheduler's batches (issue 16): a small map's chunks share a slot per worker session.

Pure: events in with explicit ``now``, exact commands out.  The distributed path (batches
sent as one Task, split back into chunk results) is tested on a real cluster in
tests/cluster/test_batches.py.
"""

from __future__ import annotations

from typing import Any, List

import pytest

from p2ppool import defaults, payload
from p2ppool.pool.executors import BatchDone, BatchLedger, ChunkDone, ChunkLost, batch_lost
from p2ppool.pool.manager import _split_batch, batch_sizes
from p2ppool.pool.scheduler import Assign, Cancel, Fail, Resolve, Scheduler


def assigns(commands: List[Any]) -> List[Assign]:
    return [c for c in commands if isinstance(c, Assign)]


def two_workers(width: int = 1, slots: int = 3) -> Scheduler:
    s = Scheduler()
    s.got_executor("a", slots, now=0.0, width=width)
    s.got_executor("b", slots, now=0.0, width=width)
    return s


def test_a_small_map_goes_as_one_batch_per_worker() -> None:
    s = two_workers()
    commands = s.got_chunks(range(8), now=0.0, group="job", batch=32)
    assert commands == (
        [Assign(c, "a", 1, batch=0) for c in range(4)]
        + [Assign(c, "b", 1, batch=4) for c in range(4, 8)]
    )
    # One slot each is used: the other two still take work.
    assert s.free_slots == 4
    assert s.running_on("a") == {0, 1, 2, 3}


def test_without_a_batch_limit_every_chunk_takes_a_slot() -> None:
    s = two_workers()
    commands = s.got_chunks(range(8), now=0.0, group="job")
    assert [c.batch for c in commands] == [None] * 6  # 3 slots each, 2 chunks wait
    assert s.pending_count == 2


def test_the_batch_sizes_caps_a_batch() -> None:
    s = two_workers()
    commands = s.got_chunks(range(8), now=0.0, group="job", batch=2)
    # One batch per process; the slots a worker holds ahead take single chunks.
    assert [(c.chunk_id, c.executor, c.batch) for c in commands] == [
        (0, "a", 0), (1, "a", 0), (2, "b", 2), (3, "b", 2),
        (4, "a", None), (5, "b", None), (6, "a", None), (7, "b", None),
    ]
    assert s.free_slots == 0


def test_a_busy_executor_leaves_the_batches_to_the_others_one_per_process() -> None:
    s = Scheduler()
    s.got_executor("b", 2, now=0.0, width=2)
    s.got_chunks(["x1", "x2"], now=0.0, group="other")  # b is full
    s.got_executor("a", 4, now=0.0, width=2)
    commands = s.got_chunks(range(32), now=0.0, group="job", batch=9)
    # a's width (2) over 32 chunks: batches of 9 (the limit), one per process; its two
    # other slots take one chunk each; the rest wait for a slot.
    assert [(c.chunk_id, c.executor, c.batch) for c in commands] == (
        [(i, "a", 0) for i in range(9)] + [(i, "a", 9) for i in range(9, 18)]
        + [(18, "a", None), (19, "a", None)])
    assert s.pending_count == 12


def test_wide_executors_get_one_chunk_per_process() -> None:
    # 2 workers x 4 processes: 8 chunks run at once anyway, so no batch is made.
    s = two_workers(width=4, slots=6)
    commands = s.got_chunks(range(8), now=0.0, group="job", batch=32)
    assert [c.batch for c in commands] == [None] * 8
    # 16 chunks: two per process, as 8 batches of 2, four on each worker.
    s = two_workers(width=4, slots=6)
    commands = s.got_chunks(range(100, 116), now=0.0, group="job", batch=32)
    batches = {c.batch for c in commands}
    assert len(batches) == 8 and None not in batches
    assert sorted(c.executor for c in commands) == ["a"] * 8 + ["b"] * 8


def test_executors_that_take_no_batches_get_single_chunks() -> None:
    s = Scheduler()
    s.got_executor("local", 2, now=0.0)  # width 0
    commands = s.got_chunks(range(4), now=0.0, group="job", batch=32)
    assert commands == [Assign(0, "local", 1), Assign(1, "local", 1)]


def test_a_batch_frees_its_slot_when_its_last_chunk_ends() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0, width=1)
    s.got_chunks(range(3), now=0.0, group="job", batch=32)
    s.got_chunks([10], now=0.0, group="other")
    assert s.pending_count == 1 and s.free_slots == 0
    assert s.got_result(0, "a", "r0", now=1.0) == [Resolve(0, "r0")]
    assert s.got_result(1, "a", "r1", now=1.0) == [Resolve(1, "r1")]
    assert s.got_result(2, "a", "r2", now=1.0) == [Resolve(2, "r2"), Assign(10, "a", 1)]


def test_chunks_of_a_lost_batch_run_again_one_by_one() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0, width=1)
    s.got_chunks(range(3), now=0.0, group="job", batch=32)
    # The batch's task was lost as a whole: each chunk is lost without charge (the link
    # reports them last first, so that they line up in order at the front) ...
    assert s.task_lost(2, "a", "batch lost", now=1.0, charged=False) == []
    assert s.task_lost(1, "a", "batch lost", now=1.0, charged=False) == []
    commands = s.task_lost(0, "a", "batch lost", now=1.0, charged=False)
    # ... and comes back alone, with its attempt not spent.
    assert commands == [Assign(0, "a", 1)]
    assert s.got_result(0, "a", "r0", now=2.0) == [Resolve(0, "r0"), Assign(1, "a", 1)]


def test_a_lost_executor_puts_its_batch_back_in_order() -> None:
    s = two_workers()
    s.got_chunks(range(8), now=0.0, group="job", batch=32)
    commands = s.executor_lost("a", "gone", now=1.0)
    # b has two free slots: chunks 0..3 ran before, so they go one per slot, not batched,
    # and the loss cost them no attempt
    assert commands == [Assign(0, "b", 1), Assign(1, "b", 1)]
    assert s.pending_count == 2


def test_cancelling_part_of_a_batch_keeps_its_slot_until_the_rest_ends() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0, width=1)
    s.got_chunks(range(2), now=0.0, group="job", batch=32)
    s.got_chunks([10], now=0.0, group="other")
    assert s.cancel([0], now=1.0) == [Cancel(0, "a")]
    assert s.free_slots == 0
    assert s.got_result(1, "a", "r1", now=1.0) == [Resolve(1, "r1"), Assign(10, "a", 1)]


def test_a_batched_chunk_counts_its_share_of_the_batch_time() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0, width=1)
    s.got_chunks(range(4), now=0.0, group="job", batch=32)
    for chunk in range(4):
        s.got_result(chunk, "a", "r", now=0.8)
    assert s.typical_seconds("job") == 0.2
    s.forget_group("job")
    assert s.typical_seconds("job") is None


def test_a_batch_spreads_over_the_pending_chunks_of_its_group_only() -> None:
    s = two_workers()
    s.got_chunks([100], now=0.0, group="first")  # single chunk: on a, alone
    commands = s.got_chunks(range(6), now=0.0, group="map", batch=32)
    assert [(c.chunk_id, c.executor, c.batch) for c in commands] == [
        (0, "b", 0), (1, "b", 0), (2, "b", 0), (3, "a", 3), (4, "a", 3), (5, "a", 3),
    ]


def test_speculation_copies_one_chunk_of_a_batch_and_the_copy_can_win() -> None:
    s = Scheduler(speculate_after=1, speculate_min_s=0.0, speculate_factor=4.0)
    s.got_executor("a", 1, now=0.0, width=1)
    s.got_executor("b", 1, now=0.0, width=1)
    s.got_chunks(range(4), now=0.0, group="job", batch=32)  # (0, 1) on a, (2, 3) on b
    s.got_result(2, "b", "r2", now=1.0)
    # each of b's took a share of 0.5 s: one chunk is overdue after 4 x 0.5 s, a's batch
    # of two after twice that (a healthy batch is not copied chunk by chunk)
    assert assigns(s.got_result(3, "b", "r3", now=1.0)) == []
    assert s.next_deadline() == 4.0
    assert assigns(s.timer_expired(now=3.9)) == []
    commands = s.timer_expired(now=4.0)
    assert commands[0] == Assign(0, "b", 1, speculative=True)
    assert s.got_result(0, "b", "copy", now=4.5)[:2] == [Resolve(0, "copy"), Cancel(0, "a")]


def test_losing_an_executor_charges_its_batched_chunks_nothing() -> None:
    s = Scheduler(max_attempts=1)
    s.got_executor("a", 2, now=0.0, width=1)
    s.got_executor("b", 2, now=0.0, width=1)
    s.got_chunks(range(4), now=0.0, group="job", batch=32, least=4)  # all on a, batched
    s.got_chunks([10], now=0.0, group="other")  # single, on b
    s.got_chunks([11], now=0.0, group="other")  # single, on a
    assert s.running_on("a") == {0, 1, 2, 3, 11}
    commands = s.executor_lost("a", "gone", now=1.0)
    # with max_attempts=1 a charged loss fails: only the single chunk does
    assert [c.chunk_id for c in commands if isinstance(c, Fail)] == [11]
    assert [(c.chunk_id, c.batch) for c in assigns(commands)] == [(0, None)]
    assert s.pending_count == 3


def test_batch_sizes_are_what_fits_in_the_batch_times_by_the_last_maps_chunks() -> None:
    assert (defaults.BATCH_TASK_S, defaults.BATCH_LEAST_S) == (0.05, 0.002)
    assert defaults.BATCH_MOST_CHUNKS == 32
    assert batch_sizes(None) == (1, 1)  # the first map of a function
    assert batch_sizes(0.0) == (32, 32)
    assert batch_sizes(0.00001) == (32, 32)  # capped
    assert batch_sizes(0.0005) == (32, 4)
    assert batch_sizes(0.005) == (10, 1)
    assert batch_sizes(0.02) == (2, 1)
    assert batch_sizes(0.03) == (1, 1)
    assert batch_sizes(7.0) == (1, 1)


def test_a_map_with_little_work_goes_to_one_worker_as_one_batch() -> None:
    s = two_workers()
    commands = s.got_chunks(range(8), now=0.0, group="job", batch=32, least=32)
    assert commands == [Assign(c, "a", 1, batch=0) for c in range(8)]
    # least 3: batches of 3 at first, then the rest spread (8 chunks over width 2 is 4)
    s = two_workers()
    commands = s.got_chunks(range(8), now=0.0, group="job", batch=32, least=3)
    assert [(c.executor, c.batch) for c in commands] == [("a", 0)] * 4 + [("b", 4)] * 4
    s = two_workers()
    commands = s.got_chunks(range(8), now=0.0, group="job", batch=32, least=6)
    assert [(c.executor, c.batch) for c in commands] == [("a", 0)] * 6 + [("b", 6)] * 2


# --- the manager splits a batch's one result into its chunks' (pool/manager.py) ------------


def test_a_batch_result_splits_into_each_chunks_outcome() -> None:
    error = payload.dump_exception(ValueError("no"))
    blob = payload.dumps((0.25, [(True, [1, 2]), (False, error)]))
    (first, second), seconds = _split_batch(BatchDone([4, 5], True, blob))
    assert seconds == 0.25
    assert isinstance(first, ChunkDone) and (first.chunk_id, first.ok, first.blob) == (
        4, True, None)
    assert first.value == [1, 2]
    assert isinstance(second, ChunkDone) and (second.chunk_id, second.ok) == (5, False)
    assert second.blob == error  # decoded by the manager as any chunk's error


@pytest.mark.parametrize("ok, blob, cause", [
    (False, payload.dumps(ValueError("result too big")), "failed as a whole"),
    (True, b"not a pickle", "could not be unpickled"),
    (True, payload.dumps((0.1, [(True, 1)])), "malformed"),  # one outcome for two chunks
    (True, payload.dumps((0.1, [(True, 1), "x"])), "malformed"),
    (True, payload.dumps([(True, 1), (True, 2)]), "malformed"),  # no time
])
def test_a_batch_that_failed_or_is_unreadable_loses_its_chunks_uncharged(
    ok: bool, blob: bytes, cause: str
) -> None:
    lost, seconds = _split_batch(BatchDone([4, 5], ok, blob))
    assert seconds is None
    assert [type(e) for e in lost] == [ChunkLost, ChunkLost]
    assert [e.chunk_id for e in lost] == [5, 4]  # last first: 4 ends up in front
    assert all(not e.charged and cause in e.cause for e in lost if isinstance(e, ChunkLost))


def test_a_batchs_results_come_in_at_once_with_one_dispatch() -> None:
    s = Scheduler()
    s.got_executor("a", 1, now=0.0, width=1)
    s.got_chunks(range(3), now=0.0, group="job", batch=32)
    s.got_chunks([10], now=0.0, group="other")
    commands = s.got_results("a", [(0, "r0"), (1, "r1"), (2, "r2"), (99, "unknown")], now=1.0)
    assert commands == [Resolve(0, "r0"), Resolve(1, "r1"), Resolve(2, "r2"),
                        Assign(10, "a", 1)]
    assert s.got_results("b", [(10, "not b's")], now=1.0) == []


def test_a_map_is_batched_by_its_functions_time_per_item_times_its_chunks_items() -> None:
    from types import SimpleNamespace

    from p2ppool.pool.jobs import _Job
    from p2ppool.pool.manager import _Manager

    class _Pool:
        pass

    owner = _Pool()
    manager = _Manager(owner, [], max_attempts=1)
    manager._function_blobs.put(abs, payload.dumps(abs))
    manager._item_seconds[payload.dumps(abs)] = 0.0001  # 0.1 ms an item, last map
    job = _Job(abs, payload.MAP, SimpleNamespace(_job=1), 8)  # type: ignore[arg-type]
    job.chunk_items = 2
    assert manager._batch_sizes(job) == batch_sizes(0.0002) == (32, 10)
    job.chunk_items = 62_500  # a long input's default chunks: 6 s each, no batch
    assert manager._batch_sizes(job) == (1, 1)
    apply = _Job(abs, payload.APPLY, SimpleNamespace(_job=2), 1)  # type: ignore[arg-type]
    assert manager._batch_sizes(apply) == (1, 1)


def test_a_batch_is_cancelled_only_when_none_of_its_chunks_is_wanted() -> None:
    ledger = BatchLedger()
    ledger.add(100, [4, 5, 6])
    assert ledger.withdraw(9) == (False, None)  # not in a batch: the executor's own
    assert ledger.withdraw(5) == (True, None)
    assert ledger.withdraw(4) == (True, None)
    assert ledger.withdraw(6) == (True, 100)  # the last one: stop the task now
    assert ledger.finished(100) is None  # a late result of it is nobody's
    ledger.add(200, [7, 8])
    assert ledger.withdraw(7) == (True, None)
    assert ledger.finished(200) == [7, 8]  # came back: every chunk (the scheduler ignores 7)
    assert ledger.withdraw(8) == (False, None)  # forgotten with its batch
    assert [(e.chunk_id, e.charged) for e in batch_lost([7, 8], "gone")] == [
        (8, False), (7, False)]
