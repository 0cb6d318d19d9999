"""The board server, and the mailbox server + transit relay, killed and restarted mid-map.

Running wormhole sessions do not need the board nor the mailbox: the map goes on while they
are down (checked by counting executions while they are down), completes with one correct
result per item, and afterwards new sessions can be made again (a new worker joins and is
used), which needs the restarted servers.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import pytest

from p2ppool.local.cluster import LocalCluster
from tests.fixtures.faults import by_worker, check_exactly_once, executions, record

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]


def _wait_for(condition: Callable[[], bool], timeout: float, poll: Callable[[float], Any],
              what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        poll(0.05)


def _run_through_restart(tmp_path: Any, restart: Callable[[LocalCluster, Callable[[], None]],
                                                             None]) -> None:
    log = str(tmp_path / "executions")
    down = str(tmp_path / "down")
    items = list(range(300))
    with LocalCluster(workers=2, processes_per_worker=2) as cluster, \
            cluster.pool(4, fallback=None) as pool:
        # Items from 40 on wait (once started) until the server is down: the map cannot
        # run out of items before the server is killed, however slow this process is.
        result = pool.map_async(functools.partial(record, seconds=0.03, log=log, hold=down,
                                                  hold_from=40), items, chunksize=1)
        _wait_for(lambda: sum(executions(log).values()) >= 20, 30, result.wait,
                  "the map did not start")
        progress = {}

        def while_down() -> None:
            open(down, "w").close()
            before = sum(executions(log).values())
            _wait_for(lambda: sum(executions(log).values()) >= before + 30, 20, result.wait,
                      "no progress while the server was down")
            progress["while_down"] = sum(executions(log).values()) - before

        restart(cluster, while_down)
        records = result.get(timeout=60)
        check_exactly_once(items, records)
        assert progress["while_down"] >= 30
        # New sessions need the restarted servers: a new worker joins (its Hello reaches the
        # host, so the board works again), the old ones go, and a new map runs on it.
        for index in range(len(cluster.workers)):
            cluster.kill_worker(index)
        newcomer = cluster.add_worker()
        pid = next(w.pid for w in cluster.workers if w.name == newcomer)
        again = pool.map(functools.partial(record, seconds=0.0), items, chunksize=10)
        check_exactly_once(items, again)
        assert set(by_worker(again)) == {pid}


def test_the_board_server_killed_and_restarted_mid_map(tmp_path: Any) -> None:
    _run_through_restart(tmp_path, lambda cluster, down: cluster.restart_board(down))


def test_the_mailbox_server_and_transit_relay_killed_and_restarted_mid_map(
        tmp_path: Any) -> None:
    _run_through_restart(tmp_path,
                         lambda cluster, down: cluster.restart_wormhole_servers(down))


def test_restarted_board_keeps_its_host_key(tmp_path: Any) -> None:
    """Clients check the host key on reconnection: the restarted board must present the
    same one (it is read from the same file), or every client would refuse it."""
    with LocalCluster(workers=1) as cluster:
        with open(cluster.known_hosts, encoding="ascii") as f:
            known = f.read()
        cluster.restart_board()
        name = cluster.add_worker()  # connects with strict host key checking
        assert name in {w.name for w in cluster.workers}
        with open(cluster.known_hosts, encoding="ascii") as f:
            assert f.read() == known
        assert os.path.exists(os.path.join(cluster.directory, "board_host_key"))
