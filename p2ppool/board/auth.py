"""Authenticated board senders: self-certifying ids, signed lines, a replay guard.

Pure module: no sockets, threads or clock reads (``now`` is always passed in).

**Self-certifying ids.**  A board sender id is ``<name>~<key>``: a human name (a worker's
``--name``, ``client:<job>``, ``host-...``) and the base64url (unpadded, 43 characters) of
the sender's Ed25519 public key.  The id *is* the key, so no table binds ids to keys and
nothing is trusted on first use: whoever does not hold the private key cannot write a line
that verifies under that id.  The name part is not unique (anyone may call itself ``w1``);
the whole id is.  Keys are ephemeral: a Pool makes one per board presence, a worker one
per run.

**Why the key rides in every line** (in ``from``) rather than announced once in a Hello:
an announced key needs a table from ids to keys in every reader, filled on first use, so a
reader that missed the Hello (it joined later, or forgot the sender among many) could not
check the sender's lines, and whoever announced first would own a name.  The cost is
small: ``benchmarks/bench_board_auth.py`` measured the line growth over version 1 (bare
names, no ``seq``, no ``sig``) at 147 bytes for a Hello or a Want (44 for the key in
``from``, 95 for ``sig``, about 8 for ``seq``) and 270 bytes for an Offer (it names three
ids), against the 4 KiB line limit; and (CPU time, loaded 2-core machine) about 30-50 µs
to sign a line, 80 µs to verify one, 150 µs to decode a whole signed line.

**Signed lines.**  Every board line (protocol version 2) ends in a ``sig`` member, the
Ed25519 signature by the sender's key over::

    b"p2ppool board v2\\n" + topic + b"\\n" + the line's JSON object without "sig"

so a line cannot be moved to another topic (cluster), and any change to any byte of it
(type, ids, slots, keys, ``ts``, ``seq``) breaks the signature.  The signed bytes are the
bytes on the wire (the ``sig`` member is cut off textually, never re-serialised), so no
canonical JSON is needed.

**Replays.**  A member can copy another member's signed line and write it again on the
same topic.  Every line carries ``seq``, a per-identity counter that only grows; a
:class:`ReplayGuard` drops a line whose ``seq`` is not above the last one it accepted from
that sender, and any line stamped more than ``window`` seconds ago (whatever its ``ttl``).
So a replayed goodbye cannot remove a live peer: the peer's later lines raised the bar.
What is left: a receiver that has heard nothing newer from a sender (it just joined, or
forgot the sender among ``capacity`` others heard since) accepts a copy of that sender's
last line within the window, as it would have accepted the original.

**Keys** are made in memory by each process (:class:`BoardIdentity`), never written
anywhere: a worker's id lasts one run, a Pool's one board presence (ids were per process
before signing, too).  So an id proves "the same process as the earlier lines", not who
runs it: who may write at all is the board's access list, and a member may make any
number of ids, under any name.
"""

from __future__ import annotations

import base64
import binascii
import collections
import itertools
import re
from typing import Tuple

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .. import defaults

__all__ = [
    "KEY_CHARS",
    "SIG_CHARS",
    "BoardIdentity",
    "ReplayGuard",
    "display_name",
    "is_sender_id",
    "name_of",
    "signed_payload",
    "verify",
]

#: Separates the name from the key in a sender id.
KEY_SEP = "~"
#: base64url characters of a 32-byte Ed25519 public key (unpadded).
KEY_CHARS = 43
#: base64url characters of a 64-byte Ed25519 signature (unpadded).
SIG_CHARS = 86
#: Longest name part, so that a whole id fits the protocol's 128 characters.
MAX_NAME_CHARS = 128 - 1 - KEY_CHARS

_NAME_CLASS = r"[A-Za-z0-9._:@/+=-]"
_NAME_RE = re.compile(rf"^{_NAME_CLASS}{{1,{MAX_NAME_CHARS}}}$")
_SENDER_RE = re.compile(
    rf"^{_NAME_CLASS}{{1,{MAX_NAME_CHARS}}}{KEY_SEP}[A-Za-z0-9_-]{{{KEY_CHARS}}}$"
)
_SIG_RE = re.compile(rb"^[A-Za-z0-9_-]{%d}$" % SIG_CHARS)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str | bytes) -> bytes:
    data = text.encode("ascii") if isinstance(text, str) else text
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def is_sender_id(sender: str) -> bool:
    """Whether ``sender`` has the form ``<name>~<43 base64url characters>``."""
    return bool(_SENDER_RE.match(sender))


def name_of(sender: str) -> str:
    """The name part of a sender id (the whole text if it is not a self-certifying id)."""
    name, sep, key = sender.rpartition(KEY_SEP)
    return name if sep and len(key) == KEY_CHARS else sender


def display_name(sender: str) -> str:
    """A sender id shortened for people: the name and the key's first 6 characters."""
    name, sep, key = sender.rpartition(KEY_SEP)
    return f"{name}{KEY_SEP}{key[:6]}" if sep and len(key) == KEY_CHARS else sender


def signed_payload(version: int, topic: str, body: bytes) -> bytes:
    """The bytes a line's signature covers: protocol version, topic and the JSON object
    without its ``sig`` member."""
    return b"p2ppool board v%d\n" % version + topic.encode("utf-8") + b"\n" + body


def verify(sender: str, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` (base64url text, as on the wire) is ``sender``'s over
    ``payload``.  Never raises: a malformed id or signature is simply False."""
    if not is_sender_id(sender) or not _SIG_RE.match(signature):
        return False
    try:
        key = VerifyKey(_unb64(sender[-KEY_CHARS:]))
        key.verify(payload, _unb64(signature))
    except (BadSignatureError, binascii.Error, ValueError, TypeError):
        return False
    except Exception:  # noqa: BLE001 - libsodium may refuse odd keys; never crash a peer
        return False
    return True


class BoardIdentity:
    """A board sender: a name and an Ed25519 key; signs the lines it writes.

    Args:
        name: the name part of the id (1-84 of ``A-Za-z0-9._:@/+=-``).
        signing_key: the private key; None makes a fresh one.

    Attributes:
        name: the name part.
        sender: the whole id, ``<name>~<public key>``: put it in every message's ``sender``.

    Raises:
        ValueError: the name is empty, too long or has other characters.
    """

    def __init__(self, name: str, signing_key: SigningKey | None = None) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(
                f"a board name must be 1-{MAX_NAME_CHARS} of the characters "
                f"A-Za-z0-9._:@/+=-, got {name!r}"
            )
        self.name = name
        self._key = signing_key if signing_key is not None else SigningKey.generate()
        self.sender = f"{name}{KEY_SEP}{_b64(bytes(self._key.verify_key))}"
        self._seq = itertools.count(1)

    def next_seq(self) -> int:
        """The next line's sequence number (1, 2, ...; each is handed out once)."""
        return next(self._seq)

    def sign(self, payload: bytes) -> str:
        """The base64url signature of ``payload`` (86 characters)."""
        return _b64(self._key.sign(payload).signature)

    def __repr__(self) -> str:
        return f"BoardIdentity({display_name(self.sender)!r})"


class ReplayGuard:
    """Drops copies of lines already seen, and lines older than the replay window.

    Per sender it keeps the highest ``seq`` accepted, for at most ``capacity`` senders (the
    least recently heard forgotten first) and only while that sender's last line is within
    the window (a line it could block would be dropped as too old anyway).

    Args:
        window: a line stamped more than this many seconds before ``now`` is dropped.
        capacity: senders remembered at most.
    """

    def __init__(self, window: float = defaults.REPLAY_WINDOW_S,
                 capacity: int = defaults.REPLAY_SENDERS_KEPT) -> None:
        if window <= 0 or capacity < 1:
            raise ValueError("the replay window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        #: sender -> (highest seq accepted, that line's ts); least recently heard first
        self._last: collections.OrderedDict[str, Tuple[int, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def check(self, sender: str, seq: int, ts: float, now: float) -> str | None:
        """Accept (and remember) a line, or say why not.

        Args:
            sender: the line's verified sender id.
            seq: its sequence number.
            ts: its timestamp (unix seconds, as the sender wrote it).
            now: the current unix time.

        Returns:
            None when the line is new, else the reason it is dropped (for a log line).
        """
        if ts < now - self.window:
            return (f"stamped {now - ts:.0f} s ago, before the {self.window:g} s replay "
                    "window")
        last = self._last.get(sender)
        if last is not None and seq <= last[0]:
            return f"sequence number {seq} is not above {last[0]}, the last one accepted"
        self._last[sender] = (seq, ts)
        self._last.move_to_end(sender)
        self._forget(now)
        return None

    def _forget(self, now: float) -> None:
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        # Least recently heard first, so the stale ones are at the front (roughly: ts is
        # the sender's clock); what is left behind is bounded by capacity anyway.
        while self._last:
            sender, (_, ts) = next(iter(self._last.items()))
            if ts >= now - self.window:
                break
            del self._last[sender]
