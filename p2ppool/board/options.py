"""Board connection options shared by ``p2ppool host``, ``p2ppool status`` and the worker.

``--board HOST[:PORT]``, ``--board-user``, ``--identity``, ``--known-hosts`` and
``--ssh-config``, each falling back to ``P2PPOOL_BOARD``, ``P2PPOOL_BOARD_USER``,
``P2PPOOL_IDENTITY``, ``P2PPOOL_KNOWN_HOSTS`` and the config file (:mod:`p2ppool.config`).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from .client import BoardClient, learn_username

__all__ = ["BoardSettings", "add_board_arguments"]


class BoardSettings:
    """Where the board is and how to log in, from options > ``P2PPOOL_*`` > config file.

    Attributes:
        host: board host (or an ``~/.ssh/config`` alias).
        port: board port, or None for the SSH config's ``Port`` or 22.
        board_user: our username on the board, or None (ask the board, else unknown).
        identity: private key file, or None.
        known_hosts: known_hosts file, or None.
        ssh_config: SSH config file, or None for ``~/.ssh/config``.
        cluster: ``owner/name`` from the options, or None.
    """

    def __init__(
        self,
        host: str,
        port: int | None,
        board_user: str | None = None,
        identity: str | None = None,
        known_hosts: str | None = None,
        ssh_config: str | None = None,
        cluster: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.board_user = board_user
        self.identity = identity
        self.known_hosts = known_hosts
        self.ssh_config = ssh_config
        self.cluster = cluster

    @classmethod
    def from_args(cls, args: object, cluster_option: bool = True) -> BoardSettings:
        """Resolve from parsed arguments (see :func:`add_board_arguments`), env and config.

        Args:
            args: the parsed arguments.
            cluster_option: whether ``args.cluster`` is an ``owner/name`` cluster option
                (False for ``p2ppool host``, whose ``--cluster`` is a bare name).

        Raises:
            ConfigError: a value does not parse; the message names its source.
        """
        from ..config import resolve_options, split_board

        names = ["board", "board_user", "identity", "known_hosts"]
        if cluster_option:
            names.append("cluster")
        given = {
            name: getattr(args, name) for name in names if getattr(args, name, None) is not None
        }
        options = resolve_options(given)
        host, port = split_board(options.board)
        return cls(
            host=host,
            port=port,
            board_user=options.board_user,
            identity=options.identity,
            known_hosts=options.known_hosts,
            ssh_config=getattr(args, "ssh_config", None),
            cluster=options.cluster,
        )

    def client(self, topic: str, flags: Sequence[str] = (), **kwargs: object) -> BoardClient:
        """A :class:`BoardClient` (not yet connected) for ``topic`` with these settings."""
        return BoardClient(
            self.host,
            self.port,
            topic=topic,
            flags=flags,
            username=self.board_user,
            identity=self.identity,
            known_hosts=self.known_hosts,
            ssh_config=self.ssh_config,
            **kwargs,  # type: ignore[arg-type]
        )

    def username(self) -> str | None:
        """Our board username: configured, else what the board's ``user`` command says.

        For ``pipe.pico.sh`` the question goes to ``pico.sh``, as ``ssh pico.sh user``.
        """
        if self.board_user:
            return self.board_user
        # pico answers `user` on its main host, not on the pipe service.
        host = "pico.sh" if self.host == "pipe.pico.sh" else self.host
        return learn_username(
            host,
            self.port,
            identity=self.identity,
            known_hosts=self.known_hosts,
            ssh_config=self.ssh_config,
        )


def add_board_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--board``, ``--board-user``, ``--identity``, ``--known-hosts``, ``--ssh-config``."""
    group = parser.add_argument_group("board connection (defaults: P2PPOOL_* variables, config)")
    group.add_argument(
        "--board", metavar="HOST[:PORT]", help="the board's SSH address (env P2PPOOL_BOARD)"
    )
    group.add_argument(
        "--board-user", metavar="NAME", help="your board username (env P2PPOOL_BOARD_USER)"
    )
    group.add_argument("--identity", metavar="FILE", help="SSH private key (env P2PPOOL_IDENTITY)")
    group.add_argument(
        "--known-hosts", metavar="FILE", help="known_hosts file (env P2PPOOL_KNOWN_HOSTS)"
    )
    group.add_argument(
        "--ssh-config", metavar="FILE", help="SSH config file (default ~/.ssh/config)"
    )
