"""What p2ppool.Pool does beyond (or deliberately unlike) multiprocessing.Pool, on real processes.

* cloudpickle: lambdas, closures and ``__main__`` functions work, also with spawn;
* progress bars: on with ``progress=True`` / ``P2PPOOL_PROGRESS=1``, silent by default;
* lost processes (SIGKILL, ``os._exit``): retried on a fresh process, then ``ChunkFailed``
  naming the exit signal (multiprocessing waits forever there);
* results never hang: terminate fails pending results with ``BrokenPool``; a failing
  initializer fails the tasks; a raising callback does not stop the pool;
* the engine's own limits (task time, result size) and cancel.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import multiprocessing.pool
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import p2ppool
from p2ppool import defaults, payload
from p2ppool.execution.engine import ProcessEngine, TaskDone, TaskLost
from p2ppool.pool.executors import BatchDone, ChunkLost, LocalExecutor
from tests.fixtures import pool as fx

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 20.0
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def pool() -> Iterator[p2ppool.Pool]:
    with p2ppool.Pool(2, context=FORK) as shared:
        yield shared


def run_script(body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as ``__main__`` of a fresh interpreter (bounded by a timeout)."""
    script = f"import sys\nsys.path.insert(0, {ROOT!r})\n" + textwrap.dedent(body)
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=environment)


# --- cloudpickle ----------------------------------------------------------------------------


@pytest.mark.parametrize("context", [FORK, SPAWN], ids=["fork", "spawn"])
def test_lambdas_and_closures(context: Any) -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    with p2ppool.Pool(2, context=context) as pool:
        assert pool.map(lambda x: x * 3, range(5)) == [0, 3, 6, 9, 12]
        assert pool.apply(closure, (1,)) == 11
        assert list(pool.imap(closure, range(3))) == [10, 11, 12]
        assert pool.starmap(lambda a, b: a - b, [(5, 2)]) == [3]


MAIN_SCRIPT = """
from {module} import Pool
import multiprocessing

class MainError(Exception):
    pass

class Point:
    def __init__(self, x):
        self.x = x

def triple(x):
    return 3 * x

def boom(point):
    raise MainError(f"boom {{point.x}}")

if __name__ == "__main__":
    with Pool(2, context=multiprocessing.get_context("spawn")) as pool:
        print(pool.map(triple, range(4)), pool.apply(lambda: "lambda ok"))
        try:
            pool.apply(boom, (Point(3),))
        except MainError as exc:  # the very class of __main__, not a copy
            print("caught", exc, type(exc.__cause__).__name__)
        back = pool.apply(Point, (5,))
        print(type(back) is Point, back.x)
"""


def test_functions_and_classes_of_main_work_with_spawn() -> None:
    done = run_script(MAIN_SCRIPT.format(module="p2ppool"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[0, 3, 6, 9] lambda ok",
        "caught boom 3 RemoteTraceback",
        "True 5",
    ]


def test_multiprocessing_cannot_send_a_lambda_which_is_why_cloudpickle() -> None:
    with multiprocessing.pool.Pool(1, context=FORK) as pool:
        with pytest.raises(Exception, match="(?i)pickle"):
            pool.apply(lambda: 1)


def test_the_function_travels_once_per_process_not_per_chunk() -> None:
    with p2ppool.Pool(1, context=FORK) as pool:
        assert pool.map(fx.CountingCallable(), range(12), 1) == [1] * 12
        assert pool.apply(fx.CountingCallable()) == 1  # same bytes: the process keeps it


# --- progress -------------------------------------------------------------------------------


def test_progress_bar_shows_items_done_and_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    with p2ppool.Pool(2, context=FORK, progress=True) as pool:
        assert pool.map(fx.square, range(40)) == [x * x for x in range(40)]
        assert sorted(pool.imap_unordered(fx.square, range(7), 2)) == sorted(
            x * x for x in range(7)
        )
        assert list(pool.imap(fx.square, (x for x in range(5)))) == [0, 1, 4, 9, 16]
        assert pool.starmap_async(fx.add, [(1, 2)] * 3).get(WAIT_S) == [3, 3, 3]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "40/40" in captured.err
    assert "7/7" in captured.err
    assert "3/3" in captured.err
    assert "5item" in captured.err  # unknown total: counts up


def test_progress_from_the_environment_and_silence_by_default() -> None:
    body = """
    from p2ppool import Pool
    from tests.fixtures import pool as fx
    if __name__ == "__main__":
        with Pool(2) as pool:
            print(sum(pool.map(fx.square, range(100))))
            print(len(list(pool.imap(fx.square, range(30)))))
    """
    on = run_script(body, {"P2PPOOL_PROGRESS": "1"})
    assert on.returncode == 0, on.stderr
    assert on.stdout.split() == ["328350", "30"]
    assert "100/100" in on.stderr and "30/30" in on.stderr and "item/s" in on.stderr
    off = run_script(body)
    assert off.returncode == 0
    assert off.stdout.split() == ["328350", "30"]
    assert off.stderr == ""


# --- lost processes -------------------------------------------------------------------------


@pytest.mark.parametrize("func,args,cause", [
    (fx.kill_self, (None,), "SIGKILL(-9)"),
    (fx.exit_hard, (3,), "exit code 3"),
])
def test_a_lost_process_is_retried_then_fails_the_chunk(func: Any, args: Any, cause: str) -> None:
    with p2ppool.Pool(2, context=FORK, max_attempts=2) as pool:
        with pytest.raises(p2ppool.ChunkFailed) as info:
            pool.apply(func, args)
        assert info.value.attempts == 2
        assert len(info.value.causes) == 2
        assert all(cause in c and c.startswith("local: process ") for c in info.value.causes)
        # the pool replaced the process and keeps working
        assert pool.map(fx.square, range(10)) == [x * x for x in range(10)]


def test_a_crash_fails_only_its_own_chunk_of_a_map() -> None:
    with p2ppool.Pool(2, context=FORK, max_attempts=1) as pool:
        results = [pool.apply_async(fx.square, (i,)) for i in range(5)]
        crashed = pool.apply_async(fx.kill_self)
        more = pool.map_async(fx.square, range(20), 1)
        assert [r.get(WAIT_S) for r in results] == [0, 1, 4, 9, 16]
        with pytest.raises(p2ppool.ChunkFailed, match="SIGKILL"):
            crashed.get(WAIT_S)
        assert more.get(WAIT_S) == [x * x for x in range(20)]


def test_a_failing_initializer_fails_tasks_instead_of_hanging() -> None:
    with p2ppool.Pool(1, context=FORK, initializer=fx.raise_custom, initargs=("init",)) as pool:
        with pytest.raises(fx.CustomError, match="custom 'init'") as info:
            pool.apply(fx.square, (2,))
        assert "raise_custom" in str(info.value.__cause__)
        with pytest.raises(fx.CustomError):
            pool.map(fx.square, range(3))


# --- never hang, never go quiet -------------------------------------------------------------


def test_terminate_fails_pending_results_with_broken_pool(tmp_path: Path) -> None:
    pool = p2ppool.Pool(1, context=FORK)
    stuck = pool.apply_async(fx.wait_for_file, (str(tmp_path / "never"),))
    queued = pool.map_async(fx.square, range(4))
    it = pool.imap(fx.square, range(3))
    pool.terminate()
    for result in (stuck, queued):
        with pytest.raises(p2ppool.BrokenPool, match="terminated"):
            result.get(WAIT_S)
    with pytest.raises(p2ppool.BrokenPool):
        list(it)
    pool.join()


def test_calls_after_the_manager_stopped_fail_instead_of_hanging() -> None:
    # The exit hook (or garbage collection) stops the manager behind the Pool's back.
    from p2ppool.pool.manager import _terminate_manager

    pool = p2ppool.Pool(1, context=FORK)
    manager = pool._manager
    assert manager is not None
    _terminate_manager(manager)
    assert not manager.thread.is_alive()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(fx.square, (1,))
    with pytest.raises(ValueError, match="Pool not running"):
        pool.imap(fx.square, range(3))
    pool.close()
    pool.join()


def test_a_raising_callback_is_reported_and_the_pool_goes_on(
    pool: p2ppool.Pool, capfd: pytest.CaptureFixture[str]
) -> None:
    def bad_callback(value: Any) -> None:
        raise RuntimeError("callback broke")

    result = pool.apply_async(fx.square, (3,), callback=bad_callback)
    assert result.get(WAIT_S) == 9
    assert pool.apply(fx.square, (4,)) == 16
    assert "callback broke" in capfd.readouterr().err


@pytest.mark.parametrize("bad", [0, -1])
def test_map_rejects_chunksize_below_one(pool: p2ppool.Pool, bad: int) -> None:
    # multiprocessing silently returns [None] * len(items) here; p2ppool refuses.
    with pytest.raises(ValueError, match="Chunksize must be 1"):
        pool.map(fx.square, range(3), bad)


def test_imap_reads_ahead_a_bounded_number_of_chunks(tmp_path: Path) -> None:
    gate = str(tmp_path / "go")
    source = fx.Recorder()  # endless
    with p2ppool.Pool(2, context=FORK) as pool:
        it = pool.imap(fx.wait_for_file, (gate for _ in source), 1)
        # nothing can finish before the gate opens: the feeder stops at the read-ahead bound
        bound = 2 + defaults.READ_AHEAD_PER_SLOT * 2 * defaults.ENGINE_TASKS_PER_PROCESS
        deadline = time.monotonic() + WAIT_S
        while source.taken < bound and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # give an unbounded reader the chance to show itself
        assert source.taken == bound
        Path(gate).touch()
        assert [it.next(timeout=WAIT_S) for _ in range(3)] == [None] * 3


def test_imap_of_a_list_reads_ahead_a_bounded_number_of_chunks(tmp_path: Path) -> None:
    # A list, tuple or range is read by the manager itself (no feeder thread), as far
    # ahead as an iterator would be.
    gate = str(tmp_path / "go")
    with p2ppool.Pool(2, context=FORK) as pool:
        manager = pool._manager
        assert manager is not None
        it = pool.imap(fx.wait_for_file, [gate] * 100, 1)
        bound = 2 + defaults.READ_AHEAD_PER_SLOT * 2 * defaults.ENGINE_TASKS_PER_PROCESS
        deadline = time.monotonic() + WAIT_S
        while len(manager.chunks) < bound and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # give an unbounded reader the chance to show itself
        assert len(manager.chunks) == bound
        assert [t.name for t in threading.enumerate() if "feeder" in t.name] == []
        Path(gate).touch()
        assert list(it) == [None] * 100


def test_imap_of_a_list_whose_items_do_not_pickle_fails_each_in_order(
    pool: p2ppool.Pool,
) -> None:
    # Each chunk fails as it is handed out; the next one is read between turns, so a long
    # run of such chunks neither recurses nor stops early.
    it = pool.imap(fx.square, [threading.Lock()] * 2000)
    failures = 0
    for _ in range(2000):
        with pytest.raises(TypeError):
            next(it)
        failures += 1
    assert failures == 2000
    with pytest.raises(StopIteration):
        next(it)


def test_a_function_that_does_not_pickle_fails_every_chunk_with_a_short_traceback(
    pool: p2ppool.Pool,
) -> None:
    lock = threading.Lock()
    it = pool.imap(lambda x: (lock, x), range(2000))
    for _ in range(2000):
        with pytest.raises(TypeError) as raised:
            next(it)
    # One error object serves every chunk; its traceback must not grow with each raise.
    assert len(traceback.extract_tb(raised.value.__traceback__)) < 20


def test_a_long_run_of_failing_chunks_does_not_hold_up_the_manager(
    pool: p2ppool.Pool,
) -> None:
    # Each failed chunk earns the credit to read the next; that reading waits for the next
    # turn, so other calls are served while a long input is still being read.
    manager = pool._manager
    assert manager is not None
    it = pool.imap(fx.square, [threading.Lock()] * 200_000)
    assert pool.apply(fx.square, (3,)) == 9
    assert any(job.reader is not None for job in list(manager.jobs.values())), (
        "the manager read the whole input before it served the apply"
    )
    with pytest.raises(TypeError):
        next(it)


def test_imap_unordered_input_error_comes_after_the_earlier_chunks(pool: p2ppool.Pool) -> None:
    it = pool.imap_unordered(fx.square, fx.raising_iter(5, KeyError("broke")), 2)
    got: List[int] = []
    with pytest.raises(KeyError):
        for value in it:
            got.append(value)
    assert sorted(got) == [0, 1, 4, 9]


def test_an_unclosed_pool_warns_and_is_terminated_when_collected() -> None:
    pool = p2ppool.Pool(1, context=FORK)
    manager = pool._manager
    assert manager is not None
    with pytest.warns(ResourceWarning, match="unclosed running p2ppool pool"):
        del pool
        gc.collect()
    manager.thread.join(WAIT_S)
    assert not manager.thread.is_alive()


def test_options_reach_the_pool() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        p2ppool.Pool(1, no_such_option=1)
    with pytest.raises(p2ppool.ConfigError, match="start_method"):
        p2ppool.Pool(1, start_method="teleport")
    with p2ppool.Pool(1, start_method="spawn") as pool:
        assert pool._ctx.get_start_method() == "spawn"
        assert pool.apply(fx.square, (3,)) == 9


# --- the engine on its own ------------------------------------------------------------------


def _collect(engine: Any, count: int) -> List[Any]:
    """Events of a ProcessEngine (or a LocalExecutor around one) until ``count`` came."""
    events: List[Any] = []
    deadline = time.monotonic() + WAIT_S
    while len(events) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {events} arrived"
        engine_deadline = engine.next_deadline()
        timeout = remaining if engine_deadline is None else max(
            0.0, min(remaining, engine_deadline - time.monotonic())
        )
        ready = multiprocessing.connection.wait(engine.readables(), timeout)
        events += engine.collect(ready or None)
    return events


def _task(func: Any, *args: Any) -> tuple[bytes, bytes]:
    return payload.dumps(func), payload.dumps(payload.apply_call(args, {}))


def test_engine_speaks_bytes_and_runs_the_function_once_sent() -> None:
    engine = ProcessEngine(2, mp_context=FORK)
    try:
        func_blob, _ = _task(fx.square)
        for i in range(6):
            engine.submit(i, "job", func_blob, payload.dumps(payload.apply_call((i,), {})))
        events = _collect(engine, 6)
        assert all(isinstance(e, TaskDone) and e.ok and isinstance(e.blob, bytes) for e in events)
        assert sorted(payload.loads(e.blob) for e in events) == [i * i for i in range(6)]
    finally:
        engine.terminate()


def test_engine_time_limit_kills_the_process_tree() -> None:
    engine = ProcessEngine(1, mp_context=FORK, max_task_seconds=0.3)
    try:
        engine.submit(1, "k", *_task(fx.burn, 30.0))
        [lost] = _collect(engine, 1)
        assert lost == TaskLost(1, "exceeded the 0.3 s task time limit", True)
        engine.submit(2, "k2", *_task(fx.square, 5))
        [done] = _collect(engine, 1)
        assert isinstance(done, TaskDone) and payload.loads(done.blob) == 25
    finally:
        engine.terminate()


def test_engine_result_size_limit() -> None:
    engine = ProcessEngine(1, mp_context=FORK, max_result_bytes=1000)
    try:
        engine.submit(1, "k", *_task(fx.echo, b"x" * 5000))
        [done] = _collect(engine, 1)
        assert isinstance(done, TaskDone) and not done.ok
        error = payload.loads(done.blob)
        assert isinstance(error, p2ppool.TaskLimitExceeded)
        assert "over the limit of 1,000 bytes" in str(error)
    finally:
        engine.terminate()


def test_engine_cancel_kills_and_replaces_the_child(tmp_path: Path) -> None:
    engine = ProcessEngine(1, mp_context=FORK)
    try:
        [old_pid] = engine.pids()
        engine.submit(1, "k", *_task(fx.wait_for_file, str(tmp_path / "never")))
        engine.cancel([1])
        [new_pid] = engine.pids()
        assert new_pid != old_pid
        engine.submit(2, "k", *_task(fx.square, 4))
        [done] = _collect(engine, 1)
        assert done.task_id == 2 and payload.loads(done.blob) == 16
    finally:
        engine.terminate()


def _warm(engine: ProcessEngine, count: int = 10) -> None:
    """Run tiny tasks one by one: an engine that has seen only short tasks prefetches."""
    for i in range(count):
        engine.submit(10_000 + i, "warm", *_task(fx.square, i))
        [done] = _collect(engine, 1)
        assert isinstance(done, TaskDone) and done.ok


def test_engine_takes_a_prefetched_task_back_for_an_idle_child(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # However loaded the machine, tiny tasks count as short here (prefetch is on).
    monkeypatch.setattr(defaults, "ENGINE_PREFETCH_BELOW_S", 60.0)
    slow, other = str(tmp_path / "slow"), str(tmp_path / "other")
    engine = ProcessEngine(2, mp_context=FORK)
    try:
        _warm(engine)
        engine.submit(1, "w", *_task(fx.wait_for_file, slow))   # child A, held
        engine.submit(2, "w", *_task(fx.wait_for_file, other))  # child B, held
        engine.submit(3, "q", *_task(fx.square, 3))  # prefetched behind B (started last)
        engine.submit(4, "q", *_task(fx.square, 4))  # prefetched behind A
        assert engine.taken_back == 0
        Path(other).touch()  # B finishes 2 and 3, goes idle: 4 must not wait behind A's 1
        done = sorted(e.task_id for e in _collect(engine, 3))
        assert done == [2, 3, 4] and engine.taken_back == 1
        Path(slow).touch()  # A finishes 1, then reads 4's message and skips it
        [first] = _collect(engine, 1)
        assert first.task_id == 1
        for i in range(5, 25):  # both children go on normally
            engine.submit(i, "q", *_task(fx.square, i))
        later = _collect(engine, 20)
        assert sorted(e.task_id for e in later) == list(range(5, 25))
        assert all(isinstance(e, TaskDone) and e.ok for e in later)
    finally:
        engine.terminate()


def test_engine_takes_back_again_from_a_child_still_stuck_behind_the_same_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The second take-back from child A comes before A has read the first one's message.
    monkeypatch.setattr(defaults, "ENGINE_PREFETCH_BELOW_S", 60.0)
    slow, other, other2 = (str(tmp_path / n) for n in ("slow", "other", "other2"))
    engine = ProcessEngine(2, mp_context=FORK)
    try:
        _warm(engine)
        engine.submit(1, "w", *_task(fx.wait_for_file, slow))   # A, held to the end
        engine.submit(2, "w", *_task(fx.wait_for_file, other))  # B, held
        engine.submit(3, "q", *_task(fx.square, 3))  # behind B
        engine.submit(4, "q", *_task(fx.square, 4))  # behind A
        Path(other).touch()
        assert sorted(e.task_id for e in _collect(engine, 3)) == [2, 3, 4]  # 4 went to B
        engine.submit(5, "w", *_task(fx.wait_for_file, other2))  # B (idle), held
        engine.submit(6, "q", *_task(fx.square, 6))  # behind B (its task started last)
        engine.submit(7, "q", *_task(fx.square, 7))  # behind A's task 1, again
        Path(other2).touch()
        assert sorted(e.task_id for e in _collect(engine, 3)) == [5, 6, 7]
        assert engine.taken_back == 2
        Path(slow).touch()  # A finishes 1, skips 4 and 7, and goes on
        [first] = _collect(engine, 1)
        assert first.task_id == 1
        for i in range(8, 28):
            engine.submit(i, "q", *_task(fx.square, i))
        later = _collect(engine, 20)
        assert sorted(e.task_id for e in later) == list(range(8, 28))
        assert all(isinstance(e, TaskDone) and e.ok for e in later)
    finally:
        engine.terminate()


@pytest.mark.parametrize("context", [FORK, SPAWN], ids=["fork", "spawn"])
def test_engine_runs_each_task_once_while_taking_prefetched_ones_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, context: Any) -> None:
    monkeypatch.setattr(defaults, "ENGINE_PREFETCH_BELOW_S", 60.0)
    engine = ProcessEngine(2, mp_context=context)
    rounds, per_round = 50, 4  # each round fills the engine, then lets it run dry
    durations = random.Random(12).choices([0.0, 0.0, 0.0, 0.01], k=rounds * per_round)
    try:
        _warm(engine, 3)
        results: List[Any] = []
        for start in range(0, rounds * per_round, per_round):
            for i in range(start, start + per_round):
                path = str(tmp_path / f"t{i}")
                engine.submit(i, "once", *_task(fx.run_once, path, durations[i]))
            got = _collect(engine, per_round)
            assert len(got) == per_round
            results += got
        assert all(isinstance(e, TaskDone) for e in results), results
        failures = [payload.loads(e.blob) for e in results if not e.ok]
        assert not failures  # a FileExistsError would mean a task ran twice
        assert sorted(e.task_id for e in results) == list(range(rounds * per_round))
        assert len(os.listdir(tmp_path)) == rounds * per_round
        assert engine.taken_back > 0  # the rounds did make it take tasks back
    finally:
        engine.terminate()


def test_engine_close_lets_children_exit() -> None:
    engine = ProcessEngine(2, mp_context=FORK)
    processes = [c.process for c in engine._children]
    engine.close()
    engine.join(WAIT_S)
    assert [p.exitcode for p in processes] == [0, 0]


class _SilentExecutor:
    """An executor that takes chunks and never answers (a peer about to be lost)."""

    def __init__(self, name: str, slots: int) -> None:
        self.name, self._slots, self._readables = name, slots, []
        self.ran: List[int] = []

    def slots(self) -> int:
        return self._slots

    def readables(self) -> List[Any]:
        return self._readables

    def has_events(self) -> bool:
        return False

    def next_deadline(self) -> None:
        return None

    def run(self, chunk_id: int, *_: Any) -> None:
        self.ran.append(chunk_id)

    def batch_width(self) -> int:
        return 0

    def run_batch(self, chunk_ids: Any, *_: Any) -> None:
        self.ran.extend(chunk_ids)

    def cancel(self, chunk_ids: Any) -> None:
        pass

    def collect(self, ready: Any) -> List[Any]:
        return []

    def close(self) -> None:
        pass

    def join(self, timeout: float) -> None:
        pass

    def terminate(self) -> None:
        pass


def _on_manager(pool: p2ppool.Pool, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` on the pool's manager thread and wait until it has run."""
    done = threading.Event()
    manager = pool._manager
    assert manager is not None

    def call() -> None:
        try:
            fn(*args)
        finally:
            done.set()

    manager.inbox.post(call)
    assert done.wait(WAIT_S)


def _after_a_full_turn(pool: p2ppool.Pool) -> None:
    """Wait until the manager has finished the turn that ran the calls posted so far.

    A call posted to the inbox runs at the start of a turn, before that turn reads imap
    inputs and dispatches them, so one no-op proves only that the calls before it ran. A
    second no-op, posted once the first has run, runs in a later turn: by then the first
    one's turn, reads and dispatch included, is over.
    """
    _on_manager(pool, lambda: None)
    _on_manager(pool, lambda: None)


def test_a_lost_executor_takes_its_read_ahead_back(tmp_path: Path) -> None:
    # Peers that join and leave for hours must not make a running imap read ever further
    # ahead: what a peer added to the read-ahead goes when it goes.
    gates = [str(tmp_path / f"go{i}") for i in range(60)]
    with p2ppool.Pool(1, context=FORK) as pool:
        manager = pool._manager
        assert manager is not None
        local = defaults.READ_AHEAD_PER_SLOT * defaults.ENGINE_TASKS_PER_PROCESS
        peer = _SilentExecutor("peer", 3)
        _on_manager(pool, manager.add_executor, peer)
        it = pool.imap(fx.wait_for_file, gates, 1)
        with_peer = 2 + local + defaults.READ_AHEAD_PER_SLOT * 3
        _after_a_full_turn(pool)  # start_stream, the first reads and their dispatch have run
        assert len(manager.chunks) == with_peer and peer.ran
        _on_manager(pool, manager.remove_executor, "peer", "gone")
        # The peer's chunks go back to the line, wherever the scheduler had placed them (the
        # executor with the most free slots first), behind local ones holding later gates:
        # open every gate read before the peer left, so none waits behind another.
        for gate in gates[:with_peer]:
            Path(gate).touch()
        for i in range(len(gates)):  # results come back one by one ...
            Path(gates[i]).touch()
            assert it.next(timeout=WAIT_S) is None
            _after_a_full_turn(pool)
            read_ahead = len(manager.chunks)
            if i >= with_peer:  # ... and, the peer's share taken back, stay bounded
                assert read_ahead <= 2 + local, (i, read_ahead)
        with pytest.raises(StopIteration):
            next(it)


def test_engine_children_import_shipped_modules_and_a_new_bundle_replaces_them(
        tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for directory, value in ((first, 1), (second, 2)):
        directory.mkdir()
        (directory / "shipped_for_engine_test.py").write_text(f"VALUE = {value}\n")
    ask = "__import__('shipped_for_engine_test').VALUE"
    engine = ProcessEngine(1, mp_context=FORK, code_dir=str(first))
    try:
        engine.submit(1, "k", *_task(eval, ask))
        [done] = _collect(engine, 1)
        assert payload.loads(done.blob) == 1
        [old_pid] = engine.pids()
        engine.set_code_dir(str(second))  # never a reload into a live interpreter
        [new_pid] = engine.pids()
        assert new_pid != old_pid and engine.code_dir == str(second)
        engine.submit(2, "k", *_task(eval, ask))
        [done] = _collect(engine, 1)
        assert done.task_id == 2 and payload.loads(done.blob) == 2
    finally:
        engine.terminate()


def test_the_local_executor_runs_a_batch_as_one_task_and_reports_it_whole() -> None:
    # The scheduler sends no batch to it (width 0), but it keeps the Executor contract.
    executor = LocalExecutor(ProcessEngine(1, mp_context=FORK))
    try:
        assert executor.batch_width() == 0
        func_blob = payload.dumps(fx.square)
        calls = [payload.map_call([1, 2]), payload.map_call([3])]
        executor.run_batch([7, 8], func_blob, func_blob,
                           payload.dumps(payload.batch_call(calls)))
        [done] = _collect(executor, 1)
        assert isinstance(done, BatchDone) and done.chunk_ids == [7, 8] and done.ok
        seconds, outcomes = payload.loads(done.blob)
        assert outcomes == [(True, [1, 4]), (True, [9])]
        # A batch whose process dies loses each of its chunks, uncharged, last first.
        exit_blob = payload.dumps(fx.exit_hard)
        executor.run_batch([9, 10], exit_blob, exit_blob, payload.dumps(
            payload.batch_call([payload.apply_call((3,), {}), payload.apply_call((4,), {})])))
        lost = _collect(executor, 2)
        assert [(type(e), e.chunk_id, e.charged) for e in lost] == [
            (ChunkLost, 10, False), (ChunkLost, 9, False)]
        assert "exit code 3" in lost[0].cause
    finally:
        executor.terminate()
