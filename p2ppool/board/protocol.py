"""Board messages: single-line JSON, validated, with sealed wormhole codes.

Pure module: no sockets, threads or clock reads (``now`` is always passed in).

Every message is one JSON object on one line, UTF-8, at most
:data:`p2ppool.defaults.MAX_LINE_BYTES` bytes including the newline, and carries:

=========  ==========================================================
``v``      protocol version (:data:`PROTOCOL_VERSION`)
``type``   the message type (``hello``, ``bye``, ``want``, ``offer``, ...)
``from``   sender id: ``<name>~<Ed25519 public key>`` (:mod:`p2ppool.board.auth`)
``ts``     unix time in seconds when it was written
``ttl``    seconds after ``ts`` at which it is stale and dropped
``seq``    the sender's line counter (1, 2, ...), against replays
``sig``    last: the sender's signature over version, topic and the rest of the line
=========  ==========================================================

plus the fields of its type (see the dataclasses below).  A receiver ignores fields it does
not know, so a later minor revision can add optional fields without a version bump.

**Authenticated senders** (version 2).  :func:`encode` signs a line with the sender's
:class:`~p2ppool.board.auth.BoardIdentity` for one topic, and :func:`decode` drops a line
that is unsigned (``unsigned``), whose signature does not verify under the key in its
``from`` for this topic (``signature``), or of version 1 (``version``).  So no member can
write a line in another member's name, or move a line to another cluster.  A
:class:`LineDecoder` also drops copies of lines it has seen (``replayed``; see
:class:`~p2ppool.board.auth.ReplayGuard`).  Jobs are bound to their owner: an
:class:`Offer` names the client whose Want it answers (``client``), so another member's
Want under a real job's id cannot take the offers meant for that job.

Wormhole codes never travel in the clear: a worker's :class:`Offer` carries a fresh X25519
public key, and the client's :class:`Accept` carries the code sealed to that key with
PyNaCl's ``SealedBox`` (:func:`seal_code` / :func:`open_code`).

Reading a board stream: feed raw byte chunks (any split) to a :class:`LineDecoder`; it yields
valid messages and counts every dropped line by reason, and never raises.

Size: the board's whole wire format (every message type, its validation, sealed codes,
signing on encode and checking on decode) is kept in one module so that a change to a line
is one change in one place.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Tuple, Type, Union

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from .. import defaults
from ..errors import ProtocolError
from .auth import (
    KEY_CHARS,
    SIG_CHARS,
    BoardIdentity,
    ReplayGuard,
    is_sender_id,
    signed_payload,
    verify,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ROLES",
    "Accept",
    "BoardIdentity",
    "Bye",
    "Cluster",
    "Done",
    "Hello",
    "LineDecoder",
    "Message",
    "MessageRejected",
    "Offer",
    "Want",
    "Withdraw",
    "decode",
    "decode_signed",
    "encode",
    "new_offer_keypair",
    "open_code",
    "seal_code",
]

#: Version of the board message protocol; a line with another ``v`` is dropped.
#: Version 2: every line is signed by its sender (:mod:`p2ppool.board.auth`).
PROTOCOL_VERSION: int = 2

#: Who a peer is on the board.  ``observer`` is ``p2ppool status`` (it only listens).
ROLES: Tuple[str, ...] = ("worker", "client", "host", "observer")

# Drop reasons, as counted by LineDecoder.drops and carried by MessageRejected.reason.
OVERSIZED = "oversized"  #: the line is longer than MAX_LINE_BYTES
MALFORMED = "malformed"  #: not UTF-8 JSON, not an object, or a field has a bad value
TEXT = "text"  #: a line that is not JSON at all (server status text such as pico's)
UNKNOWN_TYPE = "unknown_type"  #: a ``type`` this version does not know
VERSION = "version"  #: another protocol version
EXPIRED = "expired"  #: ``ts + ttl`` is in the past
FUTURE = "future"  #: ``ts`` is further in the future than the allowed clock skew
TRUNCATED = "truncated"  #: a partial line left when the connection ended (see LineDecoder.reset)
UNSIGNED = "unsigned"  #: no ``sig``/``seq``, or ``from`` is not a self-certifying id
SIGNATURE = "signature"  #: the signature does not verify (forged, altered, another topic)
REPLAYED = "replayed"  #: a copy of a line already seen, or older than the replay window
#: The reasons that say a line failed authentication (logged, rate-limited).
AUTH_REASONS = (VERSION, UNSIGNED, SIGNATURE, REPLAYED)

_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=~-]{1,128}$")
_PYTHON_RE = re.compile(r"^[0-9]{1,2}\.[0-9]{1,3}$")
_MAX_TEXT = 256
_KEY_BYTES = 32


class MessageRejected(ProtocolError):
    """A board line was refused.  ``reason`` says why (one of the drop reasons above)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"board message rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.reason, self.detail))


# --- field checks ------------------------------------------------------------------------
# Each check takes (field name, value) and returns the value or raises MessageRejected.
Check = Callable[[str, Any], Any]


def _bad(name: str, value: Any, expected: str) -> MessageRejected:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return MessageRejected(MALFORMED, f"field {name!r} must be {expected}, got {shown}")


def _ident(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise _bad(name, value, "an id of 1-128 characters [A-Za-z0-9._:@/+=~-]")
    return value


def _opt_ident(name: str, value: Any) -> str | None:
    return None if value is None else _ident(name, value)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise _bad(name, value, f"a non-empty string of at most {_MAX_TEXT} characters")
    return value


def _python(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _PYTHON_RE.match(value):
        raise _bad(name, value, 'a Python "major.minor" version such as "3.11"')
    return value


def _role(name: str, value: Any) -> str:
    if value not in ROLES:
        raise _bad(name, value, "one of " + ", ".join(ROLES))
    return str(value)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**31:
        raise _bad(name, value, f"an integer >= {minimum}")
    return value


def _slots(name: str, value: Any) -> int:
    return _count(name, value, 0)


def _positive(name: str, value: Any) -> int:
    return _count(name, value, 1)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value, "a finite number")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise _bad(name, value, "a finite number")
    return value


def _ttl(name: str, value: Any) -> float:
    number = _number(name, value)
    if number <= 0:
        raise _bad(name, value, "a positive number of seconds")
    return number


def _b64(name: str, value: Any, size: int | None = None) -> str:
    if not isinstance(value, str) or len(value) > defaults.MAX_LINE_BYTES:
        raise _bad(name, value, "a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _bad(name, value, "a base64 string") from None
    if size is not None and len(raw) != size:
        raise _bad(name, value, f"base64 of exactly {size} bytes")
    if not raw:
        raise _bad(name, value, "non-empty base64")
    return value


def _pubkey(name: str, value: Any) -> str:
    return _b64(name, value, _KEY_BYTES)


def _sealed(name: str, value: Any) -> str:
    return _b64(name, value)


def _requirements(name: str, value: Any) -> list[str] | None:
    """An optional list of at most 32 requirement strings (checked in full by the worker,
    with :func:`p2ppool.shipping.requirements.parse_requirements`)."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) > 32
            or not all(isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()
                       for v in value)):
        raise _bad(name, value, "a list of at most 32 requirement strings")
    return list(value)


def _checked(check: Check, *, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field validated by ``check`` on construction and on decode."""
    if default is dataclasses.MISSING:
        return field(metadata={"check": check})
    return field(default=default, metadata={"check": check})


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Fields every board message carries.

    Attributes:
        sender: the sender's peer id (``from`` on the wire).
        ts: unix time in seconds when the message was written.
        ttl: seconds after ``ts`` after which receivers drop it.
    """

    TYPE: ClassVar[str] = ""

    sender: str = _checked(_ident)
    ts: float = _checked(_number)
    ttl: float = _checked(_ttl)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            f.metadata["check"](_wire_name(f.name), getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        """Cross-field checks of a type (none by default)."""

    def expires_at(self) -> float:
        """Unix time after which this message is stale."""
        return self.ts + self.ttl


@dataclass(frozen=True)
class Hello(Message):
    """A peer is on the board (sent on joining, periodically, and to answer a newcomer's hello).

    Attributes:
        role: ``worker``, ``client``, ``host`` or ``observer``.
        python: Python ``major.minor`` of the peer, e.g. ``"3.11"``.
        version: the peer's p2ppool version.
        slots: free worker slots (0 for clients, hosts and observers).
        sandbox: workers: how their tasks are confined ("bwrap", "bwrap+network" or
            "none"); None for other roles and older workers.
    """

    TYPE: ClassVar[str] = "hello"

    role: str = _checked(_role)
    python: str = _checked(_python)
    version: str = _checked(_text)
    slots: int = _checked(_slots)
    sandbox: str | None = _checked(_opt_ident, default=None)


@dataclass(frozen=True)
class Bye(Message):
    """A peer leaves the board; forget everything it announced.

    Attributes:
        role: the role it had.
    """

    TYPE: ClassVar[str] = "bye"

    role: str = _checked(_role)


@dataclass(frozen=True)
class Want(Message):
    """A client job needs worker slots.

    Attributes:
        job: the job id (unique per client).
        slots: how many slots it can use.
        python: the Python ``major.minor`` a worker must run.
        session: the session protocol version the client speaks.
        requires: what the job needs installed (PEP 508 strings), or None; a worker that
            lacks it and may not install it does not offer.
    """

    TYPE: ClassVar[str] = "want"

    job: str = _checked(_ident)
    slots: int = _checked(_positive)
    python: str = _checked(_python)
    session: int = _checked(_positive)
    requires: tuple[str, ...] | None = _checked(_requirements, default=None)

    def _check(self) -> None:
        if self.requires is not None and not isinstance(self.requires, tuple):
            object.__setattr__(self, "requires", tuple(self.requires))  # JSON gives a list


@dataclass(frozen=True)
class Offer(Message):
    """A worker offers slots to a job, with an ephemeral X25519 public key for the reply.

    Attributes:
        job: the job id from the :class:`Want`.
        worker: the worker's id.
        slots: how many slots it offers.
        key: base64 of the 32-byte X25519 public key (see :func:`new_offer_keypair`).
        client: the sender of the Want it answers (a job is its owner's: only that
            client may accept, and only that client takes the offer as its own).
    """

    TYPE: ClassVar[str] = "offer"

    job: str = _checked(_ident)
    worker: str = _checked(_ident)
    slots: int = _checked(_positive)
    key: str = _checked(_pubkey)
    client: str = _checked(_ident)


@dataclass(frozen=True)
class Accept(Message):
    """A client takes a worker's offer; the wormhole code is sealed to the offer's key.

    Attributes:
        job: the job id.
        worker: the chosen worker's id.
        code: base64 of the wormhole code sealed with :func:`seal_code`.
    """

    TYPE: ClassVar[str] = "accept"

    job: str = _checked(_ident)
    worker: str = _checked(_ident)
    code: str = _checked(_sealed)


@dataclass(frozen=True)
class Withdraw(Message):
    """A job no longer wants slots, or a worker withdraws (at least one of the two is set).

    Both set, by the worker itself: the worker withdraws its offer to that job (it was not
    accepted in time while another job waited; see :mod:`p2ppool.worker.peer`); ``client`` then
    names the job's owner.

    Attributes:
        job: the job withdrawn, or None.
        worker: the worker withdrawing, or None.
        client: with both: the client the withdrawn offer was made to.
    """

    TYPE: ClassVar[str] = "withdraw"

    job: str | None = _checked(_opt_ident, default=None)
    worker: str | None = _checked(_opt_ident, default=None)
    client: str | None = _checked(_opt_ident, default=None)

    def _check(self) -> None:
        if self.job is None and self.worker is None:
            raise MessageRejected(MALFORMED, "withdraw needs a job, a worker or both")


@dataclass(frozen=True)
class Done(Message):
    """A client job is finished; workers drop anything they hold for it.

    Attributes:
        job: the job id.
    """

    TYPE: ClassVar[str] = "done"

    job: str = _checked(_ident)


@dataclass(frozen=True)
class Cluster(Message):
    """``p2ppool host`` announces a shared cluster on its topic.

    Attributes:
        name: the cluster, ``owner/name``.
        expires: unix time at which the host stops hosting it.
    """

    TYPE: ClassVar[str] = "cluster"

    name: str = _checked(_ident)
    expires: float = _checked(_number)


AnyMessage = Union[Hello, Bye, Want, Offer, Accept, Withdraw, Done, Cluster]

#: type name -> message class.
MESSAGE_TYPES: Dict[str, Type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Bye, Want, Offer, Accept, Withdraw, Done, Cluster)
}

_HEADER = ("v", "type", "from", "ts", "ttl")
_SIG_OPEN = b',"sig":"'
_SIG_SUFFIX = len(_SIG_OPEN) + SIG_CHARS + 2  # ,"sig":"<86 characters>"}
_MAX_SEQ = 2**63


def _wire_name(name: str) -> str:
    return "from" if name == "sender" else name


# --- encode / decode -------------------------------------------------------------------------


def encode(msg: Message, identity: BoardIdentity, topic: str) -> bytes:
    """Encode one message as a signed board line.

    Args:
        msg: any message (already validated when it was constructed); its ``sender`` must
            be ``identity.sender``.
        identity: the sender's key; it signs the line and numbers it (``seq``).
        topic: the board topic the line is written to (``owner/name``), bound by the
            signature.

    Returns:
        UTF-8 JSON on one line, ending in ``\\n``, at most ``MAX_LINE_BYTES`` bytes.

    Raises:
        MessageRejected: the line would be longer than ``MAX_LINE_BYTES`` (reason
            ``oversized``), or ``msg`` is not a concrete message type (``unknown_type``).
        ValueError: ``msg.sender`` is not the identity's id (nobody signs for another).
    """
    if type(msg) not in MESSAGE_TYPES.values():
        raise MessageRejected(UNKNOWN_TYPE, f"{type(msg).__name__} is not a board message type")
    if msg.sender != identity.sender:
        raise ValueError(f"a {msg.TYPE} from {msg.sender!r} cannot be signed by "
                         f"{identity.sender!r}: a line is signed by its own sender only")
    obj: Dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if value is None and f.default is None:
            continue  # an optional field left out (what an older peer sends, too)
        obj[_wire_name(f.name)] = value
    obj["seq"] = identity.next_seq()
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
    signature = identity.sign(signed_payload(PROTOCOL_VERSION, topic, body))
    line = body[:-1] + _SIG_OPEN + signature.encode("ascii") + b'"}\n'
    if len(line) > defaults.MAX_LINE_BYTES:
        raise MessageRejected(
            OVERSIZED,
            f"{msg.TYPE} message is {len(line)} bytes; a board line holds at most "
            f"{defaults.MAX_LINE_BYTES}",
        )
    return line


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_members(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a member name appears twice")
    return obj


def decode(line: bytes, now: float, topic: str) -> Message:
    """Decode, authenticate and validate one board line.

    Args:
        line: the line, with or without its trailing ``\\n`` (a ``\\r`` before it is allowed).
        now: the current unix time, to drop stale messages.
        topic: the topic it was read from (the signature must be for this topic).

    Returns:
        The message, an instance of one of the types in :data:`MESSAGE_TYPES`, whose
        ``sender`` wrote it.  (Copies of lines are caught by a :class:`LineDecoder`,
        which keeps state; :func:`decode` alone does not.)

    Raises:
        MessageRejected: (a :class:`~p2ppool.errors.ProtocolError`) with ``reason`` one of
            ``oversized``, ``text``, ``malformed``, ``unknown_type``, ``version``,
            ``unsigned``, ``signature``, ``expired``, ``future``.
    """
    return decode_signed(line, now, topic)[0]


def decode_signed(line: bytes, now: float, topic: str) -> Tuple[Message, int]:
    """:func:`decode`, also returning the line's sequence number (for a replay check)."""
    if len(line) > defaults.MAX_LINE_BYTES or (
        len(line) == defaults.MAX_LINE_BYTES and not line.endswith(b"\n")
    ):
        raise MessageRejected(OVERSIZED, f"line of {len(line)} bytes")
    body = line[:-1] if line.endswith(b"\n") else line
    body = body[:-1] if body.endswith(b"\r") else body
    if not body.lstrip(b" \t").startswith(b"{"):
        raise MessageRejected(TEXT, "not a JSON object: " + repr(body[:60]))
    # The signature is the last member, cut off as bytes: what remains is what was signed.
    signature: bytes | None = None
    if (len(body) > _SIG_SUFFIX and body.endswith(b'"}')
            and body[-_SIG_SUFFIX:-_SIG_SUFFIX + len(_SIG_OPEN)] == _SIG_OPEN):
        signature = body[-SIG_CHARS - 2:-2]
        body = body[:-_SIG_SUFFIX] + b"}"
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant,
                         object_pairs_hook=_unique_members)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageRejected(MALFORMED, f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageRejected(MALFORMED, "not a JSON object")
    msg, seq = _from_object(obj, now, signature is not None)
    assert signature is not None  # (_from_object refuses an unsigned line)
    if not verify(msg.sender, signature, signed_payload(PROTOCOL_VERSION, topic, body)):
        raise MessageRejected(
            SIGNATURE, f"{msg.TYPE} from {msg.sender}: the signature does not verify for "
                       f"topic {topic!r} (forged, altered, or written to another topic)")
    return msg, seq


def _from_object(obj: Dict[str, Any], now: float, signed: bool) -> Tuple[Message, int]:
    missing = [name for name in _HEADER if name not in obj]
    if missing:
        raise MessageRejected(MALFORMED, "missing field(s) " + ", ".join(missing))
    version = obj["v"]
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise MessageRejected(
            VERSION, f"protocol version {version!r}; this peer speaks {PROTOCOL_VERSION} "
                     "(signed lines; update p2ppool)"
        )
    sender = obj["from"]
    if not signed or "sig" in obj:
        raise MessageRejected(UNSIGNED, f"a line from {sender!r} carries no signature "
                                        "(as its last member)")
    if not isinstance(sender, str) or not is_sender_id(sender):
        raise MessageRejected(UNSIGNED, f"sender {sender!r} is not a self-certifying id "
                                        f"(<name>~<{KEY_CHARS} characters of key>)")
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < _MAX_SEQ:
        raise MessageRejected(UNSIGNED, f"a line from {sender} has no valid sequence number")
    cls = MESSAGE_TYPES.get(obj["type"]) if isinstance(obj["type"], str) else None
    if cls is None:
        raise MessageRejected(UNKNOWN_TYPE, f"unknown message type {obj['type']!r}")
    kwargs: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        wire = _wire_name(f.name)
        if wire in obj:
            kwargs[f.name] = obj[wire]
        elif f.default is not None:
            raise MessageRejected(MALFORMED, f"{cls.TYPE} message lacks field {wire!r}")
    msg = cls(**kwargs)
    if msg.expires_at() < now:
        age = now - msg.expires_at()
        raise MessageRejected(EXPIRED, f"{cls.TYPE} from {msg.sender} expired {age:.1f} s ago")
    if msg.ts > now + defaults.MAX_CLOCK_SKEW_S:
        raise MessageRejected(
            FUTURE, f"{cls.TYPE} from {msg.sender} is stamped {msg.ts - now:.1f} s in the future"
        )
    return msg, seq


# --- stream reassembly ---------------------------------------------------------------------


class LineDecoder:
    """Turns a byte stream (arriving in any chunks) into authenticated, validated messages.

    Lines may be split across chunks or several may arrive in one chunk.  Nothing raises
    out of :meth:`feed`: every line that is not a valid message is dropped and counted in
    :attr:`drops` by reason.  A line longer than ``max_line`` is discarded up to its newline
    without buffering more than ``max_line`` bytes.  Blank lines (keepalive noise) and NUL
    bytes at the start of a line (pico's ``pub -e`` sends one NUL) are skipped uncounted.
    Copies of lines already accepted, and lines older than the replay window, are dropped
    as ``replayed`` (see :class:`~p2ppool.board.auth.ReplayGuard`).

    Args:
        topic: the topic the stream comes from (signatures must be for it).
        max_line: the longest line accepted, newline included.
        replay: the replay guard (default: a fresh one with the default window).

    Attributes:
        drops: drop reason -> number of lines dropped for it.
        accepted: number of messages yielded.
    """

    def __init__(self, topic: str, max_line: int = defaults.MAX_LINE_BYTES,
                 replay: ReplayGuard | None = None) -> None:
        self.topic = topic
        self.max_line = max_line
        self.replay = replay if replay is not None else ReplayGuard()
        self.drops: Counter[str] = Counter()
        self.accepted = 0
        self._buffer = bytearray()
        self._discarding = False
        self._unreported: Counter[str] = Counter()  # authentication drops not yet logged
        self._example = ""
        self._reported_at = -math.inf

    def feed(self, chunk: bytes, now: float) -> List[Message]:
        """Add bytes from the stream; return the messages of every line completed by them.

        Args:
            chunk: the next bytes of the stream, of any length.
            now: the current unix time (stale messages are dropped).
        """
        return list(self._lines_to_messages(self._split(chunk), now))

    def auth_report(self, now: float,
                    interval: float = defaults.AUTH_DROP_LOG_S) -> str | None:
        """A line to log about lines dropped for failing authentication, at most one per
        ``interval`` seconds (the first at once), or None when there is nothing new to say."""
        if not self._unreported or now - self._reported_at < interval:
            return None
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self._unreported.items()))
        total = sum(self._unreported.values())
        text = (f"dropped {total} board line(s) that failed authentication ({counts}); "
                f"e.g. {self._example}.  A peer runs an older p2ppool, or someone writes in "
                "another peer's name")
        self._unreported.clear()
        self._reported_at = now
        return text

    def _drop(self, reason: str, detail: str) -> None:
        self.drops[reason] += 1
        if reason in AUTH_REASONS:
            if not self._unreported:
                self._example = detail if len(detail) <= 300 else detail[:297] + "..."
            self._unreported[reason] += 1

    def _split(self, chunk: bytes) -> Iterator[bytes]:
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline + 1
            piece = chunk[start:end]
            start = end
            if self._discarding:
                if newline >= 0:
                    self._discarding = False
                continue
            if len(self._buffer) + len(piece) > self.max_line:
                self._buffer.clear()
                self.drops[OVERSIZED] += 1
                self._discarding = newline < 0
                continue
            self._buffer += piece
            if newline >= 0:
                line = bytes(self._buffer)
                self._buffer.clear()
                yield line

    def _lines_to_messages(self, lines: Iterator[bytes], now: float) -> Iterator[Message]:
        for line in lines:
            stripped = line.lstrip(b"\x00")
            if not stripped.strip():
                continue
            try:
                msg, seq = decode_signed(stripped, now, self.topic)
            except MessageRejected as exc:
                self._drop(exc.reason, exc.detail)
                continue
            except Exception:  # noqa: BLE001 - a peer's bytes must never break the loop
                self.drops[MALFORMED] += 1
                continue
            why = self.replay.check(msg.sender, seq, msg.ts, now)
            if why is not None:
                self._drop(REPLAYED, f"{msg.TYPE} from {msg.sender}: {why}")
                continue
            self.accepted += 1
            yield msg

    def reset(self) -> None:
        """Forget a partial line (the connection ended mid-line); counted as ``truncated``."""
        if self._buffer or self._discarding:
            self.drops[TRUNCATED] += 1
        self._buffer.clear()
        self._discarding = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held until its newline arrives."""
        return len(self._buffer)


# --- sealed wormhole codes ------------------------------------------------------------------


def new_offer_keypair() -> Tuple[PrivateKey, str]:
    """A fresh X25519 key pair for one offer.

    Returns:
        ``(private_key, public_key_b64)``: keep the private key, put the base64 public key
        in :attr:`Offer.key`.
    """
    private = PrivateKey.generate()
    return private, base64.b64encode(bytes(private.public_key)).decode("ascii")


def seal_code(code: str, public_key_b64: str) -> str:
    """Seal a wormhole code so only the holder of the offer's private key can read it.

    Args:
        code: the wormhole code.
        public_key_b64: :attr:`Offer.key`.

    Returns:
        base64 text for :attr:`Accept.code`.

    Raises:
        MessageRejected: the public key is not base64 of 32 bytes.
    """
    _pubkey("key", public_key_b64)
    box = SealedBox(PublicKey(base64.b64decode(public_key_b64)))
    return base64.b64encode(box.encrypt(code.encode("utf-8"))).decode("ascii")


def open_code(sealed: str, private_key: PrivateKey) -> str:
    """Open a code sealed with :func:`seal_code`.

    Args:
        sealed: :attr:`Accept.code`.
        private_key: the private half of the key pair whose public key was offered.

    Returns:
        The wormhole code.

    Raises:
        MessageRejected: (reason ``malformed``) it was not sealed to this key or is damaged.
    """
    try:
        raw = base64.b64decode(sealed.encode("ascii"), validate=True)
        return SealedBox(private_key).decrypt(raw).decode("utf-8")
    except (CryptoError, binascii.Error, ValueError, UnicodeError) as exc:
        raise MessageRejected(
            MALFORMED, f"the sealed code does not open with this offer's key ({exc})"
        ) from None
