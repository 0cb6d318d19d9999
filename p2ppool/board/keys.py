"""Who may use the board: the users file (key -> username) and the server's host key.

A users file has one ``<username> <key type> <base64 key> [comment]`` per line, like
``authorized_keys`` without options; a user may have several lines; ``#`` comments and blank
lines are ignored.  ``public`` is reserved (public topics live under ``public/``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import paramiko

from ..errors import ConfigError
from .state import PUBLIC

__all__ = ["UserKey", "fingerprint_sha256", "load_or_create_host_key", "parse_users"]

log = logging.getLogger("p2ppool.board")

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def fingerprint_sha256(key_blob: bytes) -> str:
    """``SHA256:<unpadded base64>`` of a public key blob, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class UserKey:
    """A key the board accepts: whose it is and its fingerprint."""

    username: str
    fingerprint: str


def _parse_key(text: str, where: str) -> bytes:
    parts = text.split()
    if len(parts) < 2:
        raise ConfigError(f"{where}: expected '<key type> <base64 key>', got {text!r}")
    key_type, b64 = parts[0], parts[1]
    try:
        blob = base64.b64decode(b64, validate=True)
        paramiko.PKey.from_type_string(key_type, blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a config error
        raise ConfigError(f"{where}: not a valid {key_type} public key ({exc})") from exc
    return blob


def parse_users(
    source: Union[str, Mapping[str, Union[str, Sequence[str]]]], where: str = "users"
) -> Dict[bytes, UserKey]:
    """Parse a users file's text, or a mapping ``username -> key line(s)``.

    Args:
        source: file text (``<username> <key type> <base64> [comment]`` per line), or a
            mapping from username to one or more ``"<key type> <base64> [comment]"`` strings.
        where: name of the source for error messages (e.g. the file path).

    Returns:
        key blob -> :class:`UserKey`.

    Raises:
        ConfigError: a line is malformed, a username is invalid or reserved, or one key is
            given to two users.
    """
    entries: List[Tuple[str, str, str]] = []
    if isinstance(source, str):
        for number, line in enumerate(source.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, key = line.partition(" ")
            entries.append((name, key.strip(), f"{where}:{number}"))
    else:
        for name, keys in source.items():
            for key in [keys] if isinstance(keys, str) else keys:
                entries.append((name, key, f"{where}[{name!r}]"))
    result: Dict[bytes, UserKey] = {}
    for name, key, place in entries:
        if not _USERNAME.match(name):
            raise ConfigError(f"{place}: invalid username {name!r} (letters, digits, . _ -)")
        if name == PUBLIC:
            raise ConfigError(f"{place}: the username {PUBLIC!r} is reserved for public topics")
        blob = _parse_key(key, place)
        previous = result.get(blob)
        if previous is not None and previous.username != name:
            raise ConfigError(f"{place}: this key already belongs to {previous.username!r}")
        result[blob] = UserKey(name, fingerprint_sha256(blob))
    return result


def load_or_create_host_key(path: str) -> paramiko.PKey:
    """Load the host key at ``path``; create an ed25519 key there (mode 0600) if absent."""
    if not os.path.exists(path):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        with open(path + ".pub", "wb") as handle:
            handle.write(public + b" p2ppool-board\n")
        log.info("created host key %s", path)
    try:
        return paramiko.PKey.from_path(path)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot read host key {path}: {exc}") from exc
