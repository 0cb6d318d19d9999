"""Board protocol: encoding, validation, stream reassembly, sealed codes (pure, no I/O)."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ppool import defaults
from p2ppool.board import protocol
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
    st.builds(Offer, job=ids, worker=ids, slots=positive, key=pubkeys, **header()),
    st.builds(Accept, job=ids, worker=ids, code=sealeds, **header()),
    st.builds(Withdraw, job=ids, worker=st.none() | ids, **header()),
    st.builds(Withdraw, job=st.none(), worker=ids, **header()),
    st.builds(Done, job=ids, **header()),
    st.builds(Cluster, name=ids, expires=st.floats(0, 1e10), **header()),
)


def hello(**changes: Any) -> Hello:
    fields: Dict[str, Any] = dict(
        sender="w1", ts=NOW, ttl=60.0, role="worker", python="3.11", version="0.1", slots=4
    )
    fields.update(changes)
    return Hello(**fields)


def wire(**changes: Any) -> bytes:
    obj = json.loads(encode(hello()))
    obj.update(changes)
    return json.dumps(obj).encode() + b"\n"


# --- round trips -----------------------------------------------------------------------------


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_valid_message_round_trips(msg: Message) -> None:
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line) <= defaults.MAX_LINE_BYTES
    assert decode(line, NOW) == msg
    assert type(decode(line, NOW)) is type(msg)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=20), st.data())
def test_stream_of_messages_survives_any_chunking(msgs: List[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = LineDecoder()
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
    line = encode(hello())
    obj = json.loads(line)
    assert obj == {
        "v": 1,
        "type": "hello",
        "from": "w1",
        "ts": NOW,
        "ttl": 60.0,
        "role": "worker",
        "python": "3.11",
        "version": "0.1",
        "slots": 4,
    }
    assert b" " not in line


def test_unknown_extra_fields_are_ignored() -> None:
    assert decode(wire(future_field=[1, 2]), NOW) == hello()


def test_crlf_line_ending_is_accepted() -> None:
    assert decode(encode(hello())[:-1] + b"\r\n", NOW) == hello()


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
        (wire(v=2), "version"),
        (wire(v=True), "version"),
        (wire(v="1"), "version"),
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
        (wire(**{"from": ""}), "malformed"),
        (wire(**{"from": "a b"}), "malformed"),
        (b'{"v":1,"type":"hello","from":"w","ts":NaN,"ttl":1}\n', "malformed"),
        (b'{"v":1,"type":"hello","from":"w","ts":1e999,"ttl":1}\n', "malformed"),
        (b"{" + b"[" * 3000 + b"\n", "malformed"),
        (b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}\n", "malformed"),
        (wire(ts=10**3900), "malformed"),
        (wire(ttl=10**3900), "malformed"),
        (b"{" + b" " * defaults.MAX_LINE_BYTES + b"}\n", "oversized"),
    ],
)
def test_bad_lines_are_rejected_with_their_reason(line: bytes, reason: str) -> None:
    with pytest.raises(MessageRejected) as info:
        decode(line, NOW)
    assert info.value.reason == reason
    assert isinstance(info.value, ProtocolError)


def test_missing_type_field_is_rejected() -> None:
    obj = json.loads(encode(hello()))
    del obj["role"]
    with pytest.raises(MessageRejected, match="lacks field 'role'"):
        decode(json.dumps(obj).encode(), NOW)


def test_withdraw_needs_a_job_or_a_worker() -> None:
    with pytest.raises(MessageRejected, match="withdraw needs"):
        Withdraw(sender="c", ts=NOW, ttl=60, job=None, worker=None)
    line = b'{"v":1,"type":"withdraw","from":"c","ts":%r,"ttl":60}\n' % NOW
    with pytest.raises(MessageRejected, match="withdraw needs"):
        decode(line, NOW)


def test_offer_key_must_be_32_bytes() -> None:
    with pytest.raises(MessageRejected, match="32 bytes"):
        Offer(sender="w", ts=NOW, ttl=60, job="j", worker="w", slots=1, key="AAAA")


def test_encode_refuses_a_line_over_the_limit() -> None:
    big = Accept(
        sender="c", ts=NOW, ttl=60, job="j", worker="w", code=base64.b64encode(b"x" * 3030).decode()
    )
    with pytest.raises(MessageRejected) as info:
        encode(big)
    assert info.value.reason == "oversized"


def test_expiry_boundary_is_inclusive() -> None:
    line = encode(hello(ts=NOW - 60.0, ttl=60.0))
    assert decode(line, NOW) == hello(ts=NOW - 60.0, ttl=60.0)
    with pytest.raises(MessageRejected, match="expired"):
        decode(line, NOW + 0.001)


def test_rejection_pickles_with_its_reason() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(MessageRejected("expired", "old")))
    assert exc.reason == "expired" and "old" in str(exc)


# --- the stream decoder never raises and counts drops ---------------------------------------


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=6000), max_size=20))
def test_arbitrary_bytes_never_raise_out_of_the_decoder(chunks: List[bytes]) -> None:
    decoder = LineDecoder()
    for chunk in chunks:
        for msg in decoder.feed(chunk, NOW):
            assert isinstance(msg, Message)
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_decode_raises_only_protocol_errors(line: bytes) -> None:
    try:
        decode(line, NOW)
    except MessageRejected as exc:
        assert exc.reason in {
            "oversized",
            "text",
            "malformed",
            "unknown_type",
            "version",
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
            msg = hello(sender=f"w{i}")
            expected.append(msg)
            stream += encode(msg)
        else:
            line = b"#" * length + b"\n"
            stream += line
            if len(line) > defaults.MAX_LINE_BYTES:
                oversized += 1
    decoder = LineDecoder()
    out: List[Message] = []
    for start in range(0, len(stream), chunk_size):
        out += decoder.feed(stream[start : start + chunk_size], NOW)
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES
    assert out == expected
    assert decoder.drops["oversized"] == oversized


def test_line_of_exactly_the_limit_passes_and_one_more_byte_is_dropped() -> None:
    # A line of exactly MAX_LINE_BYTES (padded with an ignored extra field).
    obj = json.loads(encode(hello(version="v")))
    obj["pad"] = ""
    filler = defaults.MAX_LINE_BYTES - len(json.dumps(obj, separators=(",", ":")).encode()) - 1
    obj["pad"] = "x" * filler
    line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    assert len(line) == defaults.MAX_LINE_BYTES
    decoder = LineDecoder()
    assert decoder.feed(line, NOW) == [hello(version="v")]
    obj["pad"] += "x"
    longer = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    assert decoder.feed(longer, NOW) == []
    assert decoder.drops == {"oversized": 1}


def test_status_text_blank_lines_and_nul_bytes() -> None:
    decoder = LineDecoder()
    stream = (
        b"subscribe to this topic:\n  ssh pipe.pico.sh sub alice/x\n\r\n\n"
        + b"\x00"
        + encode(hello())
    )
    assert decoder.feed(stream, NOW) == [hello()]
    assert decoder.drops == {"text": 2}


def test_ten_megabyte_line_is_discarded_without_buffering_it() -> None:
    decoder = LineDecoder()
    piece = b"z" * 65536
    for _ in range(160):
        assert decoder.feed(piece, NOW) == []
        assert decoder.pending_bytes <= defaults.MAX_LINE_BYTES
    assert decoder.feed(b"tail\n" + encode(hello()), NOW) == [hello()]
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
    msg = Accept(sender="c1", ts=NOW, ttl=60, job="j1", worker="w1", code=sealed)
    back = decode(encode(msg), NOW)
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
    decoder = LineDecoder()
    line = encode(hello())
    assert decoder.feed(line[:20], NOW) == []
    decoder.reset()
    assert decoder.drops == {"truncated": 1}
    assert decoder.feed(line, NOW) == [hello()]
    decoder.reset()
    assert decoder.drops == {"truncated": 1}
