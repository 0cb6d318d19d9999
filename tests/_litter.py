"""A pytest plugin: a run that leaves litter behind fails (issue 15.2).

``tests/conftest.py`` registers it for the whole suite; another session loads it with
``-p tests._litter`` (as ``tests/test_litter_check.py`` does), and ``-p no:tests._litter``
turns it off.

At the start of the session it notes the entries of the temporary directory
(``tempfile.gettempdir()``) and the processes already running below the test process, and it
puts a mark (:data:`MARK_ENV`) in the environment, which every process the run starts
inherits.  At the end, after every fixture has been torn down, it looks for

* entries of the temporary directory that are new and still there, among the names that
  Python, multiprocessing and p2ppool give (:data:`PREFIXES`: ``pymp-*``, ``p2ppool-*``,
  ``tmp*``, ``wormhole*``);
* processes that are new and still alive: descendants of the test process, and any process
  carrying the run's mark (an orphan the kernel gave to another parent).

What multiprocessing keeps for the test process itself until it exits is not litter: its
directory (``pymp-*``, removed at exit), its resource tracker and its fork server (both end
when it does).

Processes get a few seconds to finish exiting (a fixture may have signalled them without
waiting); the entries are listed after that (an exiting process may remove its own).  If
anything is left, the run fails (exit status 1, unless it failed already) with a report
naming every entry and process, and the processes are then killed so that a failing run does
not leave them running too.  The entries stay, for a look at what is in them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing.forkserver
import multiprocessing.process
import multiprocessing.resource_tracker
import os
import sys
import tempfile
import uuid
from typing import FrozenSet, List, Sequence, Set, Tuple

import psutil
import pytest

__all__ = ["Litter", "MARK_ENV", "PREFIXES", "Snapshot", "find_litter", "kill", "take_snapshot"]

#: Names of temporary entries that count: multiprocessing's (``pymp-``), p2ppool's
#: (``p2ppool-local-``, ``p2ppool-wormhole-``, ...), ``tempfile``'s default (``tmp``, also
#: the tests' own ``tmp-*``) and magic-wormhole's.
PREFIXES: Tuple[str, ...] = ("pymp-", "p2ppool-", "tmp", "wormhole")

#: Set in the environment of the test process (and so of everything it starts) to a token
#: of the run.
MARK_ENV = "_P2PPOOL_TEST_RUN"

#: Seconds processes that are still there at the end get to exit before they count (the
#: ini option ``litter_grace`` overrides it).
EXIT_GRACE_S = 5.0

#: A process: (pid, creation time); the time tells a reused pid from the process noted.
ProcessKey = Tuple[int, float]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What there was when the run started."""

    tempdir: str
    entries: FrozenSet[str]
    processes: FrozenSet[ProcessKey]
    mark: str
    previous_mark: str | None


@dataclasses.dataclass
class Litter:
    """What a run left: new temporary entries (full paths) and live processes."""

    entries: List[str]
    processes: List[psutil.Process]

    def __bool__(self) -> bool:
        return bool(self.entries or self.processes)

    def report(self) -> List[str]:
        """One line per entry and per process, for a person."""
        lines = [f"temporary entry left: {path}{_describe_entry(path)}"
                 for path in self.entries]
        lines += [f"process left running: {_describe_process(proc)}"
                  for proc in self.processes]
        return lines


def _key(proc: psutil.Process) -> ProcessKey:
    return proc.pid, proc.create_time()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants() -> List[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _marked(mark: str) -> List[psutil.Process]:
    """Every process but this one whose environment carries ``MARK_ENV=mark``."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARK_ENV) == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _own_multiprocessing_dir() -> str | None:
    """This process's multiprocessing directory, if it made one (removed at its exit)."""
    config = getattr(multiprocessing.process.current_process(), "_config", {})
    tempdir = config.get("tempdir")
    return os.path.basename(tempdir) if isinstance(tempdir, str) else None


def _own_multiprocessing_helpers() -> Set[int]:
    """Pids of this process's multiprocessing (and loky) resource tracker and fork server,
    if they run (started by the first spawn or forkserver process, or by joblib; they end
    when this process does)."""
    helpers = [
        (multiprocessing.resource_tracker, "_resource_tracker", "_pid"),
        (multiprocessing.forkserver, "_forkserver", "_forkserver_pid"),
    ]
    # joblib's loky (the joblib tests compare against it) has its own resource tracker,
    # which also ends when this process does.
    loky = sys.modules.get("joblib.externals.loky.backend.resource_tracker")
    if loky is not None:
        helpers.append((loky, "_resource_tracker", "_pid"))
    pids = set()
    for module, instance, attribute in helpers:
        pid = getattr(getattr(module, instance, None), attribute, None)
        if isinstance(pid, int):
            pids.add(pid)
    return pids


def _entries(tempdir: str, prefixes: Sequence[str]) -> Set[str]:
    try:
        names = os.listdir(tempdir)
    except OSError:
        return set()
    return {name for name in names if name.startswith(tuple(prefixes))}


def take_snapshot(prefixes: Sequence[str] = PREFIXES) -> Snapshot:
    """Note the temporary entries and processes there are now, and mark the environment."""
    tempdir = tempfile.gettempdir()
    processes = set()
    for proc in _descendants():
        try:
            processes.add(_key(proc))
        except psutil.Error:
            continue
    previous = os.environ.get(MARK_ENV)
    mark = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[MARK_ENV] = mark
    return Snapshot(tempdir, frozenset(_entries(tempdir, prefixes)), frozenset(processes),
                    mark, previous)


def find_litter(snapshot: Snapshot, prefixes: Sequence[str] = PREFIXES,
                grace: float = EXIT_GRACE_S) -> Litter:
    """What is there now that was not at ``snapshot``: live processes (given ``grace``
    seconds to exit), then temporary entries."""
    candidates = {}
    helpers = _own_multiprocessing_helpers()
    for proc in _descendants() + _marked(snapshot.mark):
        try:
            if proc.pid not in helpers and _key(proc) not in snapshot.processes:
                candidates[proc.pid] = proc
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(list(candidates.values()), timeout=grace)
    processes = sorted((p for p in alive if _alive(p)), key=lambda p: p.pid)
    new = _entries(snapshot.tempdir, prefixes) - snapshot.entries
    new.discard(_own_multiprocessing_dir() or "")
    return Litter([os.path.join(snapshot.tempdir, name) for name in sorted(new)], processes)


def kill(processes: Sequence[psutil.Process]) -> None:
    """SIGKILL ``processes`` and wait (bounded) for them to go."""
    for proc in processes:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(list(processes), timeout=EXIT_GRACE_S)


def _describe_entry(path: str) -> str:
    try:
        inside = sorted(os.listdir(path))
    except OSError:
        return ""
    shown = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
    return f" (holding: {shown})" if inside else " (empty)"


def _describe_process(proc: psutil.Process) -> str:
    try:
        command = " ".join(proc.cmdline()).replace("\n", "\\n")  # one line per process
    except psutil.Error:
        command = "?"
    if len(command) > 160:
        command = command[:157] + "..."
    return f"pid {proc.pid}: {command}"


# --- the hooks ----------------------------------------------------------------------------

_SNAPSHOT = pytest.StashKey[Snapshot]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("litter_grace", "seconds processes left at the end of the run get to exit "
                  "before they count as litter", default=str(EXIT_GRACE_S))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SNAPSHOT] = take_snapshot()


@pytest.hookimpl(trylast=True)  # after the runner's, which tears down what is left
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    snapshot = session.config.stash.get(_SNAPSHOT, None)
    if snapshot is None:
        return
    litter = find_litter(snapshot, grace=float(session.config.getini("litter_grace")))
    if snapshot.previous_mark is None:
        os.environ.pop(MARK_ENV, None)
    else:
        os.environ[MARK_ENV] = snapshot.previous_mark
    if not litter:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = litter.report()
    if litter.processes:
        lines.append(f"(the {len(litter.processes)} process(es) are killed now)")
    if reporter is not None:
        reporter.write_sep("=", "the run left litter behind (tests/_litter.py)", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("the run left litter behind (tests/_litter.py):", *lines, sep="\n")
    kill(litter.processes)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
