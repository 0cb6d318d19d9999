"""Batches on a real cluster (issue 16): a repeated small map's chunks travel to each worker
session as one Task and come back as one Result, with exactly the outcomes they would have
had one by one (checked against multiprocessing in the same test).

The scheduler's side is tests/pool/test_scheduler_batches.py; the task process's side is
tests/execution/test_batch_tasks.py.  Here a real board, real wormhole servers and real
workers on 127.0.0.1; the pool's :class:`~p2ppool.cluster.link.RemoteExecutor` is wrapped
(in this process) to see which batches it sends.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from p2ppool import defaults
from p2ppool.cluster.link import RemoteExecutor
from p2ppool.local.cluster import LocalCluster
from tests.fixtures import pool_cluster_tasks as tasks
from tests.fixtures.cluster import wait_until_idle

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def _shared_cluster_idle(request: pytest.FixtureRequest) -> None:
    if "local_cluster" in request.fixturenames:
        wait_until_idle(request.getfixturevalue("local_cluster"))


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[int]]:
    """The size of every batch of more than one chunk the pools of this test send."""
    sent: List[int] = []
    original = RemoteExecutor.run_batch

    def recording(self: RemoteExecutor, chunk_ids: Any, *args: Any) -> None:
        if len(chunk_ids) > 1:
            sent.append(len(chunk_ids))
        original(self, chunk_ids, *args)

    monkeypatch.setattr(RemoteExecutor, "run_batch", recording)
    yield sent


@pytest.fixture
def any_time_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch however long the chunks took before (this machine's load must not decide
    whether a test's map is batched; the first map of a function still is not)."""
    monkeypatch.setattr(defaults, "BATCH_TASK_S", 1000.0)


def _mp_pool() -> Any:
    return multiprocessing.get_context("spawn").Pool(2)


@pytest.mark.parametrize("how, func, items", [
    ("map", tasks.cube, list(range(32))),
    ("starmap", tasks.power, [(i, 3) for i in range(32)]),
])
def test_a_repeated_small_map_goes_in_batches_with_multiprocessing_results(
    local_cluster: LocalCluster, batches: List[int], how: str, func: Any, items: List[Any],
    any_time_batches: None
) -> None:
    with _mp_pool() as mp:
        expected = getattr(mp, how)(func, items, 1)
    with local_cluster.pool(4, fallback=None) as pool:
        first = getattr(pool, how)(func, items, 1)
        assert batches == []  # the first map of a function: its chunks' time is unknown
        again = [getattr(pool, how)(func, items, 1) for _ in range(3)]
    assert first == expected and all(result == expected for result in again)
    # 32 chunks over 2 workers x 2 processes: one batch per free process (of 8 when all
    # four are free); some chunks may go alone, in the slots a worker holds ahead.
    assert batches and sum(batches) <= 3 * 32


def test_an_error_in_a_batch_is_the_error_of_that_map_as_in_multiprocessing(
    local_cluster: LocalCluster, batches: List[int], any_time_batches: None
) -> None:
    with _mp_pool() as mp:
        with pytest.raises(ValueError) as mp_error:
            mp.map(tasks.cube_unless_seven, range(32), 1)
    with local_cluster.pool(4, fallback=None) as pool:
        assert pool.map(tasks.cube_unless_seven, range(7), 1) == [i ** 3 for i in range(7)]
        with pytest.raises(ValueError) as ours:
            pool.map(tasks.cube_unless_seven, range(32), 1)
        assert batches  # the failing map went in batches
        # the pool goes on; the chunks after the failing one in its batch were not lost
        assert pool.map(tasks.cube_unless_seven, range(8, 40), 1) == [
            i ** 3 for i in range(8, 40)]
    assert type(ours.value) is type(mp_error.value)
    assert str(ours.value) == str(mp_error.value)


def test_imap_apply_and_maxtasksperchild_send_no_batch(
    local_cluster: LocalCluster, batches: List[int], any_time_batches: None
) -> None:
    with local_cluster.pool(4, fallback=None) as pool:
        pool.map(tasks.cube, range(32), 1)  # its chunks' time is known now
        assert list(pool.imap(tasks.cube, range(32), 1)) == [i ** 3 for i in range(32)]
        assert sorted(pool.imap_unordered(tasks.cube, range(32), 1)) == [
            i ** 3 for i in range(32)]
        assert [pool.apply(tasks.cube, (i,)) for i in range(4)] == [0, 1, 8, 27]
        assert batches == []
        assert pool.map(tasks.cube, range(32), 1) == [i ** 3 for i in range(32)]
        assert batches  # a map would
        del batches[:]
    # A batch counts as one task in a worker's task process: maxtasksperchild would count
    # chunks differently from multiprocessing, so such a pool never batches.
    with local_cluster.pool(4, fallback=None, maxtasksperchild=3) as pool:
        for _ in range(3):
            assert pool.map(tasks.cube, range(32), 1) == [i ** 3 for i in range(32)]
    assert batches == []


@pytest.fixture(scope="module")
def small_payload_cluster() -> Iterator[LocalCluster]:
    """One worker with one process that takes at most 50 kB of result per task."""
    with LocalCluster(workers=1, processes_per_worker=1,
                      worker_args=("--max-payload-mb", "0.05")) as cluster:
        yield cluster


def test_a_batch_over_the_workers_payload_limit_runs_again_chunk_by_chunk(
    small_payload_cluster: LocalCluster, batches: List[int], any_time_batches: None
) -> None:
    # 20 kB per chunk is within the limit; 8 of them in one batch would not be.
    with small_payload_cluster.pool(1, fallback=None) as pool:
        assert pool.map(tasks.kilobytes, [20] * 8, 1) == [b"k" * 20_000] * 8
        assert pool.map(tasks.kilobytes, [20] * 8, 1) == [b"k" * 20_000] * 8
    assert batches  # it was sent as a batch, which failed as a whole, and ran again


def test_a_task_process_dying_in_a_batch_loses_nothing_and_costs_no_attempt(
    small_payload_cluster: LocalCluster, batches: List[int], tmp_path: Path,
    any_time_batches: None
) -> None:
    marker = tmp_path / "died"
    # max_attempts=1: a loss charged to the batch's chunks would fail them all.
    with small_payload_cluster.pool(1, fallback=None, max_attempts=1) as pool:
        pool.map(tasks.exit_once, [(i, "") for i in range(6, 14)], 1)
        result = pool.map(tasks.exit_once, [(i, str(marker)) for i in range(8)], 1)
    assert marker.exists()  # item 5's first run killed its task process
    assert result == [i * 2 for i in range(8)]
    assert batches == [8]


def test_a_chunk_whose_arguments_do_not_pickle_fails_alone_as_in_multiprocessing(
    local_cluster: LocalCluster, batches: List[int], any_time_batches: None
) -> None:
    import threading

    items: List[Any] = list(range(32))
    items[20] = threading.Lock()
    with _mp_pool() as mp:
        with pytest.raises(Exception) as mp_error:
            mp.map(tasks.cube, items, 1)
    with local_cluster.pool(4, fallback=None) as pool:
        pool.map(tasks.cube, range(32), 1)
        with pytest.raises(Exception) as ours:
            pool.map(tasks.cube, items, 1)
        assert batches  # the map went in batches, the lock's chunk failing alone
        assert pool.map(tasks.cube, range(32), 1) == [i ** 3 for i in range(32)]
    assert type(ours.value) is type(mp_error.value)
    assert "lock" in str(ours.value) and "lock" in str(mp_error.value)
