"""A hostile board member floods the cluster's topic while a map runs.

``carol`` is on the cluster's access list (a member, not a worker) and publishes 100,000
fuzzed lines (:mod:`tests.fixtures.fuzz`: mutated messages, forged Accepts/Offers/Withdraws/
Byes addressed to the running job and its workers, garbage, oversized and partial lines) in
large writes while a Pool maps over two workers.  The workers and the client keep going:
the map completes with one correct result per item, a new pool recruits during a flood,
and every process reports what it dropped, by reason.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
import time
from typing import Any, Dict, List

import pytest

from p2ppool.board.protocol import Want
from p2ppool.local.cluster import LocalCluster
from tests.fixtures.faults import check_exactly_once, record
from tests.fixtures.fuzz import lines

# 38-68 s on a loaded 2-core machine (every wait inside is bounded): 120 s was a thin margin
pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def _carol(cluster: LocalCluster) -> Any:
    from p2ppool.board.client import BoardClient

    host, _, port = cluster.board.rpartition(":")
    client = BoardClient(host, int(port), topic=cluster.cluster, username="carol",
                         identity=cluster.identity("carol"), known_hosts=cluster.known_hosts,
                         ssh_config=os.path.join(cluster.directory, "no_ssh_config"))
    client.connect()
    return client


def _flood(client: Any, count: int, seed: int, job: str, sent: List[int]) -> None:
    batch: List[bytes] = []
    size = 0
    for line in lines(count, seed=seed, now=time.time(), job=job, worker="w1",
                      topic=client.signed_topic):
        batch.append(line)
        size += len(line)
        if size >= 60_000:
            client.publish_line(b"".join(batch))
            sent[0] += len(batch)
            batch, size = [], 0
    if batch:
        client.publish_line(b"".join(batch) + b"\n")  # end a trailing partial line
        sent[0] += len(batch)


def _drops_once_over(backend: Any, count: int, timeout: float) -> Dict[str, int]:
    """The pool's board drops once they exceed ``count`` (or as they are at ``timeout``).

    Lines are counted as the board reader decodes them, and no event marks the last one:
    look again every 50 ms until the count is reached.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        drops: Dict[str, int] = backend.board_drops
        if sum(drops.values()) > count or time.monotonic() >= deadline:
            return drops
        pause.wait(0.05)


def test_100000_hostile_lines_on_the_board_during_a_map(tmp_path: Any) -> None:
    items = list(range(300))
    jobs: List[str] = []
    got_want = threading.Event()

    def on_message(msg: Any) -> None:
        if isinstance(msg, Want):
            jobs.append(msg.job)
            got_want.set()

    # The board's per-key message-rate limit (tests/faults/test_board_limits.py) is lifted:
    # here all the lines must reach everyone.
    cluster = LocalCluster(workers=2, processes_per_worker=2, members=("carol",),
                           keep_dir=True, board_args=["--messages-per-second", "1e9",
                                                      "--message-burst", "1000000000"])
    try:
        with cluster:
            cluster.watch(on_message)
            carol = _carol(cluster)
            with cluster.pool(4, fallback=None) as pool:
                result = pool.map_async(functools.partial(record, seconds=0.05), items,
                                        chunksize=1)
                assert got_want.wait(20), "the pool never asked for workers"
                sent = [0]
                started = time.monotonic()
                flood = threading.Thread(target=_flood, args=(carol, 50_000, 11, jobs[0], sent))
                flood.start()
                # A second pool recruits while the flood goes on.
                with cluster.pool(2, fallback=None) as second:
                    extra = second.map(functools.partial(record, seconds=0.0), range(50))
                records = result.get(timeout=60)
                flood.join(60)
                # More hostile lines during the pool's next map, aimed at its job.  (It may
                # still hold its workers, or recruit them again: either way the same job.)
                backend = pool._manager.link.backend
                assert backend.job_id == jobs[0]
                again = pool.map_async(functools.partial(record, seconds=0.01), items,
                                       chunksize=1)
                _flood(carol, 50_000, 12, backend.job_id, sent)
                records2 = again.get(timeout=60)
                elapsed = time.monotonic() - started
                # The map's results came over wormhole; the pool's board reader may still be
                # working through the end of the second flood.
                client_drops = _drops_once_over(backend, 50_000, timeout=30)
            check_exactly_once(items, records)
            check_exactly_once(list(range(50)), extra)
            check_exactly_once(items, records2)
            assert sent[0] == 100_000
            host_drops = dict(cluster._host_client.drops)
            carol.close()
            assert all(w.alive for w in cluster.workers)
        # The workers log what they dropped when they stop.
        worker_drops: Dict[str, str] = {}
        for worker in cluster.workers:
            with open(worker.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            found = re.findall(r"board lines dropped \(by reason\): (.*)", text)
            assert found, f"{worker.name} reported no dropped lines:\n{text[-2000:]}"
            worker_drops[worker.name] = found[-1]
            assert "Traceback" not in text, text[-3000:]
        print(f"\n100,000 hostile lines in {elapsed:.1f} s during two maps of 300 and a "
              f"new pool's map of 50;\n  client dropped {client_drops}\n  host dropped "
              f"{host_drops}\n  workers dropped {worker_drops}")
        assert sum(client_drops.values()) > 50_000, client_drops
    finally:
        shutil.rmtree(cluster.directory, ignore_errors=True)
