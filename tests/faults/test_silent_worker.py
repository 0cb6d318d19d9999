"""No silent worker holds a map (issue 17, item 4).

Measured before: a worker that accepts tasks and keeps its session alive but never returns
a result held the map forever (not done after 40 s although an honest worker had joined).

Here worker ``w1`` of a real cluster is silent for the test's tasks: they never finish there
(the task sleeps until the pool cancels it), while its process keeps the session alive with
heartbeats, as a stalled or malicious worker would.  ``w2`` is honest.  The pool runs such a
chunk again on ``w2`` once it has run far longer than the job's other chunks (4x their
median, at least 2 s), or past ``task_timeout``; the first result wins, the other run is
cancelled, and each item has exactly one result.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Iterator

import cloudpickle
import pytest

from p2ppool.local.cluster import LocalCluster
from tests.fixtures.faults import check_exactly_once, executions, record

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Longer than any test here may take: a silent run only ends when it is cancelled.
FOREVER_S = 90.0
#: How long an honest task waits for the silent worker to hold one.
HOLD_S = 20.0


def silent_on(worker: str, item: int, log: str) -> Any:
    """``record`` the item, except on ``worker``: there it starts (logged) and never ends."""
    if os.environ.get("P2PPOOL_WORKER") == worker:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{item} {os.getpid()} silent\n".encode())
        os.close(fd)
        time.sleep(FOREVER_S)  # what a silent worker does (the pool's Cancel ends it)
    # The honest worker waits (bounded) until the silent one holds a task: else, when w1's
    # session opens late, w2 may finish all ten before w1 gets one and nothing is proven.
    deadline = time.monotonic() + HOLD_S
    while time.monotonic() < deadline and not _holds_a_task(log):
        time.sleep(0.01)
    return record(item, log=log)


def _holds_a_task(log: str) -> bool:
    try:
        with open(log, encoding="ascii") as f:
            return any(line.endswith("silent\n") for line in f)
    except FileNotFoundError:
        return False


def first_run_stalls(marker: str, item: int) -> Any:
    """The first run of this task anywhere stalls; any later run returns at once."""
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return record(item)
    time.sleep(FOREVER_S)
    return None


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, processes_per_worker=2) as made:
        yield made


def test_a_map_with_one_silent_worker_and_one_honest_completes(cluster: LocalCluster,
                                                                tmp_path: Any) -> None:
    log = str(tmp_path / "runs.log")
    items = list(range(10))
    started = time.monotonic()
    with cluster.pool(4, fallback=None) as pool:
        records = pool.map(functools.partial(silent_on, "w1", log=log), items, chunksize=1)
        elapsed = time.monotonic() - started
    check_exactly_once(items, records)
    with open(log, encoding="ascii") as f:
        silent = sorted(int(line.split()[0]) for line in f if line.endswith("silent\n"))
    ran = executions(log)
    assert silent, "no task went to the silent worker: the test proved nothing"
    # Every item the silent worker held was run again elsewhere, and delivered once.
    assert all(ran[item] == 2 for item in silent), (silent, ran)
    assert {r[0] for r in records} == set(items)
    print(f"\nmap of 10 with a silent worker: {elapsed:.1f} s; items held by it and run "
          f"again on the honest one: {silent}")
    assert elapsed < 30.0


def test_task_timeout_reruns_a_stalled_chunk_before_any_other_finished(
        cluster: LocalCluster, tmp_path: Any) -> None:
    marker = str(tmp_path / "stalled-once")
    started = time.monotonic()
    with cluster.pool(4, fallback=None, task_timeout=1.0) as pool:
        # one chunk, so no other chunk of the job finishes: only task_timeout can help
        result = pool.apply(first_run_stalls, (marker, 7))
        elapsed = time.monotonic() - started
    assert result[0] == 7 and os.path.exists(marker)
    print(f"\napply whose first run stalls, task_timeout=1: {elapsed:.1f} s")
    assert elapsed < 20.0
