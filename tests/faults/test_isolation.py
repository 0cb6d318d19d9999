"""A client of another cluster on the same board is ignored by this cluster's workers.

A cluster is a board topic; workers read only their cluster's topic, so a Want published on
another topic never reaches them.  (The board's access lists decide who may open which topic:
``tests/board/test_board_server.py`` and :mod:`tests.faults.test_board_limits`.)
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

from p2ppool.local.cluster import LocalCluster

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


def test_a_client_of_another_cluster_gets_no_worker_of_this_one() -> None:
    with LocalCluster(workers=1, processes_per_worker=2) as cluster:
        before = _offers(cluster)
        with cluster.pool(2, cluster="alice/elsewhere", fallback=None) as stranger:
            result = stranger.map_async(abs, range(10))
            with pytest.raises(multiprocessing.TimeoutError):
                result.get(timeout=6)  # > one Want repeat (5 s)
            stranger.terminate()
        assert _offers(cluster) == before, "a worker offered slots to another cluster's job"
        # The same worker serves its own cluster at once.
        started = time.monotonic()
        with cluster.pool(2, fallback=None) as own:
            assert own.map(abs, range(-5, 5)) == [abs(i) for i in range(-5, 5)]
        assert time.monotonic() - started < 20


def _offers(cluster: Any) -> int:
    with open(cluster.workers[0].log_path, encoding="utf-8", errors="replace") as f:
        return f.read().count(" offered ")
