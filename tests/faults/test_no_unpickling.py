"""Nothing from the network is unpickled before the wormhole PAKE, nor by a worker at all.

The argument, from the code:

1. Board lines are JSON (:mod:`p2ppool.board.protocol`); wormhole codes travel sealed.
2. Session frames arrive only on a dilated wormhole connection, which exists only after the
   PAKE: a wrong code fails the open on both sides before any frame is delivered
   (``tests/transfer/test_session.py::test_wrong_code_fails_on_both_sides``, and the check
   below that no ``on_frame`` ever runs).
3. Frames are parsed with ``struct``/``json`` only (:mod:`p2ppool.transfer.session_protocol`); the
   worker process hands payloads, still bytes, to its task processes, which unpickle them.
   The modules of the worker's and the client's network path import no unpickler (checked
   below on their source), and parsing 20,000 hostile frames with every unpickler booby-
   trapped raises only ProtocolError.
"""

from __future__ import annotations

import ast
import os
import pickle
import random
import struct
from typing import Any, List

import pytest

import p2ppool
from p2ppool.errors import ProtocolError, TransferError
from p2ppool.transfer.session_protocol import decode_frame

#: the planes that read bytes from the network in the worker's main process and the
#: client's board and session threads: every module in them, so a new one is checked too
NETWORK_PLANES = ["board", "transfer", "worker", "cluster"]
PACKAGE_DIR = os.path.dirname(p2ppool.__file__)
NETWORK_PATH = sorted(
    os.path.join(plane, name) for plane in NETWORK_PLANES
    for name in os.listdir(os.path.join(PACKAGE_DIR, plane)) if name.endswith(".py"))
UNPICKLERS = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "_pickle"}


@pytest.mark.parametrize("module", NETWORK_PATH)
def test_network_path_modules_import_no_unpickler(module: str) -> None:
    path = os.path.join(PACKAGE_DIR, module)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
            if (node.level and node.module == "payload") or node.module == "p2ppool.payload":
                imported = {alias.name for alias in node.names}
                assert not imported & {"loads", "load_result", "load"}, (module, imported)
        assert not set(names) & UNPICKLERS, f"{module} imports {names}"
        if isinstance(node, ast.Attribute) and node.attr in ("loads", "load"):
            base = node.value
            assert not (isinstance(base, ast.Name) and base.id in
                        UNPICKLERS | {"payload"}), f"{module} calls {base.id}.{node.attr}"


def test_20000_hostile_frames_are_parsed_without_unpickling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def trap(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    import cloudpickle

    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(pickle, "Unpickler", trap)
    monkeypatch.setattr(cloudpickle, "loads", trap)
    rng = random.Random(5)
    evil = pickle.dumps  # a real pickle as a payload must stay bytes
    parsed = refused = 0
    for _ in range(20_000):
        kind = rng.choice(b"TRFLCBORXYZ\x00\xff")
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        if rng.random() < 0.3:
            body = struct.pack(">QQ", rng.getrandbits(64), rng.getrandbits(64)) + \
                evil(("os.system", "echo pwned"))
        try:
            frame = decode_frame(bytes([kind]) + body)
        except ProtocolError:
            refused += 1
            continue
        parsed += 1
        for value in getattr(frame, "__dict__", {}).values():
            assert not callable(value)
    assert parsed and refused
    print(f"\n20,000 hostile frames: {parsed} parsed (payloads kept as bytes), "
          f"{refused} refused with ProtocolError")


@pytest.mark.system
def test_a_wrong_code_delivers_no_frame(wormhole_servers: Any) -> None:
    """Both ends of a session with mismatched codes: the open fails on both sides and
    neither ``on_frame`` ever runs (so nothing could be unpickled)."""
    import threading

    from p2ppool.transfer.session import TransferSession, new_code

    frames: List[bytes] = []
    nameplate = new_code().split("-")[0]
    errors: List[BaseException] = []

    def worker_side() -> None:
        try:
            TransferSession.open(f"{nameplate}-right-code", wormhole_servers.relay_url,
                         wormhole_servers.transit, role="worker", on_frame=frames.append,
                         on_lost=lambda cause: None, loopback_only=True, timeout=10)
        except TransferError as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker_side)
    thread.start()
    with pytest.raises(TransferError, match="wrong code"):
        TransferSession.open(f"{nameplate}-wrong-code", wormhole_servers.relay_url,
                     wormhole_servers.transit, role="client", on_frame=frames.append,
                     on_lost=lambda cause: None, loopback_only=True, timeout=10)
    thread.join(15)
    assert errors and "wrong code" in str(errors[0])
    assert frames == []
