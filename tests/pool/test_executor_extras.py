"""``p2ppool.ProcessPoolExecutor`` beyond the conformance suite: its progress bar, and the
manager-side handling of cancelled futures (the cases a race would otherwise hide).

The suite run against concurrent.futures as well is ``tests/pool/test_executor_conformance.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator

import pytest

import p2ppool
from tests.fixtures import executor_tasks as tasks
from tests.fixtures import pool as fx

FORK = multiprocessing.get_context("fork")
WAIT_S = 20.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def executor() -> Iterator[p2ppool.ProcessPoolExecutor]:
    executor = p2ppool.ProcessPoolExecutor(1, mp_context=FORK)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class _ManagerHeld:
    """Hold the executor's manager thread in one call until released, so that what is
    posted meanwhile runs in a single later turn (no timing involved)."""

    def __init__(self, executor: p2ppool.ProcessPoolExecutor) -> None:
        pool = executor._pool
        assert pool is not None and pool._manager is not None
        self._entered, self._release = threading.Event(), threading.Event()
        pool._manager.inbox.post(self._hold)
        assert self._entered.wait(WAIT_S)

    def _hold(self) -> None:
        self._entered.set()
        self._release.wait(WAIT_S)

    def release(self) -> None:
        self._release.set()


def test_shutdown_returns_when_a_cancelled_future_and_the_shutdown_meet_in_one_turn(
        executor: p2ppool.ProcessPoolExecutor) -> None:
    # The manager frees a cancelled chunk's slot, which ends its last job, before it
    # decides whether a closing pool is done (else it would wait for nothing, forever).
    assert executor.submit(int).result(timeout=WAIT_S) == 0
    held = _ManagerHeld(executor)
    future = executor.submit(int)
    assert future.cancel()
    executor.shutdown(wait=False)  # posted behind the submit
    held.release()
    stopper = threading.Thread(target=executor.shutdown, daemon=True)
    stopper.start()
    stopper.join(WAIT_S)
    assert not stopper.is_alive(), "shutdown hung"
    assert future.cancelled()


def test_thousands_of_futures_cancelled_in_a_row_never_run(
        executor: p2ppool.ProcessPoolExecutor, tmp_path: Path) -> None:
    # What an abandoned map leaves: a long run of cancelled futures in the queue, freed in
    # one loop (never a recursion per future) when they come up.
    go = str(tmp_path / "go")
    blockers = [executor.submit(fx.wait_for_file, go, value=i) for i in range(2)]
    cancelled = [executor.submit(fx.touch, str(tmp_path / f"ran-{i}")) for i in range(3000)]
    assert all(f.cancel() for f in cancelled)
    last = executor.submit(tasks.mul, 6, 7)
    Path(go).touch()
    assert [f.result(timeout=WAIT_S) for f in blockers] == [0, 1]
    assert last.result(timeout=WAIT_S) == 42
    assert not [name for name in os.listdir(tmp_path) if name.startswith("ran-")]


def test_an_abandoned_map_cancels_what_has_not_started(
        executor: p2ppool.ProcessPoolExecutor, tmp_path: Path) -> None:
    go1, go2 = str(tmp_path / "go1"), str(tmp_path / "go2")
    paths = [str(tmp_path / f"ran-{i}") for i in range(51)]
    results = executor.map(tasks.wait_then_touch, [go1] + [go2] * 50, paths)
    Path(go1).touch()
    assert next(results) == paths[0]
    results.close()  # the caller walks away: what has not started is cancelled
    Path(go2).touch()
    executor.shutdown(wait=True)
    ran = [p for p in paths[1:] if os.path.exists(p)]
    # only what was already handed to the one process (its prefetch slot) ran
    assert len(ran) <= 2, ran


def test_an_executor_cannot_be_pickled(executor: p2ppool.ProcessPoolExecutor) -> None:
    with pytest.raises(NotImplementedError):
        pickle.dumps(executor)
    assert "running" in repr(executor)


def test_progress_bar_counts_tasks_done_of_tasks_submitted() -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from p2ppool import ProcessPoolExecutor
        from tests.fixtures import pool as fx
        if __name__ == "__main__":
            with ProcessPoolExecutor(2, progress=True) as executor:
                futures = [executor.submit(fx.square, i) for i in range(7)]
                print(sum(executor.map(fx.square, range(5), chunksize=2)))
            print(sum(f.result() for f in futures))
    """)], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["30", "91"]
    assert "12/12" in done.stderr


def test_no_bar_by_default() -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from p2ppool import ProcessPoolExecutor
        from tests.fixtures import pool as fx
        if __name__ == "__main__":
            with ProcessPoolExecutor(2) as executor:
                print(sum(executor.map(fx.square, range(5))))
    """)], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")})
    assert done.returncode == 0 and done.stdout.split() == ["30"] and done.stderr == ""


def test_it_is_a_concurrent_futures_executor() -> None:
    assert issubclass(p2ppool.ProcessPoolExecutor, cf.Executor)
    assert issubclass(p2ppool.ProcessLost, cf.process.BrokenProcessPool)
    assert issubclass(p2ppool.InitializerFailed, cf.BrokenExecutor)
