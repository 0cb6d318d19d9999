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

import json
import os
import pickle
import platform
import traceback
import types
from typing import Any, Callable, List, Sequence, Tuple

import cloudpickle

from .errors import MaybeEncodingError, RemoteTraceback, TaskLimitExceeded

__all__ = [
    "PROTOCOL",
    "Call",
    "ExceptionWithTraceback",
    "apply_call",
    "batch_call",
    "check_size",
    "dump_exception",
    "dump_result",
    "dumps",
    "load_failure",
    "execute",
    "execute_batch",
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
#: Several chunks of one function as one task: ``(BATCH, (call, ...), None)``; its
#: value is ``(seconds, [(ok, value or pickled exception), ...])``, one outcome per chunk
#: (see :func:`execute_batch`).
BATCH = 3


#: One chunk of work for a function: ``(how, args, kwds)``.  A plain tuple, because the C
#: pickler writes those fastest (a NamedTuple costs a class lookup on every pickle).
Call = Tuple[int, Any, Any]


def dumps(obj: Any) -> bytes:
    """Serialise ``obj``: the C pickler when it can, cloudpickle when it must (protocol 5).

    The C pickler is several times faster for small objects (an ``apply`` call), but it
    pickles functions and classes by reference: fine for importable modules, wrong for
    lambdas, closures and anything of ``__main__`` (a spawned child or a remote peer has
    another ``__main__``).  Lambdas and closures fail to pickle; functions, classes and
    instances of ``__main__`` (or of modules registered with
    ``cloudpickle.register_pickle_by_value``) are spotted by :class:`_ByReferencePickler`.
    Both cases are redone with cloudpickle, which pickles them by value.
    """
    if _plain(obj, 2):
        return pickle.dumps(obj, protocol=PROTOCOL)
    parts: list[Any] = []
    sink = _Sink()
    sink.write = parts.append  # large bytes arrive as their own part: one copy in join()
    try:
        _ByReferencePickler(sink, PROTOCOL).dump(obj)
    except Exception:
        cloud: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
        return cloud
    return b"".join(parts)


_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(obj: Any, depth: int) -> bool:
    """True for small builtin data (no functions, classes or instances anywhere in it): the
    C pickler's own ``dumps`` then suffices, without a pickler object to set up."""
    kind = type(obj)
    if kind in _PLAIN_TYPES:
        return True
    if kind is not tuple or not depth or len(obj) > 8:
        return False
    for item in obj:
        if type(item) not in _PLAIN_TYPES and not _plain(item, depth - 1):
            return False
    return True


class _Sink:
    """A file for the pickler that keeps what it writes (no growing buffer to copy)."""

    __slots__ = ("write",)

    write: Callable[[Any], object]


class _NeedsValue(Exception):
    """Raised inside the C pickler: this object must be pickled by value (cloudpickle)."""


_MAIN_MODULES = frozenset({"__main__", "__mp_main__"})


def _by_value_module(module: Any) -> bool:
    if module in _MAIN_MODULES:
        return True
    registered: Any = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if not registered or not isinstance(module, str):
        return False
    return any(module == name or module.startswith(name + ".") for name in registered)


class _ByReferencePickler(pickle.Pickler):
    """The C pickler, refusing what only exists by value (see :func:`dumps`).

    ``reducer_override`` is not called for ints, floats, str, bytes, lists, tuples, dicts
    and sets, so plain data pickles at full C speed.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)):
            module = getattr(obj, "__module__", None)
        else:
            module = getattr(type(obj), "__module__", None)
        if _by_value_module(module):
            raise _NeedsValue(module)
        return NotImplemented


def loads(blob: bytes | bytearray | memoryview) -> Any:
    """Deserialise a blob made by :func:`dumps` (cloudpickle output is plain pickle)."""
    return pickle.loads(blob)


def apply_call(args: Sequence[Any], kwds: dict[str, Any]) -> Call:
    """The call of ``Pool.apply``: ``func(*args, **kwds)``."""
    return (APPLY, tuple(args), dict(kwds) if kwds else None)


def map_call(items: Sequence[Any]) -> Call:
    """The call of one ``map`` chunk: ``[func(x) for x in items]``."""
    return (MAP, items, None)


def starmap_call(items: Sequence[Any]) -> Call:
    """The call of one ``starmap`` chunk: ``[func(*x) for x in items]``."""
    return (STARMAP, items, None)


def batch_call(calls: Sequence[Call]) -> Call:
    """The call of several chunks sent as one task: each chunk's call, in order."""
    return (BATCH, tuple(calls), None)


def execute_batch(func: Callable[..., Any], calls: Sequence[Call]) -> List[Any]:
    """Run each chunk of a batch: ``(True, value)`` or ``(False, pickled exception)`` per
    chunk (the task process sends them with the time they took, see ``BATCH``).

    A chunk that raises does not stop the others: each is its own result, as when the
    chunks travel one by one.
    """
    outcomes: List[Any] = []
    for call in calls:
        try:
            outcomes.append((True, execute(func, call)))
        except Exception as exc:
            outcomes.append((False, dump_exception(exc)))
    return outcomes


def execute(func: Callable[..., Any], call: Call) -> Any:
    """Run ``call`` with ``func`` and return its value (a list for map and starmap)."""
    how, args, kwds = call
    if how == MAP:
        return list(map(func, args))
    if how == STARMAP:
        return [func(*item) for item in args]
    if kwds:
        return func(*args, **kwds)
    return func(*args)


#: The environment variable holding the worker's name in its task processes (set by
#: :class:`p2ppool.worker.loop.Worker`; unset in a Pool's own local processes), so a task can
#: tell where it ran: ``p2ppool demo`` counts who ran what with it, and tracebacks sent from
#: a worker name it.
WORKER_NAME_ENV = "P2PPOOL_WORKER"


def _where() -> str:
    """``"on worker w1 (host)\\n"`` in a worker's task process; ``""`` elsewhere."""
    name = os.environ.get(WORKER_NAME_ENV)
    return f"on worker {name} ({platform.node()})\n" if name else ""


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
            tb = f'\n"""\n{_where()}{text}"""'
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exc, (self.exc, self.tb)


#: Set in a worker's task processes to the worker's ``--max-memory-mb`` (see
#: :mod:`p2ppool.execution.child`): a ``MemoryError`` there is reported as
#: :class:`~p2ppool.errors.TaskLimitExceeded` naming the limit.
memory_limit_mb: float | None = None


def dump_exception(exc: BaseException) -> bytes:
    """Serialise an exception raised by user code, with its traceback text.

    If the exception itself cannot be pickled, a ``MaybeEncodingError`` describing it is
    sent instead, as ``multiprocessing`` does.  Under a worker's memory limit a
    ``MemoryError`` becomes a :class:`~p2ppool.errors.TaskLimitExceeded` naming the limit.
    """
    if isinstance(exc, MemoryError) and memory_limit_mb is not None:
        exc = TaskLimitExceeded(
            f"the task ran out of memory: it reached the worker's limit of "
            f"{memory_limit_mb:g} MB of address space (--max-memory-mb)"
        ).with_traceback(exc.__traceback__)
    wrapped = ExceptionWithTraceback(exc)
    try:
        return dumps(wrapped)
    except Exception as pickling_error:
        return dumps(MaybeEncodingError(pickling_error, wrapped))


def load_failure(exc: BaseException, phase: str) -> bytes | None:
    """Describe an ImportError raised while *loading* a task's ``phase`` ("function",
    "arguments" or "initializer"): JSON ``{"phase", "module", "type", "error"}``, which the
    worker's main process may read (it never unpickles).  None for any other exception:
    that one is the user's, returned as the task's error.

    A module missing on a worker while loading is not the user's bug and will not load
    on a retry there: the client routes such a chunk to another worker instead.
    """
    if not isinstance(exc, ImportError):
        return None
    name = exc.name if isinstance(exc.name, str) else None
    info = {"phase": phase, "module": name, "type": type(exc).__name__,
            "error": f"{type(exc).__name__}: {exc}"[:1000]}
    return json.dumps(info).encode()


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
