"""What a client Pool and a worker say to each other over one wormhole session (pure).

The transfer layer (``transfer/session.py``) moves opaque frames over a dilated magic-wormhole and
keeps the session alive with heartbeats.  This module gives those frames a meaning.  The first
byte of a frame is its kind; fixed-size fields follow in network byte order; the rest of the
frame is the payload (pickled bytes, which only a worker's *child* process ever unpickles).

::

    client                                             worker
      | Open(job, python, maxtasksperchild, slots,       |   once, first frame
      |      code bundle, init blob) ----------------->  |
      |<- Ready(worker name, slots, limits)              |   or Refuse(reason) and close;
      |                                                  |   limits: payload and function
      |                                                  |   bytes, task seconds
      | Code(bundle) --------------------------------->  |   the client's own modules changed:
      |                                                  |   new task processes import these
      | Func(func_key, blob) ------------------------->  |   once per function per session
      | Task(task_id, func_key, args blob) ----------->  |   up to `slots` in flight (a
      |                                                  |   worker closes a session that
      |                                                  |   goes 2 past them)
      |<- Result(task_id, ok, blob)                      |   ok=False: pickled exception
      |<- Lost(task_id, retry, cause)                    |   child died / limit hit
      |<- Unable(task_id, phase, module, error, host)    |   this worker lacks a module that
      |                                                  |   loading the task needs
      | Forget(func_keys) ---------------------------->  |   drop these functions (a client
      |                                                  |   keeps a bounded number per session)
      | Cancel(task_ids) ----------------------------->  |   stop these tasks (terminate)
      | Close ---------------------------------------->  |   either side, then close

Every decode error raises :class:`~p2ppool.errors.ProtocolError`; a peer that sends one is
misbehaving and its session is closed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any, Tuple, Union

from ..errors import ProtocolError

__all__ = [
    "SESSION_VERSION",
    "Close",
    "Cancel",
    "Code",
    "Frame",
    "Forget",
    "Func",
    "Lost",
    "Open",
    "Ready",
    "Refuse",
    "Result",
    "Task",
    "Unable",
    "decode_frame",
    "encode_frame",
    "encode_frame_parts",
]

#: Bumped on any incompatible change of the frames below (2: the Forget frame; 3: code
#: bundles, in Open and the Code frame).
SESSION_VERSION = 3

_U64 = struct.Struct("!Q")
_U64_U64 = struct.Struct("!QQ")
_U64_U8 = struct.Struct("!QB")
_U32 = struct.Struct("!I")

#: A pickled payload: ``bytes`` when encoding; :func:`decode_frame` returns a read-only
#: ``memoryview`` of the received frame instead of a copy (pickle.loads, os.write and
#: ``TransferSession.send_parts`` take either).
Blob = Union[bytes, bytearray, memoryview]


@dataclasses.dataclass(frozen=True)
class Open:
    """Client -> worker, first frame: who we are and how child processes are set up.

    ``slots`` is the most slots the client will use of those the worker offered (a job
    that wanted 1 more slot and took a 2-slot offer): the worker frees the rest.  None (or
    a worker that predates the field) keeps every offered slot for the session.
    """

    job: str
    python: str
    maxtasksperchild: int | None = None
    initializer: bytes = b""  # cloudpickled (initializer, initargs), or empty
    version: int = SESSION_VERSION
    slots: int | None = None
    #: the client's own modules (:mod:`p2ppool.shipping.bundle`), or empty: none to ship
    code: Blob = b""
    #: what the job needs installed (``Pool(requirements=...)``), PEP 508 strings
    requires: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Ready:
    """Worker -> client: the session is accepted; up to ``slots`` tasks may be in flight.

    ``max_function_bytes``: the most bytes of functions the worker holds for the session
    (None: a worker that predates the field, which only counts them); a client sends Forget
    frames before a Func that would go over it.

    ``batches``: the worker's task processes run batch tasks (``payload.BATCH``: several
    chunks in one Task, one Result); False from a worker that predates them.
    """

    worker: str
    slots: int
    max_payload_bytes: int | None = None
    max_task_seconds: float | None = None
    max_function_bytes: int | None = None
    batches: bool = False


@dataclasses.dataclass(frozen=True)
class Refuse:
    """Worker -> client: the session is refused (incompatible Python, protocol, limits)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Func:
    """Client -> worker: a function (cloudpickled), referred to later by ``func_key``."""

    func_key: int
    blob: Blob


@dataclasses.dataclass(frozen=True)
class Code:
    """Client -> worker: the client's own modules changed (a new bundle): task processes
    started from now on import these; running ones finish their tasks and are replaced."""

    bundle: Blob


@dataclasses.dataclass(frozen=True)
class Forget:
    """Client -> worker: drop these functions (tasks already received keep theirs).

    A client never gives a key to another function (a worker's processes cache functions by
    key); it sends a Func again before naming a forgotten key."""

    func_keys: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Task:
    """Client -> worker: run ``func_key`` on the pickled chunk of arguments."""

    task_id: int
    func_key: int
    args: Blob


@dataclasses.dataclass(frozen=True)
class Result:
    """Worker -> client: the outcome of a task (``ok=False``: a pickled exception)."""

    task_id: int
    ok: bool
    blob: Blob


@dataclasses.dataclass(frozen=True)
class Lost:
    """Worker -> client: a task did not finish.

    ``retry`` says whether running it elsewhere may help (a child crashed) or not (it hit a
    limit of this worker, e.g. its time limit).  ``cause`` is for the person at the terminal.
    """

    task_id: int
    retry: bool
    cause: str


@dataclasses.dataclass(frozen=True)
class Unable:
    """Worker -> client: loading a task raised an ImportError on this worker.

    ``phase`` is what was being loaded ("function", "arguments" or "initializer"),
    ``module`` the missing module's name when known, ``error`` the exception as text and
    ``host`` the worker's host name.  Not the user's error: the client runs the task
    elsewhere and does not offer this job to the worker again.
    """

    task_id: int
    phase: str
    module: str | None
    error: str
    host: str = ""


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Client -> worker: stop these tasks; their results are no longer wanted."""

    task_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Close:
    """Either side: the session ends normally."""


Frame = Union[Open, Ready, Refuse, Code, Func, Forget, Task, Result, Lost, Unable, Cancel, Close]

_OPEN, _READY, _REFUSE, _FUNC, _FORGET, _TASK, _RESULT, _LOST, _CANCEL, _CLOSE = b"ORXFGTSLCB"
_CODE = ord("K")
_UNABLE = ord("U")


def _json(kind: int, obj: dict[str, Any], tail: bytes = b"") -> bytes:
    header = json.dumps(obj, separators=(",", ":")).encode()
    return bytes([kind]) + _U32.pack(len(header)) + header + tail


def encode_frame(frame: Frame) -> bytes:
    """Turn a frame into bytes for ``TransferSession.send``."""
    if isinstance(frame, Task):
        return bytes([_TASK]) + _U64_U64.pack(frame.task_id, frame.func_key) + frame.args
    if isinstance(frame, Result):
        return bytes([_RESULT]) + _U64_U8.pack(frame.task_id, frame.ok) + frame.blob
    if isinstance(frame, Func):
        return bytes([_FUNC]) + _U64.pack(frame.func_key) + frame.blob
    if isinstance(frame, Lost):
        return bytes([_LOST]) + _U64_U8.pack(frame.task_id, frame.retry) + frame.cause.encode()
    if isinstance(frame, Cancel):
        return bytes([_CANCEL]) + b"".join(_U64.pack(t) for t in frame.task_ids)
    if isinstance(frame, Forget):
        return bytes([_FORGET]) + b"".join(_U64.pack(k) for k in frame.func_keys)
    if isinstance(frame, Close):
        return bytes([_CLOSE])
    if isinstance(frame, Code):
        return bytes([_CODE]) + frame.bundle
    if isinstance(frame, Unable):
        return _json(_UNABLE, {"task": frame.task_id, "phase": frame.phase,
                               "module": frame.module, "error": frame.error, "host": frame.host})
    if isinstance(frame, Open):
        fields = {"v": frame.version, "job": frame.job, "python": frame.python,
                  "maxtasksperchild": frame.maxtasksperchild, "code": len(frame.code)}
        if frame.slots is not None:  # (an older worker ignores the key)
            fields["slots"] = frame.slots
        if frame.requires:
            fields["requires"] = list(frame.requires)
        return _json(_OPEN, fields, bytes(frame.code) + frame.initializer)
    if isinstance(frame, Ready):
        fields = {"worker": frame.worker, "slots": frame.slots,
                  "max_payload_bytes": frame.max_payload_bytes,
                  "max_task_seconds": frame.max_task_seconds}
        if frame.max_function_bytes is not None:  # (an older client ignores the key)
            fields["max_function_bytes"] = frame.max_function_bytes
        if frame.batches:  # (an older client ignores the key)
            fields["batches"] = True
        return _json(_READY, fields)
    if isinstance(frame, Refuse):
        return _json(_REFUSE, {"reason": frame.reason})
    raise TypeError(f"not a session frame: {frame!r}")


def encode_frame_parts(frame: Frame) -> Tuple[Blob, ...]:
    """Like :func:`encode_frame`, as parts for ``TransferSession.send_parts``: a large payload is
    not copied to prepend the frame's few header bytes."""
    if isinstance(frame, Task):
        return bytes([_TASK]) + _U64_U64.pack(frame.task_id, frame.func_key), frame.args
    if isinstance(frame, Result):
        return bytes([_RESULT]) + _U64_U8.pack(frame.task_id, frame.ok), frame.blob
    if isinstance(frame, Func):
        return bytes([_FUNC]) + _U64.pack(frame.func_key), frame.blob
    if isinstance(frame, Code):
        return bytes([_CODE]), frame.bundle
    return (encode_frame(frame),)


def _split_json(data: bytes) -> tuple[dict[str, Any], bytes]:
    if len(data) < 5:
        raise ProtocolError("session frame too short for its header")
    (size,) = _U32.unpack_from(data, 1)
    if 5 + size > len(data):
        raise ProtocolError("session frame header is longer than the frame")
    try:
        obj = json.loads(data[5:5 + size])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"session frame header is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("session frame header is not a JSON object")
    return obj, data[5 + size:]


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...],
           optional: bool = False) -> Any:
    value = obj.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"session frame field {name!r} is missing or of the wrong type")
    return value


def _flag(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"session frame field {name!r} is not true or false")
    return value


def _requires(obj: dict[str, Any]) -> Tuple[str, ...]:
    value = obj.get("requires") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("open frame's requires is not a list of strings")
    return tuple(value)


def _u64_list(body: memoryview, frame: str, what: str) -> tuple[int, ...]:
    if len(body) % _U64.size:
        raise ProtocolError(f"{frame} is not a whole number of {what}")
    return tuple(_U64.unpack_from(body, i)[0] for i in range(0, len(body), _U64.size))


def decode_frame(data: bytes) -> Frame:
    """Parse one frame; raises ProtocolError for anything malformed or unknown.

    The payload of a Task, Result or Func is a read-only ``memoryview`` into ``data`` (no
    copy of a large payload).
    """
    if not data:
        raise ProtocolError("empty session frame")
    kind, body = data[0], memoryview(data)[1:]
    try:
        if kind == _TASK:
            task_id, func_key = _U64_U64.unpack_from(body)
            return Task(task_id, func_key, body[_U64_U64.size:])
        if kind == _RESULT:
            task_id, ok = _U64_U8.unpack_from(body)
            return Result(task_id, bool(ok), body[_U64_U8.size:])
        if kind == _FUNC:
            (func_key,) = _U64.unpack_from(body)
            return Func(func_key, body[_U64.size:])
        if kind == _LOST:
            task_id, retry = _U64_U8.unpack_from(body)
            return Lost(task_id, bool(retry), bytes(body[_U64_U8.size:]).decode("utf-8", "replace"))
        if kind == _CANCEL:
            return Cancel(_u64_list(body, "cancel frame", "task ids"))
        if kind == _FORGET:
            return Forget(_u64_list(body, "forget frame", "function keys"))
        if kind == _CODE:
            return Code(body)
    except struct.error:
        raise ProtocolError(f"session frame of kind {chr(kind)!r} is too short") from None
    if kind == _CLOSE:
        return Close()
    if kind == _OPEN:
        obj, tail = _split_json(data)
        version = _field(obj, "v", int)
        if version != SESSION_VERSION:
            raise ProtocolError(
                f"session protocol version {version} is not supported (this p2ppool speaks "
                f"version {SESSION_VERSION}); upgrade the older side"
            )
        code_size = _field(obj, "code", int, optional=True) or 0
        if not 0 <= code_size <= len(tail):
            raise ProtocolError("open frame's code bundle is longer than the frame")
        return Open(job=_field(obj, "job", str), python=_field(obj, "python", str),
                    maxtasksperchild=_field(obj, "maxtasksperchild", int, optional=True),
                    initializer=tail[code_size:], version=version,
                    slots=_field(obj, "slots", int, optional=True),
                    code=tail[:code_size], requires=_requires(obj))
    if kind == _READY:
        obj, _ = _split_json(data)
        return Ready(worker=_field(obj, "worker", str), slots=_field(obj, "slots", int),
                     max_payload_bytes=_field(obj, "max_payload_bytes", int, optional=True),
                     max_task_seconds=_field(obj, "max_task_seconds", (int, float),
                                             optional=True),
                     max_function_bytes=_field(obj, "max_function_bytes", int,
                                               optional=True),
                     batches=_flag(obj, "batches"))
    if kind == _REFUSE:
        obj, _ = _split_json(data)
        return Refuse(reason=_field(obj, "reason", str))
    if kind == _UNABLE:
        obj, _ = _split_json(data)
        task_id = _field(obj, "task", int)
        if not 0 <= task_id < 2**64:
            raise ProtocolError("unable frame's task id is out of range")
        return Unable(task_id=task_id, phase=_field(obj, "phase", str),
                      module=_field(obj, "module", str, optional=True),
                      error=_field(obj, "error", str), host=_field(obj, "host", str))
    raise ProtocolError(f"unknown session frame kind {kind!r}")
