"""payload: cloudpickle round trips, remote tracebacks, encoding errors, size limits."""

from __future__ import annotations

import pickle
import threading

import pytest

from p2ppool import payload
from p2ppool.errors import MaybeEncodingError, RemoteTraceback, TaskLimitExceeded


class Unpicklable(Exception):
    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("cannot pickle this exception")


def test_lambdas_and_closures_round_trip() -> None:
    k = 5
    func = payload.loads(payload.dumps(lambda x: x + k))
    assert func(1) == 6


def test_blobs_are_plain_pickle_protocol_5() -> None:
    blob = payload.dumps([1, (2, 3)])
    assert blob[:2] == b"\x80\x05"
    assert pickle.loads(blob) == [1, (2, 3)]


@pytest.mark.parametrize("call,expected", [
    (payload.apply_call((2, 3), {}), 5),
    (payload.apply_call((2,), {"b": 10}), 12),
    (payload.map_call((1, 2, 3)), [3, 4, 5]),
    (payload.starmap_call(((1, 1), (2, 2))), [2, 4]),
])
def test_execute(call: payload.Call, expected: object) -> None:
    def add(a: int, b: int = 2) -> int:
        return a + b

    assert payload.execute(add, payload.loads(payload.dumps(call))) == expected


def test_an_exception_comes_back_as_itself_with_the_remote_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(payload.WORKER_NAME_ENV, raising=False)  # not in a worker

    def inner() -> None:
        raise KeyError("deep")

    try:
        inner()
    except KeyError as exc:
        blob = payload.dump_exception(exc)
    back = payload.loads(blob)
    assert type(back) is KeyError and back.args == ("deep",)
    assert isinstance(back.__cause__, RemoteTraceback)
    text = str(back.__cause__)
    assert text.startswith('\n"""\nTraceback (most recent call last):')
    assert "in inner" in text and 'KeyError: \'deep\'' in text


def test_a_traceback_from_a_worker_names_the_worker_and_its_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform

    monkeypatch.setenv(payload.WORKER_NAME_ENV, "w7")
    try:
        raise ValueError("bad")
    except ValueError as exc:
        back = payload.loads(payload.dump_exception(exc))
    text = str(back.__cause__)
    assert text.startswith(f'\n"""\non worker w7 ({platform.node()})\n'
                           f'Traceback (most recent call last):')
    assert "ValueError: bad" in text


def test_an_unpicklable_exception_becomes_maybe_encoding_error() -> None:
    back = payload.loads(payload.dump_exception(Unpicklable("x")))
    assert isinstance(back, MaybeEncodingError)
    assert "cannot pickle this exception" in str(back)


def test_results() -> None:
    ok, blob = payload.dump_result({"a": 1})
    assert ok and payload.loads(blob) == {"a": 1}
    ok, blob = payload.dump_result(threading.Lock())
    assert not ok
    error = payload.loads(blob)
    assert isinstance(error, MaybeEncodingError) and "Error sending result" in str(error)
    ok, blob = payload.dump_result(b"x" * 2000, max_bytes=1000)
    assert not ok and isinstance(payload.loads(blob), TaskLimitExceeded)


def test_check_size() -> None:
    payload.check_size(b"x" * 10, 10, "result")
    payload.check_size(b"x" * 10, None, "result")
    with pytest.raises(TaskLimitExceeded, match="the chunk is 11 bytes, over the limit of 10"):
        payload.check_size(b"x" * 11, 10, "chunk")


class LocalClass:
    pass


@pytest.mark.parametrize("module", ["__main__", "__mp_main__"])
def test_things_of_main_are_pickled_by_value(module: str) -> None:
    def f(x: int) -> int:
        return x + 1

    cls = type("MainThing", (), {"__module__": module})
    g = payload.loads(payload.dumps(f))  # a closure: the C pickler refuses it
    assert g(1) == 2
    plain = pickle.dumps
    assert b"MainThing" not in plain(1)
    blob = payload.dumps(cls)
    assert b"cloudpickle" in blob  # rebuilt by cloudpickle, not looked up in __main__
    blob = payload.dumps([1, cls()])
    assert b"cloudpickle" in blob


def test_plain_data_and_importable_things_use_the_c_pickler() -> None:
    for obj in ([1, 2, (3, "x")], {"a": b"b"}, LocalClass(), payload.execute):
        blob = payload.dumps(obj)
        assert b"cloudpickle" not in blob
        assert blob == pickle.dumps(obj, protocol=5)
