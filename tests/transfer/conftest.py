"""Fixtures of the transfer tests: a peer session in a separate process."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any, Dict, Iterator, List

import pytest

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_peer.py")


class PeerProcess:
    """``tests/transfer/_peer.py`` running in a child process; its events arrive on a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, PEER_SCRIPT, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.events: queue.Queue[Dict[str, Any]] = queue.Queue()
        self.stderr: List[bytes] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exited"})

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, event: str, timeout: float) -> Dict[str, Any]:
        """Return the next event, which must be ``event``, within ``timeout`` seconds."""
        try:
            got = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"peer sent no {event!r} within {timeout} s; stderr:\n{self.stderr_text()}"
            ) from None
        assert got["event"] == event, (
            f"expected {event!r}, got {got}; stderr:\n{self.stderr_text()}"
        )
        return got

    def stderr_text(self) -> str:
        return b"".join(self.stderr).decode("utf-8", "replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, 18)  # SIGCONT, in case a test stopped it
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def spawn_peer() -> Iterator[Any]:
    """Start peers with ``spawn_peer(mode, code, relay_url, transit, *options)``; all are
    killed at the end of the test."""
    peers: List[PeerProcess] = []

    def _spawn(*args: str) -> PeerProcess:
        peer = PeerProcess(*args)
        peers.append(peer)
        return peer

    yield _spawn
    for peer in peers:
        peer.kill()
