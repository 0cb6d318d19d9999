"""A batch task in a task process (issue 16): several chunks of one function, one result.

``task_loop.run`` is what a worker's task process (sandboxed or not) calls for every Task;
these tests call it in-process.  The distributed path is in tests/cluster/test_batches.py.
"""

from __future__ import annotations

import json
import pickle
import threading
from typing import Any, List

from p2ppool import payload
from p2ppool.errors import RemoteTraceback, TaskLimitExceeded
from p2ppool.execution.task_loop import run


def halve(x: int) -> float:
    if x == 3:
        raise ZeroDivisionError(f"no half of {x} here")
    return x / 2


def batch(*chunks: List[Any]) -> bytes:
    return payload.dumps(payload.batch_call([payload.map_call(c) for c in chunks]))


class _NeedsAModule:
    """Unpickles by importing a module no worker has."""

    def __reduce__(self) -> Any:
        return (__import__, ("p2ppool_no_such_module_for_batches",))


def test_each_chunk_of_a_batch_has_its_own_outcome() -> None:
    ok, blob, unloadable = run(halve, batch([0, 1], [2, 3], [4]), None)
    assert ok and unloadable is None
    seconds, outcomes = payload.loads(blob)
    assert isinstance(seconds, float) and 0 <= seconds < 5  # its chunks' own time
    assert outcomes[0] == (True, [0.0, 0.5])
    assert outcomes[2] == (True, [2.0])  # a chunk after a failing one still runs
    failed, error_blob = outcomes[1]
    assert failed is False
    error = payload.loads(error_blob)
    assert isinstance(error, ZeroDivisionError) and "no half of 3" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "halve" in str(error.__cause__)  # the traceback text came along


def test_a_chunk_whose_arguments_need_a_missing_module_fails_the_batch_as_a_load() -> None:
    bad = pickle.dumps(payload.batch_call([payload.map_call([1]),
                                           payload.map_call([_NeedsAModule()])]))
    ok, blob, unloadable = run(halve, bad, None)
    assert not ok and unloadable is not None
    info = json.loads(unloadable)
    assert info["phase"] == "arguments"
    assert info["module"] == "p2ppool_no_such_module_for_batches"


def test_a_batch_result_over_the_limit_fails_as_a_whole() -> None:
    ok, blob, _ = run(halve, batch([0, 1], [2]), max_result_bytes=10)
    assert not ok
    assert isinstance(payload.loads(blob), TaskLimitExceeded)


def test_a_batch_with_a_result_that_does_not_pickle_fails_as_a_whole() -> None:
    ok, blob, _ = run(lambda x: threading.Lock() if x else x, batch([0], [1]), None)
    assert not ok
    assert "pickl" in str(payload.loads(blob)).lower()
