"""Fixtures for tests that need a real board server (``p2ppool.board.server``) on 127.0.0.1.

``tests/conftest.py`` star-imports this module; importing it has no side effects.

Fixtures:
    board_keys: (session) ed25519 key pairs for alice, bob, carol and mallory (mallory is *not*
        in the users file), made with ``ssh-keygen``.
    board_server: (function) a running :class:`BoardServer` for alice, bob and carol, as a
        :class:`BoardFixture` (host, port, host key, known_hosts file, key paths, helpers to
        run the real OpenSSH client).
    board_factory: (function) ``board_factory(**server_kwargs)`` starts another board with
        custom limits (e.g. ``policy=BufferPolicy(...)``); stopped after the test.

Example::

    def test_ls(board_server):
        result = board_server.ssh("alice", "ls")
        assert result.returncode == 0
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytest

__all__ = [
    "BOARD_USERS",
    "BoardFixture",
    "BoardKey",
    "SshSession",
    "StreamReader",
    "board_factory",
    "board_keys",
    "board_server",
    "make_board_key",
    "start_board",
]

#: The users a board fixture knows (mallory has a key but is not in the users file).
BOARD_USERS = ("alice", "bob", "carol")
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


@dataclass(frozen=True)
class BoardKey:
    """A generated key pair.

    Attributes:
        name: the user it belongs to.
        path: private key file (OpenSSH format, mode 0600, no passphrase).
        public_line: ``"ssh-ed25519 AAAA... name"`` (the ``.pub`` file's text).
        fingerprint: ``SHA256:...`` as ``ssh-keygen -l`` prints it.
    """

    name: str
    path: str
    public_line: str
    fingerprint: str


def make_board_key(directory: Path, name: str) -> BoardKey:
    """Create an ed25519 key pair ``directory/name`` with ``ssh-keygen``."""
    path = directory / name
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
        check=True,
        timeout=20,
    )
    public_line = (directory / f"{name}.pub").read_text().strip()
    listing = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(path) + ".pub"],
        check=True,
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    fingerprint = listing.split()[1]
    return BoardKey(name, str(path), public_line, fingerprint)


@dataclass
class BoardFixture:
    """A running board and everything a test needs to talk to it.

    Attributes:
        server: the :class:`p2ppool.board.server.BoardServer`.
        host, port: where it listens (127.0.0.1 and a free port).
        host_key_path: the server's host key file.
        host_key_fingerprint: its ``SHA256:...`` fingerprint.
        known_hosts: a known_hosts file holding exactly the server's key.
        users_path: the users file (alice, bob, carol).
        keys: every generated key by name (including mallory's, who is not a user).
    """

    server: Any
    host: str
    port: int
    host_key_path: str
    host_key_fingerprint: str
    known_hosts: str
    users_path: str
    keys: Dict[str, BoardKey]
    processes: List[subprocess.Popen[bytes]] = field(default_factory=list)

    def key_path(self, user: str) -> str:
        """Private key file of ``user``."""
        return self.keys[user].path

    def ssh_argv(
        self, user: str, command: str, known_hosts: str | None = None,
        options: Sequence[str] = (),
    ) -> List[str]:
        """The OpenSSH command line running ``command`` on the board as ``user``."""
        return [
            SSH,
            "-F", "/dev/null",
            "-i", self.key_path(user),
            "-p", str(self.port),
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "UpdateHostKeys=no",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            *options,
            "-T",
            "-l", user,
            self.host,
            command,
        ]

    def ssh(
        self, user: str, command: str, input: bytes = b"", timeout: float = 20.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` with the real ``ssh`` client; wait for it (bounded by ``timeout``)."""
        return subprocess.run(
            self.ssh_argv(user, command, **kwargs),
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def popen(self, user: str, command: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``ssh`` running ``command`` with pipes for stdin/stdout/stderr.

        The process is killed when the fixture ends if the test did not reap it.
        """
        process = subprocess.Popen(
            self.ssh_argv(user, command, **kwargs),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def session(self, user: str, command: str, **kwargs: Any) -> SshSession:
        """Start ``ssh`` running ``command``; returns an :class:`SshSession` to drive it."""
        return SshSession(self.popen(user, command, **kwargs))

    def members(self, channel: str, role: str) -> List[str]:
        """Usernames of the members of ``channel`` in ``role`` (``pub``, ``sub``, ``pipe``,
        ``waiting-pub``) right now."""
        return list(self.server.channel_members(channel).get(role, []))

    def wait_members(self, channel: str, role: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``channel`` has exactly ``count`` members in ``role`` (or fail)."""
        ok = self.server.wait_for(
            lambda server: len(server.channel_members(channel).get(role, [])) == count, timeout
        )
        assert ok, f"{channel}: wanted {count} {role}(s), have {self.members(channel, role)}"

    def cleanup(self) -> None:
        """Kill leftover ssh processes (started by :meth:`popen`)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass


class StreamReader:
    """Reads a pipe (e.g. an ssh process's stdout) in a background thread, with timeouts.

    Nothing is read before the first read call (or :meth:`start`).

    Example::

        out = StreamReader(process.stdout)
        line = out.read_line(timeout=10)
    """

    def __init__(self, stream: Any) -> None:
        self._fd = stream.fileno()
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._buffer = bytearray()
        self.eof = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading (the first read does it; until then the pipe is left unread, so a
        test can play a reader that does not keep up)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, daemon=True)
            self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except OSError:
                data = b""
            self._queue.put(data)
            if not data:
                return

    def _fill(self, deadline: float) -> bool:
        self.start()
        remaining = deadline - time.monotonic()
        if self.eof or remaining <= 0:
            return False
        try:
            data = self._queue.get(timeout=remaining)
        except queue.Empty:
            return False
        if not data:
            self.eof = True
            return False
        self._buffer += data
        return True

    def read_exactly(self, size: int, timeout: float = 10.0) -> bytes:
        """The next ``size`` bytes; raises TimeoutError (with what came) if they do not come."""
        deadline = time.monotonic() + timeout
        while len(self._buffer) < size:
            if not self._fill(deadline):
                raise TimeoutError(
                    f"wanted {size} bytes, got {len(self._buffer)} (eof={self.eof}): "
                    f"{bytes(self._buffer[:200])!r}"
                )
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_line(self, timeout: float = 10.0) -> bytes:
        """The next line, with its newline."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if not self._fill(deadline):
                raise TimeoutError(
                    f"no complete line (eof={self.eof}): {bytes(self._buffer[:200])!r}"
                )
        end = self._buffer.index(b"\n") + 1
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def read_to_eof(self, timeout: float = 10.0) -> bytes:
        """Everything until the stream closes."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise TimeoutError(f"no EOF; got {bytes(self._buffer[:200])!r}")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class SshSession:
    """A running ``ssh`` command: write to its stdin, read its stdout/stderr with timeouts."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        assert process.stdout is not None and process.stderr is not None
        self.out = StreamReader(process.stdout)
        self.err = StreamReader(process.stderr)

    def send(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin and flush."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        """Send EOF on the command's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for ssh to exit; its exit status (255: ssh's own failure)."""
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the ssh process (a peer that dies without a goodbye)."""
        self.process.kill()
        self.process.wait(timeout=10)


def start_board(
    directory: Path, keys: Dict[str, BoardKey], **server_kwargs: Any
) -> BoardFixture:
    """Write a users file for alice, bob and carol and start a board in ``directory``."""
    from p2ppool.board.server import BoardServer

    directory.mkdir(parents=True, exist_ok=True)
    users_path = directory / "users"
    users_path.write_text(
        "# board users for tests\n\n"
        + "".join(f"{name} {keys[name].public_line}\n" for name in BOARD_USERS)
    )
    host_key_path = directory / "host_ed25519"
    server = BoardServer(
        listen=("127.0.0.1", 0),
        host_key_path=str(host_key_path),
        users_path=str(users_path),
        **server_kwargs,
    ).start()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(server.known_hosts_line() + "\n")
    return BoardFixture(
        server=server,
        host="127.0.0.1",
        port=server.port,
        host_key_path=str(host_key_path),
        host_key_fingerprint=server.host_key_fingerprint,
        known_hosts=str(known_hosts),
        users_path=str(users_path),
        keys=keys,
    )


@pytest.fixture(scope="session")
def board_keys(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, BoardKey]:
    """ed25519 keys for alice, bob, carol (board users) and mallory (unknown)."""
    directory = tmp_path_factory.mktemp("board-keys")
    os.chmod(directory, 0o700)
    return {name: make_board_key(directory, name) for name in (*BOARD_USERS, "mallory")}


@pytest.fixture
def board_factory(
    tmp_path: Path, board_keys: Dict[str, BoardKey]
) -> Iterator[Callable[..., BoardFixture]]:
    """Start boards with custom server options; all are stopped after the test."""
    started: List[BoardFixture] = []

    def factory(**server_kwargs: Any) -> BoardFixture:
        fixture = start_board(tmp_path / f"board{len(started)}", board_keys, **server_kwargs)
        started.append(fixture)
        return fixture

    yield factory
    for fixture in started:
        fixture.cleanup()
        fixture.server.stop()


@pytest.fixture
def board_server(board_factory: Callable[..., BoardFixture]) -> BoardFixture:
    """A running board on 127.0.0.1 for alice, bob and carol (see :class:`BoardFixture`)."""
    return board_factory()
