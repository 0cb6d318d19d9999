"""A worker's fork server must really preload the module that ties task processes to it.

multiprocessing ignores an ImportError among a fork server's preloads without a word; the
worker checks what its fork server inherited and refuses to start otherwise.  Each case runs
in a fresh interpreter, since a process has one fork server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=60, cwd=_ROOT,
        env={**{k: v for k, v in os.environ.items()
                if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"},
             "PYTHONPATH": _ROOT})


@pytest.mark.timeout(90)
def test_a_fork_server_that_preloaded_the_child_module_passes_the_check() -> None:
    result = _run("""
        from p2ppool.worker.loop import _child_context, _warm_up
        ctx = _child_context()
        _warm_up(ctx)
        print("started")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


@pytest.mark.timeout(90)
def test_a_preload_that_failed_in_the_fork_server_stops_the_worker_loudly() -> None:
    # The fork server is told to preload a module that does not import (as
    # p2ppool.execution.child would be if it failed there): multiprocessing starts it anyway.
    result = _run("""
        from p2ppool.errors import P2PPoolError
        from p2ppool.worker.loop import _child_context, _warm_up
        ctx = _child_context()
        ctx.set_forkserver_preload(["p2ppool.execution.engine", "p2ppool_no_such_module"])
        try:
            _warm_up(ctx)
        except P2PPoolError as exc:
            print("refused:", exc)
        else:
            print("started")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: the worker's fork server did not preload "
                                    "p2ppool.execution.child (it was not imported there)")
    assert "task processes would not die with the worker" in result.stdout
