"""The session-end litter check (tests/fixtures/litter.py, issue 15.2) fails a run that leaves
temporary entries or processes behind, and passes one that cleans up.

Each test runs an inner pytest session in a subprocess, with the plugin, and with a
temporary directory (``TMPDIR``) of its own, so nothing it leaves reaches the outer run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def inner_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The inner session's TMPDIR, removed afterwards.  (Not under pytester's directory: a
    fork server's socket path in it would be too long.)"""
    path = Path(tempfile.mkdtemp(prefix="tmp-litter-"))
    monkeypatch.setenv("TMPDIR", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
         ) -> pytest.RunResult:
    """Run ``source`` as the inner session's only test file, with the litter plugin (the
    test asks for ``inner_tmp``, its TMPDIR)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_subprocess(
        "-s", "-p", "tests.fixtures.litter", "-p", "no:cacheprovider", "-o", "litter_grace=0.5",
        timeout=50)


def _pid(text: str) -> int:
    """The pid the inner test printed as ``PID <n>``."""
    found = re.search(r"\bPID (\d+)", text)
    assert found, f"no PID in:\n{text}"
    return int(found.group(1))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_new_temporary_directory_fails_the_run(pytester: pytest.Pytester,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 inner_tmp: Path) -> None:
    result = _run(pytester, monkeypatch, """
        import os, tempfile

        def test_leaves_what_a_killed_multiprocessing_user_leaves():
            os.mkdir(os.path.join(tempfile.gettempdir(), "pymp-left"))
            open(os.path.join(tempfile.gettempdir(), "pymp-left", "listener-x"), "w").close()
            os.mkdir(os.path.join(tempfile.gettempdir(), "p2ppool-local-left"))
            os.mkdir(os.path.join(tempfile.gettempdir(), "unrelated-name"))
    """)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    tmp = inner_tmp
    result.stdout.fnmatch_lines([
        "*the run left litter behind*",
        f"temporary entry left: {tmp / 'p2ppool-local-left'} (empty)",
        f"temporary entry left: {tmp / 'pymp-left'} (holding: listener-x)",
    ])
    assert "unrelated-name" not in result.stdout.str()
    assert (tmp / "pymp-left").is_dir()  # kept, for a look at what is in it


def test_a_process_left_running_fails_the_run_and_is_killed(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, inner_tmp: Path
) -> None:
    result = _run(pytester, monkeypatch, """
        import subprocess, sys

        def test_leaves_a_child_running():
            child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
            print(f"PID {child.pid}")
    """)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    pid = _pid(result.stdout.str())
    result.stdout.fnmatch_lines([
        "*the run left litter behind*",
        f"process left running: pid {pid}: * -c import signal; signal.pause()",
        "(the 1 process(es) are killed now)",
    ])
    assert _gone(pid)


def test_an_orphan_carrying_the_runs_mark_fails_the_run(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, inner_tmp: Path
) -> None:
    """A process that is no longer below the test process (its parent exited) is found by
    the mark in its environment."""
    result = _run(pytester, monkeypatch, """
        import subprocess, sys

        ORPHAN = (
            "import os, signal, sys\\n"
            "if os.fork() == 0:\\n"
            "    print(os.getpid(), flush=True)\\n"
            "    sys.stdout.close()\\n"
            "    signal.pause()\\n"
            "os._exit(0)\\n"
        )

        def test_leaves_an_orphan():
            starter = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE)
            pid = int(starter.stdout.readline())
            starter.stdout.close()
            assert starter.wait(10) == 0
            print(f"PID {pid}")
    """)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    pid = _pid(result.stdout.str())
    result.stdout.fnmatch_lines([
        "*the run left litter behind*",
        f"process left running: pid {pid}: * -c import os, signal, sys\\nif os.fork() == 0:*",
    ])
    assert _gone(pid)


def test_a_run_that_cleans_up_passes(pytester: pytest.Pytester,
                                     monkeypatch: pytest.MonkeyPatch, inner_tmp: Path) -> None:
    """Entries removed and processes reaped before the end are not litter, and neither is
    what multiprocessing keeps for the test process until it exits: its directory, its
    resource tracker and its fork server."""
    result = _run(pytester, monkeypatch, """
        import multiprocessing, multiprocessing.util, os, shutil, subprocess, sys, tempfile

        def test_cleans_up():
            path = tempfile.mkdtemp(prefix="p2ppool-local-")
            shutil.rmtree(path)
            child = subprocess.Popen([sys.executable, "-c", "pass"])
            assert child.wait(10) == 0
            assert os.path.isdir(multiprocessing.util.get_temp_dir())

        def test_uses_multiprocessing_helpers():
            for method in ("spawn", "forkserver"):  # a resource tracker, a fork server
                process = multiprocessing.get_context(method).Process(target=os.getpid)
                process.start()
                process.join(30)
                assert process.exitcode == 0
    """)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    assert "left litter behind" not in result.stdout.str()
    assert os.listdir(inner_tmp) == []
