"""The client's own modules as they travel to a worker: a compressed bundle of source (pure).

A script's ``helpers.py`` or local package ``mypkg/`` is not installed on the workers, so the
client sends their *source* (see :mod:`p2ppool.shipping` for which modules), and a worker's
task processes import them as ordinary modules (:mod:`p2ppool.shipping.cache` writes them out).
Functions and classes of those modules then pickle by reference, as installed ones do: one
module, one globals dict (an initializer's global is seen by the task functions), real file
names and source lines in tracebacks, classes with one identity.

Format: ``zlib(header + b"\\n" + sources)``, where ``header`` is the JSON object
``{"v": 1, "modules": [[name, is_package, size], ...]}`` and the sources follow in that
order.  JSON and bytes only: a worker's main process never unpickles what a client sends.

Nothing here does I/O; :func:`decode` rejects anything malformed with a
:class:`~p2ppool.errors.ProtocolError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import keyword
import zlib
from typing import List, Sequence

from ..errors import ProtocolError

__all__ = ["BUNDLE_VERSION", "ModuleSource", "decode", "digest", "encode", "relative_path"]

#: Bumped on any incompatible change of the format above.
BUNDLE_VERSION = 1

#: Most modules one bundle may hold (a worker refuses more).
MAX_MODULES = 20_000


@dataclasses.dataclass(frozen=True)
class ModuleSource:
    """One module's source: ``name`` is dotted; a package's source is its ``__init__.py``."""

    name: str
    is_package: bool
    source: bytes


def encode(modules: Sequence[ModuleSource]) -> bytes:
    """The bundle of ``modules`` (sorted by name, so the same modules give the same bytes)."""
    ordered = sorted(modules, key=lambda m: m.name)
    header = {"v": BUNDLE_VERSION,
              "modules": [[m.name, m.is_package, len(m.source)] for m in ordered]}
    raw = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    return zlib.compress(raw + b"".join(m.source for m in ordered), 6)


def digest(blob: bytes | memoryview) -> str:
    """A bundle's content hash (hex sha256 of its bytes): the name of its cache entry."""
    return hashlib.sha256(blob).hexdigest()


def decode(blob: bytes | memoryview, max_bytes: int) -> List[ModuleSource]:
    """The modules of a bundle; its uncompressed size may not exceed ``max_bytes``.

    Raises:
        ProtocolError: not a bundle, too large once uncompressed, a bad module name, or
            sizes that do not add up.
    """
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(blob, max_bytes + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the code bundle is not zlib data: {exc}") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise ProtocolError(f"the code bundle is larger than {max_bytes} bytes uncompressed")
    if not inflater.eof:
        raise ProtocolError("the code bundle is truncated")
    end = raw.find(b"\n")
    if end < 0:
        raise ProtocolError("the code bundle has no header")
    try:
        header = json.loads(raw[:end])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the code bundle's header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != BUNDLE_VERSION:
        raise ProtocolError(f"the code bundle is not version {BUNDLE_VERSION} (upgrade the "
                            "older side)")
    entries = header.get("modules")
    if not isinstance(entries, list) or len(entries) > MAX_MODULES:
        raise ProtocolError("the code bundle's module list is missing or too long")
    modules: List[ModuleSource] = []
    seen: set[str] = set()
    offset = end + 1
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or not isinstance(entry[1], bool) or isinstance(entry[2], bool)
                or not isinstance(entry[2], int) or entry[2] < 0):
            raise ProtocolError(f"the code bundle has a malformed entry {entry!r:.80}")
        name, is_package, size = entry
        check_module_name(name)
        if name in seen:
            raise ProtocolError(f"the code bundle holds module {name!r} twice")
        seen.add(name)
        if offset + size > len(raw):
            raise ProtocolError("the code bundle's sizes exceed its content")
        modules.append(ModuleSource(name, is_package, raw[offset:offset + size]))
        offset += size
    if offset != len(raw):
        raise ProtocolError("the code bundle has bytes after its last module")
    packages = {m.name for m in modules if m.is_package}
    for m in modules:
        parts = m.name.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent in seen and parent not in packages:
                raise ProtocolError(f"the code bundle has {m.name!r} under module {parent!r}, "
                                    "which is not a package")
    return modules


def check_module_name(name: str) -> None:
    """Raise ProtocolError unless ``name`` is a dotted name of identifiers (no keywords)."""
    parts = name.split(".")
    if not name or len(name) > 1000 or not all(
        part.isidentifier() and not keyword.iskeyword(part) for part in parts
    ):
        raise ProtocolError(f"the code bundle has a bad module name {name!r:.80}")


def relative_path(name: str, is_package: bool) -> str:
    """Where a module's source goes under a bundle's directory (``/``-separated)."""
    path = name.replace(".", "/")
    return path + "/__init__.py" if is_package else path + ".py"
