"""A client (a Pool in its own process) SIGKILLed in the middle of a map: every worker frees
its slots within 10 s, stops the orphaned tasks, and serves the next client.

(``tests/cluster/test_remote.py::test_a_killed_client_frees_the_workers_slots_within_10_s``
shows the same for one task at the backend level; this one kills a whole Pool mid-map.)
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from p2ppool.local.cluster import LocalCluster
from tests.fixtures.faults import by_worker, check_exactly_once, record

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CLIENT = """
import functools, json, sys
from p2ppool import Pool
from tests.fixtures.faults import record
options, log = json.loads(sys.argv[1]), sys.argv[2]
with Pool(4, fallback=None, **options) as pool:
    pool.map(functools.partial(record, seconds=0.5, log=log), range(400), chunksize=1)
"""


def test_a_pool_killed_mid_map_frees_every_workers_slots_within_10_s(
        tmp_path: Any, task_gate: Any) -> None:
    import psutil

    from tests.fixtures.cluster import assert_gone

    log = str(tmp_path / "executions")
    with LocalCluster(workers=2, processes_per_worker=2) as cluster:
        client = subprocess.Popen(
            [sys.executable, "-c", _CLIENT, json.dumps(cluster.options), log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
        )
        try:
            deadline = time.monotonic() + 30
            while len(_task_pids(log)) < 4:  # both workers busy with two tasks each
                assert time.monotonic() < deadline, "the client's map did not start"
                try:
                    client.wait(0.05)
                    raise AssertionError(f"the client exited with {client.returncode}")
                except subprocess.TimeoutExpired:
                    pass
            tasks = _task_pids(log)
            killed_at = time.time()
            client.kill()
            client.wait(10)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
        for worker in ("w1", "w2"):
            cluster.wait_for_hello(worker, lambda h: h.slots == 2, timeout=10.0,
                                   after=killed_at)
        freed_in = time.time() - killed_at
        assert freed_in < 10.0
        assert_gone(tasks, timeout=5)  # the orphaned tasks were stopped
        print(f"\nclient SIGKILLed: both workers free again after {freed_in:.1f} s")
        with cluster.pool(4, fallback=None) as pool:
            # Both workers serve the next client: 4 tasks running at once need all 4 slots
            # (a timed map could end on one worker before the other joined, on a slow box).
            held = pool.map_async(task_gate.blocker(), range(4), 1)
            running = {task_gate.wait_started(timeout=30)[1] for _ in range(4)}
            serving = {w.pid for w in cluster.workers
                       if running & {c.pid for c in psutil.Process(w.pid).children(recursive=True)}}
            task_gate.release()
            assert sorted(held.get(timeout=30)) == [0, 1, 2, 3]
            records = pool.map(functools.partial(record, seconds=0.05), range(40), chunksize=1)
        assert serving == {w.pid for w in cluster.workers}
        check_exactly_once(list(range(40)), records)
        assert set(by_worker(records)) <= {w.pid for w in cluster.workers}


def _task_pids(log: str) -> list:
    try:
        with open(log, encoding="ascii") as f:
            return sorted({int(line.split()[1]) for line in f if line.endswith("\n")})
    except FileNotFoundError:
        return []
