"""Session frames round-trip, and nothing a peer sends crashes the decoder."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ppool.errors import ProtocolError
from p2ppool.transfer.session_protocol import (
    SESSION_VERSION,
    Cancel,
    Close,
    Code,
    Forget,
    Func,
    Lost,
    Open,
    Ready,
    Refuse,
    Result,
    Task,
    Unable,
    decode_frame,
    encode_frame,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
frames = st.one_of(
    st.builds(Open, job=st.text(), python=st.text(),
              maxtasksperchild=st.none() | st.integers(1, 10**6), initializer=st.binary(),
              slots=st.none() | st.integers(1, 10**4), code=st.binary(),
              requires=st.lists(st.text(), max_size=3).map(tuple)),
    st.builds(Code, bundle=st.binary()),
    st.builds(Ready, worker=st.text(), slots=st.integers(0, 10**4),
              max_payload_bytes=st.none() | st.integers(0, 2**40),
              max_task_seconds=st.none() | st.floats(0, 1e6),
              max_function_bytes=st.none() | st.integers(0, 2**40), batches=st.booleans()),
    st.builds(Refuse, reason=st.text()),
    st.builds(Func, func_key=u64, blob=st.binary()),
    st.builds(Task, task_id=u64, func_key=u64, args=st.binary()),
    st.builds(Result, task_id=u64, ok=st.booleans(), blob=st.binary()),
    st.builds(Lost, task_id=u64, retry=st.booleans(), cause=st.text()),
    st.builds(Unable, task_id=u64, phase=st.text(), module=st.none() | st.text(),
              error=st.text(), host=st.text()),
    st.builds(Cancel, task_ids=st.lists(u64).map(tuple)),
    st.builds(Forget, func_keys=st.lists(u64).map(tuple)),
    st.just(Close()),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_every_frame_round_trips(frame: object) -> None:
    assert decode_frame(encode_frame(frame)) == frame  # type: ignore[arg-type]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except ProtocolError:
        pass


def test_forget_of_a_partial_key_is_a_protocol_error() -> None:
    assert decode_frame(b"G" + (7).to_bytes(8, "big")) == Forget((7,))
    with pytest.raises(ProtocolError, match="forget frame is not a whole number"):
        decode_frame(b"G" + (7).to_bytes(8, "big") + b"\x01")


def test_task_layout_is_fixed() -> None:
    assert encode_frame(Task(1, 2, b"xy")) == b"T" + (1).to_bytes(8, "big") + (
        2).to_bytes(8, "big") + b"xy"


def test_open_without_slots_means_every_offered_slot() -> None:
    # What a client that predates Open.slots sends: no key at all.
    data = encode_frame(Open(job="j", python="3.11"))
    assert b'"slots"' not in data
    assert decode_frame(data) == Open(job="j", python="3.11", slots=None)
    assert decode_frame(encode_frame(Open(job="j", python="3.11", slots=3))).slots == 3


def test_ready_says_batches_only_when_the_worker_runs_them() -> None:
    # A worker that predates batch tasks sends no key: the client must not send it any.
    data = encode_frame(Ready(worker="w", slots=1))
    assert b'"batches"' not in data
    assert decode_frame(data) == Ready(worker="w", slots=1, batches=False)
    assert decode_frame(encode_frame(Ready(worker="w", slots=1, batches=True))).batches
    forged = encode_frame(Ready(worker="w", slots=1, batches=True)).replace(b"true", b'"1"')
    with pytest.raises(ProtocolError, match="'batches' is not true or false"):
        decode_frame(forged[:1] + len(forged[5:]).to_bytes(4, "big") + forged[5:])


def test_wrong_session_version_is_refused_with_advice() -> None:
    data = encode_frame(Open(job="j", python="3.11", version=SESSION_VERSION + 1))
    with pytest.raises(ProtocolError, match="version .* not supported.*upgrade"):
        decode_frame(data)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "empty"),
        (b"Q", "unknown"),
        (b"T\x00", "too short"),
        (b"C\x00\x00\x00", "whole number"),
        (b"O\x00\x00\x00\x09{\"v\": 1}", "longer than the frame"),
        (b"O\x00\x00\x00\x02[]", "not a JSON object"),
        (b"R\x00\x00\x00\x0f{\"worker\": 3.0}", "'worker'"),
        (b"R\x00\x00\x00\x02\xff\xfe", "not JSON"),
    ],
)
def test_malformed_frames_name_the_problem(data: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode_frame(data)


def test_open_carries_the_code_bundle_before_the_initializer() -> None:
    data = encode_frame(Open(job="j", python="3.11", initializer=b"INIT", code=b"CODE"))
    assert data.endswith(b"CODEINIT")
    frame = decode_frame(data)
    assert isinstance(frame, Open) and frame.code == b"CODE" and frame.initializer == b"INIT"


def test_open_whose_code_size_exceeds_the_frame_is_a_protocol_error() -> None:
    data = encode_frame(Open(job="j", python="3.11", code=b"CODE"))
    forged = data.replace(b'"code":4', b'"code":9')
    assert forged != data
    with pytest.raises(ProtocolError, match="code bundle is longer than the frame"):
        decode_frame(forged)
