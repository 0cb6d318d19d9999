"""``python -m p2ppool.worker``: volunteer this machine's processes to a cluster.

This module is the command line (``python -m p2ppool.worker`` and ``p2ppool worker``): it
resolves the options (arguments, then ``P2PPOOL_*``, then the config file), prints the
warning, sets up one log line per event on stderr, joins the board and runs the loop of
:class:`p2ppool.worker.loop.Worker` until the worker is stopped.

Exit status: 0 after a graceful stop (first SIGINT/SIGTERM or the end of ``--ttl``), 1 after
a forced stop (a second signal), 2 for a bad option or a board that cannot be joined.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from typing import Sequence

from .. import defaults
from ..board.auth import MAX_NAME_CHARS
from ..config import parse_duration
from ..errors import ConfigError, P2PPoolError
from .loop import EXIT_ERROR, Worker, WorkerSettings

__all__ = ["WARNING", "Worker", "WorkerSettings", "add_arguments", "main", "parse_duration",
           "run"]

log = logging.getLogger("p2ppool.worker")

WARNING = """\
========================================================================================
 WARNING: a p2ppool worker runs code sent by other members of the cluster, with the
 rights of the user who starts it ({user}).  Anyone who can write to the cluster's board
 can read your files, use your network and keep processes running as you.  Run workers
 only for people you trust, and preferably as a dedicated user, in a container, or under
 bubblewrap/firejail (see "Security" in p2ppool's README.rst).
========================================================================================
"""


# The name is the first part of the worker's board id, "<name>~<its public key>".
_NAME_RE = re.compile(rf"^[A-Za-z0-9._:@/+=-]{{1,{MAX_NAME_CHARS}}}$")


def _default_name() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the worker's options to ``parser`` (``p2ppool worker`` and ``-m p2ppool.worker``)."""
    parser.add_argument("--cluster", help="the cluster to serve, 'owner/name' "
                        "(default: P2PPOOL_CLUSTER)")
    parser.add_argument("--processes", type=int, default=None, metavar="K",
                        help="child processes (slots) to volunteer (default: CPU count)")
    parser.add_argument("--board", metavar="HOST[:PORT]",
                        help="the board's SSH address (default: P2PPOOL_BOARD or pipe.pico.sh)")
    parser.add_argument("--board-user", "--user", dest="board_user", metavar="NAME",
                        help="your user name on the board (default: P2PPOOL_BOARD_USER)")
    parser.add_argument("--identity", metavar="KEY", help="SSH private key for the board")
    parser.add_argument("--known-hosts", dest="known_hosts", metavar="FILE",
                        help="known_hosts file for the board's host key")
    parser.add_argument("--relay", metavar="URL", help="magic-wormhole mailbox server URL")
    parser.add_argument("--transit", metavar="HINT", help="magic-wormhole transit relay hint")
    parser.add_argument("--loopback-only", dest="loopback_only", action="store_true",
                        default=None, help="listen on and advertise only 127.0.0.1 (tests)")
    parser.add_argument("--max-task-seconds", dest="max_task_seconds", type=float, metavar="S",
                        help="kill a task that runs longer than S seconds (default: no limit)")
    parser.add_argument("--max-memory-mb", dest="max_memory_mb", type=float, metavar="M",
                        help="cap each task process's address space at M megabytes: a task "
                        "that needs more fails with TaskLimitExceeded (default: no limit)")
    parser.add_argument("--max-payload-mb", dest="max_payload_mb", type=float, metavar="M",
                        help="refuse functions, arguments and results over M megabytes "
                        f"(default: {defaults.MAX_PAYLOAD_BYTES // 1_000_000})")
    parser.add_argument("--max-functions-mb", dest="max_functions_mb", type=float,
                        metavar="M", help="close a client session that keeps more than M "
                        "megabytes of functions here (default: "
                        f"{defaults.WORKER_FUNCTION_BYTES_PER_SESSION / 1_000_000:g}, and never "
                        "less than --max-payload-mb)")
    parser.add_argument("--ttl", metavar="DURATION",
                        help="stop gracefully after this long (90, 90s, 10m, 2h, 1d)")
    parser.add_argument("--allow-install", dest="allow_install", action="store_true",
                        help="let cluster members install packages on this machine: a job's "
                        "requirements= are installed (wheels only, from the index your pip "
                        "or uv is configured for) into a cached directory that its tasks "
                        "import from (default: off; jobs needing packages this environment "
                        "lacks are not offered slots)")
    parser.add_argument("--install-cache", dest="install_cache", metavar="DIR",
                        help="where --allow-install keeps installed requirement sets "
                        "(default: ~/.cache/p2ppool/environments)")
    parser.add_argument("--install-cache-mb", dest="install_cache_mb", type=float, metavar="M",
                        help="size bound of that cache; least recently used sets go first "
                        f"(default: {defaults.WORKER_INSTALL_CACHE_BYTES // 1_000_000})")
    parser.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default=None,
                        help="confine every task process: bwrap (bubblewrap: read-only system, "
                        "private home and /tmp, no network, own PID namespace), none, or auto "
                        "(default: bwrap where it works, else none with a warning)")
    parser.add_argument("--allow-network", dest="allow_network", action="store_true",
                        help="let sandboxed tasks use the network (default: none at all)")
    parser.add_argument("--sandbox-ro", dest="sandbox_ro", action="append", default=[],
                        metavar="PATH", help="let sandboxed tasks read PATH (repeatable)")
    parser.add_argument("--sandbox-rw", dest="sandbox_rw", action="append", default=[],
                        metavar="PATH", help="let sandboxed tasks read and write PATH "
                        "(repeatable)")
    parser.add_argument("--max-task-processes", dest="max_task_processes", type=int,
                        metavar="N", help="processes the sandboxed tasks of one session may "
                        "run at once, their children included (a pids cgroup, where the "
                        f"worker may create one; default {defaults.WORKER_MAX_TASK_PROCESSES})")
    parser.add_argument("--no-spare-sandboxes", dest="spare_sandboxes", action="store_false",
                        default=defaults.WORKER_SPARE_SANDBOXES,
                        help="keep no sandboxed task processes started while idle (by "
                        "default one per slot is, about 11 MB each: a session then starts "
                        "about 0.1 s sooner)")
    parser.add_argument("--name", help="this worker's name on the board (default: host-pid)")
    parser.add_argument("--grace", type=float, default=defaults.WORKER_GRACE_S, metavar="S",
                        help="seconds in-flight tasks may take to finish when stopping "
                        f"(default: {defaults.WORKER_GRACE_S:g})")


def _existing(path: str, flag: str) -> str:
    real = os.path.realpath(os.path.expanduser(path))
    if not os.path.exists(real):
        raise ConfigError(f"{flag} {path}: no such file or directory")
    return real


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    """Resolve the parsed arguments (then ``P2PPOOL_*``, then the config file).

    Raises:
        ConfigError: a missing cluster or a bad value, naming the option.
    """
    from ..config import resolve_options

    overrides = {key: getattr(args, key) for key in
                 ("cluster", "board", "board_user", "identity", "known_hosts", "relay",
                  "transit", "loopback_only") if getattr(args, key, None) is not None}
    options = resolve_options(overrides)
    if options.cluster is None:
        raise ConfigError("no cluster given: use --cluster owner/name or set P2PPOOL_CLUSTER")
    processes = args.processes if args.processes is not None else (os.cpu_count() or 1)
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {processes}")
    if args.max_task_seconds is not None and not args.max_task_seconds > 0:
        raise ConfigError(f"--max-task-seconds must be positive, got {args.max_task_seconds}")
    memory_mb = getattr(args, "max_memory_mb", None)
    if memory_mb is not None and not memory_mb >= 16:
        raise ConfigError(f"--max-memory-mb must be at least 16 (a Python process needs "
                          f"that much address space), got {memory_mb}")
    payload_mb = args.max_payload_mb
    if payload_mb is not None and not payload_mb > 0:
        raise ConfigError(f"--max-payload-mb must be positive, got {payload_mb}")
    max_payload = (defaults.MAX_PAYLOAD_BYTES if payload_mb is None
                   else int(payload_mb * 1_000_000))
    functions_mb = getattr(args, "max_functions_mb", None)
    if functions_mb is not None and not functions_mb > 0:
        raise ConfigError(f"--max-functions-mb must be positive, got {functions_mb}")
    max_functions = (defaults.WORKER_FUNCTION_BYTES_PER_SESSION if functions_mb is None
                     else int(functions_mb * 1_000_000))
    ttl = None
    if args.ttl is not None:
        try:
            ttl = parse_duration(args.ttl)
        except ValueError as exc:
            raise ConfigError(f"--ttl: {exc}") from None
    name = args.name or _default_name()
    if not _NAME_RE.match(name):
        raise ConfigError(f"--name must be 1-{MAX_NAME_CHARS} of the characters "
                          f"A-Za-z0-9._:@/+=-, got {name!r}")
    if not args.grace >= 0:
        raise ConfigError(f"--grace must be >= 0, got {args.grace}")
    cache_mb = getattr(args, "install_cache_mb", None)
    if cache_mb is not None and not cache_mb > 0:
        raise ConfigError(f"--install-cache-mb must be positive, got {cache_mb}")
    install_cache = getattr(args, "install_cache", None) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "p2ppool", "environments")
    sandbox = getattr(args, "sandbox", None) or os.environ.get("P2PPOOL_SANDBOX") or "auto"
    if sandbox not in ("auto", "bwrap", "none"):
        raise ConfigError(f"sandbox: expected auto, bwrap or none, got {sandbox!r} (from "
                          f"environment variable P2PPOOL_SANDBOX)")
    max_processes = getattr(args, "max_task_processes", None)
    if max_processes is None:
        max_processes = defaults.WORKER_MAX_TASK_PROCESSES
    elif max_processes < 4:
        raise ConfigError(f"--max-task-processes must be at least 4, got {max_processes}")
    host, port = options.board_address
    return WorkerSettings(
        cluster=options.cluster, name=name, processes=processes, board_host=host,
        board_port=port, board_user=options.board_user, identity=options.identity,
        known_hosts=options.known_hosts, relay=options.relay, transit=options.transit,
        loopback_only=options.loopback_only, max_task_seconds=args.max_task_seconds,
        max_payload_bytes=max_payload, ttl=ttl, grace=args.grace, max_memory_mb=memory_mb,
        allow_install=bool(getattr(args, "allow_install", False)),
        sandbox=sandbox, allow_network=bool(getattr(args, "allow_network", False)),
        max_task_processes=max_processes,
        sandbox_ro=tuple(_existing(p, "--sandbox-ro") for p in getattr(args, "sandbox_ro", [])),
        sandbox_rw=tuple(_existing(p, "--sandbox-rw") for p in getattr(args, "sandbox_rw", [])),
        install_cache=os.path.abspath(install_cache),
        install_cache_bytes=(defaults.WORKER_INSTALL_CACHE_BYTES if cache_mb is None
                             else int(cache_mb * 1_000_000)),
        max_function_bytes=max_functions,
        spare_sandboxes=bool(getattr(args, "spare_sandboxes", defaults.WORKER_SPARE_SANDBOXES)),
    )


# --- entry points ---------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    def __init__(self, name: str) -> None:
        super().__init__(f"%(asctime)s worker {name}: %(message)s", "%Y-%m-%d %H:%M:%S")


def _setup_logging(name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(name))
    root = logging.getLogger("p2ppool")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False
    log.setLevel(logging.INFO)


def run(args: argparse.Namespace) -> int:
    """``p2ppool worker ...``: run a worker until it is stopped; return the exit status."""
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"p2ppool worker: {exc}", file=sys.stderr)
        return EXIT_ERROR
    import getpass

    try:
        user = getpass.getuser()
    except Exception:
        user = "this user"
    sys.stderr.write(WARNING.format(user=user))
    sys.stderr.flush()
    _setup_logging(settings.name)
    try:
        worker = Worker(settings)
    except P2PPoolError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_ERROR
    worker.install_signal_handlers()
    try:
        worker.connect_board()
    except P2PPoolError as exc:
        log.error("cannot join the board: %s", exc)
        worker.inbox.close()
        return EXIT_ERROR
    return worker.serve()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m p2ppool.worker``."""
    parser = argparse.ArgumentParser(
        prog="python -m p2ppool.worker",
        description="Volunteer this machine's processes to a p2ppool cluster.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
