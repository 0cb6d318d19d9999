"""A long-lived ClusterBackend lets go of every session that has ended.

Regression (the soak's client memory growth): ``ClusterBackend._remotes`` kept every
session the pool ever had, released or lost, and through each the wormhole's whole
dilation state (about 100 kB).  Counted with weakrefs and ``gc``, not RSS.
"""

from __future__ import annotations

import signal
import weakref
from typing import Any, List

import pytest

from p2ppool.cluster.backend import ExecutorJoined, ExecutorLost
from p2ppool.transfer import reactor as rx
from tests.transfer.test_session_memory import _alive, _wait_closed

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


def _session_of(pump: Any, executor_id: str) -> weakref.ReferenceType[Any]:
    session = pump.backend._remotes[executor_id].session
    assert session is not None
    return weakref.ref(session)


def _wait_ended(ref: Any) -> None:
    session = ref()
    assert session is None or session.wait_ended(15), "the session did not end"


def _assert_forgotten_and_freed(pump: Any, executor_id: str, ref: Any) -> None:
    _wait_ended(ref)
    rx.call(lambda: None, timeout=5)  # on_lost runs in the reactor right after the end
    pump.events += pump.backend.collect()  # the test thread owns the backend: apply it
    assert executor_id not in pump.backend._remotes
    assert all(r.executor_id != executor_id for r in pump.backend._by_worker.values())
    _wait_closed([ref])
    assert _alive([ref]) == []


def _pump_both(first: Any, second: Any, kind: Any) -> List[Any]:
    """This thread owns both backends: collect from both until ``first`` has a ``kind``."""
    def done() -> bool:
        first.drain_for(0.02)
        return any(isinstance(e, kind) for e in first.events)

    assert second.pump_until(done, timeout=20), f"no {kind.__name__}: {first.events!r}"
    return [e for e in first.events if isinstance(e, kind)]


def test_a_session_released_for_another_job_is_forgotten(cluster_backend: Any) -> None:
    from p2ppool.local.cluster import LocalCluster

    with LocalCluster(workers=1, processes_per_worker=1) as cluster:
        first = cluster_backend(cluster, demand=1)
        (joined,) = first.of_type(ExecutorJoined)
        ref = _session_of(first, joined.executor_id)
        first.backend.set_demand(0)  # idle: another job's Want makes it let the worker go
        second = cluster_backend(cluster, demand=1)
        (lost,) = _pump_both(first, second, ExecutorLost)  # second's Want releases it
        assert lost.released and lost.executor_id == joined.executor_id
        second.of_type(ExecutorJoined)
        _assert_forgotten_and_freed(first, joined.executor_id, ref)


def test_a_session_with_a_killed_worker_is_forgotten(cluster_backend: Any) -> None:
    from p2ppool.local.cluster import LocalCluster

    with LocalCluster(workers=1, processes_per_worker=1) as cluster:
        pump = cluster_backend(cluster, demand=1)
        (joined,) = pump.of_type(ExecutorJoined)
        ref = _session_of(pump, joined.executor_id)
        cluster.kill_worker(0, signal.SIGKILL)
        (lost,) = pump.of_type(ExecutorLost, timeout=15)
        assert lost.executor_id == joined.executor_id and not lost.released
        _assert_forgotten_and_freed(pump, joined.executor_id, ref)
        cluster.add_worker()  # the backend recruits the newcomer: the tables still work
        pump.backend.set_demand(1)  # (as the pool does after a loss)
        joined_again = pump.wait_for(lambda e: isinstance(e, ExecutorJoined), count=2)[1]
        assert list(pump.backend._remotes) == [joined_again.executor_id]
