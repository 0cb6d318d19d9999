"""Fixtures for tests that need a real board server (``p2ppool.board_server``) on 127.0.0.1.

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
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytest

__all__ = [
    "BOARD_USERS",
    "BoardFixture",
    "BoardKey",
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
        server: the :class:`p2ppool.board_server.BoardServer`.
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


def start_board(
    directory: Path, keys: Dict[str, BoardKey], **server_kwargs: Any
) -> BoardFixture:
    """Write a users file for alice, bob and carol and start a board in ``directory``."""
    from p2ppool.board_server import BoardServer

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
