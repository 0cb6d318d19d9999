"""Pure modules import no I/O: no sockets, threads, processes, clocks, SSH or wormhole."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "p2ppool"
PURE = ["payload", "chunking", "scheduler", "protocol", "board_state", "errors", "defaults",
        "peer", "session_protocol", "framing", "board_commands", "recruit", "code_bundle",
        "requirements", "board_auth"]
FORBIDDEN = {"socket", "threading", "subprocess", "multiprocessing", "paramiko", "twisted",
             "wormhole", "time", "select", "asyncio", "_thread", "signal", "selectors"}
#: exception classes a pure module may take from an I/O package (they are only types)
ALLOWED = {("multiprocessing", "TimeoutError"), ("multiprocessing.pool", "MaybeEncodingError")}


def imports_of(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import in the file; name None for ``import module``."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def violations(path: Path) -> list[str]:
    bad = []
    for module, name in imports_of(path):
        if module.split(".")[0] not in FORBIDDEN:
            continue
        if (module, name) in ALLOWED:
            continue
        if module == "multiprocessing" and name is None and path.stem == "errors":
            continue  # errors.py aliases multiprocessing.TimeoutError (a type, not I/O)
        bad.append(f"{module}" + (f".{name}" if name else ""))
    return bad


@pytest.mark.parametrize("name", [n for n in PURE if (PACKAGE / f"{n}.py").exists()])
def test_pure_module_imports_no_io(name: str) -> None:
    assert violations(PACKAGE / f"{name}.py") == []


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom socket import socket\nimport threading as t\n")
    assert violations(bad) == ["time", "socket.socket", "threading"]
