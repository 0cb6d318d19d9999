"""Record framing of the transfer layer (pure: no I/O, no clock).

A session's subchannel carries records: a 9-byte header ``kind:u8, length:u64``
(big-endian) followed by ``length`` bytes.  Kinds: ``DATA`` (an application frame),
``HEARTBEAT`` (empty) and ``BYE`` (a UTF-8 reason of at most 4 KiB).
:class:`FrameDecoder` reassembles records from arbitrary chunks in linear time and checks
each header before buffering its payload.
"""

from __future__ import annotations

import struct
from typing import List, Tuple

from p2ppool.errors import TransferError

__all__ = [
    "HEADER_BYTES",
    "KIND_BYE",
    "KIND_DATA",
    "KIND_HEARTBEAT",
    "MAX_BYE_REASON_BYTES",
    "FrameDecoder",
    "FrameTooLarge",
    "encode_header",
]

# Record kinds on the wire (first header byte).
KIND_DATA = 0x44  # "D"
KIND_HEARTBEAT = 0x48  # "H"
KIND_BYE = 0x42  # "B"
_HEADER = struct.Struct(">BQ")
HEADER_BYTES = _HEADER.size
MAX_BYE_REASON_BYTES = 4096


class FrameTooLarge(TransferError):
    """The peer announced a frame larger than this session accepts.

    Raised by the decoder on the header alone, before any of the payload is buffered.
    """

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(
            f"the peer announced a frame of {length} bytes, over this session's limit of "
            f"{limit} bytes (max_frame_bytes); the session was closed without reading it"
        )


class FrameDecoder:
    """Reassemble records from a byte stream.  Pure: no I/O.

    Received chunks are queued as they are and each record's payload is copied out of them
    once (one ``join``, or a slice of one chunk), so a record that arrives in many pieces
    costs linear time (Twisted's Int32StringReceiver is quadratic) and a large payload is
    copied only once.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._parts: List[bytes] = []
        self._pos = 0  # bytes of ``_parts[0]`` already consumed
        self._have = 0  # bytes buffered and not consumed
        self._kind: int | None = None
        self._need: int | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as part of a record."""
        return self._have

    def feed(self, data: bytes) -> List[Tuple[int, bytes]]:
        """Add received bytes; return the records they complete as ``(kind, payload)``.

        Raises:
            FrameTooLarge: a DATA header announces more than ``max_frame_bytes``.
            TransferError: an unknown record kind or an oversized control record.
        """
        if data:
            self._parts.append(data)
            self._have += len(data)
        out: List[Tuple[int, bytes]] = []
        while True:
            if self._need is None:
                if self._have < HEADER_BYTES:
                    break
                kind, length = _HEADER.unpack(self._take(HEADER_BYTES))
                self._check_header(kind, length)
                self._kind, self._need = kind, length
            if self._have < self._need:
                break
            assert self._kind is not None
            out.append((self._kind, self._take(self._need) if self._need else b""))
            self._kind, self._need = None, None
        return out

    def _take(self, size: int) -> bytes:
        """Remove and return the first ``size`` buffered bytes (``size <= _have``)."""
        parts = self._parts
        first, pos = parts[0], self._pos
        self._have -= size
        left = len(first) - pos
        if left > size:
            self._pos = pos + size
            return first[pos:pos + size]
        self._pos = 0
        piece = first[pos:] if pos else first
        if left == size:
            del parts[0]
            return piece
        pieces = [piece]
        size -= left
        i = 1
        while size:
            chunk = parts[i]
            if len(chunk) > size:
                pieces.append(chunk[:size])
                self._pos = size
                break
            pieces.append(chunk)
            size -= len(chunk)
            i += 1
        del parts[:i]
        return b"".join(pieces)

    def _check_header(self, kind: int, length: int) -> None:
        if kind == KIND_DATA:
            if length > self.max_frame_bytes:
                raise FrameTooLarge(length, self.max_frame_bytes)
        elif kind == KIND_HEARTBEAT:
            if length != 0:
                raise TransferError(f"protocol error: heartbeat record of {length} bytes")
        elif kind == KIND_BYE:
            if length > MAX_BYE_REASON_BYTES:
                raise TransferError(f"protocol error: goodbye record of {length} bytes")
        else:
            raise TransferError(f"protocol error: unknown record kind 0x{kind:02x}")


def encode_header(kind: int, length: int) -> bytes:
    """Return the 9-byte record header."""
    return _HEADER.pack(kind, length)


