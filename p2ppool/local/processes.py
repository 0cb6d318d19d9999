"""The plumbing of a LocalCluster's child processes: each leads its own session, dies with
its parent (Linux ``PR_SET_PDEATHSIG``), keeps its temporary files in the cluster's directory,
and is swept, with everything left in its session, when the cluster stops.  Also the
throwaway ed25519 keys and the log tails in error messages."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from typing import Any, List, Sequence

__all__ = ["MARK", "child_tempdir", "drain", "log_tail", "pdeathsig", "session_members",
           "signal_group", "stop_groups", "write_ed25519_key"]

#: Environment variable set in every child (and so every grandchild) to the cluster's
#: directory; stopping sweeps only processes that carry it.
MARK = "_P2PPOOL_LOCALCLUSTER"


def pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Child setup: ask the kernel for SIGTERM when the parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


#: Longest ``TMPDIR`` given to children: multiprocessing puts its fork server's socket at
#: ``TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``, and a Unix socket path has at most 104 bytes
#: (macOS; 108 on Linux).
MAX_CHILD_TMPDIR = 104 - len("/pymp-XXXXXXXX/listener-XXXXXXXX") - 1


def child_tempdir(directory: str) -> str | None:
    """Make ``directory/tmp`` for the children's temporary files; return it, or None (the
    children keep the usual one) if it is too long a prefix for a Unix socket path."""
    path = os.path.join(directory, "tmp")
    if len(os.fsencode(path)) > MAX_CHILD_TMPDIR:
        return None
    os.mkdir(path, 0o700)
    return path


def write_ed25519_key(path: str, comment: str) -> str:
    """Write a fresh ed25519 private key (OpenSSH format, mode 0600); return its public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    with open(path + ".pub", "w", encoding="ascii") as f:
        f.write(f"{public} {comment}\n")
    return public


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read()[-6000:].decode("utf-8", "replace")
    except OSError:
        return ""
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return f"; end of {path}:\n{tail}" if tail else ""


def drain(stream: Any) -> None:
    try:
        while stream.read(4096):
            pass
    except (OSError, ValueError):
        pass


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return  # reaped: its group id may have been reused by someone else's process
    try:
        os.killpg(proc.pid, sig)  # each child leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def session_members(sids: Sequence[int], mark: str | None = None) -> List[int]:
    """Pids of every process in one of the sessions ``sids`` (Linux: read from /proc) that
    carries ``MARK=mark`` in its environment (when ``mark`` is given).

    A session id whose processes have all exited may be reused by an unrelated process
    (another test's cluster, say); the mark keeps the sweep to this cluster's processes.
    """
    wanted = set(sids)
    members = []
    needle = f"{MARK}={mark}".encode() if mark is not None else None
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) not in wanted:
                    continue
                if needle is not None:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if needle not in f.read().split(b"\0"):
                            continue
                members.append(int(entry))
            except OSError:
                continue
    return members


def stop_groups(procs: Sequence[subprocess.Popen[bytes]], timeout: float,
                 mark: str | None = None) -> None:
    """SIGTERM each child's process group, wait up to ``timeout``, then SIGKILL every
    process left in the child's session (that carries the cluster's ``mark``).

    Every child leads its own session (``start_new_session``).  A worker's task processes
    may sit in process groups of their own, and outlive a worker that was SIGKILLed; they
    stay in its session, so the session is what is swept.  Groups of children already
    reaped are not signalled (their ids may have been reused).
    """
    for proc in procs:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    sids = [proc.pid for proc in procs]
    for proc in procs:
        signal_group(proc, signal.SIGKILL)
    for pid in session_members(sids, mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in procs:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
