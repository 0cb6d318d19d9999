"""The pipes between a :class:`~p2ppool.execution.engine.ProcessEngine` and its task
processes: message kinds, headers, and framed reads and writes on raw file descriptors.

::

    parent -> child:  F<key:u32><function blob> | f<key:u32> then <blob>    define a function
                      T<task:u64><key:u32><args blob> | t<task:u64><key:u32> then <blob>
                      P/p: the same for a prefetched task, run only if claimed (see the
                          claim protocol in :mod:`p2ppool.execution.engine`)
                      D<key:u32>  forget a function;   X  exit
    child -> parent:  R<task:u64><ok:u8><result blob> | r<task:u64><ok:u8> then <blob>
                      U<task:u64><n:u32><n bytes of JSON><exception blob> | u... then <blob>:
                          loading the function or the arguments raised an ImportError
                      E<exception blob>  the initializer raised; the child exits
                      L<n:u32><JSON><exception blob>  loading the initializer raised an
                          ImportError; the child exits

Frames are ``multiprocessing.Connection``'s (a 4-byte big-endian length, then the bytes), so
either side may also be a ``Connection``.
"""

from __future__ import annotations

import os
import struct

__all__ = ["CLAIMED", "INFO", "INLINE_MAX", "KEY", "RESULT", "RING", "TASK", "UNLOADABLE",
           "read_exact", "read_into", "recv_message", "send", "write_all", "write_message"]

KEY = struct.Struct(">I")
TASK = struct.Struct(">QI")
RESULT = struct.Struct(">QB")
UNLOADABLE = struct.Struct(">QI")
INFO = struct.Struct(">I")
#: Blobs larger than this go as a message of their own (no copy to prepend a header).
INLINE_MAX = 64 * 1024
#: A child's claim (see the module docstring): ``claimed``, then the ring of withdrawn tasks.
CLAIMED = 0
RING = 32


def send(fd: int, kind: bytes, header: bytes, blob: bytes) -> None:
    if len(blob) > INLINE_MAX:
        write_message(fd, kind.lower() + header)
        write_message(fd, blob)
    else:
        write_message(fd, kind + header + blob)


_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")


def write_message(fd: int, message: bytes) -> None:
    size = len(message)
    if size <= 0x7FFFFFFF:
        header = _LENGTH.pack(size)
    else:  # pragma: no cover - messages over 2 GiB
        header = _LENGTH.pack(-1) + _LONG_LENGTH.pack(size)
    if size <= INLINE_MAX:
        data = header + message
        written = os.write(fd, data)  # all of it, nearly always (the pipe has room)
        if written < len(data):
            write_all(fd, memoryview(data)[written:])
    else:  # no copy of a large message to prepend four bytes
        write_all(fd, memoryview(header))
        write_all(fd, memoryview(message))


def write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def recv_message(fd: int) -> bytes | bytearray:
    """Read one message (blocking); EOFError when the other side has closed the pipe.

    A message over :data:`INLINE_MAX` comes as a ``bytearray`` read straight into place
    (pickle, ``memoryview`` and the session's ``send_parts`` take it as they take bytes)."""
    (size,) = _LENGTH.unpack(read_exact(fd, 4))
    if size == -1:  # pragma: no cover - messages over 2 GiB
        (size,) = _LONG_LENGTH.unpack(read_exact(fd, 8))
    if size > INLINE_MAX:
        return read_into(fd, size)
    return read_exact(fd, size)


def read_exact(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while data and got < size:
        data = os.read(fd, size - got)
        parts.append(data)
        got += len(data)
    if got < size:
        raise EOFError
    return b"".join(parts)


def read_into(fd: int, size: int) -> bytearray:
    """``size`` bytes read into one buffer: no ``size``-byte allocation per read (a pipe
    gives at most its capacity at a time) and no join of the pieces afterwards."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = os.readv(fd, [view[got:]])
        if not count:
            raise EOFError
        got += count
    return buffer
