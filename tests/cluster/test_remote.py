"""ClusterBackend against real workers, a real board and real wormhole servers on 127.0.0.1."""

from __future__ import annotations

import re
import signal
import threading
import time
from typing import Any, List

import pytest

from p2ppool import defaults, payload
from p2ppool.board.auth import name_of
from p2ppool.board.protocol import (
    Accept,
    MessageRejected,
    Offer,
    new_offer_keypair,
    open_code,
)
from p2ppool.cluster.backend import (
    BoardTrouble,
    ExecutorJoined,
    ExecutorLost,
    RemoteTaskDone,
    RemoteTaskLost,
)
from tests.fixtures.cluster import (
    OldPythonWorker,
    assert_gone,
    executor_names,
    reap,
    wait_until_idle,
)

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def _shared_cluster_idle(request: pytest.FixtureRequest) -> None:
    """Tests on the module's shared cluster start with every worker idle (the previous
    test's sessions and offers are asynchronously released; see wait_until_idle)."""
    if "local_cluster" in request.fixturenames:
        wait_until_idle(request.getfixturevalue("local_cluster"))

def _run(pump: Any, executor: str, task_id: int, func: Any, items: List[Any],
         func_key: int = 1) -> None:
    pump.backend.submit(executor, task_id, func_key, payload.dumps(func),
                        payload.dumps(payload.map_call(items)))


def _done(pump: Any, task_id: int, timeout: float = 20.0) -> RemoteTaskDone:
    return pump.wait_for(lambda e: isinstance(e, RemoteTaskDone) and e.task_id == task_id,
                         timeout)[0]


class _Seen(List[Any]):
    """Board messages of some types, as the cluster's host sees them; waitable."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()

    def add(self, msg: Any) -> None:
        with self.cond:
            self.append(msg)
            self.cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(list(self)), timeout), list(self)


def _watch(cluster: Any, kind: Any) -> _Seen:
    seen = _Seen()
    cluster.watch(lambda msg: seen.add(msg) if isinstance(msg, kind) else None)
    return seen


def test_recruits_every_worker_and_runs_tasks(local_cluster: Any, cluster_backend: Any) -> None:
    pump = cluster_backend(local_cluster, demand=4)
    joined = pump.of_type(ExecutorJoined, count=2)
    assert executor_names(joined) == ["w1", "w2"]
    assert all(e.slots == 2 for e in joined)
    offset = 100

    def shift(x: int) -> int:  # a closure: pickled by value
        return x + offset

    for n, event in enumerate(joined):
        _run(pump, event.executor_id, 10 + n, shift, [n, n + 1])
        _run(pump, event.executor_id, 20 + n, shift, [n * 10])  # same function, sent once
    results = {tid: _done(pump, tid) for tid in (10, 11, 20, 21)}
    assert all(r.ok for r in results.values())
    assert payload.loads(results[10].blob) == [100, 101]
    assert payload.loads(results[11].blob) == [101, 102]
    assert payload.loads(results[20].blob) == [100]
    assert payload.loads(results[21].blob) == [110]
    assert {results[10].executor_id, results[11].executor_id} == {e.executor_id for e in joined}


def test_a_user_error_comes_back_as_itself(local_cluster: Any, cluster_backend: Any) -> None:
    pump = cluster_backend(local_cluster, demand=1)
    (joined,) = pump.of_type(ExecutorJoined)

    def fail(x: int) -> int:
        raise KeyError(f"no {x}")

    _run(pump, joined.executor_id, 1, fail, [7])
    done = _done(pump, 1)
    assert not done.ok
    error = payload.loads(done.blob)
    assert isinstance(error, KeyError) and "no 7" in str(error)
    assert "in fail" in str(error.__cause__)  # the remote traceback names the function


def test_a_session_keeps_few_functions_on_the_worker(
    local_cluster: Any, cluster_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2ppool.cluster import backend as remote
    from p2ppool.transfer import session_protocol

    monkeypatch.setattr(defaults, "REMOTE_FUNCTIONS_PER_SESSION", 2)
    sent: List[Any] = []

    def recording_encode_frame(frame: Any) -> bytes:
        sent.append(frame)
        return session_protocol.encode_frame(frame)

    monkeypatch.setattr(remote, "encode_frame", recording_encode_frame)
    pump = cluster_backend(local_cluster, demand=1)
    (joined,) = pump.of_type(ExecutorJoined)
    adders = {key: (lambda x, k=key: x + 10 * k) for key in (1, 2, 3)}
    for task_id, key in enumerate([1, 2, 3, 1, 3], start=1):  # 1 is dropped, then sent again
        _run(pump, joined.executor_id, task_id, adders[key], [task_id], func_key=key)
        done = _done(pump, task_id)
        assert done.ok and payload.loads(done.blob) == [task_id + 10 * key]
    forgotten = [f.func_keys for f in sent if isinstance(f, session_protocol.Forget)]
    assert forgotten == [(1,), (2,)]  # 3 pushed out 1; 1 (sent again) pushed out 2


def test_one_session_covers_a_small_demand(local_cluster: Any, cluster_backend: Any) -> None:
    accepts = _watch(local_cluster, Accept)
    pump = cluster_backend(local_cluster, demand=2)
    (joined,) = pump.of_type(ExecutorJoined)
    # Both workers offered 2 slots; one session covers the demand of 2.  Give the recruiter
    # a few of its periods to do something wrong.
    later = pump.drain_for(1.5)
    assert not [e for e in later if isinstance(e, ExecutorJoined)]
    job = pump.backend.job_id
    accepts.wait_for(lambda seen: any(a.job == job for a in seen))
    assert [a.worker for a in accepts if a.job == job] == [joined.name]
    assert pump.backend.executors == {joined.executor_id: 2}


def test_a_covered_job_lets_the_offers_it_does_not_need_go_at_once(
    local_cluster: Any, cluster_backend: Any
) -> None:
    # Both idle workers answer a Want of 2 with 2 slots; one session covers it.  The job
    # withdraws its Want then, so the other worker's slots are free for other jobs at once,
    # not held by an unanswered offer until it expires.
    offers = _watch(local_cluster, Offer)
    pump = cluster_backend(local_cluster, demand=2)
    (joined,) = pump.of_type(ExecutorJoined)
    (other,) = [w.name for w in local_cluster.workers if w.name != name_of(joined.name)]
    job = pump.backend.job_id
    offers.wait_for(lambda seen: any(o.job == job and name_of(o.worker) == other
                                     for o in seen))
    (offer,) = [o for o in offers if o.job == job and name_of(o.worker) == other]
    # Its slots are free again well before the offer would have expired (both stamps are
    # the other worker's clock).
    hello = local_cluster.wait_for_hello(other, lambda h: h.slots == 2, after=offer.ts,
                                         timeout=defaults.OFFER_TTL_S)
    assert hello.ts - offer.ts < defaults.OFFER_TTL_S / 2, (hello, offer)


def test_a_late_offer_bigger_than_the_demand_left_is_taken_in_part(
    local_cluster: Any, cluster_backend: Any
) -> None:
    # `processes` bounds the chunks in flight: a job never holds more slots than it asked
    # for.  A busy worker remembers a Want and answers it, whole, once it is free; by then
    # the job may want less.  Both workers have 2 slots.
    holder = cluster_backend(local_cluster, demand=2)
    (held,) = holder.of_type(ExecutorJoined)  # one worker, wholly
    since = time.time()
    wanting = cluster_backend(local_cluster, demand=3)
    (first,) = wanting.of_type(ExecutorJoined)  # the other worker's 2 slots; 1 more wanted
    assert first.slots == 2 and first.name != held.name
    holder.backend.close()  # the held worker answers the remembered Want(3) with 2 slots ...
    (_, second) = wanting.of_type(ExecutorJoined, count=2)
    assert second.name == held.name
    assert second.slots == 1  # ... of which the job takes the 1 it still wants
    assert sum(wanting.backend.executors.values()) == 3
    # and the worker's other slot is free for other jobs while the session lasts
    local_cluster.wait_for_hello(held.name, lambda h: h.slots == 1, after=since)


def test_terminate_frees_the_workers_slots(
    local_cluster: Any, cluster_backend: Any, task_gate: Any
) -> None:
    pump = cluster_backend(local_cluster, demand=2)
    (joined,) = pump.of_type(ExecutorJoined)
    block = task_gate.blocker()
    _run(pump, joined.executor_id, 1, block, [1])
    _run(pump, joined.executor_id, 2, block, [2])
    pids = [task_gate.wait_started()[1], task_gate.wait_started()[1]]
    stopped_at = time.time()
    started = time.monotonic()
    pump.backend.terminate()
    assert time.monotonic() - started < 6.0
    hello = local_cluster.wait_for_hello(
        joined.name, lambda h: h.slots == 2, timeout=10.0, after=stopped_at)
    assert hello.slots == 2
    # The running tasks were stopped, not left to finish.
    assert_gone(pids, timeout=10.0)
    assert not [e for e in pump.backend.collect() if isinstance(e, RemoteTaskDone)]


def test_close_says_goodbye_and_withdraws(local_cluster: Any, cluster_backend: Any) -> None:
    from p2ppool.board.protocol import Done, Withdraw

    ends = _watch(local_cluster, (Withdraw, Done))
    pump = cluster_backend(local_cluster, demand=2)
    (joined,) = pump.of_type(ExecutorJoined)
    closed_at = time.time()
    pump.backend.close()
    job = pump.backend.job_id
    hello = local_cluster.wait_for_hello(
        joined.name, lambda h: h.slots == 2, timeout=10.0, after=closed_at)
    assert hello.slots == 2
    ends.wait_for(lambda seen: {type(m).__name__ for m in seen if m.job == job}
                  == {"Withdraw", "Done"})


def test_refusing_workers_are_never_used_again(local_cluster: Any, cluster_backend: Any) -> None:
    accepts = _watch(local_cluster, Accept)
    # maxtasksperchild=0 is refused by every worker (it must be at least 1).
    pump = cluster_backend(local_cluster, demand=2, maxtasksperchild=0)
    refusals = pump.wait_for(
        lambda e: isinstance(e, BoardTrouble) and "refused this job" in e.message, count=2)
    assert {re.search(r"worker (w\d)", e.message).group(1) for e in refusals} == {"w1", "w2"}
    assert all("maxtasksperchild must be at least 1" in e.message for e in refusals)
    # The recruiter keeps asking (a Want every few seconds), but never accepts them again.
    pump.drain_for(1.5)
    job = pump.backend.job_id
    accepts.wait_for(lambda seen: len([a for a in seen if a.job == job]) >= 2)
    assert sorted(name_of(a.worker) for a in accepts if a.job == job) == ["w1", "w2"]
    assert not [e for e in pump.events if isinstance(e, ExecutorJoined)]


def test_a_worker_with_another_python_is_never_used(
    local_cluster: Any, cluster_backend: Any
) -> None:
    """A fake worker says Hello with Python 2.7 and offers more slots than anyone to every Want."""
    with OldPythonWorker(local_cluster) as fake:
        pump = cluster_backend(local_cluster, demand=8)
        joined = pump.of_type(ExecutorJoined, count=2)
        assert executor_names(joined) == ["w1", "w2"]
        # Demand is still 4 short, so Wants go on and the fake keeps offering 8 slots.
        for _ in range(2):
            assert pump.pump_until(lambda: fake.offers.acquire(timeout=0.01), timeout=10)
        pump.drain_for(0.5)
    assert fake.accepted == []
    assert executor_names(pump.events) == ["w1", "w2"]


def test_a_third_member_cannot_open_the_sealed_code(
    local_cluster: Any, cluster_backend: Any, recorded_codes: List[str]
) -> None:
    from p2ppool.board.client import BoardClient

    codes = recorded_codes
    host, _, port = local_cluster.board.rpartition(":")
    lines: List[bytes] = []
    carol_accepts: List[Accept] = []
    saw_accept = threading.Event()

    def on_message(msg: Any) -> None:
        lines.append(repr(msg).encode())  # every field of every line she read
        if isinstance(msg, Accept):
            carol_accepts.append(msg)
            saw_accept.set()

    carol = BoardClient(host, int(port), topic=local_cluster.cluster, username="carol",
                        identity=local_cluster.identity("carol"),
                        known_hosts=local_cluster.known_hosts, on_message=on_message)
    carol.connect()
    try:
        pump = cluster_backend(local_cluster, demand=2)
        (joined,) = pump.of_type(ExecutorJoined)
        job = pump.backend.job_id
        assert saw_accept.wait(10), "carol never saw the Accept"
    finally:
        carol.close()
    mine = [a for a in carol_accepts if a.job == job]
    assert len(mine) == 1 and mine[0].worker == joined.name
    assert len(codes) == 1
    code = codes[0]
    # Carol saw the Accept, but the code is in no line she read ...
    assert not [line for line in lines if code.encode() in line]
    # ... and no key of hers opens the sealed box.
    private, _ = new_offer_keypair()
    with pytest.raises(MessageRejected, match="does not open"):
        open_code(mine[0].code, private)
    # The session works: carol did not take the worker's place.
    _run(pump, joined.executor_id, 1, abs, [-3])
    assert payload.loads(_done(pump, 1).blob) == [3]


def test_an_unreachable_board_is_reported(cluster_backend: Any) -> None:
    import socket

    with socket.socket() as s:  # bound, never listening: nobody else can take the port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        options = {"cluster": "alice/none", "board": f"127.0.0.1:{port}",
                   "board_user": "alice", "relay": "ws://127.0.0.1:9/v1",
                   "transit": "tcp:127.0.0.1:9", "loopback_only": True}
        pump = cluster_backend(None, demand=1, options=options)
        (trouble,) = pump.of_type(BoardTrouble, timeout=10)
    assert "cannot reach the board" in trouble.message and str(port) in trouble.message


def test_submit_to_an_unknown_executor_is_lost_at_once(cluster_backend: Any) -> None:
    options = {"cluster": "alice/none", "board": "127.0.0.1:9", "relay": "ws://127.0.0.1:9/v1"}
    pump = cluster_backend(None, options=options)
    _run(pump, "nobody#1", 5, abs, [1])
    (lost,) = pump.of_type(RemoteTaskLost, timeout=5)
    assert (lost.executor_id, lost.task_id, lost.retry) == ("nobody#1", 5, True)


@pytest.mark.timeout(60)
def test_a_killed_worker_is_lost_within_seconds(cluster_backend: Any, task_gate: Any) -> None:
    from p2ppool.local.cluster import LocalCluster

    with LocalCluster(workers=1, processes_per_worker=2) as cluster:
        pump = cluster_backend(cluster, demand=2)
        (joined,) = pump.of_type(ExecutorJoined)
        block = task_gate.blocker()
        _run(pump, joined.executor_id, 1, block, [1])
        task_gate.wait_started()
        killed_at = time.monotonic()
        cluster.kill_worker(0, signal.SIGKILL)
        (lost,) = pump.of_type(ExecutorLost, timeout=15)
        took = time.monotonic() - killed_at
        assert lost.executor_id == joined.executor_id
        assert "w1" in lost.cause and ("lost" in lost.cause or "closed" in lost.cause)
        # The heartbeat deadline is 5 s; allow for a loaded machine.
        assert took < 12.0, f"took {took:.1f} s to notice"
        # Its task is gone with it: no result, and a new submit is lost at once.
        _run(pump, joined.executor_id, 2, abs, [1])
        late = pump.of_type(RemoteTaskLost, timeout=5)
        assert [(e.task_id, e.retry) for e in late] == [(2, True)]
        assert not [e for e in pump.events if isinstance(e, RemoteTaskDone)]


def test_cancelled_tasks_stop_and_report_nothing(
    local_cluster: Any, cluster_backend: Any, task_gate: Any
) -> None:
    pump = cluster_backend(local_cluster, demand=1)
    (joined,) = pump.of_type(ExecutorJoined)
    _run(pump, joined.executor_id, 1, task_gate.blocker(), [1])
    _, pid = task_gate.wait_started()
    pump.backend.cancel(joined.executor_id, [1])
    assert_gone([pid], timeout=10)  # the worker stopped the task's process
    task_gate.release()
    _run(pump, joined.executor_id, 2, abs, [-2], func_key=2)
    assert payload.loads(_done(pump, 2).blob) == [2]
    assert [e for e in pump.events
            if isinstance(e, (RemoteTaskDone, RemoteTaskLost)) and e.task_id == 1] == []


@pytest.mark.timeout(60)
def test_a_withdrawing_worker_finishes_in_flight_tasks_and_sends_new_ones_back(
    cluster_backend: Any, task_gate: Any
) -> None:
    from p2ppool.local.cluster import LocalCluster

    with LocalCluster(workers=1, processes_per_worker=2, worker_grace=20) as cluster:
        pump = cluster_backend(cluster, demand=2)
        (joined,) = pump.of_type(ExecutorJoined)
        _run(pump, joined.executor_id, 1, task_gate.blocker(), [1])
        task_gate.wait_started()
        cluster.kill_worker(0, signal.SIGTERM)  # the first signal: withdraw gracefully
        cluster.wait_for_bye("w1")
        _run(pump, joined.executor_id, 2, abs, [-2])
        (sent_back,) = pump.of_type(RemoteTaskLost)
        assert (sent_back.task_id, sent_back.retry) == (2, True)
        assert "w1" in sent_back.cause
        assert not sent_back.cause.startswith(f"worker {joined.name}: worker")
        task_gate.release()
        assert payload.loads(_done(pump, 1).blob) == [1]
        (lost,) = pump.of_type(ExecutorLost)
        assert lost.executor_id == joined.executor_id
        assert lost.cause == (f"worker {joined.name}: the worker ended the session "
                              "(it is stopping)")
        assert cluster.workers[0].process.wait(10) == 0


_CLIENT_SCRIPT = r"""
import json, sys, threading, time
from p2ppool import payload
from p2ppool.config import resolve_options
from p2ppool.cluster.backend import ClusterBackend, ExecutorJoined
from tests.fixtures.cluster import make_blocker

options, port = json.loads(sys.argv[1]), int(sys.argv[2])
wake = threading.Event()
backend = ClusterBackend(resolve_options(options, environ={}, read_file=False), "doomed", 2,
                         None, None, wake.set)
backend.start()
backend.set_demand(1)
while True:
    due = backend.next_deadline()  # the recruiter's timers run in collect()
    wake.wait(None if due is None else max(0.0, due - time.monotonic()))
    wake.clear()
    for event in backend.collect():
        if isinstance(event, ExecutorJoined):
            backend.submit(event.executor_id, 1, 1, payload.dumps(make_blocker(port)),
                           payload.dumps(payload.map_call([1])))
            print(event.name, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_killed_client_frees_the_workers_slots_within_10_s(
    local_cluster: Any, task_gate: Any
) -> None:
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT_SCRIPT, json.dumps(local_cluster.options),
         str(task_gate.port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        _, task_pid = task_gate.wait_started(timeout=30)
        assert client.stdout is not None
        worker = client.stdout.readline().decode().strip()
        assert name_of(worker) in ("w1", "w2")
        killed_at = time.time()
        client.kill()
        client.wait(10)
        hello = local_cluster.wait_for_hello(worker, lambda h: h.slots == 2, timeout=10.0,
                                             after=killed_at)
        assert time.time() - killed_at < 10.0
        assert hello.slots == 2
        assert_gone([task_pid], timeout=10)  # the orphaned task was stopped too
    finally:
        reap(client)
