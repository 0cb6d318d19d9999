"""The newcomer's path, with real processes: ``p2ppool demo``, and ``p2ppool local`` used from
another shell that only sources the file it wrote.

Every child runs with no ``P2PPOOL_*`` variable of the test's environment and an empty
configuration directory, so what makes a Pool use the cluster is the sourced file alone.
A task proves where it ran by ``P2PPOOL_WORKER`` (set only in a worker's task processes) and
by its pid, found in ``p2ppool local``'s process tree and not in the client's.

"Nothing left behind" is checked over the whole machine, not only over the test's process
tree (an orphan leaves the tree): every child gets a marker variable with a value unique to
the test, which all of its descendants inherit, and no process with it may remain.
"""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import psutil
import pytest

from tests.fixtures.cluster import assert_gone, is_running, parse_exports

pytestmark = pytest.mark.system

REPO = str(Path(__file__).resolve().parents[2])
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "p2ppool")


MARK = "NEWCOMER_TEST_MARK"  # not P2PPOOL_*: LocalCluster drops those from its children


def _clean_env(tmp_path: Path, marked: bool = True, **extra: str) -> Dict[str, str]:
    """The test's environment without P2PPOOL_*, with no user configuration, and (unless
    ``marked`` is false: clients) the marker of what must be gone at the end."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"}
    config_home = tmp_path / "config-home"  # no user configuration file
    config_home.mkdir(exist_ok=True)
    env["XDG_CONFIG_HOME"] = str(config_home)
    env["PYTHONPATH"] = REPO
    if marked:
        env[MARK] = _mark(tmp_path)
    env.update(extra)
    return env


def _mark(tmp_path: Path) -> str:
    marker = tmp_path / "mark"
    if not marker.exists():
        marker.write_text(uuid.uuid4().hex)
    return marker.read_text()


def _marked(tmp_path: Path) -> List[int]:
    """Pids of every live process on the machine that carries this test's marker."""
    mark, found = _mark(tmp_path), []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _assert_none_marked(tmp_path: Path, timeout: float = 10.0) -> None:
    assert_gone(_marked(tmp_path), timeout=timeout)
    assert _marked(tmp_path) == []


def _tree(pid: int) -> List[int]:
    """``pid`` and every live descendant of it."""
    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class _LocalCommand:
    """``p2ppool local`` in a subprocess, with its stdout read up to a marker (no sleeping)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmp_path = tmp_path
        self.env_file = tmp_path / "cluster.env"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2ppool", "local", "--write-env", str(self.env_file),
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path),
            env=_clean_env(tmp_path),
        )
        self.out = b""

    def read_until(self, marker: bytes, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while marker not in self.out:
                left = deadline - time.monotonic()
                assert left > 0, f"no {marker!r} within {timeout:g} s: {self.out!r}"
                if sel.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    assert chunk, f"p2ppool local exited early: {self.out!r}{self.stderr()}"
                    self.out += chunk
        return self.out.decode()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return "; stderr: " + self.proc.stderr.read().decode(errors="replace")[-3000:]

    def terminate_and_check(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig``; it must exit 0 within 20 s, and every process it started (and
        theirs) must be gone within 10 s more."""
        tree = _tree(self.proc.pid)
        assert len(tree) >= 5, tree  # itself, the board, the wormhole servers, the workers
        marked = set(_marked(self.tmp_path))
        # (a worker's task process may end during the scan: only the ones still alive count)
        assert {pid for pid in tree if is_running(pid)} <= marked
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=20)
        self.out += out
        assert self.proc.returncode == 0, self.out
        assert_gone(tree, timeout=10)
        _assert_none_marked(self.tmp_path)

    def close(self) -> None:
        if self.proc.poll() is None:
            for pid in reversed(_tree(self.proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.communicate(timeout=10)


@pytest.fixture
def local_command(tmp_path: Path) -> Iterator[Any]:
    made: List[_LocalCommand] = []

    def start(*args: str) -> _LocalCommand:
        command = _LocalCommand(tmp_path, *args)
        made.append(command)
        return command

    yield start
    for command in made:
        command.close()
    _assert_none_marked(tmp_path)


def _sourcing(env_file: Path, code: str) -> List[str]:
    """A fresh shell that sources ``env_file`` and runs ``code`` in Python."""
    return ["bash", "-c",
            f". {shlex.quote(str(env_file))} && exec {shlex.quote(sys.executable)} -c "
            f"{shlex.quote(code)}"]


# Each task lasts 0.15 s (the sleep stands for work), so both workers get some.  The client
# runs with P2PPOOL_FALLBACK=none: with the default fallback (3 s), a busy machine that
# delayed the workers let the Pool's own processes run all 16 tasks, and the test failed.
_WHERE_CLIENT = """
import json, os, time
from p2ppool import Pool

def where(i):
    time.sleep(0.15)
    return os.environ.get("P2PPOOL_WORKER"), os.getpid()

with Pool() as pool:
    results = pool.map(where, range(16), chunksize=1)
print(json.dumps({"client": os.getpid(), "results": results}))
"""


@pytest.mark.timeout(60)
def test_a_shell_that_sources_the_env_file_runs_pool_on_the_workers(
    tmp_path: Path, local_command: Any
) -> None:
    local = local_command("--workers", "2")
    out = local.read_until(b"Ctrl-C", timeout=30)
    written = local.env_file.read_text()
    assert parse_exports(out) == parse_exports(written)
    assert {"P2PPOOL_CLUSTER", "P2PPOOL_BOARD", "P2PPOOL_RELAY", "P2PPOOL_TRANSIT",
            "P2PPOOL_IDENTITY", "P2PPOOL_KNOWN_HOSTS", "P2PPOOL_BOARD_USER",
            "P2PPOOL_LOOPBACK_ONLY"} <= set(parse_exports(written))
    assert f". {local.env_file}" in out  # it tells the user how to use the file

    client = subprocess.run(_sourcing(local.env_file, _WHERE_CLIENT), capture_output=True,
                            text=True, timeout=45, cwd=str(tmp_path),
                            env=_clean_env(tmp_path, marked=False, P2PPOOL_FALLBACK="none"))
    assert client.returncode == 0, client.stderr
    report = json.loads(client.stdout)
    workers = {name for name, _ in report["results"]}
    assert len(report["results"]) == 16
    assert workers and workers <= {"w1", "w2"}, f"a task ran off the workers: {report}"
    assert all(pid != report["client"] for _, pid in report["results"])

    local.terminate_and_check(signal.SIGTERM)
    assert b"# stopping" in local.out


_BLOCKING_CLIENT = """
import os, socket
from p2ppool import Pool

PORT = int(os.environ["GATE_PORT"])

def block(x):
    conn = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    conn.sendall(f"{os.environ.get('P2PPOOL_WORKER')} {os.getpid()}\\n".encode())
    conn.settimeout(60)
    try:
        conn.recv(1)
    except OSError:
        pass
    return x

with Pool() as pool:
    print(pool.apply(block, (1,)))
"""


@pytest.mark.timeout(60)
def test_sigterm_to_a_busy_p2ppool_local_leaves_no_process_behind(
    tmp_path: Path, local_command: Any, task_gate: Any
) -> None:
    local = local_command("--workers", "1")
    local.read_until(b"Ctrl-C", timeout=30)
    client = subprocess.Popen(
        _sourcing(local.env_file, _BLOCKING_CLIENT), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, cwd=str(tmp_path),
        # fallback none: the task must run on the worker even if a busy machine delays it.
        env=_clean_env(tmp_path, marked=False, GATE_PORT=str(task_gate.port),
                       P2PPOOL_FALLBACK="none"),
    )
    try:
        worker, task_pid = task_gate.wait_started(timeout=30)
        assert worker == "w1"
        # The task runs in the cluster's process tree, not in the client's.
        assert task_pid in _tree(local.proc.pid)
        assert task_pid not in _tree(client.pid)
        local.terminate_and_check(signal.SIGTERM)
        assert not psutil.pid_exists(task_pid) or (
            psutil.Process(task_pid).status() == psutil.STATUS_ZOMBIE)
    finally:
        for pid in reversed(_tree(client.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        client.wait(10)


def test_sigint_while_starting_stops_what_was_started(
    tmp_path: Path, local_command: Any
) -> None:
    local = local_command("--workers", "2")
    local.read_until(b"# starting", timeout=20)
    # Interrupt it once the board and the wormhole servers run (then it starts the workers
    # and waits for their Hellos).  Nothing announces that, so poll for the processes.
    deadline = time.monotonic() + 20
    while len(psutil.Process(local.proc.pid).children()) < 2:
        assert time.monotonic() < deadline, f"no children within 20 s: {local.out!r}"
        assert b"Ctrl-C" not in local.out
        time.sleep(0.005)
    local.proc.send_signal(signal.SIGINT)
    out, _ = local.proc.communicate(timeout=20)
    local.out += out
    assert local.proc.returncode == 0, local.out
    assert b"stopped while starting" in local.out or b"# stopping" in local.out
    _assert_none_marked(tmp_path)


def test_p2ppool_local_refuses_an_env_file_in_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "cluster.env"
    local = subprocess.run(
        [sys.executable, "-m", "p2ppool", "local", "--write-env", str(missing)],
        capture_output=True, text=True, timeout=30, env=_clean_env(tmp_path), cwd=str(tmp_path))
    assert local.returncode == 2
    assert f"cannot write {missing}: its directory does not exist" in local.stderr
    assert "# starting" not in local.stdout  # refused before anything started
    _assert_none_marked(tmp_path, timeout=0.5)


def _check_demo_output(out: str, tasks: int) -> None:
    estimate = re.search(r"pi is about (\d\.\d+)", out)
    assert estimate, out
    assert abs(float(estimate.group(1)) - math.pi) < 0.05
    counts_line = re.search(r"tasks run by each worker: (.+)", out)
    assert counts_line, out
    counts = {name: int(n) for name, n in
              (item.rsplit(" ", 1) for item in counts_line.group(1).split(", "))}
    assert sum(counts.values()) == tasks
    assert set(counts) <= {"w1", "w2"}, counts  # fallback=None: nothing ran locally
    assert re.search(r"wall time: \d+\.\d s on 2 workers x 1 process \(first result after "
                     r"\d+\.\d s, connecting included\)\none process: about \d+\.\d s \(the "
                     r"CPU time the tasks took\), so the cluster was \d+\.\dx as fast",
                     out), out


@pytest.mark.timeout(60)
def test_p2ppool_demo_exits_0_and_reports_the_estimate_the_workers_and_the_timing(
    tmp_path: Path,
) -> None:
    if not os.path.exists(CONSOLE_SCRIPT):
        pytest.skip(f"the p2ppool console script is not installed next to {sys.executable}")
    demo = subprocess.run([CONSOLE_SCRIPT, "demo"], capture_output=True, text=True,
                          timeout=50, env=_clean_env(tmp_path), cwd=str(tmp_path))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    _check_demo_output(demo.stdout, tasks=40)
    assert "40/40" in demo.stderr  # the progress bar
    _assert_none_marked(tmp_path)  # (the killed task processes may take a moment to go)


@pytest.mark.timeout(60)
def test_python_m_p2ppool_demo_with_options(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "p2ppool", "demo", "--tasks", "6", "--samples", "200000"],
        capture_output=True, text=True, timeout=50, env=_clean_env(tmp_path),
        cwd=str(tmp_path))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    _check_demo_output(demo.stdout, tasks=6)
    _assert_none_marked(tmp_path)


def test_p2ppool_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "p2ppool", "demo", "--tasks", "0", "--workers", "0"],
        capture_output=True, text=True, timeout=30, env=_clean_env(tmp_path),
        cwd=str(tmp_path))
    assert demo.returncode == 2
    assert "--workers must be at least 1, not 0" in demo.stderr
    assert "--tasks must be at least 1, not 0" in demo.stderr
