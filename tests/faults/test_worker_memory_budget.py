"""A client that floods a worker with frames gets its session closed (issue 17, item 3).

Measured before: one client session with a 1-slot worker sent 50 function frames of 20 MB
and 2,000 task frames of 256 KB; the worker's main process grew from 43 MB to 1,088 MB
resident, refused nothing and logged nothing.

Here a real worker (default limits: 256 MiB of functions per session, its slots plus 2 tasks
in flight) on a real board and wormhole servers meets ``carol``, a member who speaks the
session protocol herself (``tests/fixtures/worker_driver.py``) and sends the same frames in two
sessions.  Each session is closed with a protocol error that names the limit, the worker's
peak resident memory stays within the function budget (plus what frames in transit take),
and a real Pool that comes next maps on the same worker.
"""

from __future__ import annotations

import os
import queue
import sys
from typing import Iterator

import cloudpickle
import pytest

from p2ppool import defaults, payload
from p2ppool.board.auth import BoardIdentity
from p2ppool.board.client import BoardClient
from p2ppool.errors import TransferError
from p2ppool.local.cluster import LocalCluster
from p2ppool.transfer.session_protocol import Close, Frame, Func, Lost, Task, encode_frame_parts
from p2ppool.worker.peer import format_bytes
from tests.fixtures.worker_driver import BoardListener, ClientSession, Driver

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MB = 1_000_000
#: What frames in flight may add beyond the budget: the worker reads a frame whole before it
#: can refuse it (here up to 20 MB), the wormhole's buffers, a few frames queued for its loop.
SLACK = 160 * MB


def square(x: int) -> int:
    return x * x


def hold(seconds: float, padding: bytes) -> int:
    import time

    time.sleep(seconds)  # the work itself: the test closes the session long before
    return len(padding)


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=1, processes_per_worker=1, members=("carol",)) as made:
        yield made


@pytest.fixture
def carol(cluster: LocalCluster) -> Iterator[Driver]:
    host, _, port = cluster.board.rpartition(":")
    listener = BoardListener(BoardClient(
        host, int(port), topic=cluster.cluster, username="carol",
        identity=cluster.identity("carol"), known_hosts=cluster.known_hosts,
        ssh_config=os.path.join(cluster.directory, "no_ssh_config"),
        sender=BoardIdentity("carol-flood")).connect())
    yield Driver(listener, cluster.relay, cluster.transit)
    listener.close()


def _flood(cs: ClientSession, frames: Iterator[Frame]) -> int:
    """Queue frames until the session refuses them; return how many were queued."""
    sent = 0
    for frame in frames:
        try:
            cs.session.send_parts(encode_frame_parts(frame))
        except TransferError:
            break
        sent += 1
    return sent


def _until_closed(cs: ClientSession, timeout: float = 60.0) -> list[Frame]:
    """Every frame the worker sends until its Bye (or the session's end)."""
    got: list[Frame] = []
    while True:
        try:
            frame = cs.frames.get(timeout=timeout)
        except queue.Empty:
            if not cs.lost.empty():
                return got
            raise AssertionError(f"the session was not closed within {timeout:g} s: "
                                 f"{got[-3:]}") from None
        got.append(frame)
        if isinstance(frame, Close):
            return got


def test_a_flooding_client_is_closed_and_the_worker_stays_within_its_budget(
        cluster: LocalCluster, carol: Driver) -> None:
    worker = cluster.workers[0]
    before = _peak_rss(worker.pid)

    # 1. Functions: 50 of 20 MB (1 GB) against a budget of 256 MiB per session.
    functions = carol.ready_session(slots=1, worker=worker.name)
    try:
        blob = b"f" * (20 * MB)
        queued = _flood(functions, (Func(key, blob) for key in range(1, 51)))
        frames = _until_closed(functions)
        assert isinstance(frames[-1], Close), frames
    finally:
        functions.close()

    # 2. Tasks: 2,000 of 256 KB on a 1-slot session (3 in flight are allowed).
    tasks = carol.ready_session(slots=1, worker=worker.name)
    try:
        padding = payload.dumps(payload.apply_call((60.0, b"t" * (256 * 1024)), {}))
        frames_sent = _flood(tasks, iter([Func(1, payload.dumps(hold))]
                                         + [Task(i, 1, padding) for i in range(1, 2001)]))
        replies = _until_closed(tasks)
    finally:
        tasks.close()
    lost = [f for f in replies if isinstance(f, Lost)]
    allowed = 1 + defaults.WORKER_TASKS_PREFETCH
    assert [f.task_id for f in lost] == [allowed + 1], replies
    assert "protocol error" in lost[0].cause and "in flight" in lost[0].cause

    peak = _peak_rss(worker.pid)
    with open(worker.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    budget = format_bytes(defaults.WORKER_FUNCTION_BYTES_PER_SESSION)
    assert f"more than {budget} of functions on this worker" in log, log[-2000:]
    assert f"came while {allowed} task(s) were in flight" in log, log[-2000:]

    # 3. Another pool is served by the same worker.
    with cluster.pool(1, fallback=None) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
    assert worker.alive
    growth = peak - before
    print(f"\nflood: {queued} function frames of 20 MB and {frames_sent} task frames of "
          f"256 KB queued; the worker's peak RSS went from {before / MB:.0f} MB to "
          f"{peak / MB:.0f} MB (+{growth / MB:.0f} MB; budget "
          f"{defaults.WORKER_FUNCTION_BYTES_PER_SESSION / MB:.0f} MB of functions)")
    assert growth <= defaults.WORKER_FUNCTION_BYTES_PER_SESSION + SLACK
