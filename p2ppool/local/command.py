"""``p2ppool local``: run a :class:`~p2ppool.local.cluster.LocalCluster` in the foreground and
print the ``export P2PPOOL_...`` lines that make ``Pool()`` in another shell use it."""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import sys
import tempfile
from typing import Any, List, Mapping

from ..errors import P2PPoolError
from .cluster import LocalCluster

__all__ = ["add_arguments", "export_lines", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``p2ppool local``."""
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="worker processes to start (default 2)")
    parser.add_argument("--processes-per-worker", type=int, default=1, metavar="K",
                        help="task processes per worker (default 1)")
    parser.add_argument("--write-env", metavar="FILE",
                        help="also write the export lines to FILE (source it in another shell)")
    parser.add_argument("--no-isolation", dest="isolated", action="store_false",
                        help="start the workers in this directory with this PYTHONPATH (by "
                        "default they see only p2ppool and what is installed, as workers on "
                        "other machines do, so your own modules must travel)")


def export_lines(env: Mapping[str, str]) -> List[str]:
    """``export NAME=value`` lines for a POSIX shell, values quoted."""
    import shlex

    return [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees either no file or all of it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".p2ppool-env-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _remove_env_file(path: str, header: str) -> None:
    """Remove the ``--write-env`` file we wrote, unless another process has replaced it since.

    A shell that sources it after the cluster stopped would otherwise point ``Pool()`` at a
    board that is gone.
    """
    try:
        with open(path, encoding="utf-8") as f:
            if f.readline() != header:
                return  # rewritten by someone else (another `p2ppool local`): theirs now
        os.unlink(path)
    except OSError:
        pass


class _StopRequested(Exception):
    """A stop signal arrived while the cluster was still starting."""


#: Signals that stop ``p2ppool local`` (SIGHUP: its terminal was closed).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(args: argparse.Namespace) -> int:
    """``p2ppool local``: run a local cluster until SIGINT, SIGTERM or SIGHUP.

    A signal while the cluster starts aborts the start; afterwards it only wakes the main
    thread through a pipe (the handler takes no lock), which then stops everything.
    """
    if args.workers < 0 or args.processes_per_worker < 1:
        print("p2ppool local: --workers must be >= 0 and --processes-per-worker >= 1",
              file=sys.stderr)
        return 2
    if args.write_env and not os.path.isdir(os.path.dirname(os.path.abspath(args.write_env))):
        print(f"p2ppool local: cannot write {args.write_env}: its directory does not exist",
              file=sys.stderr)
        return 2
    wake_read, wake_write = os.pipe()
    state = {"starting": True, "signalled": False}

    def on_signal(signum: int, frame: Any) -> None:
        if state["signalled"]:
            return  # stopping already (and bounded): a second signal must not interrupt it
        state["signalled"] = True
        if state["starting"]:
            raise _StopRequested()
        try:
            os.write(wake_write, b"x")
        except OSError:
            pass

    previous = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
    cluster: LocalCluster | None = None
    env_header = (f"# p2ppool local (pid {os.getpid()}): valid while that process runs; "
                  f"removed when it stops\n")
    env_written = False
    print("# starting a p2ppool cluster on 127.0.0.1 ...", flush=True)
    try:
        try:
            cluster = LocalCluster(args.workers, args.processes_per_worker,
                                   isolated=getattr(args, "isolated", True))
            state["starting"] = False
        except _StopRequested:
            print("# stopped while starting", flush=True)
            return 0
        except (P2PPoolError, TimeoutError, OSError) as exc:
            print(f"p2ppool local: could not start the cluster: {exc}", file=sys.stderr)
            return 1
        lines = export_lines(cluster.env)
        if args.write_env:
            try:
                _write_atomically(args.write_env, (
                    env_header + f"# cluster {cluster.cluster} on 127.0.0.1\n"
                    + "\n".join(lines) + "\n"))
                env_written = True
            except OSError as exc:
                print(f"p2ppool local: cannot write {args.write_env}: {exc.strerror}; "
                      f"stopping", file=sys.stderr)
                return 1
        print(f"# a p2ppool cluster on 127.0.0.1: {cluster.cluster}, board {cluster.board}, "
              f"{args.workers} worker(s) x {args.processes_per_worker} process(es)")
        if args.write_env:
            print(f"# in another shell, `. {args.write_env}` (or paste these lines) and "
                  f"Pool() uses this cluster:")
        else:
            print("# paste these lines in another shell, and Pool() there uses this cluster:")
        print("\n".join(lines))
        print("# Ctrl-C stops everything", flush=True)
        with selectors.DefaultSelector() as sel:
            sel.register(wake_read, selectors.EVENT_READ)
            while not state["signalled"]:
                sel.select()
        print("# stopping", flush=True)
    finally:
        state["starting"] = False
        state["signalled"] = True  # from here on, signals are ignored until the handlers go
        if cluster is not None:
            cluster.stop()
        if env_written:
            _remove_env_file(args.write_env, env_header)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)
    return 0
