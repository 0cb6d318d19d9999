"""The code bundle's format: what a client's own modules look like on the wire (pure)."""

from __future__ import annotations

import json
import zlib

import pytest

from p2ppool.errors import ProtocolError
from p2ppool.shipping import bundle as code_bundle
from p2ppool.shipping.bundle import ModuleSource, decode, digest, encode, relative_path

MODULES = [
    ModuleSource("mypkg", True, b"from .sub import f\n"),
    ModuleSource("helpers", False, b"X = 1\n"),
    ModuleSource("mypkg.sub", False, b"def f():\n    return 2\n"),
]


def raw_bundle(entries: list, body: bytes, version: int = code_bundle.BUNDLE_VERSION) -> bytes:
    header = json.dumps({"v": version, "modules": entries}).encode() + b"\n"
    return zlib.compress(header + body)


def test_round_trip_in_name_order() -> None:
    blob = encode(MODULES)
    assert decode(blob, 10_000) == sorted(MODULES, key=lambda m: m.name)


def test_same_modules_same_bytes_whatever_the_order() -> None:
    assert encode(MODULES) == encode(list(reversed(MODULES)))
    assert digest(encode(MODULES)) == digest(encode(list(reversed(MODULES))))
    changed = [ModuleSource("helpers", False, b"X = 2\n"), *MODULES[::2]]
    assert digest(encode(changed)) != digest(encode(MODULES))


def test_a_bundle_larger_than_the_limit_once_inflated_is_refused() -> None:
    bomb = encode([ModuleSource("big", False, b"#" * 1_000_000)])
    assert len(bomb) < 5_000  # compresses well: the limit must apply to the inflated size
    with pytest.raises(ProtocolError, match="larger than 100000 bytes"):
        decode(bomb, 100_000)
    assert decode(bomb, 2_000_000)[0].source == b"#" * 1_000_000


@pytest.mark.parametrize("blob, message", [
    (b"not zlib", "not zlib"),
    (zlib.compress(b"no header line"), "no header"),
    (zlib.compress(b"{not json\n"), "not JSON"),
    (raw_bundle([], b"", version=99), "not version 1"),
    (raw_bundle([["a", False]], b""), "malformed entry"),
    (raw_bundle([["a", "no", 1]], b"x"), "malformed entry"),
    (raw_bundle([["a", False, -1]], b""), "malformed entry"),
    (raw_bundle([["../etc", False, 1]], b"x"), "bad module name"),
    (raw_bundle([["a/b", False, 1]], b"x"), "bad module name"),
    (raw_bundle([["class", False, 1]], b"x"), "bad module name"),
    (raw_bundle([["", False, 0]], b""), "bad module name"),
    (raw_bundle([["a", False, 1], ["a", False, 1]], b"xy"), "twice"),
    (raw_bundle([["a", False, 5]], b"xy"), "exceed"),
    (raw_bundle([["a", False, 1]], b"xy"), "after its last module"),
    (raw_bundle([["a", False, 1], ["a.b", False, 1]], b"xy"), "not a package"),
    (zlib.compress(b'{"v": 1, "modules": []}\n')[:-3], "truncated"),
])
def test_malformed_bundles_raise_protocol_errors(blob: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(blob, 10_000)


def test_a_submodule_of_a_namespace_package_needs_no_parent_entry() -> None:
    blob = raw_bundle([["ns.mod", False, 1]], b"x")
    assert decode(blob, 100) == [ModuleSource("ns.mod", False, b"x")]


def test_relative_paths() -> None:
    assert relative_path("helpers", False) == "helpers.py"
    assert relative_path("mypkg", True) == "mypkg/__init__.py"
    assert relative_path("mypkg.sub.deep", False) == "mypkg/sub/deep.py"
