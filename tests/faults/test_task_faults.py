"""A worker's task process that segfaults, calls ``os._exit``, overruns its time limit or its
memory limit: the task fails with an error naming the cause (a crash is retried first, as
documented: ``max_attempts``), and the worker keeps serving the same pool.

Real components: a LocalCluster worker started with ``--max-task-seconds 2 --max-memory-mb
400`` and a Pool over it without local fallback.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from p2ppool.errors import ChunkFailed, TaskLimitExceeded
from p2ppool.local.cluster import LocalCluster

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def limited() -> Iterator[Any]:
    with LocalCluster(workers=1, processes_per_worker=2,
                      worker_args=["--max-task-seconds", "2", "--max-memory-mb", "400"]
                      ) as cluster, cluster.pool(2, fallback=None, max_attempts=2) as pool:
        yield cluster, pool


def segfault(x: int) -> int:
    if x == 3:
        import ctypes
        ctypes.string_at(0)
    return x


def hard_exit(x: int) -> int:
    if x == 3:
        import os
        os._exit(7)
    return x


def overrun(x: int) -> int:
    if x == 3:
        import time as _time
        _time.sleep(60)  # far beyond --max-task-seconds 2
    return x


def hog(x: int) -> int:
    if x == 3:
        return len(bytearray(2000 * 1024 * 1024))  # 2 GB, over --max-memory-mb 400
    return x


def _still_serving(cluster: Any, pool: Any) -> None:
    assert pool.map(abs, range(-20, 20), chunksize=3) == [abs(i) for i in range(-20, 20)]
    assert cluster.workers[0].alive


@pytest.mark.parametrize("func, words", [
    (segfault, "SIGSEGV(-11)"),
    (hard_exit, "exit code 7"),
])
def test_a_crashing_task_is_retried_then_fails_naming_the_crash(
        limited: Any, func: Any, words: str) -> None:
    cluster, pool = limited
    with pytest.raises(ChunkFailed) as info:
        pool.map(func, range(6), chunksize=1)
    assert info.value.attempts == 2, info.value
    assert all(words in cause for cause in info.value.causes), info.value.causes
    assert words in str(info.value)
    _still_serving(cluster, pool)


def test_a_task_over_the_time_limit_is_killed_and_fails_naming_the_limit(
        limited: Any) -> None:
    cluster, pool = limited
    started = time.monotonic()
    with pytest.raises(TaskLimitExceeded, match=r"2 s task time limit"):
        pool.map(overrun, range(6), chunksize=1)
    assert time.monotonic() - started < 15  # not the 60 s the task wanted
    _still_serving(cluster, pool)


def test_a_task_over_the_memory_limit_fails_naming_the_limit(limited: Any) -> None:
    cluster, pool = limited
    with pytest.raises(TaskLimitExceeded, match=r"400 MB .*--max-memory-mb") as info:
        pool.map(hog, range(6), chunksize=1)
    assert "bytearray(2000" in str(info.value.__cause__)  # the remote traceback shows where
    # Items other than 3 are computed normally in the same processes.
    assert pool.map(hog, [1, 2, 4], chunksize=1) == [1, 2, 4]
    _still_serving(cluster, pool)


def test_max_memory_mb_is_checked() -> None:
    import argparse

    from p2ppool.errors import ConfigError
    from p2ppool.worker.cli import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--cluster", "a/b", "--max-memory-mb", "8"])
    with pytest.raises(ConfigError, match="--max-memory-mb must be at least 16"):
        settings_from_args(args)
    args = parser.parse_args(["--cluster", "a/b", "--max-memory-mb", "512"])
    assert settings_from_args(args).max_memory_mb == 512
