"""What travels between the Pool and the processes that run its work: bytes, made with cloudpickle.

Pure: no I/O, no clock.  Three kinds of blob cross a process (or peer) boundary:

* a *function blob*: ``dumps(func)``, sent once per (process, job);
* a *call blob*: ``dumps(Call)`` with the arguments of one chunk of work
  (:func:`apply_call`, :func:`map_call`, :func:`starmap_call`);
* a *result blob*: ``dumps(list_or_value)`` when the call returned, or
  :func:`dump_exception` when it raised.  Loading an exception blob gives the original
  exception with a :class:`~p2ppool.errors.RemoteTraceback` as ``__cause__``, exactly as
  ``multiprocessing`` does with its ``ExceptionWithTraceback``.

cloudpickle pickles lambdas, closures and functions of ``__main__`` by value, so they work
with every start method (``multiprocessing`` cannot send them at all).
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, Callable, NamedTuple, Sequence

import cloudpickle

from .errors import MaybeEncodingError, RemoteTraceback, TaskLimitExceeded

__all__ = [
    "PROTOCOL",
    "Call",
    "ExceptionWithTraceback",
    "apply_call",
    "check_size",
    "dump_exception",
    "dump_result",
    "dumps",
    "execute",
    "loads",
    "map_call",
    "starmap_call",
]

#: Pickle protocol 5: out-of-band-capable and the fastest for large bytes/arrays.
PROTOCOL = 5

# How a Call applies the function (kept tiny: it is pickled with every chunk).
APPLY = 0
MAP = 1
STARMAP = 2


class Call(NamedTuple):
    """One chunk of work for a function: how to call it and with what."""

    how: int
    args: Any
    kwds: Any = None


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` with cloudpickle (protocol 5)."""
    blob: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
    return blob


def loads(blob: bytes | bytearray | memoryview) -> Any:
    """Deserialise a blob made by :func:`dumps` (cloudpickle output is plain pickle)."""
    return pickle.loads(blob)


def apply_call(args: Sequence[Any], kwds: dict[str, Any]) -> Call:
    """The call of ``Pool.apply``: ``func(*args, **kwds)``."""
    return Call(APPLY, tuple(args), dict(kwds))


def map_call(items: Sequence[Any]) -> Call:
    """The call of one ``map`` chunk: ``[func(x) for x in items]``."""
    return Call(MAP, items)


def starmap_call(items: Sequence[Any]) -> Call:
    """The call of one ``starmap`` chunk: ``[func(*x) for x in items]``."""
    return Call(STARMAP, items)


def execute(func: Callable[..., Any], call: Call) -> Any:
    """Run ``call`` with ``func`` and return its value (a list for map and starmap)."""
    if call.how == MAP:
        return list(map(func, call.args))
    if call.how == STARMAP:
        return [func(*item) for item in call.args]
    return func(*call.args, **(call.kwds or {}))


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class ExceptionWithTraceback:
    """An exception plus its formatted traceback; unpickles as the exception itself.

    Mirrors ``multiprocessing.pool.ExceptionWithTraceback``: the traceback text survives the
    trip as ``exc.__cause__``, a :class:`~p2ppool.errors.RemoteTraceback`.
    """

    def __init__(self, exc: BaseException, tb: str | None = None) -> None:
        if tb is None:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            tb = f'\n"""\n{text}"""'
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exc, (self.exc, self.tb)


def dump_exception(exc: BaseException) -> bytes:
    """Serialise an exception raised by user code, with its traceback text.

    If the exception itself cannot be pickled, a ``MaybeEncodingError`` describing it is
    sent instead, as ``multiprocessing`` does.
    """
    wrapped = ExceptionWithTraceback(exc)
    try:
        return dumps(wrapped)
    except Exception as pickling_error:
        return dumps(MaybeEncodingError(pickling_error, wrapped))


def dump_result(value: Any, max_bytes: int | None = None) -> tuple[bool, bytes]:
    """Serialise a return value; returns ``(ok, blob)``.

    ``ok`` is False (and the blob an exception blob) when the value cannot be pickled
    (``MaybeEncodingError``, as ``multiprocessing``) or is larger than ``max_bytes``
    (:class:`~p2ppool.errors.TaskLimitExceeded`).
    """
    try:
        blob = dumps(value)
    except Exception as exc:
        return False, dumps(MaybeEncodingError(exc, value))
    try:
        check_size(blob, max_bytes, "result")
    except TaskLimitExceeded as exc:
        return False, dumps(exc)
    return True, blob


def check_size(blob: bytes | memoryview, max_bytes: int | None, what: str) -> None:
    """Raise :class:`~p2ppool.errors.TaskLimitExceeded` if ``blob`` is over ``max_bytes``."""
    if max_bytes is not None and len(blob) > max_bytes:
        raise TaskLimitExceeded(
            f"the {what} is {len(blob):,} bytes, over the limit of {max_bytes:,} bytes"
        )
