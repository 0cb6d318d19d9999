"""Every command and Python example shown in README.rst, extracted from it and run for real.

The commands are read from README.rst (``::`` literal blocks, ``code-block`` blocks and inline
````...```` literals that start with a program name), so a change to the README changes what
runs here.  :data:`COVERAGE` accounts for every one of them: run here (by which test), run
elsewhere (which test or CI), or not runnable on this machine (and why).  A command in the
README that is not in :data:`COVERAGE` fails :func:`test_every_readme_command_is_accounted_for`,
and so does an entry that the README no longer shows.

Everything runs on 127.0.0.1 with the smallest substitutions that keep it on loopback and quick;
each one is made by :func:`substitute`, which fails if the text it replaces is gone:

* ``0.0.0.0:2222`` / ``tcp:4000`` / ``tcp:4001`` / ``-p 2222`` -> 127.0.0.1 and a free port;
* board, identity, known_hosts, relay and transit come from the ``P2PPOOL_*`` variables of a
  :class:`p2ppool.LocalCluster` named ``friends`` (owner alice), so ``alice/friends`` is used
  as written;
* placeholders get values: ``DIR`` a temporary directory, ``ssh -p 2222 HOST <command>`` ->
  the test board's port, ``127.0.0.1`` and ``help`` (plus the key and known_hosts options);
* Python fragments get the names they use (``square`` for the cluster example, ``offset`` and
  ``data`` and a ``print`` for the lambda one); clients run with ``P2PPOOL_FALLBACK=none``,
  so their map can only succeed on the README's worker;
* long-lived commands (``--ttl 14d``, ``--ttl 8h``, ``p2ppool local``, the board, the servers)
  are stopped with SIGTERM once they proved they work, and must then exit 0 where the README
  says so.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import psutil
import pytest

from tests.fixtures.cluster import assert_gone

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.rst"
BIN = Path(sys.executable).parent
WAIT = 30.0

# First words that make an inline literal a command.
PROGRAMS = ("p2ppool", "python", "python3", "twist", "ssh", "ssh-keygen", "sudo", "docker",
            "bwrap", "firejail", "tox", ".ci/run", ".", "pip", "pytest")

HERE = "run here"
ELSEWHERE = "run elsewhere"
CANNOT = "not runnable here"

# Every command, Python example and config example README.rst shows -> how it is covered.
COVERAGE: Dict[str, Tuple[str, str]] = {
    # --- the two first commands
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/p2ppool demo":
        (ELSEWHERE, ".ci/run creates the same fresh venv and installs the project (checked by "
                    "tests/base/test_readme.py); `p2ppool demo` runs here "
                    "(test_demo) and in tests/system/test_newcomer.py"),
    ".venv/bin/pip install '.[test]' && .venv/bin/python -m pytest":
        (ELSEWHERE, ".ci/run runs exactly this line (tests/base/test_readme.py checks it); "
                    "running the whole suite from inside the suite would recurse"),
    # --- See it work
    "p2ppool demo --workers 2 --processes-per-worker 1 --tasks 40 --samples 2000000":
        (HERE, "test_demo"),
    "p2ppool demo": (HERE, "test_demo (the same command with its options)"),
    # --- Using it from Python
    "python:square": (HERE, "test_python_examples_on_a_worker"),
    "python:lambda": (HERE, "test_python_examples_on_a_worker"),
    "python:cluster": (HERE, "test_worker_commands_with_self_hosted_wormhole_servers"),
    "python:localcluster": (HERE, "test_localcluster_example_as_is"),
    # --- concurrent.futures: ProcessPoolExecutor
    "python:executor": (HERE, "test_executor_example_on_a_worker"),
    # --- A cluster on your own machine
    "p2ppool local --workers 2 --processes-per-worker 2 --write-env cluster.env":
        (HERE, "test_p2ppool_local_and_a_script_that_sources_its_file"),
    ". ./cluster.env && python my_script.py":
        (HERE, "test_p2ppool_local_and_a_script_that_sources_its_file"),
    # --- Volunteering a worker
    "python -m p2ppool.worker --cluster alice/friends --processes 4":
        (HERE, "test_python_examples_on_a_worker"),
    "p2ppool worker --cluster alice/friends --max-task-seconds 600 --max-payload-mb 100 "
    "--ttl 8h": (HERE, "test_worker_commands_with_self_hosted_wormhole_servers"),
    # --- A shared cluster among friends
    "p2ppool host --cluster friends --users bob,carol --ttl 14d":
        (HERE, "test_host_and_status"),
    "p2ppool status --cluster alice/friends --wait 3": (HERE, "test_host_and_status"),
    "p2ppool status --cluster alice/friends --json": (HERE, "test_host_and_status"),
    "p2ppool host --users ...": (HERE, "test_host_and_status (placeholder form)"),
    "p2ppool status --cluster owner/name": (HERE, "test_host_and_status (placeholder form)"),
    # --- The message board
    "p2ppool board": (HERE, "test_board_and_ssh_to_it"),
    "p2ppool board --listen 0.0.0.0:2222 --host-key board_host_key --users board_users":
        (HERE, "test_board_and_ssh_to_it"),
    "ssh -p 2222 HOST <command>": (HERE, "test_board_and_ssh_to_it (command: help)"),
    "ssh-keygen -R": (HERE, "test_board_and_ssh_to_it (the command HostKeyMismatch gives)"),
    "ssh pico.sh": (CANNOT, "contacts pico.sh; tests must never reach the public board"),
    "ssh pico.sh user": (CANNOT, "contacts pico.sh; tests must never reach the public board"),
    # --- Self-hosting the wormhole servers
    "twist wormhole-mailbox --port=tcp:4000 --channel-db=mailbox.sqlite":
        (HERE, "test_worker_commands_with_self_hosted_wormhole_servers"),
    "twist transitrelay --port=tcp:4001":
        (HERE, "test_worker_commands_with_self_hosted_wormhole_servers"),
    "python -m p2ppool.transfer.servers --state DIR": (HERE, "test_wormhole_servers_module"),
    # --- Configuration
    "config:toml": (HERE, "test_config_file_example"),
    # --- Performance
    "python benchmarks/bench_pool.py":
        (CANNOT, "a benchmark: minutes of CPU on a shared 2-core machine; its numbers are "
                 "documented, not asserted"),
    "python benchmarks/bench_cluster.py":
        (CANNOT, "a benchmark of several minutes (its --quick form takes a minute) on a "
                 "shared 2-core machine; its numbers are documented, not asserted"),
    "python benchmarks/leak_probe.py pool-handover":
        (HERE, "test_leak_probe (a few cycles of the hand-over it measures)"),
    "python benchmarks/soak.py --minutes 10":
        (CANNOT, "a 10-minute soak run, far beyond a test's time budget"),
    # --- Security (illustrations of isolation; `...` stands for the worker's options)
    "sudo -u p2ppool python -m p2ppool.worker ...":
        (CANNOT, "needs root and a p2ppool user account; the worker command itself runs in "
                 "test_python_examples_on_a_worker"),
    'docker run --rm -v "$PWD":/src python:3.11 sh -c "pip install /src && python -m '
    'p2ppool.worker --cluster alice/friends"':
        (CANNOT, "no Docker daemon on this machine (and pulling python:3.11 needs the "
                 "internet)"),
    # --- Development
    "tox": (ELSEWHERE, "tox.ini: runs the same pytest and linters CI runs"),
    "tox -e py": (ELSEWHERE, "tox.ini: the pytest environment"),
    "tox -e lint": (ELSEWHERE, "tox.ini: ruff and mypy"),
    ".ci/run": (ELSEWHERE, "it is CI"),
}


# --- extraction -------------------------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _blocks(text: str) -> List[Tuple[str, str]]:
    """``(kind, dedented text)`` of every literal block: kind is the code-block language, or
    ``"literal"`` for a ``::`` block."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith(".. code-block::"):
            kind = stripped.split("::", 1)[1].strip()
        elif stripped.endswith("::") and not stripped.startswith(".."):
            kind = "literal"
        else:
            i += 1
            continue
        base, j, body = _indent(lines[i]), i + 1, []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            body.append(lines[j])
            j += 1
        found.append((kind, textwrap.dedent("\n".join(body)).strip("\n")))
        i = j
    return found


def _is_shell(block: str) -> bool:
    words = [line.split()[0] for line in block.splitlines() if line.strip()]
    return all(w in PROGRAMS or w.startswith(".venv/bin/") for w in words)


def _python_name(code: str) -> str:
    """A stable name for a Python example, from what it does."""
    ast.parse(code)
    if "ProcessPoolExecutor" in code:
        return "python:executor"
    if "LocalCluster(" in code:
        return "python:localcluster"
    if "lambda" in code:
        return "python:lambda"
    if "cluster=" in code:
        return "python:cluster"
    if "def square" in code:
        return "python:square"
    return "python:?\n" + code


def readme_items(text: str | None = None) -> Dict[str, str]:
    """Every command (one line, comment removed, whitespace collapsed) and example (by name)
    in README.rst -> its full text."""
    text = README.read_text() if text is None else text
    items: Dict[str, str] = {}
    for kind, block in _blocks(text):
        if kind in ("console", "literal") and _is_shell(block):
            for line in block.splitlines():
                command = " ".join(line.split(" #", 1)[0].split())
                if command:
                    items[command] = command
        elif kind == "python" or (kind == "literal" and _looks_like_python(block)):
            items[_python_name(block)] = block
        elif kind == "literal" and _looks_like_toml(block):
            items["config:toml"] = block
        else:
            items[f"unknown {kind} block:\n{block}"] = block
    for match in re.finditer(r"``(.+?)``", text, re.S):
        literal = " ".join(match.group(1).split())
        if literal.split()[0] in PROGRAMS:
            items.setdefault(literal, literal)
    return items


def _looks_like_python(block: str) -> bool:
    try:
        tree = ast.parse(block)
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.With, ast.Import, ast.ImportFrom, ast.FunctionDef))
               for node in tree.body)


def _looks_like_toml(block: str) -> bool:
    import tomllib

    try:
        return bool(tomllib.loads(block))
    except tomllib.TOMLDecodeError:
        return False


def command(prefix: str) -> str:
    """The README command that starts with ``prefix`` and is run here (the longest, if one is
    also shown in a short inline form); fails if there is none."""
    found = [c for c in readme_items()
             if c.startswith(prefix) and COVERAGE.get(c, (HERE, ""))[0] == HERE]
    assert found, f"README.rst shows no command starting with {prefix!r}: update this test"
    return max(found, key=len)


def example(name: str) -> str:
    items = readme_items()
    assert name in items, f"README.rst lost its {name} example"
    return items[name]


def substitute(text: str, *pairs: Tuple[str, str]) -> str:
    """Replace each ``old`` by ``new``, failing if ``old`` is not in the README's text."""
    for old, new in pairs:
        assert old in text, f"{old!r} is no longer in {text!r}: update this test"
        text = text.replace(old, new)
    return text


def unaccounted(items: Dict[str, str]) -> Tuple[List[str], List[str]]:
    """(commands the README shows that COVERAGE lacks, COVERAGE entries the README lacks)."""
    return sorted(set(items) - set(COVERAGE)), sorted(set(COVERAGE) - set(items))


def test_every_readme_command_is_accounted_for() -> None:
    new, stale = unaccounted(readme_items())
    assert not new, ("README.rst shows commands or examples this test does not cover: "
                     f"{new}; add each to COVERAGE with a test that runs it, or the reason "
                     "it cannot run")
    assert not stale, f"COVERAGE lists what README.rst no longer shows: {stale}"
    this_module = sys.modules[__name__].__dict__
    for item, (how, where) in COVERAGE.items():
        assert how in (HERE, ELSEWHERE, CANNOT) and where, item
        if how == HERE:
            assert where.split()[0] in this_module, (item, where)


def test_a_new_command_in_the_readme_is_caught() -> None:
    text = README.read_text()
    grown = text + "\nAlso run this::\n\n    p2ppool board --frobnicate   # new\n"
    assert unaccounted(readme_items(grown)) == (["p2ppool board --frobnicate"], [])
    inline = text + "\nRun ``sudo rm -rf /tmp/x`` first.\n"
    assert unaccounted(readme_items(inline)) == (["sudo rm -rf /tmp/x"], [])


def test_extraction_sees_blocks_inline_literals_and_comments() -> None:
    text = ("Intro::\n\n    p2ppool x --a 1   # note\n    twist y\n\nmore ``ssh h\n  ls`` and"
            " ``not a command``\n\n.. code-block:: python\n\n    import os\n")
    items = readme_items(text)
    assert set(items) == {"p2ppool x --a 1", "twist y", "ssh h ls", "python:?\nimport os"}


# --- running things ---------------------------------------------------------------------------


def clean_env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    """The test's environment without P2PPOOL_* and without the user's configuration, with
    this checkout importable and the venv's programs (python, p2ppool, twist) first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(ROOT),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def shell(line: str, env: Dict[str, str], cwd: Path, timeout: float = WAIT
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], env=env, cwd=str(cwd), capture_output=True,
                          text=True, timeout=timeout)


class Background:
    """A long-lived README command in its own process group, its output read by threads."""

    def __init__(self, line: str, env: Dict[str, str], cwd: Path) -> None:
        argv = shlex.split(line)
        # stdin stays open, as a terminal's would (wormhole_servers exits at its end of file)
        self.proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.out: List[str] = []
        self.err: List[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream: Any, sink: List[str]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            sink.append(line)
            self._lines.put(line)
        stream.close()

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first line (stdout or stderr) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s: "
                                     f"{self.text()}") from None
            match = re.search(pattern, line)
            if match:
                return match

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def stop(self, expect: int | None = 0) -> int:
        """SIGTERM; the exit status must be ``expect`` (unless None), and every process it
        started must be gone within 10 s."""
        try:
            tree = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=WAIT)
        self._close_stdin()
        assert_gone(tree, timeout=10)
        if expect is not None:
            assert code == expect, f"exit status {code}: {self.text()}"
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=WAIT)
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Any]:
    started: List[Background] = []

    def start(line: str, env: Dict[str, str], cwd: Path | None = None) -> Background:
        process = Background(line, env, cwd or tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="module")
def friends() -> Iterator[Any]:
    """A LocalCluster whose cluster is ``alice/friends`` (as in the README), no workers."""
    from p2ppool.local.cluster import LocalCluster

    with LocalCluster(workers=0, cluster_name="friends", members=("bob", "carol")) as cluster:
        assert cluster.cluster == "alice/friends"
        yield cluster


def cluster_env(cluster: Any, tmp_path: Path, **extra: str) -> Dict[str, str]:
    return clean_env(tmp_path, **{**cluster.env, **extra})


# --- the tests that run README commands -------------------------------------------------------


@pytest.mark.timeout(60)
def test_demo(tmp_path: Path) -> None:
    result = shell(command("p2ppool demo "), clean_env(tmp_path), tmp_path, timeout=50)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"pi is about 3\.1\d*", result.stdout), result.stdout
    # (normally both workers; one alone if the other's session opened after the last task)
    counts = re.search(r"tasks run by each worker: (.*)", result.stdout)
    assert counts, result.stdout
    ran = dict(part.split() for part in counts[1].split(", "))
    assert set(ran) <= {"w1", "w2"} and sum(map(int, ran.values())) == 40, result.stdout
    assert "stopped the cluster" in result.stdout


@pytest.mark.timeout(60)
def test_p2ppool_local_and_a_script_that_sources_its_file(tmp_path: Path, background: Any
                                                         ) -> None:
    local = background(command("p2ppool local "), clean_env(tmp_path))
    local.wait_for("Ctrl-C")
    assert "export P2PPOOL_CLUSTER=" in (tmp_path / "cluster.env").read_text()
    (tmp_path / "my_script.py").write_text(example("python:square"))
    # P2PPOOL_FALLBACK=none: the map can only succeed on the cluster's workers.
    result = shell(command(". ./cluster.env"), clean_env(tmp_path, P2PPOOL_FALLBACK="none"),
                   tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([x * x for x in range(10)])
    local.stop(expect=0)
    assert "stopping" in local.text()


@pytest.mark.timeout(60)
def test_python_examples_on_a_worker(friends: Any, tmp_path: Path, background: Any) -> None:
    """The README's worker command serves the README's two local examples, which find it
    through the cluster's ``P2PPOOL_*`` variables and may not run locally."""
    worker = background(command("python -m p2ppool.worker "), cluster_env(friends, tmp_path))
    env = cluster_env(friends, tmp_path, P2PPOOL_FALLBACK="none")
    square = tmp_path / "square.py"
    square.write_text(example("python:square"))
    result = subprocess.run([sys.executable, str(square)], env=env, capture_output=True,
                            text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr + worker.text()
    assert result.stdout.strip() == str([x * x for x in range(10)])

    lam = tmp_path / "lam.py"  # the fragment needs its names, and a print to check
    lam.write_text("from p2ppool import Pool\noffset, data = 100, range(5)\n"
                   + example("python:lambda").replace("pool.map(", "print(pool.map(") + ")\n")
    result = subprocess.run([sys.executable, str(lam)], env=env, capture_output=True,
                            text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr + worker.text()
    assert result.stdout.strip() == str([100, 101, 102, 103, 104])

    worker.stop(expect=0)
    assert len(re.findall(r"session \d+ with \S+ job \S+ opened", worker.text())) == 2, \
        worker.text()


@pytest.mark.timeout(60)
def test_executor_example_on_a_worker(friends: Any, tmp_path: Path, background: Any) -> None:
    """The README's ProcessPoolExecutor example as is, served by the README's worker command
    (found through the cluster's ``P2PPOOL_*`` variables; it may not run locally)."""
    worker = background(command("python -m p2ppool.worker "), cluster_env(friends, tmp_path))
    script = tmp_path / "executor_example.py"
    script.write_text(example("python:executor"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=cluster_env(friends, tmp_path, P2PPOOL_FALLBACK="none"),
                            timeout=WAIT)
    assert result.returncode == 0, result.stderr + worker.text()
    squares = str([x * x for x in range(10)])
    assert result.stdout.splitlines() == [squares, squares]
    worker.stop(expect=0)
    assert re.search(r"session \d+ with \S+ job \S+ opened", worker.text()), worker.text()


@pytest.mark.timeout(60)
def test_worker_commands_with_self_hosted_wormhole_servers(
    friends: Any, tmp_path: Path, background: Any
) -> None:
    """The twist servers as shown (on 127.0.0.1 and free ports), set as P2PPOOL_RELAY and
    P2PPOOL_TRANSIT for the README's second worker command and its cluster example."""
    mailbox = background(substitute(command("twist wormhole-mailbox "),
                                    ("tcp:4000", "tcp:0:interface=127.0.0.1")),
                         clean_env(tmp_path))
    relay = background(substitute(command("twist transitrelay "),
                                  ("tcp:4001", "tcp:0:interface=127.0.0.1")),
                       clean_env(tmp_path))
    mailbox_port = int(mailbox.wait_for(r"Site starting on (\d+)")[1])
    relay_port = int(relay.wait_for(r"ServerFactory starting on (\d+)")[1])
    assert (tmp_path / "mailbox.sqlite").exists()
    servers = {"P2PPOOL_RELAY": f"ws://127.0.0.1:{mailbox_port}/v1",
               "P2PPOOL_TRANSIT": f"tcp:127.0.0.1:{relay_port}"}

    worker = background(command("p2ppool worker "), cluster_env(friends, tmp_path, **servers))
    script = tmp_path / "cluster_example.py"
    script.write_text("def square(x):\n    return x * x\n\n" + example("python:cluster"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=cluster_env(friends, tmp_path, P2PPOOL_FALLBACK="none",
                                            P2PPOOL_CLUSTER="nobody/else", **servers),
                            timeout=WAIT)
    assert result.returncode == 0, result.stderr + worker.text()
    assert result.stdout.strip() == str([x * x for x in range(1000)])
    worker.stop(expect=0)  # --ttl 8h: stopped by SIGTERM, which withdraws and exits 0
    assert re.search(r"session \d+ with \S+ job \S+ opened", worker.text()), worker.text()
    assert "mailbox.sqlite" in command("twist wormhole-mailbox ")
    mailbox.stop(expect=None)
    relay.stop(expect=None)


@pytest.mark.timeout(60)
def test_localcluster_example_as_is(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example("python:localcluster"))
    result = subprocess.run([sys.executable, str(script)], env=clean_env(tmp_path),
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([abs(x) for x in range(-5, 5)])


@pytest.mark.timeout(60)
def test_host_and_status(friends: Any, tmp_path: Path, background: Any) -> None:
    """``p2ppool host`` as shown, as alice on the friends cluster's board; bob and carol (on
    its access list) see it with both ``p2ppool status`` commands."""
    env = cluster_env(friends, tmp_path)
    assert "--ttl 14d" in command("p2ppool host ")
    host = background(command("p2ppool host "), env)
    line = host.wait_for("hosting cluster").string
    assert "alice/friends" in line

    def as_member(name: str) -> Dict[str, str]:
        return cluster_env(friends, tmp_path, P2PPOOL_BOARD_USER=name,
                           P2PPOOL_IDENTITY=friends.identity(name))

    started = time.monotonic()
    table = shell(command("p2ppool status --cluster alice/friends --wait"), as_member("bob"),
                  tmp_path)
    assert table.returncode == 0, table.stderr
    assert time.monotonic() - started >= 3  # --wait 3 kept
    assert "cluster alice/friends: hosted by" in table.stdout, table.stdout
    report_run = shell(command("p2ppool status --cluster alice/friends --json"),
                       as_member("carol"), tmp_path)
    assert report_run.returncode == 0, report_run.stderr
    report = json.loads(report_run.stdout)
    assert report["cluster"] == "alice/friends"
    assert report["hosts"], report
    host.stop(expect=0)  # --ttl 14d kept: stopped by SIGTERM after it announced


@pytest.mark.timeout(60)
def test_board_and_ssh_to_it(tmp_path: Path, background: Any, board_keys: Any) -> None:
    """``p2ppool board`` as shown (on 127.0.0.1 and a free port) with a users file of bob's
    key; OpenSSH's ``ssh -p PORT HOST help`` as bob is answered."""
    (tmp_path / "board_users").write_text(f"bob {board_keys['bob'].public_line}\n")
    line = substitute(command("p2ppool board "), ("0.0.0.0:2222", "127.0.0.1:0"))
    board = background(line, clean_env(tmp_path))
    port = int(board.wait_for(r"board listening on 127\.0\.0\.1:(\d+)")[1])
    known = board.wait_for(r"known_hosts line: (.+)")[1]
    assert (tmp_path / "board_host_key").exists()  # created on first start
    (tmp_path / "known_hosts").write_text(known.strip() + "\n")
    ssh_line = substitute(command("ssh -p "), ("2222", str(port)), ("HOST", "127.0.0.1"),
                          ("<command>", "help"))
    argv = shlex.split(ssh_line)
    argv[1:1] = ["-F", "/dev/null", "-i", board_keys["bob"].path, "-l", "bob",
                 "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
                 "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                 "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-T"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    assert "pipe" in result.stdout and "sub" in result.stdout, result.stdout

    # The board's key "changed": bob's known_hosts has another key for it.  p2ppool refuses
    # and names the ssh-keygen -R command; running it lets the next connection pin the key.
    from p2ppool.board.client import BoardClient
    from p2ppool.errors import HostKeyMismatch

    stale = tmp_path / "stale_known_hosts"
    stale.write_text(f"[127.0.0.1]:{port} {board_keys['carol'].public_line}\n")

    def connect() -> None:
        BoardClient("127.0.0.1", port, topic="bob/t", username="bob", ssh_config="/dev/null",
                    identity=board_keys["bob"].path, known_hosts=str(stale)).connect().close()

    with pytest.raises(HostKeyMismatch) as refused:
        connect()
    fix = re.search(r"\((ssh-keygen -R .+?)\)", str(refused.value))
    assert fix and fix[1].startswith(command("ssh-keygen -R")), str(refused.value)
    removed = subprocess.run(shlex.split(fix[1]), capture_output=True, text=True, timeout=WAIT)
    assert removed.returncode == 0, removed.stderr
    assert board_keys["carol"].public_line.split()[1] not in stale.read_text()
    connect()  # first contact again: pins the board's real key
    assert known.split()[-1] in stale.read_text()
    board.stop(expect=0)


@pytest.mark.timeout(60)
@pytest.mark.timeout(60)
def test_leak_probe(tmp_path: Path) -> None:
    """The memory probe as shown, for 4 cycles instead of its default: JSON per report, and
    what it measures holds already (ended sessions are freed)."""
    line = command("python benchmarks/leak_probe.py ") + " --cycles 4 --every 2 --warmup 0"
    result = shell(line, clean_env(tmp_path), ROOT, timeout=50)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
    assert [r["cycles"] for r in reports] == [2, 4]
    assert all(r["mode"] == "pool-handover" and r["live_sessions"] <= 2 for r in reports)


def test_wormhole_servers_module(tmp_path: Path, background: Any) -> None:
    line = substitute(command("python -m p2ppool.transfer.servers "),
                      ("DIR", str(tmp_path / "state")))
    servers = background(line, clean_env(tmp_path))
    info = json.loads(servers.wait_for(r'^\{"ready": true.*\}\s*$').string)
    ports = {info["mailbox_port"], info["relay_port"]}
    for port in ports:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    root = psutil.Process(info["pid"])
    listening = {(c.laddr.ip, c.laddr.port)
                 for proc in [root, *root.children(recursive=True)]
                 for c in proc.net_connections() if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", port) for port in ports}, listening
    servers.stop(expect=0)


def test_config_file_example(tmp_path: Path) -> None:
    from p2ppool.config import resolve_options

    path = tmp_path / "config.toml"
    path.write_text(example("config:toml"))
    options = resolve_options({}, environ={"P2PPOOL_CONFIG": str(path)})
    assert options.cluster == "alice/friends"
    assert options.fallback == 5
    assert str(options.board).startswith("pipe.pico.sh")
