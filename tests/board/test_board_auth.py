"""Authenticated board senders (issue 17.5): self-certifying ids, signed lines, replays.

Pure: identities, signatures and the replay guard, with ``now`` passed in.
"""

from __future__ import annotations

import json

import pytest

from p2ppool.board import protocol
from p2ppool.board.auth import (
    KEY_CHARS,
    BoardIdentity,
    ReplayGuard,
    display_name,
    is_sender_id,
    name_of,
    signed_payload,
    verify,
)
from p2ppool.board.protocol import Bye, Hello, LineDecoder, MessageRejected, Offer, decode, encode

NOW = 1_800_000_000.0
TOPIC = "alice/friends"
KEY = "A" * 43 + "="  # base64 of 32 bytes, for offers


def hello(me: BoardIdentity, ts: float = NOW, **changes: object) -> Hello:
    fields = dict(sender=me.sender, ts=ts, ttl=60.0, role="worker", python="3.11",
                  version="0.1", slots=2)
    fields.update(changes)
    return Hello(**fields)  # type: ignore[arg-type]


def reason(line: bytes, topic: str = TOPIC, now: float = NOW) -> str:
    with pytest.raises(MessageRejected) as info:
        decode(line, now, topic)
    return info.value.reason


# --- ids ---------------------------------------------------------------------------------


def test_the_id_is_the_name_and_the_public_key() -> None:
    me = BoardIdentity("w1")
    name, _, key = me.sender.rpartition("~")
    assert name == "w1" and len(key) == KEY_CHARS and is_sender_id(me.sender)
    assert name_of(me.sender) == "w1"
    assert display_name(me.sender) == "w1~" + key[:6]
    assert BoardIdentity("w1").sender != me.sender  # the name is not unique; the id is
    assert not is_sender_id("w1") and name_of("w1") == "w1"


@pytest.mark.parametrize("name", ["", "a b", "x" * 85, "w~1"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="board name"):
        BoardIdentity(name)


def test_longest_name_still_fits_a_protocol_id() -> None:
    me = BoardIdentity("x" * 84)
    assert len(me.sender) == 128
    assert decode(encode(hello(me), me, TOPIC), NOW, TOPIC).sender == me.sender


# --- signatures ----------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    me = BoardIdentity("w1")
    payload = signed_payload(2, TOPIC, b'{"a":1}')
    sig = me.sign(payload).encode()
    assert verify(me.sender, sig, payload)
    assert not verify(me.sender, sig, payload + b" ")
    assert not verify(BoardIdentity("w1").sender, sig, payload)
    assert not verify("w1", sig, payload)
    assert not verify(me.sender, b"x" * 86, payload)
    assert not verify(me.sender, b"short", payload)


def test_a_signed_line_decodes_to_its_message() -> None:
    me = BoardIdentity("w1")
    msg = hello(me)
    assert decode(encode(msg, me, TOPIC), NOW, TOPIC) == msg


def test_nobody_signs_for_another_sender() -> None:
    me, other = BoardIdentity("w1"), BoardIdentity("w2")
    with pytest.raises(ValueError, match="signed by its own sender only"):
        encode(hello(other), me, TOPIC)


def test_any_changed_byte_breaks_the_signature() -> None:
    me = BoardIdentity("w1")
    line = encode(Offer(sender=me.sender, ts=NOW, ttl=60, job="j1", worker=me.sender,
                        slots=2, key=KEY, client="c~" + "B" * 43), me, TOPIC)
    refused = 0
    for i in range(len(line) - 1):  # every byte but the newline
        for flip in (1, 32):
            tampered = line[:i] + bytes([line[i] ^ flip]) + line[i + 1:]
            try:
                decode(tampered, NOW, TOPIC)
            except MessageRejected:
                refused += 1
                continue
            raise AssertionError(f"byte {i} changed and the line still decoded: {tampered!r}")
    assert refused == 2 * (len(line) - 1)


@pytest.mark.parametrize("old, new", [
    (b'"type":"hello"', b'"type":"bye"'),  # another message type ...
    (b'"ttl":60.0', b'"ttl":61.0'),
    (b'"slots":2', b'"slots":3'),
    (b'"role":"worker"', b'"role":"client"'),
    (b'"seq":', b'"seq":1'),  # ... another sequence number (a replay dressed up as new)
    (b'"ts":', b'"ts":1'),
], ids=["type", "ttl", "slots", "role", "seq", "ts"])
def test_each_covered_field_changed_is_a_bad_signature(old: bytes, new: bytes) -> None:
    me = BoardIdentity("w1")
    line = encode(hello(me), me, TOPIC)
    assert old in line
    tampered = line.replace(old, new, 1)
    if old == b'"ts":':  # keep it a valid, fresh time: 1 prepended to the seconds is not
        tampered = line.replace(b'"ts":%r' % NOW, b'"ts":%r' % (NOW + 1), 1)
    assert tampered != line
    assert reason(tampered) == "signature"


def test_the_protocol_version_is_covered() -> None:
    """A line signed for another protocol version does not verify as this one."""
    me = BoardIdentity("w1")
    line = encode(hello(me), me, TOPIC)
    body = line[:line.rindex(b',"sig":')] + b"}"
    sig = me.sign(signed_payload(3, TOPIC, body)).encode()
    assert reason(body[:-1] + b',"sig":"' + sig + b'"}\n') == "signature"


def test_a_changed_field_signed_by_a_forger_is_a_bad_signature() -> None:
    """A member rewrites a worker's line (slots, or Bye for Hello) and signs it itself."""
    worker, forger = BoardIdentity("w1"), BoardIdentity("w1")
    line = encode(hello(worker), worker, TOPIC)
    obj = json.loads(line)
    del obj["sig"]
    obj["slots"] = 99
    body = json.dumps(obj, separators=(",", ":")).encode()
    sig = forger.sign(signed_payload(2, TOPIC, body)).encode()
    assert reason(body[:-1] + b',"sig":"' + sig + b'"}\n') == "signature"


def test_a_forged_goodbye_in_another_members_name_is_refused() -> None:
    worker, forger = BoardIdentity("w1"), BoardIdentity("carol")
    bye = Bye(sender=worker.sender, ts=NOW, ttl=60, role="worker")
    with pytest.raises(ValueError):
        encode(bye, forger, TOPIC)  # our encoder will not; a hand-made line does:
    body = json.dumps({"v": 2, "type": "bye", "from": worker.sender, "ts": NOW, "ttl": 60,
                       "role": "worker", "seq": 10**9}, separators=(",", ":")).encode()
    sig = forger.sign(signed_payload(2, TOPIC, body)).encode()
    assert reason(body[:-1] + b',"sig":"' + sig + b'"}\n') == "signature"


def test_a_line_moved_to_another_topic_is_refused() -> None:
    me = BoardIdentity("w1")
    line = encode(hello(me), me, "alice/friends")
    assert reason(line, topic="bob/work") == "signature"
    assert reason(line, topic="alice/friend") == "signature"


def test_old_unsigned_and_misplaced_signatures_are_refused() -> None:
    me = BoardIdentity("w1")
    line = encode(hello(me), me, TOPIC)
    obj = json.loads(line)
    sig = obj.pop("sig")
    unsigned = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    assert reason(unsigned) == "unsigned"
    old = dict(obj, v=1)
    del old["seq"]
    old["from"] = "w1"
    assert reason(json.dumps(old).encode() + b"\n") == "version"
    # The signature must be the last member: elsewhere it is not cut off, so not verified.
    first = json.dumps({"sig": sig, **obj}, separators=(",", ":")).encode() + b"\n"
    assert reason(first) == "unsigned"
    # A second "sig" member is refused outright.
    twice = line[:-2] + b',"sig":"' + sig.encode() + b'"}\n'
    assert reason(twice) in ("malformed", "unsigned")


def test_the_cost_of_signing_grows_a_line_by_a_fixed_amount() -> None:
    me = BoardIdentity("w1")
    line = encode(hello(me), me, TOPIC)
    obj = json.loads(line)
    unsigned = {k: v for k, v in obj.items() if k not in ("sig", "seq")}
    unsigned["from"] = "w1"
    growth = len(line) - len(json.dumps(unsigned, separators=(",", ":")).encode() + b"\n")
    # 44 (~ and the key in the id) + 95 (,"sig":"<86>") + 8 (,"seq":1)
    assert growth == 44 + 95 + len(',"seq":1')


# --- replays -------------------------------------------------------------------------------


def test_the_guard_drops_a_sequence_number_not_above_the_last() -> None:
    guard = ReplayGuard(window=120, capacity=8)
    assert guard.check("a", 1, NOW, NOW) is None
    assert guard.check("a", 3, NOW, NOW) is None  # gaps are fine (lines lost while away)
    assert "not above 3" in (guard.check("a", 3, NOW, NOW) or "")
    assert guard.check("a", 2, NOW, NOW) is not None
    assert guard.check("b", 1, NOW, NOW) is None  # per sender


def test_the_guard_drops_lines_older_than_the_window_whatever_their_ttl() -> None:
    guard = ReplayGuard(window=120, capacity=8)
    assert "replay window" in (guard.check("a", 1, NOW - 121, NOW) or "")
    assert guard.check("a", 1, NOW - 119, NOW) is None


def test_the_guard_is_bounded_and_forgets_senders_outside_the_window() -> None:
    guard = ReplayGuard(window=120, capacity=3)
    for i in range(10):
        guard.check(f"s{i}", 1, NOW, NOW)
    assert len(guard) == 3
    guard.check("late", 1, NOW + 200, NOW + 200)
    assert len(guard) == 1  # the others' lines could only be replayed outside the window


def test_a_replayed_goodbye_does_not_remove_a_live_peer() -> None:
    """The worker said Bye once (seq 1), then Hello again (seq 2): the copy of the Bye that
    a member writes later is dropped, the peer stays."""
    worker = BoardIdentity("w1")
    bye = encode(Bye(sender=worker.sender, ts=NOW, ttl=60, role="worker"), worker, TOPIC)
    back = encode(hello(worker, ts=NOW + 1), worker, TOPIC)
    decoder = LineDecoder(TOPIC)
    assert [type(m) for m in decoder.feed(bye + back, NOW + 1)] == [Bye, Hello]
    assert decoder.feed(bye, NOW + 2) == []
    assert decoder.drops == {"replayed": 1}


def test_a_copy_of_a_line_is_dropped() -> None:
    me = BoardIdentity("w1")
    line = encode(hello(me), me, TOPIC)
    decoder = LineDecoder(TOPIC)
    assert len(decoder.feed(line + line + line, NOW)) == 1
    assert decoder.drops == {"replayed": 2}


# --- reporting ------------------------------------------------------------------------------


def test_authentication_drops_are_reported_at_once_then_at_most_once_a_minute() -> None:
    me, forger = BoardIdentity("w1"), BoardIdentity("carol")
    decoder = LineDecoder(TOPIC)
    good = encode(hello(me), me, TOPIC)
    elsewhere = encode(hello(forger), forger, "bob/work")
    decoder.feed(elsewhere, NOW)
    first = decoder.auth_report(NOW)
    assert first is not None and "signature 1" in first and "bob/work" not in first
    assert "does not verify" in first
    for _ in range(5):
        decoder.feed(elsewhere + good, NOW + 1)
    assert decoder.auth_report(NOW + 1) is None  # within the minute: nothing
    later = decoder.auth_report(NOW + 61)
    assert later is not None and "dropped 9 board line(s)" in later
    assert "replayed 4" in later and "signature 5" in later
    assert decoder.auth_report(NOW + 200) is None  # nothing new since
    assert protocol.AUTH_REASONS == ("version", "unsigned", "signature", "replayed")
