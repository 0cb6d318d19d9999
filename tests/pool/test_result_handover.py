"""An ApplyResult handed its pickled outcome by another thread than the manager's
(``ApplyResult._arrive``, issue 16): the first outcome is the only one, the waiter unpickles
it once, and what it then gives is what the manager's own delivery would have given."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from p2ppool.errors import MaybeEncodingError
from p2ppool.pool.results import ApplyResult
from tests.fixtures.pool import waiting_threads


class _Counted:
    """Counts how often it is unpickled."""

    loads = 0

    def __reduce__(self) -> Any:
        return (_made, ())


def _made() -> _Counted:
    _Counted.loads += 1
    return _Counted()


def _unpickles_badly() -> None:
    raise RuntimeError("cannot be rebuilt here")


class _Unloadable:
    def __reduce__(self) -> Any:
        return (_unpickles_badly, ())


def _result(**kwargs: Any) -> ApplyResult:
    return ApplyResult(object(), kwargs.get("callback"), kwargs.get("error_callback"))


def test_an_arrived_value_is_unpickled_by_the_waiter_and_the_managers_set_changes_nothing(
) -> None:
    result = _result()
    assert not result.ready()
    result._arrive(True, pickle.dumps({"x": 1}))
    assert result.ready() and result.successful()
    assert result._pool is None  # its waiters have it: the pool need not be kept alive
    result._set(0, (True, None))  # the manager's later delivery: a no-op
    assert result.get(0) == {"x": 1}
    result._arrive(True, pickle.dumps("again"))  # and so is a second hand-over
    assert result.get(0) == {"x": 1}


def test_an_outcome_the_manager_gave_first_is_kept() -> None:
    result = _result()
    result._abort(RuntimeError("terminated"))
    result._arrive(True, pickle.dumps(5))
    with pytest.raises(RuntimeError, match="terminated"):
        result.get(0)


def test_an_arrived_exception_is_raised_and_a_bad_blob_fails_as_unreadable() -> None:
    failed = _result()
    failed._arrive(False, pickle.dumps(ValueError("from the task")))
    assert not failed.successful()
    with pytest.raises(ValueError, match="from the task"):
        failed.get(0)
    unreadable = _result()
    unreadable._arrive(True, pickle.dumps(_Unloadable()))
    assert not unreadable.successful()  # it has to be unpickled to know
    with pytest.raises(MaybeEncodingError, match="could not be unpickled"):
        unreadable.get(0)


def test_many_waiters_get_one_value_unpickled_once() -> None:
    result = _result()
    _Counted.loads = 0
    start = threading.Barrier(8)

    def waiter() -> Any:
        start.wait(10)
        return result.get(10)

    threads, got = waiting_threads(7, waiter)
    start.wait(10)  # the eighth: every waiter is about to wait
    result._arrive(True, pickle.dumps(_Counted()))
    for thread in threads:
        thread.join(10)
    assert len(got) == 7 and len({id(value) for value in got}) == 1
    assert _Counted.loads == 1


def test_a_memoryview_blob_is_taken_as_received() -> None:
    result = _result()
    frame = b"header" + pickle.dumps([1, 2, 3])
    result._arrive(True, memoryview(frame)[6:])  # a view into a received frame
    assert result.get(0) == [1, 2, 3]
