"""Board protocol: encoding, validation, stream reassembly, sealed codes (pure, no I/O).

Every line is signed (protocol version 2): messages are written under a test identity per
name (``signed``), and hand-made lines are signed with :func:`sign_object`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ppool import defaults
from p2ppool.board import protocol
from p2ppool.board.auth import BoardIdentity, signed_payload
from p2ppool.board.protocol import (
    Accept,
    Bye,
    Cluster,
    Done,
    Hello,
    LineDecoder,
    Message,
    MessageRejected,
    Offer,
    Want,
    Withdraw,
    decode,
    encode,
    new_offer_keypair,
    open_code,
    seal_code,
)
from p2ppool.errors import ProtocolError

NOW = 1_800_000_000.0
TOPIC = "alice/friends"
_IDENTITIES: Dict[str, BoardIdentity] = {}


def identity(name: str) -> BoardIdentity:
    """One identity per name for the whole test run (its seq keeps growing)."""
    found = _IDENTITIES.get(name)
    if found is None:
        found = _IDENTITIES[name] = BoardIdentity(name)
    return found


def signed(msg: Message) -> Message:
    """``msg`` with its sender name replaced by that name's self-certifying id."""
    return dataclasses.replace(msg, sender=identity(msg.sender).sender)


def enc(msg: Message) -> bytes:
    """Sign and encode a message whose sender is already a test identity's id."""
    name = msg.sender.rpartition("~")[0]
    return encode(msg, identity(name), TOPIC)


def dec(line: bytes, now: float = NOW) -> Message:
    return decode(line, now, TOPIC)


def sign_object(obj: Dict[str, Any], name: str = "w1", topic: str = TOPIC) -> bytes:
    """A line for any JSON object, signed by ``name``'s identity (so that only the field
    checks can refuse it)."""
    return sign_body(json.dumps(obj, separators=(",", ":")).encode(), name, topic)


def sign_body(body: bytes, name: str = "w1", topic: str = TOPIC) -> bytes:
    """A line for raw JSON object bytes, signed by ``name``'s identity."""
    sig = identity(name).sign(signed_payload(protocol.PROTOCOL_VERSION, topic, body))
    return body[:-1] + b',"sig":"' + sig.encode() + b'"}\n'

# --- strategies ----------------------------------------------------------------------------

ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@/+=-",
    min_size=1,
    max_size=40,
)
texts = st.text(min_size=1, max_size=40)
pythons = st.from_regex(r"\A[0-9]{1,2}\.[0-9]{1,3}\Z")
slots = st.integers(min_value=0, max_value=2**31 - 1)
positive = st.integers(min_value=1, max_value=2**31 - 1)
roles = st.sampled_from(protocol.ROLES)
# A timestamp close to NOW (within the allowed skew) and a ttl that keeps it alive at NOW.
stamps = st.floats(min_value=NOW - 50, max_value=NOW + 50, allow_nan=False)
ttls = st.one_of(
    st.floats(min_value=60.0, max_value=1e6),
    st.integers(min_value=60, max_value=10**6),
)
pubkeys = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
sealeds = st.binary(min_size=1, max_size=200).map(lambda b: base64.b64encode(b).decode())


def header() -> Dict[str, Any]:
    return {"sender": ids, "ts": stamps, "ttl": ttls}


messages = st.one_of(
    st.builds(Hello, role=roles, python=pythons, version=texts, slots=slots, **header()),
    st.builds(Bye, role=roles, **header()),
    st.builds(Want, job=ids, slots=positive, python=pythons, session=positive, **header()),
    st.builds(Offer, job=ids, worker=ids, slots=positive, key=pubkeys, client=ids, **header()),
    st.builds(Accept, job=ids, worker=ids, code=sealeds, **header()),
    st.builds(Withdraw, job=ids, worker=st.none() | ids, client=st.none() | ids, **header()),
    st.builds(Withdraw, job=st.none(), worker=ids, **header()),
    st.builds(Done, job=ids, **header()),
    st.builds(Cluster, name=ids, expires=st.floats(0, 1e10), **header()),
)


def hello(**changes: Any) -> Hello:
    fields: Dict[str, Any] = dict(
        sender=identity("w1").sender, ts=NOW, ttl=60.0, role="worker", python="3.11",
        version="0.1", slots=4
    )
    fields.update(changes)
    return Hello(**fields)


def wire(**changes: Any) -> bytes:
    obj = json.loads(enc(hello()))
    del obj["sig"]
    obj.update(changes)
    return sign_object(obj)


# --- round trips -----------------------------------------------------------------------------


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_valid_message_round_trips(msg: Message) -> None:
    msg = signed(msg)
    line = enc(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= defaults.MAX_LINE_BYTES
    assert dec(line) == msg
    assert type(dec(line)) is type(msg)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=20), st.data())
def test_stream_of_messages_survives_any_chunking(msgs: List[Message], data: st.DataObject) -> None:
    # Fresh identities per example: a shared one's growing seq would change the stream's
    # length between hypothesis runs.
    local: Dict[str, BoardIdentity] = {}
    lines = []
    for i, m in enumerate(msgs):
        ident = local.setdefault(m.sender, BoardIdentity(m.sender))
        msgs[i] = dataclasses.replace(m, sender=ident.sender)
        lines.append(encode(msgs[i], ident, TOPIC))
    stream = b"".join(lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = LineDecoder(TOPIC)
    out: List[Message] = []
    previous = 0
    for cut in cuts + [len(stream)]:
        out += decoder.feed(stream[previous:cut], NOW)
        previous = cut
    assert out == msgs
    assert sum(decoder.drops.values()) == 0
    assert decoder.accepted == len(msgs)
    assert decoder.pending_bytes == 0


def test_wire_format_is_compact_json_with_header_fields() -> None:
    line = enc(hello())
    obj = json.loads(line)
    sig = obj.pop("sig")
    seq = obj.pop("seq")
    assert obj == {
        "v": 2,
        "type": "hello",
        "from": identity("w1").sender,
        "ts": NOW,
        "ttl": 60.0,
        "role": "worker",
        "python": "3.11",
        "version": "0.1",
        "slots": 4,
    }
    assert isinstance(seq, int) and seq >= 1 and len(sig) == 86
    assert line.endswith(b',"sig":"' + sig.encode() + b'"}\n')
    assert b" " not in line


def test_unknown_extra_fields_are_ignored() -> None:
    assert dec(wire(future_field=[1, 2])) == hello()


def test_crlf_line_ending_is_accepted() -> None:
    assert dec(enc(hello())[:-1] + b"\r\n") == hello()


# --- rejection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"subscribe to this topic:\n", "text"),
        (b"  ssh pipe.pico.sh sub alice/x\n", "text"),
        (b"{not json\n", "malformed"),
        (b"[1,2]\n", "text"),
        (b'{"v":1}\n', "malformed"),
        (b"{\xff\xfe}\n", "malformed"),
        (wire(v=1), "version"),
        (wire(v=3), "version"),
        (wire(v=True), "version"),
        (wire(v="2"), "version"),
        (wire(type="gossip"), "unknown_type"),
        (wire(type=7), "unknown_type"),
        (wire(ts=NOW - 61), "expired"),
        (wire(ts=NOW + defaults.MAX_CLOCK_SKEW_S + 1), "future"),
        (wire(ttl=0), "malformed"),
        (wire(ttl=-5), "malformed"),
        (wire(slots=-1), "malformed"),
        (wire(slots=True), "malformed"),
        (wire(slots=1.5), "malformed"),
        (wire(role="admin"), "malformed"),
        (wire(python="three"), "malformed"),
        (wire(**{"from": ""}), "unsigned"),
        (wire(**{"from": "a b"}), "unsigned"),
        (wire(**{"from": "w1"}), "unsigned"),
        (wire(seq=0), "unsigned"),
        (wire(seq="1"), "unsigned"),
        (wire(seq=True), "unsigned"),
        (b'{"v":2,"type":"hello","from":"w","ts":NaN,"ttl":1}\n', "malformed"),
        (b'{"v":2,"type":"hello","from":"w","ts":1e999,"ttl":1}\n', "unsigned"),
        (sign_body(b'{"v":2,"type":"hello","from":"' + identity("w1").sender.encode()
                   + b'","ts":1e999,"ttl":1,"seq":1}'), "malformed"),
        (b"{" + b"[" * 3000 + b"\n", "malformed"),
        (b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}\n", "malformed"),
        (wire(ts=10**3700), "malformed"),
        (wire(ttl=10**3700), "malformed"),
        (b"{" + b" " * defaults.MAX_LINE_BYTES + b"}\n", "oversized"),
    ],
)
def test_bad_lines_are_rejected_with_their_reason(line: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as info:
        dec(line)
    assert info.value.reason == reason
    assert isinstance(info.value, ProtocolError)


def test_missing_type_field_is_rejected() -> None:
    obj = json.loads(enc(hello()))
    del obj["role"], obj["sig"]
    with pytest.raises(MessageRejected, match="lacks field 'role'"):
        dec(sign_object(obj))


def test_withdraw_needs_a_job_or_a_worker() -> None:
    with pytest.raises(MessageRejected, match="withdraw needs"):
        Withdraw(sender="c", ts=NOW, ttl=60, job=None, worker=None)
    line = sign_object({"v": 2, "type": "withdraw", "from": identity("c").sender, "ts": NOW,
                        "ttl": 60, "seq": 1}, "c")
    with pytest.raises(MessageRejected, match="withdraw needs"):
        dec(line)


def test_offer_key_must_be_32_bytes() -> None:
    with pytest.raises(MessageRejected, match="32 bytes"):
        Offer(sender="w", ts=NOW, ttl=60, job="j", worker="w", slots=1, key="AAAA", client="c")


def test_encode_refuses_a_line_over_the_limit() -> None:
    big = Accept(
        sender=identity("c").sender, ts=NOW, ttl=60, job="j", worker="w",
        code=base64.b64encode(b"x" * 2900).decode()
    )
    with pytest.raises(MessageRejected) as info:
        enc(big)
    assert info.value.reason == "oversized"


def test_expiry_boundary_is_inclusive() -> None:
    line = enc(hello(ts=NOW - 60.0, ttl=60.0))
    assert dec(line) == hello(ts=NOW - 60.0, ttl=60.0)
    with pytest.raises(MessageRejected, match="expired"):
        dec(line, NOW + 0.001)


def test_rejection_pickles_with_its_reason() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(MessageRejected("expired", "old")))
    assert exc.reason == "expired" and "old" in str(exc)


# --- the stream decoder never raises and counts drops ---------------------------------------


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=6000), max_size=20))
def test_arbitrary_bytes_never_raise_out_of_the_decoder(chunks: List[bytes]) -> None:
    decoder = LineDecoder(TOPIC)
    for chunk in chunks:
        for msg in decoder.feed(chunk, NOW):
            assert isinstance(msg, Message)
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_decode_raises_only_protocol_errors(line: bytes) -> None:
    try:
        dec(line)
    except MessageRejected as exc:
        assert exc.reason in {
            "oversized",
            "text",
            "malformed",
            "unknown_type",
            "version",
            "unsigned",
            "signature",
            "expired",
            "future",
        }


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 9000)), min_size=1, max_size=12),
    st.integers(1, 700),
)
def test_overlong_lines_are_dropped_and_counted_and_good_lines_survive(
    plan: List[Any], chunk_size: int
) -> None:
    """A mix of valid lines and garbage lines of any length, fed in fixed-size chunks."""
    stream = b""
    expected: List[Message] = []
    oversized = 0
    for i, (good, length) in enumerate(plan):
        if good:
            msg = hello(sender=identity(f"w{i}").sender)
            expected.append(msg)
            stream += enc(msg)
        else:
            line = b"#" * length + b"\n"
            stream += line
            if len(line) > defaults.MAX_LINE_BYTES:
                oversized += 1
    decoder = LineDecoder(TOPIC)
    out: List[Message] = []
    for start in range(0, len(stream), chunk_size):
        out += decoder.feed(stream[start : start + chunk_size], NOW)
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES
    assert out == expected
    assert decoder.drops["oversized"] == oversized


def test_line_of_exactly_the_limit_passes_and_one_more_byte_is_dropped() -> None:
    # A line of exactly MAX_LINE_BYTES (padded with an ignored extra field).
    obj = json.loads(enc(hello(version="v")))
    del obj["sig"]
    obj["pad"] = ""
    filler = defaults.MAX_LINE_BYTES - len(sign_object(obj))
    obj["pad"] = "x" * filler
    line = sign_object(obj)
    assert len(line) == defaults.MAX_LINE_BYTES
    decoder = LineDecoder(TOPIC)
    assert decoder.feed(line, NOW) == [hello(version="v")]
    obj["pad"] += "x"
    obj["seq"] += 1
    longer = sign_object(obj)
    assert decoder.feed(longer, NOW) == []
    assert decoder.drops == {"oversized": 1}


def test_status_text_blank_lines_and_nul_bytes() -> None:
    decoder = LineDecoder(TOPIC)
    stream = (
        b"subscribe to this topic:\n  ssh pipe.pico.sh sub alice/x\n\r\n\n"
        + b"\x00"
        + enc(hello())
    )
    assert decoder.feed(stream, NOW) == [hello()]
    assert decoder.drops == {"text": 2}


def test_ten_megabyte_line_is_discarded_without_buffering_it() -> None:
    decoder = LineDecoder(TOPIC)
    piece = b"z" * 65536
    for _ in range(160):
        assert decoder.feed(piece, NOW) == []
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES
    assert decoder.feed(b"tail\n" + enc(hello()), NOW) == [hello()]
    assert decoder.drops == {"oversized": 1}


# --- sealed codes ----------------------------------------------------------------------------


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40)
@given(st.text(min_size=1, max_size=200))
def test_sealed_code_opens_only_with_the_matching_key(code: str) -> None:
    private, public = new_offer_keypair()
    other, _ = new_offer_keypair()
    sealed = seal_code(code, public)
    assert open_code(sealed, private) == code
    with pytest.raises(MessageRejected, match="does not open"):
        open_code(sealed, other)


def test_sealed_code_fits_in_an_accept_line() -> None:
    private, public = new_offer_keypair()
    sealed = seal_code("123-purple-sausages", public)
    msg = Accept(sender=identity("c1").sender, ts=NOW, ttl=60, job="j1", worker="w1",
                 code=sealed)
    back = dec(enc(msg))
    assert isinstance(back, Accept)
    assert open_code(back.code, private) == "123-purple-sausages"


def test_tampered_sealed_code_does_not_open() -> None:
    private, public = new_offer_keypair()
    raw = bytearray(base64.b64decode(seal_code("7-a-b", public)))
    raw[-1] ^= 1
    with pytest.raises(MessageRejected):
        open_code(base64.b64encode(bytes(raw)).decode(), private)
    with pytest.raises(MessageRejected):
        open_code("not base64!", private)


def test_seal_refuses_a_bad_public_key() -> None:
    with pytest.raises(MessageRejected, match="32 bytes"):
        seal_code("7-a-b", base64.b64encode(b"short").decode())


def test_reset_drops_a_partial_line_and_counts_it() -> None:
    decoder = LineDecoder(TOPIC)
    line = enc(hello())
    assert decoder.feed(line[:20], NOW) == []
    decoder.reset()
    assert decoder.drops == {"truncated": 1}
    assert decoder.feed(line, NOW) == [hello()]
    decoder.reset()
    assert decoder.drops == {"truncated": 1}
