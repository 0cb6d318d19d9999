"""Ctrl-C (a Jupyter kernel interrupt) during a map stops it at once, withdraws its work from
the processes and peers that run it, and leaves the Pool usable (issue 12, item 4)."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from p2ppool import Pool
from p2ppool.execution.engine import ProcessEngine
from p2ppool.local.cluster import LocalCluster
from p2ppool.pool.results import ApplyResult

pytestmark = pytest.mark.system


def started_then_wait(args: tuple[str, int]) -> int:
    """Say it started (a file), then run for a long time."""
    directory, i = args
    Path(directory, f"started-{i}-{os.getpid()}").write_text("")
    time.sleep(30)
    return i


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, processes_per_worker=1) as c:
        yield c


def interrupt_when_started(directory: Path) -> threading.Thread:
    """SIGINT to this process (its main thread) once a task has said it started."""
    def watch() -> None:
        wait_for_start(directory, timeout=30)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("where", ["local", "cluster"])
def test_an_interrupted_map_is_withdrawn_and_the_pool_goes_on(
        where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    options: dict[str, Any] = {}
    if where == "cluster":
        options = dict(request.getfixturevalue("cluster").options, fallback=None)
    with Pool(2, **options) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]  # warm: processes or sessions are up
        watcher = interrupt_when_started(tmp_path)
        with pytest.raises(KeyboardInterrupt):
            pool.map(started_then_wait, [(str(tmp_path), i) for i in range(8)], chunksize=1)
        interrupted_at = time.monotonic()
        watcher.join(5)
        # The next map does not wait behind the withdrawn one's 30-second tasks.
        assert pool.map(abs, range(-6, 0)) == [6, 5, 4, 3, 2, 1]
        assert time.monotonic() - interrupted_at < 10
    assert len(list(tmp_path.glob("started-*"))) <= 2  # queued tasks never started


@pytest.mark.parametrize("call", ["map", "starmap", "apply"])
def test_an_interrupt_between_submitting_and_waiting_withdraws_the_call_too(
        call: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIGINT can land after the call posted its job but before its ``get`` waits (on a
    busy machine, the watcher above is that quick): its work is withdrawn all the same."""
    real_get = ApplyResult.get

    def interrupted_on_the_way(self: ApplyResult, timeout: float | None = None) -> Any:
        monkeypatch.setattr(ApplyResult, "get", real_get)  # once
        raise KeyboardInterrupt

    with Pool(1) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]  # warm
        monkeypatch.setattr(ApplyResult, "get", interrupted_on_the_way)
        work = [(str(tmp_path), i) for i in range(4)]
        with pytest.raises(KeyboardInterrupt):
            if call == "map":
                pool.map(started_then_wait, work, chunksize=1)
            elif call == "starmap":
                pool.starmap(started_then_wait_unpacked, work, chunksize=1)
            else:
                pool.apply(started_then_wait, (work[0],))
        # Not behind the withdrawn call's 30-second tasks.
        assert pool.map_async(abs, range(-3, 0)).get(5) == [3, 2, 1]


def started_then_wait_unpacked(directory: str, i: int) -> int:
    return started_then_wait((directory, i))


def test_a_withdrawn_map_leaves_the_engine_at_once_none_of_it_placed_on_a_fresh_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unwarmed (no prefetch), chunks 3 and 4 wait in the engine's backlog behind 1 and 2:
    withdrawn together, none of them goes to the processes that replace the killed ones."""
    submitted: list[int] = []
    given: list[int] = []
    real_submit, real_give = ProcessEngine.submit, ProcessEngine._give

    def submit(self: ProcessEngine, task_id: int, *args: Any) -> None:
        submitted.append(task_id)
        real_submit(self, task_id, *args)

    def give(self: ProcessEngine, child: Any, task: Any) -> None:
        given.append(task.task_id)
        real_give(self, child, task)

    monkeypatch.setattr(ProcessEngine, "submit", submit)
    monkeypatch.setattr(ProcessEngine, "_give", give)
    with Pool(2) as pool:
        result = pool.map_async(started_then_wait, [(str(tmp_path), i) for i in range(8)],
                                chunksize=1)
        wait_for_start(tmp_path, timeout=30)
        doomed = set(submitted)
        given.clear()
        result._withdraw()  # what an interrupted get does
        assert pool.map(abs, range(-6, 0)) == [6, 5, 4, 3, 2, 1]
        assert doomed and not doomed & set(given)


def test_an_interrupt_as_imap_posts_its_stream_withdraws_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIGINT can land inside ``imap`` itself, once its stream is posted (in post's
    wake-up, while a task already runs): the caller never gets the iterator, and the
    stream is withdrawn all the same."""
    with Pool(1) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]  # warm
        interrupt_in_post(pool, monkeypatch, lambda: wait_for_start(tmp_path))
        with pytest.raises(KeyboardInterrupt):
            pool.imap(started_then_wait, [(str(tmp_path), i) for i in range(4)])
        # Not behind the withdrawn stream's 30-second tasks (one of them had started).
        assert pool.map_async(abs, range(-3, 0)).get(5) == [3, 2, 1]


def test_an_interrupt_before_imap_starts_its_feeder_withdraws_the_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Landing before the feeder of a generator's stream starts, it would leave a stream
    that never gets its input, and the pool could never finish its work: withdrawn, it
    closes and joins at once."""
    pool = Pool(1)
    try:
        interrupt_in_post(pool, monkeypatch, lambda: None)
        with pytest.raises(KeyboardInterrupt):
            pool.imap(abs, iter(range(4)))
        pool.close()
        joined = threading.Thread(target=pool.join, daemon=True)
        joined.start()
        joined.join(10)
        assert not joined.is_alive(), "the pool still waits for the stream's input"
    finally:
        pool.terminate()


def interrupt_in_post(pool: Pool, monkeypatch: pytest.MonkeyPatch,
                      first: Callable[[], None]) -> None:
    """The next post of a stream to ``pool``'s manager raises KeyboardInterrupt once it is
    posted, after ``first()``."""
    inbox = pool._manager.inbox  # type: ignore[union-attr]
    real_post = type(inbox).post

    def post(self: Any, fn: Any, *args: Any) -> None:
        real_post(self, fn, *args)
        if getattr(fn, "__name__", "") == "start_stream":
            monkeypatch.setattr(type(inbox), "post", real_post)  # once
            first()
            raise KeyboardInterrupt

    monkeypatch.setattr(type(inbox), "post", post)


def wait_for_start(directory: Path, timeout: float = 10) -> None:
    """Until a task has said it started (or ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not list(directory.glob("started-*")) and time.monotonic() < deadline:
        time.sleep(0.01)  # a task process's file: no event to wait on


def test_a_withdrawn_generator_stream_ends_its_feeder() -> None:
    """The feeder of a withdrawn stream reads no more of its input and ends (else it waits
    for a read-ahead token forever, holding the iterable)."""
    with Pool(1) as pool:
        stream = pool.imap(abs, itertools.count())
        assert next(stream) == 0
        feeders = [t for t in threading.enumerate()
                   if t.name.startswith("p2ppool-imap-feeder-")]
        assert len(feeders) == 1
        stream._withdraw()  # type: ignore[attr-defined]  # what an interrupted next() does
        feeders[0].join(10)
        assert not feeders[0].is_alive()


def test_a_withdraw_interrupted_before_its_post_is_made_by_the_next_one() -> None:
    """Two quick interrupts: the first withdraws from get's wait and is interrupted before
    its post by the second; the caller's handler then withdraws (once)."""
    posted: list[int] = []

    class Inbox:
        calls = 0

        def post(self, fn: Any, *args: Any) -> None:
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt
            posted.append(args[0])

    manager = types.SimpleNamespace(inbox=Inbox(), cancel_job=lambda *a: None)
    result = ApplyResult(types.SimpleNamespace(_manager=manager), None, None)
    with pytest.raises(KeyboardInterrupt):
        result._withdraw()
    result._withdraw()
    result._withdraw()
    assert posted == [result._job]
