"""The ``p2ppool`` command.

Each subcommand lives in the module that owns its feature; that module provides
``add_arguments(parser)`` and ``run(args) -> int``.  This file only wires them together, so
subcommands load their (heavy) dependencies only when they are used.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ._version import __version__

# subcommand -> (module, one-line help).  A module that is not present yet is skipped.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("p2ppool.demo", "run a whole cluster on 127.0.0.1 and one map with a progress bar"),
    "local": ("p2ppool.localcluster", "run a local cluster in the foreground for other shells"),
    "worker": ("p2ppool.worker", "volunteer this machine to a cluster"),
    "board": ("p2ppool.board_server", "run a self-hosted, pico-pipe-compatible SSH board"),
    "host": ("p2ppool.hosting", "host a shared cluster on the board (access list)"),
    "status": ("p2ppool.status", "show who is on a cluster's board now"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2ppool",
        description="A drop-in multiprocessing.Pool whose processes are volunteer peers.",
    )
    parser.add_argument("--version", action="version", version=f"p2ppool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        if not hasattr(module, "add_arguments"):
            continue
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2ppool`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 0
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
