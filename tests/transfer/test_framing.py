"""Pure parts of the transfer layer: the record decoder, hints, the loopback switch."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ppool.errors import TransferError
from p2ppool.transfer.framing import (
    HEADER_BYTES,
    KIND_BYE,
    KIND_DATA,
    KIND_HEARTBEAT,
    FrameDecoder,
    FrameTooLarge,
    encode_header,
)
from p2ppool.transfer.session import _hint_host, new_code
from p2ppool.transfer.wormhole_patches import describe_hint, install_patches


def record(kind: int, payload: bytes = b"") -> bytes:
    return encode_header(kind, len(payload)) + payload


def feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: List[int]) -> List[Tuple[int, bytes]]:
    out: List[Tuple[int, bytes]] = []
    start = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        out.extend(decoder.feed(data[start:cut]))
        start = cut
    return out


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=7000), max_size=30),
)
def test_records_survive_any_split(payloads: List[bytes], cuts: List[int]) -> None:
    stream = b"".join(record(KIND_DATA, p) + record(KIND_HEARTBEAT) for p in payloads)
    decoder = FrameDecoder(max_frame_bytes=1000)
    got = feed_in_pieces(decoder, stream, cuts)
    expected = [r for p in payloads for r in ((KIND_DATA, p), (KIND_HEARTBEAT, b""))]
    assert got == expected
    assert decoder.buffered_bytes == 0


def test_an_oversized_header_is_refused_before_its_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    assert decoder.feed(record(KIND_DATA, b"x" * 1024)) == [(KIND_DATA, b"x" * 1024)]
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(encode_header(KIND_DATA, 10**12) + b"first bytes")
    assert info.value.length == 10**12 and info.value.limit == 1024
    assert "frame of 1000000000000 bytes" in str(info.value)
    assert "limit of 1024 bytes" in str(info.value)


def test_a_header_split_in_two_is_checked_once_complete() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    header = encode_header(KIND_DATA, 11)
    assert decoder.feed(header[:4]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[4:])


@pytest.mark.parametrize(
    "data, message",
    [
        (encode_header(0x00, 0), "unknown record kind 0x00"),
        (encode_header(KIND_HEARTBEAT, 5), "heartbeat record of 5 bytes"),
        (encode_header(KIND_BYE, 10_000), "goodbye record of 10000 bytes"),
    ],
)
def test_malformed_records_are_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(TransferError, match=message):
        FrameDecoder(max_frame_bytes=100).feed(data)


def test_reassembly_of_a_large_frame_is_linear() -> None:
    """8 MiB in 4 KiB pieces: list-based reassembly takes milliseconds, not seconds."""
    payload = bytes(range(256)) * (8 * 4096)
    stream = record(KIND_DATA, payload)
    decoder = FrameDecoder(max_frame_bytes=len(payload))
    started = time.process_time()  # CPU time: a loaded machine does not stretch it
    out = feed_in_pieces(decoder, stream, list(range(0, len(stream), 4096)))
    assert time.process_time() - started < 1.0
    assert out == [(KIND_DATA, payload)]


def test_many_small_records_in_one_chunk() -> None:
    stream = b"".join(record(KIND_DATA, b"%d" % i) for i in range(5000))
    out = FrameDecoder(max_frame_bytes=10).feed(stream)
    assert [p for _, p in out] == [b"%d" % i for i in range(5000)]


def test_header_layout() -> None:
    assert HEADER_BYTES == 9
    assert encode_header(KIND_DATA, 258) == b"D" + (258).to_bytes(8, "big")


def test_new_codes_are_long_and_fresh() -> None:
    codes = {new_code() for _ in range(100)}
    assert len(codes) == 100
    for code in codes:
        nameplate, password = code.split("-", 1)
        assert nameplate.isdigit() and len(password) == 32


@pytest.mark.parametrize(
    "hint, host",
    [
        ("tcp:127.0.0.1:4001", "127.0.0.1"),
        ("tcp:localhost:4001", "localhost"),
        ("tcp:[::1]:4001", "[::1]"),
        ("tcp:relay.example:4001", "relay.example"),
        ("tor:abc.onion:80", None),
    ],
)
def test_hint_host(hint: str, host: str) -> None:
    assert _hint_host(hint) == host


def test_describe_hint() -> None:
    direct = SimpleNamespace(hostname="127.0.0.1", port=5)
    assert describe_hint(direct) == "tcp:127.0.0.1:5"
    assert describe_hint(SimpleNamespace(hints=(direct,))) == "relay:tcp:127.0.0.1:5"


def test_loopback_switch_is_per_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a connector whose manager is marked loopback-only is restricted; others keep the
    library's choice of LAN addresses (checked with a fake address list, no sockets)."""
    from wormhole import ipaddrs
    from wormhole._dilation.connector import Connector

    install_patches()
    monkeypatch.setattr(ipaddrs, "find_addresses", lambda: ["127.0.0.1", "192.0.2.7"])
    marked = SimpleNamespace(_manager=SimpleNamespace(_p2ppool_loopback_only=True))
    unmarked = SimpleNamespace(_manager=SimpleNamespace(_p2ppool_loopback_only=False))
    assert Connector._get_listener_addresses(marked) == ["127.0.0.1"]
    assert Connector._get_listener_addresses(unmarked) == ["192.0.2.7"]


def test_loopback_listener_binds_127_0_0_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """The marked connector's listener description gets interface=127.0.0.1; the unmarked
    one keeps the library's "tcp:0"."""
    from wormhole._dilation import connector as connector_mod

    install_patches()
    seen: List[str] = []

    class FakeEndpoint:
        def listen(self, factory: object) -> object:
            from twisted.internet import defer

            return defer.Deferred()  # never fires: no socket is opened

    def fake_endpoints_server_from_string(reactor: object, description: str) -> FakeEndpoint:
        seen.append(description)
        return FakeEndpoint()

    from twisted.internet import endpoints

    monkeypatch.setattr(endpoints, "serverFromString", fake_endpoints_server_from_string)
    monkeypatch.setattr(connector_mod, "serverFromString", fake_endpoints_server_from_string)
    monkeypatch.setattr(connector_mod, "InboundConnectionFactory", lambda connector: None)
    for flag in (True, False):
        fake = SimpleNamespace(
            _manager=SimpleNamespace(_p2ppool_loopback_only=flag), _reactor=None,
        )
        connector_mod.Connector._start_listener(fake, ["127.0.0.1"])
    assert seen == ["tcp:0:interface=127.0.0.1", "tcp:0"]
    assert connector_mod.serverFromString is fake_endpoints_server_from_string  # restored


def test_framing_is_pure() -> None:
    """transfer/framing.py imports nothing that does I/O (until test_layering lists it)."""
    import ast
    from pathlib import Path

    import p2ppool.transfer.framing

    tree = ast.parse(Path(p2ppool.transfer.framing.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"__future__", "struct", "typing", "p2ppool.errors"}, imported
