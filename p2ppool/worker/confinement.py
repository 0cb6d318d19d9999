"""Where and how the task processes of a worker's sessions run.

:class:`Confinement` belongs to :class:`~p2ppool.worker.sessions.Sessions`: it makes each
session's directories (and a spare's) under the worker's one jobs directory (made with the first
session or spare, removed at the end), the engine arguments that confine its task processes (the
environment allowlist always; with bubblewrap the sandbox launcher, the read-only view of
the session's code and of the installed requirement sets, and the session's pids cgroup),
and removes what a session held when it ends.  It keeps no per-session state: the session
holds its directories and cgroup, and hands them back to :meth:`Confinement.release`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from .settings import WorkerSettings

if TYPE_CHECKING:
    from ..shipping.environments import Environments

__all__ = ["Confinement"]

log = logging.getLogger("p2ppool.worker")


class Confinement:
    """The places and sandbox of the worker's task processes (used on the main thread).

    Args:
        settings: the worker's name, memory cap and whether installs are allowed.
        sandbox: how task processes are confined (the loop's; it closes it).
        process_limit: the pids cgroups of sandboxed sessions (the loop's; it closes it).
        environments: the installed requirement sets, whose cache sandboxes may read.
    """

    def __init__(self, settings: WorkerSettings, sandbox: Any, process_limit: Any,
                 environments: Environments) -> None:
        self._settings = settings
        self._sandbox = sandbox
        self._process_limit = process_limit
        self._environments = environments
        self._jobs_root_dir: str | None = None  # made with the first session (_jobs_root)

    @property
    def sandboxed(self) -> bool:
        """Whether task processes run in bubblewrap (and so are worth starting early)."""
        from ..execution.sandbox import BWRAP

        return bool(self._sandbox.mode == BWRAP)

    def _jobs_root(self) -> str:
        """The worker's directory of job directories, made when the first session or spare
        (see ``Sessions.keep_spare``) needs it; a sandboxed worker makes its spare at start,
        so one killed with SIGKILL leaves it behind (LocalCluster's workers have their
        TMPDIR in the cluster's directory)."""
        if self._jobs_root_dir is None:
            self._jobs_root_dir = tempfile.mkdtemp(prefix="p2ppool-jobs-")
        return self._jobs_root_dir

    def job_dir(self, sid: int | str) -> str:
        """A new writable working directory for session ``sid``'s tasks."""
        return tempfile.mkdtemp(prefix=f"session-{sid}-", dir=self._jobs_root())

    def view_root(self, sid: int | str) -> str:
        """A new directory for what the sandboxes started for session ``sid`` (or a spare)
        before its Open see of its code."""
        return tempfile.mkdtemp(prefix=f"code-{sid}-", dir=self._jobs_root())

    @staticmethod
    def code_view(view_root: str | None, code_dir: str | None) -> str | None:
        """A session's copy of its code bundle, inside its view directory (which its
        prestarted sandboxes can read): hard links to the cache's files; without a view
        directory, the cache's own directory."""
        if view_root is None or code_dir is None:
            return code_dir
        target = os.path.join(view_root, os.path.basename(code_dir))
        if not os.path.isdir(target):
            try:
                shutil.copytree(code_dir, target, copy_function=os.link)
            except OSError:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(code_dir, target)  # another file system
        return target

    def _environments_root(self) -> str | None:
        """The cache of installed requirement sets, for sandboxes to read (public packages;
        a session's own set is chosen at Open), when installs are allowed."""
        root = self._environments.cache_dir
        if not self._settings.allow_install or root is None:
            return None
        os.makedirs(root, exist_ok=True)
        return root

    def engine_arguments(self, sid: int | str, job_dir: str,
                         view_root: str | None) -> Tuple[Dict[str, Any], str | None]:
        """The engine arguments that confine session ``sid``'s task processes (the
        environment allowlist and the job directory always, the sandbox launcher with
        bwrap), and the pids cgroup made for them (None without one): the session keeps
        it, to hand it back to :meth:`release`."""
        from ..execution.sandbox import TASK_HOME, task_command, task_environment

        s = self._settings
        if not self.sandboxed:
            # No sandbox: the same environment allowlist; the working directory stays the
            # worker's (without a sandbox a job directory would hide nothing).
            home = os.environ.get("HOME") or job_dir
            return {"env": task_environment(s.name, home, tempfile.gettempdir())}, None
        env = task_environment(s.name, TASK_HOME, "/tmp")
        sandbox = self._sandbox
        # Before the cgroup: if this fails, nothing is left for the session to hand back.
        fixed = [d for d in (view_root, self._environments_root()) if d]
        cgroup: str | None = self._process_limit.session(sid)

        def launch(rx_fd: int, tx_fd: int, read_only: List[str]) -> Any:
            extra = [p for p in read_only
                     if not any(p == f or p.startswith(f + os.sep) for f in fixed)]
            argv = sandbox.argv(job_dir, fixed + extra, env) + task_command(rx_fd, tx_fd)
            if cgroup is not None:  # in the cgroup before bwrap forks anything
                argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"',
                        os.path.join(cgroup, "cgroup.procs"), *argv]
            return subprocess.Popen(argv, pass_fds=(rx_fd, tx_fd), close_fds=True,
                                    start_new_session=True, stdin=subprocess.DEVNULL)

        arguments = {"work_dir": job_dir, "launcher": launch, "memory_mb": s.max_memory_mb}
        return arguments, cgroup

    def release(self, job_dir: str | None, view_root: str | None, cgroup: str | None) -> None:
        """Remove what an ended session held here: its directories and its cgroup."""
        for directory in (job_dir, view_root):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        if cgroup is not None:
            self._process_limit.remove(cgroup)

    def close(self) -> None:
        """Remove the jobs directory (after every session ended)."""
        if self._jobs_root_dir is not None:
            shutil.rmtree(self._jobs_root_dir, ignore_errors=True)
