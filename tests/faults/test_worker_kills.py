"""Workers SIGKILLed or frozen (SIGSTOP) in the middle of a map: every result arrives once.

Real components on 127.0.0.1: a LocalCluster (board server, mailbox server, transit relay,
worker processes) and a ``p2ppool.Pool`` over it with no local fallback, so every result
comes from a worker.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from typing import Any, List

import pytest

from p2ppool.local.cluster import LocalCluster
from tests.fixtures.faults import by_worker, check_exactly_once, executions, record

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def _alive(cluster: LocalCluster) -> List[int]:
    return [i for i, w in enumerate(cluster.workers) if w.alive]



@pytest.mark.timeout(240)  # 66-74 s on a loaded 2-core machine: 120 s was a thin margin
def test_twenty_random_sigkills_during_a_map_of_500_lose_and_duplicate_nothing(
        tmp_path: Any) -> None:
    """>= 20 workers SIGKILLed at random moments while a 500-item map runs; each is replaced
    (``add_worker``); the map completes with one correct result per item."""
    rng = random.Random(int(os.environ.get("P2PPOOL_FAULTS_SEED", "7")))
    log = str(tmp_path / "executions")
    items = list(range(500))
    kills: List[int] = []
    with LocalCluster(workers=3, processes_per_worker=2) as cluster, \
            cluster.pool(6, fallback=None, max_attempts=50) as pool:
        started = time.monotonic()
        result = pool.map_async(functools.partial(record, seconds=0.1, log=log), items,
                                chunksize=1)
        # Kill from this thread (the cluster's children die with the thread that started
        # them): at a random moment, a random live worker among those serving this map,
        # then start a replacement, so that three workers are always up or starting.
        while len(kills) < 25 and not result.ready():
            result.wait(rng.uniform(0.05, 0.6))
            serving = set(_workers_in(log))
            candidates = [i for i in _alive(cluster) if cluster.workers[i].pid in serving]
            if not candidates or result.ready():
                continue
            victim = cluster.kill_worker(rng.choice(candidates), signal.SIGKILL)
            kills.append(victim.pid)
            cluster.add_worker(wait=len(_alive(cluster)) < 2)
        records = result.get(timeout=90)
        elapsed = time.monotonic() - started
    check_exactly_once(items, records)
    assert len(kills) >= 20, f"only {len(kills)} kills before the map ended in {elapsed:.1f} s"
    served = set(_workers_in(log))
    busy_kills = [pid for pid in kills if pid in served]
    runs = executions(log)
    reruns = sum(runs.values()) - len(items)
    print(f"\n{len(kills)} SIGKILLs ({len(busy_kills)} of workers that had run tasks), map of "
          f"500 in {elapsed:.1f} s, {reruns} tasks started again after a kill, "
          f"results from {len(by_worker(records))} worker processes")
    assert len(busy_kills) == len(kills)
    assert reruns > 0, "no kill cost a task: nothing was tested"


def test_a_frozen_worker_is_lost_its_chunks_rerun_and_its_late_results_ignored(
        tmp_path: Any) -> None:
    """SIGSTOP a worker holding chunks until its session's heartbeat deadline passes; its
    chunks run elsewhere; after SIGCONT its own late results are not delivered twice."""
    log = str(tmp_path / "executions")
    items = list(range(40))
    with LocalCluster(workers=2, processes_per_worker=2) as cluster, \
            cluster.pool(fallback=None) as pool:
        first = pool.map(functools.partial(record, seconds=0.0), range(8), chunksize=1)
        assert set(by_worker(first)) <= {w.pid for w in cluster.workers}
        # Every task waits, once logged, until the worker is frozen: the frozen worker
        # provably holds a started task then (however slow the machine), which must run
        # again elsewhere.
        go = str(tmp_path / "go")
        result = pool.map_async(functools.partial(record, seconds=0.3, log=log, hold=go),
                                items, chunksize=1)
        deadline = time.monotonic() + 20
        while not _workers_in(log) and time.monotonic() < deadline:
            result.wait(0.05)
        assert _workers_in(log), "no task started within 20 s"
        frozen = next(w for w in cluster.workers if w.pid == _workers_in(log)[0])
        os.kill(frozen.pid, signal.SIGSTOP)
        for child in _task_children(frozen.pid):
            os.kill(child, signal.SIGSTOP)
        open(go, "w").close()  # the other workers' tasks go on; the frozen ones cannot
        try:
            records = result.get(timeout=60)  # needs the heartbeat deadline (5 s) to pass
        finally:
            for child in _task_children(frozen.pid):
                os.kill(child, signal.SIGCONT)
            os.kill(frozen.pid, signal.SIGCONT)
        check_exactly_once(items, records)
        # After SIGCONT the frozen worker's tasks finish and it may send their results: the
        # pool must ignore them.  A second map proves the pool is healthy and nothing from
        # the old map leaks into it.
        again = pool.map(functools.partial(record, seconds=0.0), items, chunksize=1)
        check_exactly_once(items, again)
    runs = executions(log)
    rerun = [item for item, n in runs.items() if n > 1]
    print(f"\nfrozen worker: {len(rerun)} items ran twice, each delivered once")
    assert rerun, "no chunk of the frozen worker was rerun elsewhere (nothing was tested)"


def _task_children(worker_pid: int) -> List[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(worker_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _workers_in(log: str) -> List[int]:
    """Worker pids in the execution log, in order of first appearance."""
    seen: List[int] = []
    try:
        with open(log, encoding="ascii") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # being written
                pid = int(line.split()[2])
                if pid not in seen:
                    seen.append(pid)
    except FileNotFoundError:
        pass
    return seen
