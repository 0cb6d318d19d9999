"""LocalCluster and ``p2ppool local``: everything starts on 127.0.0.1 and nothing outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, List

import psutil
import pytest

from p2ppool import payload
from p2ppool.board.auth import name_of
from p2ppool.cluster.backend import ExecutorJoined, RemoteTaskDone
from p2ppool.local.cluster import LocalCluster
from tests.fixtures.cluster import assert_gone, descendants, parse_exports, read_until, reap

pytestmark = pytest.mark.system


def _listening_ports(pids: List[int]) -> List[tuple[str, int]]:
    found = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def test_starts_on_loopback_and_stops_without_leftovers(cluster_backend: Any) -> None:
    before = set(descendants())
    with LocalCluster(workers=2, processes_per_worker=1) as cluster:
        assert [w.name for w in cluster.workers] == ["w1", "w2"]
        assert all(w.alive for w in cluster.workers)
        assert cluster.board.startswith("127.0.0.1:")
        assert cluster.relay.startswith("ws://127.0.0.1:") and cluster.relay.endswith("/v1")
        assert cluster.transit.startswith("tcp:127.0.0.1:")
        # Run one task on each worker so that their task processes exist too.
        pump = cluster_backend(cluster, demand=2)
        joined = pump.of_type(ExecutorJoined, count=2)
        for n, event in enumerate(joined):
            pump.backend.submit(event.executor_id, n, 1, payload.dumps(abs),
                                payload.dumps(payload.map_call([-n])))
        pump.of_type(RemoteTaskDone, count=2)
        started = set(descendants()) - before
        assert len(started) >= 5  # board, wormhole servers, 2 workers, their task processes
        listening = _listening_ports(sorted(started))
        assert listening and all(ip == "127.0.0.1" for ip, _ in listening), listening
        directory = cluster.directory
        pump.backend.close()
    assert_gone(started, timeout=10)
    assert set(descendants()) - before == set()
    assert not os.path.exists(directory)


def test_stops_everything_when_the_body_raises() -> None:
    before = set(descendants())
    with pytest.raises(RuntimeError, match="boom"):
        with LocalCluster(workers=1) as cluster:
            started = set(descendants()) - before
            assert len(started) >= 3
            raise RuntimeError("boom")
    assert_gone(started, timeout=10)
    assert not cluster.workers[0].alive


def test_a_killed_worker_leaves_no_orphans(cluster_backend: Any, task_gate: Any) -> None:
    before = set(descendants())
    with LocalCluster(workers=1, processes_per_worker=1) as cluster:
        pump = cluster_backend(cluster, demand=1)
        (joined,) = pump.of_type(ExecutorJoined)
        pump.backend.submit(joined.executor_id, 1, 1, payload.dumps(task_gate.blocker()),
                            payload.dumps(payload.map_call([1])))
        _, task_pid = task_gate.wait_started()
        started = set(descendants()) - before
        assert task_pid in started
        worker = cluster.kill_worker(0)
        worker.process.wait(10)
        assert not worker.alive
        pump.backend.terminate()
    # The task process lost its worker; stopping the cluster still ended it (process group).
    assert_gone(started | {task_pid}, timeout=10)


def test_a_killed_workers_temporary_files_go_with_the_cluster() -> None:
    """A SIGKILLed worker cannot remove multiprocessing's directory of its fork server
    (``pymp-*``, holding the socket); it is in the cluster's directory, which stopping
    removes, not in the temporary directory."""
    with LocalCluster(workers=1) as cluster:
        child_tmp = os.path.join(cluster.directory, "tmp")
        worker = cluster.kill_worker(0)
        worker.process.wait(10)
        left = [name for name in os.listdir(child_tmp) if name.startswith("pymp-")]
        assert left, os.listdir(child_tmp)  # the worker's fork server was running
        assert not set(left) & set(os.listdir(tempfile.gettempdir()))
    assert not os.path.exists(cluster.directory)


def test_a_cluster_whose_owner_is_killed_leaves_nothing() -> None:
    """The process holding a LocalCluster is SIGKILLed: its children exit (SIGTERM from the
    kernel, end of stdin), and the wormhole servers remove the cluster's directory."""
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "from p2ppool.local.cluster import LocalCluster\n"
         "c = LocalCluster(workers=1)\n"
         "print(c.directory, c._servers.pid, c._board_proc.pid, c.workers[0].pid, flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        assert owner.stdout is not None
        directory, *pids = owner.stdout.readline().decode().split()
        assert os.path.isdir(directory)
        owner.kill()
        owner.wait(5)
        assert_gone([int(pid) for pid in pids], timeout=15)
        assert not os.path.exists(directory)
    finally:
        reap(owner)


def test_add_worker_joins_a_running_cluster(cluster_backend: Any) -> None:
    with LocalCluster(workers=0, processes_per_worker=1) as cluster:
        assert cluster.workers == []
        name = cluster.add_worker(processes=3)
        assert name == "w1" and cluster.workers[0].alive
        hello = cluster.wait_for_hello("w1")
        assert (hello.role, hello.slots) == ("worker", 3)
        pump = cluster_backend(cluster, demand=3)
        (joined,) = pump.of_type(ExecutorJoined)
        assert (joined.name, joined.slots) == (hello.sender, 3)  # "w1~<its key>"


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    before = set(descendants())
    with pytest.raises(ValueError, match="processes_per_worker"):
        LocalCluster(workers=1, processes_per_worker=0)
    with pytest.raises(ValueError, match="member names"):
        LocalCluster(workers=1, members=("alice",))
    assert set(descendants()) - before == set()


@pytest.mark.timeout(60)
def test_p2ppool_local_prints_a_working_environment_and_stops_on_sigint(
    tmp_path: Any, cluster_backend: Any
) -> None:
    env_file = tmp_path / "cluster.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2ppool", "local", "--workers", "1",
         "--processes-per-worker", "2", "--write-env", str(env_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(tmp_path),
        env={**{k: v for k, v in os.environ.items()
                if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"},
             "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(
                 os.path.abspath(__file__))))},
    )
    try:
        out = read_until(proc, b"Ctrl-C", timeout=30).decode()
        printed = parse_exports(out)
        assert printed == parse_exports(env_file.read_text())
        assert printed["P2PPOOL_CLUSTER"] == "alice/local"
        assert printed["P2PPOOL_LOOPBACK_ONLY"] == "1"
        assert printed["P2PPOOL_BOARD"].startswith("127.0.0.1:")
        children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        # The printed environment is enough for a client to use the cluster.
        from p2ppool.config import resolve_options

        options = resolve_options(environ=printed, read_file=False)
        pump = cluster_backend(None, demand=2, options={
            name: getattr(options, name) for name in
            ("cluster", "board", "board_user", "identity", "known_hosts", "relay", "transit",
             "loopback_only")})
        (joined,) = pump.of_type(ExecutorJoined)
        assert (name_of(joined.name), joined.slots) == ("w1", 2)  # "w1~<its key>"
        pump.backend.close()
        # The file says which process must be alive for it to be valid ...
        assert f"(pid {proc.pid})" in env_file.read_text().splitlines()[0]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        reap(proc)
    assert_gone(children, timeout=10)
    # ... and is gone once that process has stopped cleanly: sourcing it later would point
    # Pool() at a board that no longer exists.
    assert not env_file.exists()


@pytest.mark.timeout(60)
def test_p2ppool_local_leaves_an_env_file_that_another_process_rewrote(tmp_path: Any) -> None:
    env_file = tmp_path / "cluster.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2ppool", "local", "--workers", "0", "--write-env",
         str(env_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(tmp_path),
        env={**{k: v for k, v in os.environ.items()
                if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"},
             "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(
                 os.path.abspath(__file__))))},
    )
    try:
        read_until(proc, b"Ctrl-C", timeout=30)
        assert env_file.exists()
        env_file.write_text("# p2ppool local (pid 1): someone else's cluster\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        reap(proc)
    assert env_file.read_text() == "# p2ppool local (pid 1): someone else's cluster\n"
