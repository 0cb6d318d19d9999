"""A wormhole session peer in its own process, for the transfer tests.

Run: ``python tests/transfer/_peer.py MODE CODE RELAY_URL TRANSIT [--role worker]``.
It opens a loopback-only session and reports events as JSON lines on stdout:
``{"event": "opened"}``, ``{"event": "lost", "cause": ...}``, ``{"event": "error", ...}``.

Modes:
    echo   send every frame back; a frame b"!close" makes it close the session itself.
    send   after opening, send one frame of ``--size`` zero bytes, then behave like echo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from p2ppool.errors import TransferError  # noqa: E402
from p2ppool.transfer.session import TransferSession  # noqa: E402

_out_lock = threading.Lock()


def report(**fields: object) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["echo", "send"])
    parser.add_argument("code")
    parser.add_argument("relay_url")
    parser.add_argument("transit")
    parser.add_argument("--role", default="worker")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=0)
    args = parser.parse_args()

    ended = threading.Event()
    holder: dict[str, TransferSession] = {}
    early: list[bytes] = []

    def on_frame(frame: bytes) -> None:
        session = holder.get("s")
        if session is None:  # a frame before open() returned to this thread: keep it
            early.append(frame)
            return
        handle(session, frame)

    def handle(session: TransferSession, frame: bytes) -> None:
        if frame == b"!close":
            threading.Thread(target=session.close, args=("asked to",), daemon=True).start()
        else:
            session.send(frame)

    def on_lost(cause: str) -> None:
        report(event="lost", cause=cause)
        ended.set()

    try:
        session = TransferSession.open(
            args.code, args.relay_url, args.transit, role=args.role, loopback_only=True,
            on_frame=on_frame, on_lost=on_lost, timeout=args.timeout,
        )
    except TransferError as exc:
        report(event="error", type=type(exc).__name__, message=str(exc))
        return 2
    holder["s"] = session
    report(
        event="opened", pid=os.getpid(), advertised_hints=session.advertised_hints,
        listen_addresses=session.listen_addresses,
    )
    for frame in early:
        handle(session, frame)
    if args.mode == "send":
        session.send(bytes(args.size))
    ended.wait(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
