"""A tiny real SSH jump host for ProxyJump tests: publickey auth + ``direct-tcpip`` forwarding.

It is a paramiko server on 127.0.0.1 that forwards channels to 127.0.0.1 ports only.  It
counts forwarded channels so a test can prove the connection really went through it.
"""

from __future__ import annotations

import socket
import threading
from typing import List, Set, Tuple

import paramiko


class _Server(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self, jump: JumpHost) -> None:
        self.jump = jump

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.get_base64() in self.jump.allowed:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "direct-tcpip":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: Tuple[str, int], destination: Tuple[str, int]
    ) -> int:
        host, port = destination
        if host not in ("127.0.0.1", "localhost"):
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.jump.pending.append(("127.0.0.1", port))
        return paramiko.OPEN_SUCCEEDED


class JumpHost:
    """An SSH server on 127.0.0.1 that forwards ``direct-tcpip`` channels to local ports."""

    def __init__(self, host_key: paramiko.PKey, allowed_keys: List[paramiko.PKey]) -> None:
        self.host_key = host_key
        self.allowed: Set[str] = {k.get_base64() for k in allowed_keys}
        self.pending: List[Tuple[str, int]] = []
        self.forwarded = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self._transports: List[paramiko.Transport] = []
        self._threads: List[threading.Thread] = []
        self._closed = threading.Event()
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self._transports.append(transport)
            try:
                transport.start_server(server=_Server(self))
            except (paramiko.SSHException, EOFError, OSError):
                continue  # the client gave up during the handshake
            thread = threading.Thread(target=self._serve, args=(transport,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, transport: paramiko.Transport) -> None:
        while not self._closed.is_set():
            channel: paramiko.Channel | None = transport.accept(timeout=30)
            if channel is None:
                if not transport.is_active():
                    return
                continue
            destination = self.pending.pop(0)
            try:
                upstream = socket.create_connection(destination, timeout=5)
            except OSError:
                channel.close()
                continue
            self.forwarded += 1
            for src, dst in ((channel, upstream), (upstream, channel)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for transport in self._transports:
            transport.close()


def _pump(src: object, dst: object) -> None:
    recv = src.recv  # type: ignore[attr-defined]
    send = dst.sendall  # type: ignore[attr-defined]
    try:
        while True:
            data = recv(32768)
            if not data:
                break
            send(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        for end in (src, dst):
            try:
                end.close()  # type: ignore[attr-defined]
            except (OSError, EOFError):  # a channel whose transport has already gone
                pass
