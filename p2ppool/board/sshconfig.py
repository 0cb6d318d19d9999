"""Opening an SSH connection to the board the way ``ssh`` would.

Honours the user's ``~/.ssh/config`` for the board host (``HostName``, ``Port``, ``User``,
``IdentityFile``, ``UserKnownHostsFile``, ``ProxyJump``), checks the host key against
known_hosts with OpenSSH's ``accept-new`` policy (a first contact is appended to the file; a
changed key is refused with :class:`~p2ppool.errors.HostKeyMismatch`), and translates
paramiko and socket failures into p2ppool's board errors, each naming the host and port.

:func:`connect` makes a new connection every time; board sessions do not call it directly
but share one connection per process and :class:`SSHTarget` through
:mod:`p2ppool.board.transports` (a target is hashable by value: every field that changes
what the connection is, jump hosts included, is part of it).

Keys: an explicit identity file is used alone (like ``IdentitiesOnly``); otherwise the
``IdentityFile`` entries of the SSH config, the ssh-agent and the default ``~/.ssh/id_*``
keys are tried, as paramiko's ``allow_agent``/``look_for_keys`` do.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import List, Tuple

import paramiko

from .. import defaults
from ..errors import BoardAuthError, BoardConnectionError, ConfigError, HostKeyMismatch

__all__ = [
    "SSHConnection",
    "SSHTarget",
    "connect",
    "default_known_hosts",
    "fingerprint",
    "known_hosts_name",
    "resolve_target",
]

log = logging.getLogger("p2ppool.board")


def default_known_hosts() -> str:
    """``~/.ssh/known_hosts``."""
    return os.path.join(os.path.expanduser("~"), ".ssh", "known_hosts")


def default_ssh_config() -> str:
    """``~/.ssh/config``."""
    return os.path.join(os.path.expanduser("~"), ".ssh", "config")


def known_hosts_name(host: str, port: int) -> str:
    """The host's name in known_hosts: ``host``, or ``[host]:port`` when the port is not 22."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """The ``SHA256:...`` fingerprint of a key, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect, after applying the SSH config.

    Attributes:
        host: the name or address to connect to (``HostName``).
        port: the TCP port.
        user: the SSH login name.
        identity: explicit identity file (used alone), or None.
        config_identities: ``IdentityFile`` entries from the SSH config that exist.
        known_hosts: the known_hosts file to check and append to.
        jumps: ``ProxyJump`` hops, outermost first, each already resolved.
    """

    host: str
    port: int
    user: str
    identity: str | None = None
    config_identities: Tuple[str, ...] = ()
    known_hosts: str = field(default_factory=default_known_hosts)
    jumps: Tuple[SSHTarget, ...] = ()

    def describe(self) -> str:
        """``user@host:port`` (via jump hosts, if any)."""
        text = f"{self.user}@{self.host}:{self.port}"
        if self.jumps:
            text += " via " + ", ".join(f"{j.host}:{j.port}" for j in self.jumps)
        return text


def _load_ssh_config(path: str | None) -> paramiko.SSHConfig | None:
    path = path if path is not None else default_ssh_config()
    if not os.path.exists(path):
        return None
    try:
        return paramiko.SSHConfig.from_path(path)
    except (OSError, paramiko.ConfigParseError, ValueError) as exc:
        raise ConfigError(f"cannot read SSH config {path}: {exc}") from None


def _parse_jump(spec: str) -> Tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` -> (user, host, port)."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://") :]
    user: str | None = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    host, port = spec, None
    if spec.startswith("["):
        inner, _, rest = spec[1:].partition("]")
        host = inner
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif spec.count(":") == 1:
        name, _, number = spec.partition(":")
        if number.isdigit():
            host, port = name, int(number)
    if not host:
        raise ConfigError(f"ProxyJump entry {spec!r} has no host")
    return user, host, port


def resolve_target(
    host: str,
    port: int | None = None,
    *,
    user: str | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
    ssh_config: str | None = None,
    _depth: int = 0,
) -> SSHTarget:
    """Apply the SSH config to a host, as ``ssh`` does (explicit values win).

    Args:
        host: the board host as given (may be an alias from the SSH config).
        port: explicit port, or None for the config's ``Port`` or 22.
        user: explicit login name, or None for the config's ``User`` or the local user.
        identity: explicit private key file, or None.
        known_hosts: explicit known_hosts file, or None for the config's
            ``UserKnownHostsFile`` or ``~/.ssh/known_hosts``.
        ssh_config: path of the SSH config (default ``~/.ssh/config``; missing is fine).

    Raises:
        ConfigError: the SSH config cannot be read, a ProxyJump is malformed or loops.
    """
    if _depth > 8:
        raise ConfigError(f"ProxyJump for {host} nests more than 8 levels (a loop?)")
    config = _load_ssh_config(ssh_config)
    entry = config.lookup(host) if config is not None else {"hostname": host}
    real_host = entry.get("hostname", host)
    if port is None:
        try:
            port = int(entry.get("port", 22))
        except ValueError:
            raise ConfigError(f"SSH config: Port of {host} is not a number") from None
    if user is None:
        user = entry.get("user") or getpass.getuser()
    if known_hosts is None:
        configured = entry.get("userknownhostsfile")
        if configured:
            known_hosts = os.path.expanduser(configured.split()[0])
        else:
            known_hosts = default_known_hosts()
    config_identities = tuple(
        os.path.expanduser(p)
        for p in entry.get("identityfile", [])
        if os.path.exists(os.path.expanduser(p))
    )
    jumps: List[SSHTarget] = []
    jump_spec = entry.get("proxyjump")
    if jump_spec and jump_spec.strip().lower() != "none":
        for hop in jump_spec.split(","):
            hop_user, hop_host, hop_port = _parse_jump(hop)
            resolved = resolve_target(
                hop_host,
                hop_port,
                user=hop_user,
                known_hosts=known_hosts,
                ssh_config=ssh_config,
                _depth=_depth + 1,
            )
            # A hop's own ProxyJump is ignored when it is part of a chain (as ssh does).
            # The explicit identity is offered to jump hosts too, after their own keys.
            extra = (os.path.expanduser(identity),) if identity else ()
            jumps.append(
                SSHTarget(
                    resolved.host,
                    resolved.port,
                    resolved.user,
                    None,
                    resolved.config_identities + extra,
                    known_hosts,
                )
            )
    return SSHTarget(
        host=real_host,
        port=port,
        user=user,
        identity=os.path.expanduser(identity) if identity else None,
        config_identities=config_identities,
        known_hosts=known_hosts,
        jumps=tuple(jumps),
    )


class _AcceptNew(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """OpenSSH's ``StrictHostKeyChecking accept-new``: remember a first contact's key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.info("added the host key of %s (%s) to %s", hostname, fingerprint(key), self.path)


def _load_known_hosts(client: paramiko.SSHClient, path: str) -> None:
    """Load known_hosts, skipping lines paramiko cannot parse (markers, unknown key types)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BoardConnectionError(f"cannot read known_hosts file {path}: {exc}") from None
    keys = client.get_host_keys()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith(("#", "@")):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            entry = None
        if entry is None or entry.key is None:
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)


class SSHConnection:
    """An authenticated SSH connection, plus the jump-host connections it runs through."""

    def __init__(
        self, client: paramiko.SSHClient, jumps: List[paramiko.SSHClient], target: SSHTarget
    ):
        self.client = client
        self.jumps = jumps
        self.target = target

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None:
            raise BoardConnectionError(f"the connection to {self.target.describe()} is closed")
        return transport

    def close(self) -> None:
        """Close the connection and every jump connection (idempotent)."""
        self.client.close()
        for jump in reversed(self.jumps):
            jump.close()


def _connect_one(
    target: SSHTarget, sock: paramiko.Channel | None, timeout: float
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    _load_known_hosts(client, target.known_hosts)
    client.set_missing_host_key_policy(_AcceptNew(target.known_hosts))
    where = f"{target.host}:{target.port}"
    if target.identity is not None:
        if not os.path.isfile(target.identity):
            raise BoardAuthError(f"identity file {target.identity} does not exist")
        key_files: List[str] = [target.identity]
        search = False
    else:
        key_files = list(target.config_identities)
        search = True
    try:
        client.connect(
            target.host,
            target.port,
            username=target.user,
            key_filename=key_files or None,
            allow_agent=search,
            look_for_keys=search,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            sock=sock,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        name = known_hosts_name(target.host, target.port)
        raise HostKeyMismatch(
            f"the host key of the board {where} has changed: it offered "
            f"{exc.key.get_name()} {fingerprint(exc.key)}, but {target.known_hosts} has "
            f"{fingerprint(exc.expected_key)} for {name}.  Someone may be intercepting the "
            f"connection, or the board's key was replaced.  Only if you know it was replaced, "
            f"remove the old entry (ssh-keygen -R '{name}' -f {target.known_hosts}) and retry."
        ) from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise BoardAuthError(
            f"the key for {where} is passphrase-protected; add it to ssh-agent (ssh-add) first"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        tried = target.identity or "the ssh-agent, ~/.ssh/config and ~/.ssh/id_* keys"
        raise BoardAuthError(
            f"the board {where} refused the key(s) of user {target.user!r} (tried {tried}): "
            f"{str(exc).rstrip('.')}.  Check the identity option and that the board lists "
            "your public key."
        ) from None
    except socket.gaierror as exc:
        client.close()
        raise BoardConnectionError(
            f"cannot reach the board {where}: unknown host ({exc.strerror})"
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        if "No authentication methods available" not in str(exc):
            raise BoardConnectionError(f"cannot reach the board {where}: {exc}") from None
        raise BoardAuthError(
            f"no SSH key to offer to {where} (user {target.user!r}): pass an identity file "
            "or load a key into ssh-agent"
        ) from None
    except (OSError, EOFError) as exc:
        client.close()
        reason = str(exc) or type(exc).__name__
        errors = getattr(exc, "errors", None)  # paramiko's NoValidConnectionsError
        if isinstance(errors, dict) and errors:
            first = next(iter(errors.values()))
            reason = getattr(first, "strerror", None) or str(first)
        elif isinstance(exc, socket.timeout):
            reason = f"no answer within {timeout:g} s"
        raise BoardConnectionError(f"cannot reach the board {where}: {reason}") from None
    if sock is None:
        _no_delay(client)
    return client


def _no_delay(client: paramiko.SSHClient) -> None:
    """Send board lines at once: without TCP_NODELAY a line written while the previous one
    is unacknowledged waits for the peer's delayed ACK (about 40 ms on Linux), which is how
    long a Want took to follow the pool's Hello.  (The board server sets it on its side.)"""
    transport = client.get_transport()
    raw = getattr(transport, "sock", None)
    if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(target: SSHTarget, timeout: float = defaults.SSH_CONNECT_TIMEOUT_S) -> SSHConnection:
    """Connect and authenticate to ``target``, through its jump hosts if it has any.

    Args:
        target: from :func:`resolve_target`.
        timeout: bound in seconds on each of TCP connect, banner, key exchange and auth.

    Raises:
        BoardConnectionError: unreachable (names host and port), or a jump host refused the
            ``direct-tcpip`` forwarding.
        BoardAuthError: our key was refused.
        HostKeyMismatch: a host key differs from the one in known_hosts.
    """
    jumps: List[paramiko.SSHClient] = []
    sock: paramiko.Channel | None = None
    try:
        hops = list(target.jumps) + [target]
        for index, hop in enumerate(hops):
            if index > 0:
                previous = jumps[-1].get_transport()
                assert previous is not None
                try:
                    sock = previous.open_channel(
                        "direct-tcpip", (hop.host, hop.port), ("127.0.0.1", 0), timeout=timeout
                    )
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    via = hops[index - 1]
                    raise BoardConnectionError(
                        f"jump host {via.host}:{via.port} could not forward to "
                        f"{hop.host}:{hop.port}: {exc or type(exc).__name__}"
                    ) from None
            client = _connect_one(hop, sock, timeout)
            if hop is not target:
                jumps.append(client)
            else:
                return SSHConnection(client, jumps, target)
    except BaseException:
        for jump in reversed(jumps):
            jump.close()
        raise
    raise AssertionError("unreachable")  # pragma: no cover
