"""The ``p2ppool`` command.

Each subcommand lives in the module that owns its feature; that module provides
``add_arguments(parser)`` and ``run(args) -> int``.  This file only wires them together and
imports just the chosen subcommand's module, so ``p2ppool --version`` loads no SSH or
Twisted code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ._version import __version__

# subcommand -> (module, one-line help).  Only the chosen subcommand's module is imported.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "p2ppool.local.demo", "run a whole cluster on 127.0.0.1 and one map with a progress bar"
    ),
    "local": ("p2ppool.local.command", "run a local cluster in the foreground for other shells"),
    "worker": ("p2ppool.worker.cli", "volunteer this machine to a cluster"),
    "board": ("p2ppool.board.server", "run a self-hosted, pico-pipe-compatible SSH board"),
    "host": ("p2ppool.cluster.host", "host a shared cluster on the board (access list)"),
    "status": ("p2ppool.cluster.status", "show who is on a cluster's board now"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (for its arguments)."""
    parser = argparse.ArgumentParser(
        prog="p2ppool",
        description="A drop-in multiprocessing.Pool whose processes are volunteer peers.",
    )
    parser.add_argument("--version", action="version", version=f"p2ppool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2ppool`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 0
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
