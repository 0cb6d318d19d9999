"""Volunteering is safe by default: tasks run in a bubblewrap sandbox (issue 13).

Real workers started with ``--sandbox bwrap`` (LocalCluster), real bwrap, real tasks trying
what a hostile member's code would: read the volunteer's files, reach a loopback service,
leave a process behind, use the volunteer's SSH agent.  Ordinary pool features must still
work inside.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import psutil
import pytest

import p2ppool
from p2ppool import Pool
from p2ppool.local.cluster import LocalCluster

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(shutil.which("bwrap") is None,
                       reason="bubblewrap is not installed (.ci/run installs it)"),
]

#: Differs in every task process (the module is imported once per process).
PROCESS_TOKEN = uuid.uuid4().hex
STATE: Dict[str, Any] = {}


# --- task functions (this module is shipped to the workers as source) ------------------------


def try_read(path: str) -> str:
    try:
        with open(path) as f:
            return "read: " + f.read()
    except OSError as exc:
        return f"{type(exc).__name__}: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def try_connect(port: int, host: str = "127.0.0.1") -> str:
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def leave_processes(marker: str) -> List[int]:
    """Start a detached sleeper three ways (new session, double fork, setsid)."""
    started = [subprocess.Popen(["sleep", marker], start_new_session=True).pid,
               subprocess.Popen(["setsid", "sleep", marker]).pid]
    if os.fork() == 0:  # double fork: the grandchild is reparented
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)
    return started


def environment(_: Any = None) -> List[str]:
    return sorted(os.environ)


def where(_: Any = None) -> Dict[str, Any]:
    return {"cwd": os.getcwd(), "token": PROCESS_TOKEN, "home": os.path.expanduser("~"),
            "state": STATE.get("init"), "pid": os.getpid()}


def init(value: int) -> None:
    STATE["init"] = value


def exit_once(_: Any = None) -> str:
    """Dies hard the first time (in the writable job directory a marker survives)."""
    if not os.path.exists("died-once"):
        Path("died-once").write_text("x")
        os._exit(3)
    return "second attempt"


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 1024 * 1024))


def fork_many(count: int) -> str:
    """Start ``count`` sleeping children; say how many forks succeeded before one failed."""
    children = []
    try:
        for _ in range(count):
            children.append(subprocess.Popen(["sleep", "30"]))
    except OSError as exc:
        return f"{len(children)} then {type(exc).__name__}"
    finally:
        for child in children:
            child.kill()
            child.wait()
    return f"{len(children)}"


def write_file(path: str) -> str:
    Path(path).write_text("from the task")
    return "written"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secrets() -> Iterator[Dict[str, str]]:
    """A 0600 secret in the worker user's home and one in /tmp (the real ones)."""
    made = {}
    for where_, directory in (("home", os.path.expanduser("~")), ("tmp", tempfile.gettempdir())):
        fd, path = tempfile.mkstemp(prefix="p2ppool-test-secret-", dir=directory)
        os.write(fd, b"the volunteer's secret")
        os.close(fd)
        os.chmod(path, 0o600)
        made[where_] = path
    yield made
    for path in made.values():
        os.unlink(path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    ro = tmp_path_factory.mktemp("exposed-ro")
    (ro / "data.txt").write_text("a data set")
    rw = tmp_path_factory.mktemp("exposed-rw")
    return {"ro": ro, "rw": rw}


@pytest.fixture(scope="module")
def sandboxed(shared: Dict[str, Path]) -> Iterator[LocalCluster]:
    """One worker, bwrap, with a fake SSH agent and a token in its environment."""
    saved = {k: os.environ.get(k) for k in ("SSH_AUTH_SOCK", "GITHUB_TOKEN")}
    os.environ["SSH_AUTH_SOCK"] = "/tmp/ssh-fake/agent.1"
    os.environ["GITHUB_TOKEN"] = "ghp_not_for_tasks"
    try:
        cluster = LocalCluster(
            workers=1, processes_per_worker=2, sandbox="bwrap",
            worker_args=["--max-task-seconds", "3", "--max-memory-mb", "400",
                         "--sandbox-ro", str(shared["ro"]), "--sandbox-rw", str(shared["rw"])])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    with cluster:
        yield cluster


def pool(cluster: LocalCluster, processes: int = 2, **kwargs: Any) -> Pool:
    return Pool(processes, **{**cluster.options, "fallback": None, **kwargs})


# --- what a task cannot do ------------------------------------------------------------------


def test_the_worker_announces_its_sandbox(sandboxed: LocalCluster) -> None:
    hello = sandboxed.wait_for_hello("w1", timeout=10)
    assert hello.sandbox == "bwrap"


def test_a_task_cannot_read_the_volunteers_files(sandboxed: LocalCluster,
                                                 secrets: Dict[str, str]) -> None:
    with pool(sandboxed) as p:
        seen = p.map(try_read, [secrets["home"], secrets["tmp"], "/etc/shadow"])
    assert seen[0] == "FileNotFoundError: ENOENT"
    assert seen[1] == "FileNotFoundError: ENOENT"
    assert not seen[2].startswith("read")
    assert try_read(secrets["home"]).startswith("read")  # (the host can)


def test_a_task_cannot_reach_a_loopback_service_or_any_address(
        sandboxed: LocalCluster) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pool(sandboxed) as p:
            seen = p.starmap(try_connect, [(port, "127.0.0.1"), (53, "192.0.2.1")])
    assert seen[0] == "ConnectionRefusedError: ECONNREFUSED"  # its own, empty loopback
    assert seen[1].startswith("OSError: ENETUNREACH"), seen


def test_no_process_a_task_starts_outlives_it(sandboxed: LocalCluster) -> None:
    marker = f"3{uuid.uuid4().int % 10**6}.5"  # a unique sleep length to find them by

    def sleepers() -> List[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if proc.info["cmdline"] and marker in proc.info["cmdline"]:
                found.append(proc)
        return found

    with pool(sandboxed, processes=1) as p:
        p.apply(leave_processes, (marker,))
        assert sleepers() == []  # gone when the task's result arrived
        assert p.apply(where)["pid"] <= 3  # its own PID namespace


def test_a_task_sees_only_the_environment_allowlist(sandboxed: LocalCluster) -> None:
    with pool(sandboxed) as p:
        names = p.apply(environment)
    assert "SSH_AUTH_SOCK" not in names and "GITHUB_TOKEN" not in names
    assert not [n for n in names if n.startswith(("DBUS", "XDG_", "DISPLAY", "P2PPOOL_C"))]
    assert {"PATH", "HOME", "LANG", "P2PPOOL_WORKER"} <= set(names)
    assert len(names) < 16


def test_exposed_paths_do_what_they_say(sandboxed: LocalCluster,
                                        shared: Dict[str, Path]) -> None:
    with pool(sandboxed) as p:
        assert p.apply(try_read, (str(shared["ro"] / "data.txt"),)) == "read: a data set"
        with pytest.raises(OSError, match="Read-only file system"):
            p.apply(write_file, (str(shared["ro"] / "x"),))
        result = p.apply(write_file, (str(shared["rw"] / "out.txt"),))
    assert result == "written"
    assert (shared["rw"] / "out.txt").read_text() == "from the task"
    assert not (shared["ro"] / "x").exists()


# --- what still works inside -----------------------------------------------------------------


def test_maps_initializers_and_maxtasksperchild_work_sandboxed(
        sandboxed: LocalCluster) -> None:
    with pool(sandboxed, initializer=init, initargs=(41,), maxtasksperchild=2) as p:
        assert p.map(abs, range(-20, 0)) == list(range(20, 0, -1))
        seen = p.map(where, range(8), chunksize=1)
    assert {s["state"] for s in seen} == {41}
    assert all(s["home"] == "/home/p2ppool-task" for s in seen)
    assert all("session-" in s["cwd"] for s in seen)  # the job's own directory
    tokens = [s["token"] for s in seen]
    assert len(set(tokens)) >= 4  # at most 2 tasks per process: new processes came


def test_kills_retries_and_limits_work_sandboxed(sandboxed: LocalCluster) -> None:
    with pool(sandboxed) as p:
        assert p.apply(exit_once) == "second attempt"  # died, ran again in a new process
        with pytest.raises(p2ppool.TaskLimitExceeded, match="time limit"):
            p.apply(sleep_for, (30,))
        with pytest.raises(p2ppool.TaskLimitExceeded, match="memory"):
            p.apply(allocate, (2000,))
        assert p.apply(sleep_for, (0.01,)) == 0.01  # and the worker carries on


# --- switches -------------------------------------------------------------------------------


def test_allow_network_reaches_a_loopback_service_and_is_announced() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with LocalCluster(workers=1, sandbox="bwrap", worker_args=["--allow-network"]) as c:
            assert c.wait_for_hello("w1", timeout=10).sandbox == "bwrap+network"
            with pool(c, processes=1) as p:
                assert p.apply(try_connect, (port,)) == "connected"


def test_without_bwrap_auto_warns_and_bwrap_refuses(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"  # a PATH without bwrap (sleep and setsid are not needed here)
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with LocalCluster(workers=0, sandbox="auto") as cluster:
        cluster.add_worker()
        assert cluster.wait_for_hello("w1", timeout=10).sandbox == "none"
        log = Path(cluster.workers[0].log_path).read_text()
        assert "WARNING: tasks run WITHOUT a sandbox" in log
        assert "apt install bubblewrap" in log
        status = subprocess.run(
            [sys.executable, "-m", "p2ppool", "status", "--wait", "2", "--json"],
            env={**os.environ, **cluster.env, "P2PPOOL_CONFIG": os.devnull,
                 "P2PPOOL_BOARD_USER": "alice", "P2PPOOL_IDENTITY": cluster.identity("alice"),
                 "P2PPOOL_KNOWN_HOSTS": cluster.known_hosts},
            capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert [w["sandbox"] for w in json.loads(status.stdout)["workers"]] == ["none"]
        refused = cluster.add_worker(extra_args=["--sandbox", "bwrap"], wait=False)
        proc = cluster.workers[-1].process
        assert proc.wait(timeout=30) != 0
        text = Path(cluster.workers[-1].log_path).read_text()
        assert refused == "w2" and "--sandbox bwrap: bubblewrap (bwrap) is not installed" in text


def test_a_session_may_run_at_most_max_task_processes() -> None:
    from p2ppool.execution.limits import ProcessLimit

    probe = ProcessLimit(8, "probe")
    if not probe.available:
        pytest.skip(f"this machine gives the worker no pids cgroup: {probe.reason}")
    probe.close()
    with LocalCluster(workers=1, sandbox="bwrap",
                      worker_args=["--max-task-processes", "12"]) as cluster:
        with pool(cluster, processes=1) as p:
            outcome = p.apply(fork_many, (40,))
            assert p.apply(fork_many, (3,)) == "3"  # the limit is per running set, not spent
    count, _, error = outcome.partition(" then ")
    assert error == "BlockingIOError" and int(count) < 12, outcome
