"""Waiter, the lasting-poll ``multiprocessing.connection.wait`` of the manager and the
worker loop, against ``connection.wait`` itself on real pipes, connections and sentinels."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
from typing import Any, Callable, Iterator, List

import pytest

from p2ppool.execution.waiter import Waiter

Wait = Callable[[List[Any], "float | None"], List[Any]]


def _lasting() -> Wait:
    waiter = Waiter()
    return lambda objects, timeout: waiter.wait(objects, timeout)


def _stdlib() -> Wait:
    return lambda objects, timeout: list(multiprocessing.connection.wait(objects, timeout))


@pytest.fixture(params=[_lasting, _stdlib], ids=["Waiter", "connection.wait"])
def wait(request: pytest.FixtureRequest) -> Wait:
    return request.param()  # type: ignore[no-any-return]


@pytest.fixture
def pipes() -> Iterator[List[int]]:
    fds = [*os.pipe(), *os.pipe()]
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_nothing_ready_times_out_empty(wait: Wait, pipes: List[int]) -> None:
    assert wait([pipes[0], pipes[2]], 0.01) == []
    assert wait([pipes[0]], -1) == []  # a deadline already past does not block


def test_the_ready_objects_come_back_as_given(wait: Wait, pipes: List[int]) -> None:
    reader, receiver = multiprocessing.Pipe(duplex=False)
    try:
        os.write(pipes[3], b"x")
        receiver.send("hello")
        ready = wait([pipes[0], pipes[2], reader], 5)
        assert sorted(map(id, ready)) == sorted(map(id, [pipes[2], reader]))
        assert wait([pipes[0]], 0) == []
        receiver.close()  # end of file is ready too
        assert reader.recv() == "hello"
        assert wait([reader, pipes[0]], 5) == [reader]
    finally:
        reader.close()
        receiver.close()


def test_a_process_sentinel_is_ready_once_it_exits(wait: Wait, pipes: List[int]) -> None:
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=os.read, args=(pipes[0], 1))
    child.start()
    try:
        assert wait([child.sentinel, pipes[2]], 0.01) == []
        os.write(pipes[1], b"x")  # let it exit
        assert wait([child.sentinel, pipes[2]], 10) == [child.sentinel]
    finally:
        child.join(10)


def test_the_set_of_objects_may_change_between_calls(pipes: List[int]) -> None:
    waiter = Waiter()
    os.write(pipes[1], b"x")
    os.write(pipes[3], b"y")
    assert waiter.wait([pipes[0]], 5) == [pipes[0]]
    assert waiter.wait([pipes[0]], 5, changed=False) == [pipes[0]]
    assert waiter.wait([pipes[2]], 5) == [pipes[2]]  # the first is no longer watched
    assert sorted(waiter.wait([pipes[0], pipes[2]], 5)) == sorted([pipes[0], pipes[2]])
