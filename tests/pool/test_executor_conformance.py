"""One conformance suite, run against ``concurrent.futures.ProcessPoolExecutor`` and
``p2ppool.ProcessPoolExecutor`` (locally, and on a LocalCluster with ``fallback=None``).

The cases are CPython's ``Lib/test/test_concurrent_futures/`` (``executor.py``,
``test_shutdown.py``, ``test_wait.py``, ``test_as_completed.py``, ``test_init.py``,
``test_process_pool.py``), rewritten for pytest: a task that must keep running waits for a
file the test creates instead of sleeping, canned futures are made with the public
``Future`` API, and the fresh-interpreter cases run ``python -c`` as ``assert_python_ok``
does.  The ``stdlib`` case proves a test right; the ``p2ppool`` and ``cluster`` cases prove
the drop-in matches.  Where p2ppool differs on purpose (a killed process does not break
the executor; lambdas work) the test says so and checks both behaviours.

Executors are shared within a module where a test leaves them running and idle
(``executor``); tests that shut one down, break it or configure it make their own with
``executor_factory``.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import inspect
import io
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import p2ppool
from tests.fixtures import executor_tasks as tasks
from tests.fixtures import pool as fx
from tests.fixtures.cluster import is_running

FORK = multiprocessing.get_context("fork")
FORKSERVER = multiprocessing.get_context("forkserver")
WAIT_S = 20.0  # every wait in this file is bounded by this
ROOT = Path(__file__).resolve().parents[2]


def _stdlib(*args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("mp_context", FORK)
    return cf.ProcessPoolExecutor(*args, **kwargs)


def _p2ppool(*args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("mp_context", FORK)
    return p2ppool.ProcessPoolExecutor(*args, **kwargs)


def _cluster(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Executors on the module's LocalCluster (2 workers x 2 slots) that never fall back to
    local processes, so that only the workers can make a test pass."""
    cluster = request.getfixturevalue("local_cluster")

    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("mp_context", FORK)
        return p2ppool.ProcessPoolExecutor(*args, **{**cluster.options, "fallback": None,
                                                     **kwargs})

    return make


#: name -> (pytest request -> factory taking concurrent.futures' arguments)
EXECUTOR_KINDS: Dict[str, Callable[[pytest.FixtureRequest], Callable[..., Any]]] = {
    "stdlib": lambda request: _stdlib,
    "p2ppool": lambda request: _p2ppool,
    "cluster": _cluster,
}

#: the module each kind imports ProcessPoolExecutor from, in a fresh interpreter
MODULES = {"stdlib": "concurrent.futures", "p2ppool": "p2ppool", "cluster": "p2ppool"}

HAS_BUFFERSIZE = "buffersize" in inspect.signature(cf.ProcessPoolExecutor.map).parameters


@pytest.fixture(scope="module", params=sorted(EXECUTOR_KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def make_executor(kind: str, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """The kind's factory itself (the caller owns what it makes)."""
    return EXECUTOR_KINDS[kind](request)


@pytest.fixture(scope="module")
def executor_factory(make_executor: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Make executors of this kind; each is shut down at the end of the module."""
    made: List[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        executor = make_executor(*args, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def executor(executor_factory: Callable[..., Any]) -> Any:
    """A shared executor of 2 processes (tests leave it running and idle)."""
    return executor_factory(2)


@pytest.fixture
def gate(tmp_path: Path) -> Callable[[str], str]:
    """``gate(name)`` -> a path a task waits for; the test creates it to let the task go."""
    return lambda name: str(tmp_path / name)


def _needs_buffersize(kind: str) -> None:
    if kind == "stdlib" and not HAS_BUFFERSIZE:
        pytest.skip(f"concurrent.futures has map(buffersize=) from Python 3.14, not "
                    f"{sys.version.split()[0]}")


# Canned futures (CPython's util.create_future), made with the public API only.

def _cancelled() -> cf.Future[Any]:
    future: cf.Future[Any] = cf.Future()
    future.cancel()
    return future


def _cancelled_and_notified() -> cf.Future[Any]:
    future = _cancelled()
    future.set_running_or_notify_cancel()
    return future


def _exception() -> cf.Future[Any]:
    future: cf.Future[Any] = cf.Future()
    future.set_exception(OSError())
    return future


def _successful() -> cf.Future[Any]:
    future: cf.Future[Any] = cf.Future()
    future.set_result(42)
    return future


# --- submit and map (executor.py) -------------------------------------------------------------


def test_submit(executor: Any) -> None:
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=WAIT_S) == 256


def test_submit_keyword(executor: Any) -> None:
    assert executor.submit(tasks.mul, 2, y=8).result(timeout=WAIT_S) == 16
    future = executor.submit(tasks.capture, 1, self=2, fn=3)
    assert future.result(timeout=WAIT_S) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=tasks.capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


def test_map(executor: Any) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_exception(executor: Any) -> None:
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(executor_factory: Any, gate: Any) -> None:
    executor = executor_factory(2)
    assert executor.submit(abs, -1).result(timeout=WAIT_S) == 1  # processes/peers are up
    go = gate("go")
    results: List[Any] = []
    it = executor.map(fx.quick_or_wait, [None, None, go], timeout=1.5)
    with pytest.raises(cf.TimeoutError):
        for result in it:
            results.append(result)
    assert results == ["quick", "quick"]
    with pytest.raises(StopIteration):  # the calls left are cancelled: the iterator is done
        next(it)
    Path(go).touch()  # let the running one end


def test_map_chunksize(executor: Any) -> None:
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (6, 50, 40):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        list(executor.map(pow, range(40), range(40), chunksize=-1))


def test_shutdown_race_issue12456(executor_factory: Any) -> None:
    executor = executor_factory(2)
    executor.map(str, [2] * 3)
    executor.shutdown()


def test_no_stale_references(executor: Any) -> None:
    # Issue #16284: the executor keeps no reference to a finished task's function.
    my_object = tasks.MyObject()
    collected = threading.Event()
    callback = weakref.ref(my_object, lambda obj: collected.set())  # noqa: F841
    executor.submit(my_object.my_method).result(timeout=WAIT_S)
    del my_object
    assert collected.wait(timeout=WAIT_S), "stale reference not collected"


def test_max_workers_negative(make_executor: Any) -> None:
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            make_executor(max_workers=number)


def test_free_reference(executor: Any) -> None:
    # Issue #14406: the result iterator keeps no reference to the results it yielded.
    for obj in executor.map(tasks.make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj
        deadline = time.monotonic() + WAIT_S
        while ref() is not None:  # the thread that set the future may hold it a moment
            assert time.monotonic() < deadline, "a yielded result is still referenced"
            gc.collect()
            time.sleep(0.005)


def test_traceback(executor: Any) -> None:
    # The child's traceback is in the exception raised here (its __cause__'s .tb).
    future = executor.submit(tasks.raise_runtime_error_123)
    with pytest.raises(RuntimeError) as info:
        future.result(timeout=WAIT_S)
    assert type(info.value) is RuntimeError and info.value.args == (123,)
    assert "raise RuntimeError(123)  # some comment" in info.value.__cause__.tb  # type: ignore


# --- map(buffersize=) (Python 3.14's executor.py cases) -------------------------------------


def test_map_buffersize_validation(executor: Any, kind: str) -> None:
    _needs_buffersize(kind)
    for bad in ("foo", 2.0):
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            executor.map(str, range(4), buffersize=bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
            executor.map(str, range(4), buffersize=bad)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_buffersize(executor: Any, kind: str, chunksize: int) -> None:
    _needs_buffersize(kind)
    ints = range(4)
    for buffersize in (1, 2, len(ints), len(ints) * 2):
        results = executor.map(str, ints, buffersize=buffersize, chunksize=chunksize)
        assert list(results) == ["0", "1", "2", "3"]
        results = executor.map(tasks.mul, ints, ints, buffersize=buffersize,
                               chunksize=chunksize)
        assert list(results) == [0, 1, 4, 9]
    assert next(executor.map(str, [], buffersize=2), None) is None
    assert next(executor.map(str, buffersize=2), None) is None


def test_map_buffersize_on_infinite_iterables(executor: Any, kind: str) -> None:
    _needs_buffersize(kind)
    results = executor.map(str, itertools.count(), buffersize=2)
    assert [next(results) for _ in range(3)] == ["0", "1", "2"]
    results = executor.map(tasks.mul, itertools.count(), itertools.count(), buffersize=2)
    assert [next(results) for _ in range(3)] == [0, 1, 4]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_buffersize_reads_the_input_lazily(executor: Any, kind: str, chunksize: int) -> None:
    _needs_buffersize(kind)
    source = fx.Recorder()  # endless; counts what was taken from it
    results = executor.map(fx.square, source, buffersize=3, chunksize=chunksize)
    for taken in range(1, 41):
        assert next(results) == (taken - 1) ** 2
        # at most the chunk being yielded, 3 chunks in the buffer and 1 more being read
        assert source.taken <= taken + (3 + 2) * chunksize, (taken, source.taken)
    results.close()


def test_map_buffersize_when_buffer_is_full(executor_factory: Any, kind: str) -> None:
    _needs_buffersize(kind)
    executor = executor_factory(2)
    ints = iter(range(4))
    executor.map(str, ints, buffersize=2)
    executor.shutdown(wait=True)  # wait for the tasks to complete
    assert next(ints) == 2, "should have fetched only `buffersize` elements from `ints`"


# --- shutdown (test_shutdown.py) ----------------------------------------------------------


def test_run_after_shutdown(executor_factory: Any) -> None:
    executor = executor_factory(2)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)
    with pytest.raises(RuntimeError):
        executor.map(abs, [1])


def test_hang_issue12364(executor_factory: Any) -> None:
    executor = executor_factory(2)
    futures = [executor.submit(time.sleep, 0.01) for _ in range(30)]
    executor.shutdown()
    for future in futures:
        assert future.result(timeout=0) is None


def test_cancel_futures(executor_factory: Any, gate: Any) -> None:
    executor = executor_factory(2)
    started, go = gate("started"), gate("go")
    first = executor.submit(tasks.started_then_wait, started, go)
    fx.wait_for_file(started)  # one surely runs: it is not cancelled
    futures = [first] + [executor.submit(time.sleep, 0.1) for _ in range(50)]
    executor.shutdown(wait=False, cancel_futures=True)
    Path(go).touch()
    for future in futures:  # each ends: cancelled (maybe later, by the stdlib's thread) or run
        try:
            future.result(timeout=WAIT_S)
        except cf.CancelledError:
            pass
    # Not all of them, but with few processes most were cancelled ...
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 20
    # ... and the others ran to their end.
    others = [f for f in futures if not f.cancelled()]
    assert first in others and all(f.exception() is None for f in others)


def test_hang_gh94440(make_executor: Any) -> None:
    # shutdown(wait=True) returns although a future was submitted and cancelled just before.
    executor = make_executor(1)
    assert executor.submit(int).result(timeout=WAIT_S) == 0
    executor.submit(int).cancel()
    stopper = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(WAIT_S)
    assert not stopper.is_alive(), "timed out waiting for shutdown"


def test_context_manager_shutdown(make_executor: Any, kind: str) -> None:
    with make_executor(2) as executor:
        assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        pids = set(executor.map(fx.pid, range(8)))
    with pytest.raises(RuntimeError):
        executor.submit(abs, 1)
    if kind != "cluster":  # a worker's task processes are its own
        assert not [p for p in pids if is_running(p)], "processes outlived the executor"


def test_del_shutdown(make_executor: Any) -> None:
    executor = make_executor(2)
    results = executor.map(abs, range(-5, 5))
    del executor
    gc.collect()
    # Every result was computed, although the executor went away before they were asked for.
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]


def test_shutdown_no_wait(make_executor: Any) -> None:
    executor = make_executor(2)
    results = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]


def _python(script: str, kind: str, request: pytest.FixtureRequest
            ) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as ``python -c`` (CPython's assert_python_ok), the cluster kind with
    its LocalCluster in the ``P2PPOOL_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if kind == "cluster":
        env.update(request.getfixturevalue("local_cluster").env, P2PPOOL_FALLBACK="none",
                   P2PPOOL_CONFIG=os.devnull)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize("shutdown", ["", "t.shutdown(wait=False)"])
def test_interpreter_shutdown(kind: str, request: pytest.FixtureRequest, shutdown: str,
                              tmp_path: Path) -> None:
    # Work submitted and never waited for still runs to its end at interpreter exit.
    if shutdown and kind == "stdlib":
        pytest.skip("shutdown(wait=False) then exit hangs concurrent.futures (gh-83386)")
    ran = tmp_path / "ran"
    done = _python(f"""
        from {MODULES[kind]} import ProcessPoolExecutor
        from tests.fixtures.executor_tasks import sleep_and_print
        if __name__ == "__main__":
            t = ProcessPoolExecutor(2)
            t.submit(sleep_and_print, 0.3, "apple", {str(ran)!r})
            {shutdown}
    """, kind, request)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert ran.exists()
    # A local process prints into our stdout; a worker's task process into the worker's log.
    assert done.stdout.strip() == ("" if kind == "cluster" else "apple")


def test_submit_after_interpreter_shutdown(kind: str, request: pytest.FixtureRequest) -> None:
    done = _python(f"""
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        from {MODULES[kind]} import ProcessPoolExecutor
        if __name__ == "__main__":
            t = ProcessPoolExecutor(2)
            t.submit(id, 42).result()
    """, kind, request)
    assert "RuntimeError: cannot schedule new futures" in done.stderr
    assert done.stdout.strip() == "runtime-error"


# --- wait (test_wait.py) ----------------------------------------------------------------------


def test_20369(executor: Any) -> None:
    future = executor.submit(tasks.mul, 1, 2)
    done, not_done = cf.wait([future, future], return_when=cf.ALL_COMPLETED)
    assert done == {future} and not_done == set()


def test_first_completed(executor: Any, gate: Any) -> None:
    go = gate("go")
    cancelled = _cancelled()
    future1 = executor.submit(tasks.mul, 21, 2)
    future2 = executor.submit(fx.wait_for_file, go)
    try:
        done, not_done = cf.wait([cancelled, future1, future2], timeout=WAIT_S,
                                 return_when=cf.FIRST_COMPLETED)
        assert done == {future1}
        assert not_done == {cancelled, future2}
    finally:
        Path(go).touch()
    future2.result(timeout=WAIT_S)


def test_first_completed_some_already_completed(executor: Any, gate: Any) -> None:
    go = gate("go")
    cancelled, successful = _cancelled_and_notified(), _successful()
    future1 = executor.submit(fx.wait_for_file, go)
    try:
        finished, pending = cf.wait([cancelled, successful, future1], timeout=WAIT_S,
                                    return_when=cf.FIRST_COMPLETED)
        assert finished == {cancelled, successful}
        assert pending == {future1}
    finally:
        Path(go).touch()
    future1.result(timeout=WAIT_S)


def test_first_exception(executor: Any, gate: Any) -> None:
    go1, go2 = gate("go1"), gate("go2")
    try:
        future1 = executor.submit(tasks.mul, 2, 21)
        future2 = executor.submit(tasks.wait_and_raise, go1)
        future3 = executor.submit(fx.wait_for_file, go2)

        def wait_for_future1() -> None:  # future1 completes before future2 finishes
            future1.result(timeout=WAIT_S)
            Path(go1).touch()

        thread = threading.Thread(target=wait_for_future1)
        thread.start()
        finished, pending = cf.wait([future1, future2, future3], timeout=WAIT_S,
                                    return_when=cf.FIRST_EXCEPTION)
        assert finished == {future1, future2}
        assert pending == {future3}
        thread.join(WAIT_S)
    finally:
        Path(go1).touch()
        Path(go2).touch()
    future3.result(timeout=WAIT_S)


def test_first_exception_some_already_complete(executor: Any, gate: Any) -> None:
    go = gate("go")
    successful, cancelled = _successful(), _cancelled()
    cancelled_and_notified = _cancelled_and_notified()
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(fx.wait_for_file, go)
    try:
        finished, pending = cf.wait(
            [successful, cancelled, cancelled_and_notified, future1, future2],
            timeout=WAIT_S, return_when=cf.FIRST_EXCEPTION)
        assert finished == {successful, cancelled_and_notified, future1}
        assert pending == {cancelled, future2}
    finally:
        Path(go).touch()
    future2.result(timeout=WAIT_S)


def test_first_exception_one_already_failed(executor: Any, gate: Any) -> None:
    go = gate("go")
    failed = _exception()
    future1 = executor.submit(fx.wait_for_file, go)
    try:
        finished, pending = cf.wait([failed, future1], timeout=WAIT_S,
                                    return_when=cf.FIRST_EXCEPTION)
        assert finished == {failed} and pending == {future1}
    finally:
        Path(go).touch()
    future1.result(timeout=WAIT_S)


def test_all_completed(executor: Any) -> None:
    canned = [_successful(), _cancelled_and_notified(), _exception()]
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(tasks.mul, 2, 21)
    finished, pending = cf.wait(canned + [future1, future2], timeout=WAIT_S,
                                return_when=cf.ALL_COMPLETED)
    assert finished == set(canned + [future1, future2]) and pending == set()


def test_wait_timeout(executor: Any, gate: Any) -> None:
    go = gate("go")
    canned = [_cancelled_and_notified(), _exception(), _successful()]
    future = executor.submit(fx.wait_for_file, go)
    try:
        finished, pending = cf.wait(canned + [future], timeout=0.05,
                                    return_when=cf.ALL_COMPLETED)
        assert finished == set(canned) and pending == {future}
    finally:
        Path(go).touch()
    future.result(timeout=WAIT_S)


# --- as_completed (test_as_completed.py) ------------------------------------------------------


def test_as_completed_no_timeout(executor: Any) -> None:
    canned = [_cancelled_and_notified(), _exception(), _successful()]
    future1 = executor.submit(tasks.mul, 2, 21)
    future2 = executor.submit(tasks.mul, 7, 6)
    completed = set(cf.as_completed(canned + [future1, future2], timeout=WAIT_S))
    assert completed == set(canned + [future1, future2])


def test_as_completed_future_times_out(executor: Any, gate: Any) -> None:
    already_completed = {_cancelled_and_notified(), _exception(), _successful()}
    futures = []
    for timeout in (0, 0.1):
        future = executor.submit(fx.wait_for_file, gate(f"go-{timeout}"))
        futures.append(future)
        completed = set()
        with pytest.raises(cf.TimeoutError):
            for f in cf.as_completed(already_completed | {future}, timeout):
                completed.add(f)
        assert completed == already_completed  # the submitted one did not complete
    for timeout in (0, 0.1):
        Path(gate(f"go-{timeout}")).touch()
    for future in futures:
        future.result(timeout=WAIT_S)


def test_as_completed_duplicate_futures(executor: Any) -> None:
    # Issue 20367: duplicates give one answer; issue #31641: any iterable.
    future1 = executor.submit(tasks.mul, 2, 3)
    completed = list(cf.as_completed(itertools.repeat(future1, 3), timeout=WAIT_S))
    assert completed == [future1]


# --- callbacks and cancel (test_future.py, against the executor's futures) --------------------


def test_done_callbacks_get_the_future(executor: Any) -> None:
    called = threading.Event()
    seen: List[Any] = []

    def callback(future: Any) -> None:
        seen.append((future, future.result()))
        called.set()

    future = executor.submit(tasks.mul, 6, 7)
    future.add_done_callback(callback)
    assert called.wait(WAIT_S) and seen == [(future, 42)]
    late: List[Any] = []
    future.add_done_callback(late.append)  # added once done: called at once, here
    assert late == [future]


def test_done_callback_of_a_failing_task(executor: Any) -> None:
    called = threading.Event()
    errors: List[Any] = []

    def callback(future: Any) -> None:
        errors.append(future.exception())
        called.set()

    executor.submit(divmod, 1, 0).add_done_callback(callback)
    assert called.wait(WAIT_S)
    assert isinstance(errors[0], ZeroDivisionError)


def test_a_pending_future_cancels_and_never_runs_a_running_one_does_not(
        executor_factory: Any, gate: Any) -> None:
    executor = executor_factory(1)
    started, go = gate("started"), gate("go")
    running = executor.submit(tasks.started_then_wait, started, go, "ran")
    fx.wait_for_file(started)
    # What may already be handed to the process (the stdlib's call queue holds
    # max_workers + 1; p2ppool prefetches one per process): these wait for go too.
    fillers = [executor.submit(fx.wait_for_file, go, value=i) for i in range(3)]
    ran = gate("target-ran")
    target = executor.submit(fx.touch, ran)
    cancelled_seen = threading.Event()
    target.add_done_callback(lambda f: cancelled_seen.set() if f.cancelled() else None)
    assert running.running() and running.cancel() is False
    assert target.cancel() is True
    assert target.cancelled() and target.done() and cancelled_seen.is_set()
    with pytest.raises(cf.CancelledError):
        target.result(timeout=0)
    Path(go).touch()
    assert running.result(timeout=WAIT_S) == "ran"
    assert [f.result(timeout=WAIT_S) for f in fillers] == [0, 1, 2]
    executor.shutdown(wait=True)
    assert not os.path.exists(ran), "a cancelled task ran"


# --- initializer (test_init.py) -------------------------------------------------------------


def test_initializer(executor_factory: Any) -> None:
    executor = executor_factory(2, initializer=tasks.init, initargs=("initialized",))
    futures = [executor.submit(tasks.get_init_status) for _ in range(2)]
    assert [f.result(timeout=WAIT_S) for f in futures] == ["initialized"] * 2


def test_failing_initializer_breaks_the_executor(executor_factory: Any, kind: str,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    executor = executor_factory(2, initializer=tasks.init_fail)
    try:
        future = executor.submit(tasks.get_init_status)
    except cf.BrokenExecutor:
        pass  # perhaps broken already
    else:
        with pytest.raises(cf.BrokenExecutor) as info:
            future.result(timeout=WAIT_S)
        if kind != "stdlib":  # p2ppool says why (the stdlib logs it in the child)
            assert isinstance(info.value, p2ppool.InitializerFailed)
            assert "error in initializer" in str(info.value)
            assert "init_fail" in str(info.value.__cause__)
    with pytest.raises(cf.BrokenExecutor):
        executor.submit(tasks.get_init_status)
    capfd.readouterr()  # the stdlib's children log the traceback


# --- process pool specifics (test_process_pool.py) --------------------------------------------


def test_max_tasks_per_child(make_executor: Any) -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child is incompatible"):
        make_executor(1, mp_context=FORK, max_tasks_per_child=3)
    executor = make_executor(1, mp_context=FORKSERVER, max_tasks_per_child=3)
    try:
        original_pid = executor.submit(os.getpid).result(timeout=WAIT_S)
        # the process is reused for its 3 tasks ...
        assert executor.submit(os.getpid).result(timeout=WAIT_S) == original_pid
        assert executor.submit(os.getpid).result(timeout=WAIT_S) == original_pid
        # ... then replaced
        assert executor.submit(os.getpid).result(timeout=WAIT_S) != original_pid
    finally:
        executor.shutdown()


def test_max_tasks_per_child_defaults_to_spawn_context(make_executor: Any) -> None:
    executor = make_executor(1, mp_context=None, max_tasks_per_child=3)
    try:
        assert executor._mp_context.get_start_method() == "spawn"
    finally:
        executor.shutdown()


@pytest.mark.parametrize("max_workers,max_tasks,num_tasks", [(1, 2, 6), (2, 2, 8)])
def test_max_tasks_per_child_pending_tasks_gh115634(
        make_executor: Any, kind: str, max_workers: int, max_tasks: int, num_tasks: int) -> None:
    # More tasks than the pool runs at once, while processes hit their task limit.
    if kind == "stdlib":
        pytest.skip("concurrent.futures deadlocks here from 3.11 up to the patch releases "
                    "that fix gh-115634 (its exit would then hang the test run too)")
    executor = make_executor(max_workers, mp_context=FORKSERVER, max_tasks_per_child=max_tasks)
    try:
        futures = [executor.submit(tasks.mul, i, 2) for i in range(num_tasks)]
        assert [f.result(timeout=WAIT_S) for f in futures] == [i * 2 for i in range(num_tasks)]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_a_killed_process(executor_factory: Any, kind: str, gate: Any) -> None:
    # CPython's test_killed_child: the stdlib breaks the whole executor; p2ppool runs the
    # task again on a fresh process and goes on (on purpose: README, ProcessPoolExecutor).
    executor = executor_factory(2)
    started, go = gate("started"), gate("go")
    future = executor.submit(tasks.started_then_wait, started, go, "ran")
    fx.wait_for_file(started)
    os.kill(int(Path(started).read_text()), signal.SIGKILL)
    if kind == "stdlib":
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=WAIT_S)
        with pytest.raises(BrokenProcessPool):
            executor.submit(pow, 2, 8)
        return
    Path(go).touch()
    assert future.result(timeout=WAIT_S) == "ran"
    assert executor.submit(pow, 2, 8).result(timeout=WAIT_S) == 256


@pytest.mark.parametrize("crash,args,cause", [
    (tasks.kill_self, (), "SIGKILL(-9)"),
    (fx.exit_hard, (99,), "exit code 99"),
])
def test_a_task_that_always_kills_its_process(
        executor_factory: Any, kind: str, crash: Any, args: Any, cause: str) -> None:
    # Both raise BrokenProcessPool; p2ppool only once every attempt lost its process.
    options = {} if kind == "stdlib" else {"max_attempts": 2}
    executor = executor_factory(2, **options)
    future = executor.submit(crash, *args)
    with pytest.raises(BrokenProcessPool) as info:
        future.result(timeout=WAIT_S)
    if kind == "stdlib":
        with pytest.raises(BrokenProcessPool):
            executor.submit(pow, 2, 8)
        return
    lost = info.value
    assert isinstance(lost, p2ppool.ProcessLost) and isinstance(lost, p2ppool.ChunkFailed)
    assert lost.attempts == 2 and all(cause in c for c in lost.causes), lost.causes
    assert executor.submit(pow, 2, 8).result(timeout=WAIT_S) == 256  # not broken


# --- beyond concurrent.futures ----------------------------------------------------------------


def test_lambdas_and_closures(executor: Any, kind: str) -> None:
    if kind == "stdlib":  # pickle cannot send them: why p2ppool uses cloudpickle
        assert executor.submit(lambda x: x, 1).exception(timeout=WAIT_S) is not None
        return
    assert executor.submit(lambda x: x + 1, 1).result(timeout=WAIT_S) == 2
    assert list(executor.map(tasks.square_plus(10), range(4))) == [10, 11, 14, 19]
    assert list(executor.map(tasks.square_plus(1), range(4), chunksize=3,
                             buffersize=1)) == [1, 2, 5, 10]


def test_the_work_runs_where_the_kind_says(executor: Any, kind: str) -> None:
    where = {w for _, w in executor.map(tasks.square_where, range(12))}
    if kind == "cluster":
        assert None not in where and where  # only on the cluster's workers
    else:
        assert where == {None}


def test_tqdm_style_submit_and_as_completed_on_a_cluster(local_cluster: Any) -> None:
    from tqdm import tqdm

    items = list(range(60))
    serial = [fx.square(x) for x in items]
    bar = io.StringIO()
    options = {**local_cluster.options, "fallback": None}
    with p2ppool.ProcessPoolExecutor(2, **options) as executor:
        futures = {executor.submit(tasks.square_where, x): i for i, x in enumerate(items)}
        results: List[Any] = [None] * len(items)
        workers = set()
        for future in tqdm(cf.as_completed(futures), total=len(futures), file=bar):
            results[futures[future]], worker = future.result()
            workers.add(worker)
    assert results == serial
    assert None not in workers and workers
    assert "60/60" in bar.getvalue()
