"""An idle sandboxed worker keeps its task processes started for the next session (issue 16:
open -> first result): the session's tasks run in those processes, none is started while
its wormhole opens, and a new spare is started once the worker is idle again.

Real workers (LocalCluster, ``--sandbox bwrap``), real bwrap; the task processes are found
as the worker's descendants whose command line runs the sandboxed task loop.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any, Iterator, Set, Tuple

import psutil
import pytest

from p2ppool import Pool
from p2ppool.local.cluster import LocalCluster
from tests.fixtures.cluster import is_running, wait_until

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(shutil.which("bwrap") is None,
                       reason="bubblewrap is not installed (.ci/run installs it)"),
]

#: What a sandboxed task process's command line (and its launcher's and bwrap's) contains.
TASK_LOOP = "p2ppool.execution.sandbox_child"

Process = Tuple[int, float]  # pid, creation time


def task_processes(cluster: LocalCluster) -> Set[Process]:
    """The interpreters of the worker's sandboxed task processes (not their launchers)."""
    found: Set[Process] = set()
    try:
        descendants = psutil.Process(cluster.workers[0].pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in descendants:
        try:
            cmdline = proc.cmdline()
            if cmdline and os.path.basename(cmdline[0]).startswith("python") \
                    and any(TASK_LOOP in part for part in cmdline):
                found.add((proc.pid, proc.create_time()))
        except psutil.Error:
            continue  # exited meanwhile
    return found


def launched(cluster: LocalCluster) -> Set[int]:
    """Every process of the worker on its way to a task process (launcher, bwrap, task)."""
    pids: Set[int] = set()
    for proc in psutil.Process(cluster.workers[0].pid).children(recursive=True):
        try:
            if any(TASK_LOOP in part for part in proc.cmdline()):
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def spare_of(cluster: LocalCluster, count: int) -> Set[Process]:
    """Wait for the idle worker's ``count`` spare task processes; return them."""
    found: Set[Process] = set()

    def ready() -> bool:
        nonlocal found
        found = task_processes(cluster)
        return len(found) == count

    wait_until(ready, f"{count} spare task process(es) on the idle worker")
    return found


def pid_and_square(x: int) -> Tuple[int, int]:
    return os.getppid(), x * x


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=1, processes_per_worker=2, sandbox="bwrap") as c:
        yield c


def pool(cluster: LocalCluster, processes: int, **kwargs: Any) -> Pool:
    return Pool(processes, **{**cluster.options, "fallback": None, **kwargs})


def test_a_session_runs_in_the_spare_and_a_new_one_follows(cluster: LocalCluster) -> None:
    spare = spare_of(cluster, 2)
    with pool(cluster, 2) as p:
        assert [square for _, square in p.map(pid_and_square, range(8), chunksize=1)] == \
            [x * x for x in range(8)]
        # The session's tasks ran in the spare: no task process was started for it.
        assert task_processes(cluster) == spare
    # Idle again: a new spare (the old processes saw the session's code and data).
    wait_until(lambda: len(task_processes(cluster)) == 2
               and not task_processes(cluster) & spare, "a new spare after the session")


def test_a_session_taking_fewer_slots_keeps_what_it_uses(cluster: LocalCluster) -> None:
    spare = spare_of(cluster, 2)
    with pool(cluster, 1) as p:
        assert p.map(abs, [-1, -2, -3]) == [1, 2, 3]
        used = task_processes(cluster)
        assert len(used) == 1 and used <= spare
    spare_of(cluster, 2)


def test_a_spare_process_that_died_is_replaced(cluster: LocalCluster) -> None:
    spare = spare_of(cluster, 2)
    victim = min(spare)
    os.kill(victim[0], signal.SIGKILL)
    with pool(cluster, 2) as p:
        assert p.map(abs, range(-10, 0), chunksize=1) == list(range(10, 0, -1))
        now = task_processes(cluster)
        assert victim not in now and len(now) == 2


def test_a_spare_process_that_dies_while_idle_is_reaped_at_once(cluster: LocalCluster) -> None:
    """The idle worker watches its spare: one of its processes killed is reaped at once
    (no zombie until a session comes), the other stays; the next session replaces the dead
    one and runs."""
    spare = spare_of(cluster, 2)
    victim = min(spare)
    os.kill(victim[0], signal.SIGKILL)
    worker = psutil.Process(cluster.workers[0].pid)

    def reaped() -> bool:
        try:
            zombies = [c for c in worker.children() if c.status() == psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return False
        return not zombies and task_processes(cluster) == spare - {victim}

    wait_until(reaped, "the dead spare process reaped, the other still there", timeout=10)
    with pool(cluster, 2) as p:
        assert p.map(abs, range(-6, 0), chunksize=1) == list(range(6, 0, -1))
        now = task_processes(cluster)
        assert victim not in now and len(now) == 2


def test_a_withdrawing_worker_stops_its_spare() -> None:
    with LocalCluster(workers=1, processes_per_worker=1, sandbox="bwrap") as c:
        spare = spare_of(c, 1)
        c.workers[0].process.send_signal(signal.SIGTERM)
        assert c.workers[0].process.wait(timeout=20) == 0
        assert "started for the next session" in Path(c.workers[0].log_path).read_text()
        assert not [pid for pid, created in spare if alive(pid, created)]
        jobs = list(Path(c.directory).rglob("p2ppool-jobs-*"))
        assert jobs == [], jobs  # its job directories went with it


def alive(pid: int, created: float) -> bool:
    """The process noted as ``(pid, created)`` still runs (not another one with its pid)."""
    try:
        return psutil.Process(pid).create_time() == created and is_running(pid)
    except psutil.NoSuchProcess:
        return False


def test_without_spare_sandboxes_none_is_kept() -> None:
    with LocalCluster(workers=1, processes_per_worker=1, sandbox="bwrap",
                      worker_args=["--no-spare-sandboxes"]) as c:
        with pool(c, 1) as p:
            assert p.map(abs, [-4]) == [4]
        # The spare would be launched before the worker logs its slots free.
        log_path = Path(c.workers[0].log_path)
        wait_until(lambda: "1 of 1 slot(s) free" in log_path.read_text(),
                   "the session's end in the worker's log")
        assert launched(c) == set()
        assert "started for the next session" not in log_path.read_text()


def launch_order(cluster: LocalCluster, process: Process) -> int:
    """The pid of the launcher the worker started for ``process`` (launchers are started
    one after another, so their pids give the engine's order of its children)."""
    worker = cluster.workers[0].pid
    proc = psutil.Process(process[0])
    while proc.ppid() != worker:
        proc = psutil.Process(proc.ppid())
    return proc.pid


def test_a_session_taking_fewer_slots_keeps_a_live_spare_process(
        cluster: LocalCluster) -> None:
    """The first of two spare processes died while idle: a one-slot session keeps the
    live one (no sandbox to start for it).  The worker usually sees the death between the
    Accept and the Open (and replaces the process at the end of the list); the engine's
    configure keeps live processes first for a death it has not seen yet."""
    spare = spare_of(cluster, 2)
    first = min(spare, key=lambda p: launch_order(cluster, p))
    os.kill(first[0], signal.SIGKILL)
    with pool(cluster, 1) as p:
        assert p.map(abs, [-5]) == [5]
        assert task_processes(cluster) == spare - {first}
