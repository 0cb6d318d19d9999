"""Task processes in a bubblewrap sandbox: the volunteer's machine stays theirs.

With ``--sandbox bwrap`` (the default ``auto`` picks it where it works) every task process
of a worker is its own ``bwrap`` sandbox, started once and reused for many tasks (one
sandbox per long-lived task process, not per task).  What a task sees::

    /usr, /etc basics, the worker's Python  read-only, at their own paths
    /tmp, its home (/home/p2ppool-task)     private tmpfs, size-bounded
    its job directory                       writable; its working directory; removed when
                                            the session ends
    the job's shipped code and packages     read-only
    --sandbox-ro / --sandbox-rw PATH        what the volunteer chooses to expose
    nothing else of the machine's files     (not the volunteer's home, not the real /tmp)
    no network (own namespace, only lo)     unless --allow-network
    its own PID namespace                   every process a task starts dies with its sandbox
    a short environment allowlist           never SSH_AUTH_SOCK, DISPLAY, tokens...

The flags follow ../shared/research/sandbox.md: ``--unshare-all --die-with-parent
--new-session``, read-only binds after the tmpfs mounts that would hide them, bounded tmpfs
for ``/tmp``, home and ``/dev/shm``, ``--remount-ro /``, ``--clearenv`` plus an allowlist.
bwrap is started from the worker's main thread (``--die-with-parent`` follows the thread
that started it) with ``close_fds`` and only the task's two pipe ends passed.

The environment allowlist (:func:`task_environment`) applies without a sandbox too.
:func:`probe` runs the exact command line once at worker start and checks what a task would
see; a failure gives a diagnosis the volunteer can act on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence

__all__ = ["AUTO", "BWRAP", "MODES", "NONE", "Sandbox", "SandboxUnavailable", "diagnose",
           "probe", "task_command", "task_environment"]

AUTO, BWRAP, NONE = "auto", "bwrap", "none"
MODES = (AUTO, BWRAP, NONE)

#: The task's home inside the sandbox (a private tmpfs).
TASK_HOME = "/home/p2ppool-task"

#: Variables a task may inherit from the worker (values are the worker's); nothing else.
_PASSED = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
           "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class SandboxUnavailable(Exception):
    """bwrap is missing or cannot build the sandbox here (the message says what to do)."""


def task_environment(worker_name: str, home: str, tmp: str, python: str = sys.executable,
                     name_variable: str = "P2PPOOL_WORKER") -> Dict[str, str]:
    """The whole environment of a task process: a short allowlist, never the worker's own
    (no ``SSH_AUTH_SOCK``, ``DBUS_SESSION_BUS_ADDRESS``, ``XDG_RUNTIME_DIR``, ``DISPLAY``,
    credentials or tokens)."""
    env = {k: os.environ[k] for k in _PASSED if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    bin_dir = os.path.dirname(python)
    env.update({
        "PATH": os.pathsep.join([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": home, "TMPDIR": tmp, "USER": "p2ppool-task", "LOGNAME": "p2ppool-task",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", name_variable: worker_name,
    })
    return env


@dataclasses.dataclass
class Sandbox:
    """How a worker's task processes are confined (``mode`` bwrap or none).

    Args:
        mode: ``bwrap`` or ``none``.
        allow_network: share the host's network (and its DNS files) with tasks.
        read_only: extra paths tasks may read (``--sandbox-ro``), at their own paths.
        read_write: extra paths tasks may write (``--sandbox-rw``).
        tmp_mb: size of the private ``/tmp``, home and ``/dev/shm`` (each).
        bwrap: the bwrap executable.
    """

    mode: str = NONE
    allow_network: bool = False
    read_only: Sequence[str] = ()
    read_write: Sequence[str] = ()
    tmp_mb: int = 1024
    bwrap: str = "bwrap"
    _etc_dir: str | None = None

    @property
    def label(self) -> str:
        """What the worker announces: ``bwrap``, ``bwrap+network`` or ``none``."""
        if self.mode != BWRAP:
            return NONE
        return "bwrap+network" if self.allow_network else "bwrap"

    def argv(self, job_dir: str, read_only: Sequence[str] = (),
             env: Dict[str, str] | None = None) -> List[str]:
        """The bwrap command line up to (not including) the command, for one task process.

        ``job_dir`` becomes writable and the working directory; ``read_only`` adds paths
        (the session's code bundle, its installed requirements).
        """
        size = str(self.tmp_mb * 1024 * 1024)
        args = [self.bwrap, "--unshare-all"]
        if self.allow_network:
            args.append("--share-net")
        args += ["--die-with-parent", "--new-session",
                 "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib32", "lib64", "sbin"):
            path = "/" + name
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
                     "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates", "/etc/pki",
                     "/etc/localtime", "/etc/mime.types"):
            args += ["--ro-bind-try", path, path]
        if self.allow_network:
            for path in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf",
                         "/etc/gai.conf", "/etc/host.conf"):
                args += ["--ro-bind-try", path, path]
        etc = self._identity_files()
        args += ["--ro-bind", os.path.join(etc, "passwd"), "/etc/passwd",
                 "--ro-bind", os.path.join(etc, "group"), "/etc/group",
                 "--proc", "/proc", "--dev", "/dev",
                 "--size", size, "--tmpfs", "/dev/shm",
                 "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                 "--perms", "0700", "--size", size, "--tmpfs", TASK_HOME]
        # After the tmpfs mounts, which would hide an interpreter under /tmp or a home.
        for path in _python_paths() + list(read_only) + list(self.read_only):
            args += ["--ro-bind", path, path]
        for path in self.read_write:
            args += ["--bind", path, path]
        args += ["--bind", job_dir, job_dir, "--chdir", job_dir, "--remount-ro", "/",
                 "--clearenv"]
        for key, value in sorted((env or {}).items()):
            args += ["--setenv", key, value]
        return args + ["--"]

    def close(self) -> None:
        """Remove the identity files written for the sandbox."""
        if self._etc_dir is not None:
            shutil.rmtree(self._etc_dir, ignore_errors=True)
            self._etc_dir = None

    def _identity_files(self) -> str:
        """Stub /etc/passwd and /etc/group naming the task's uid (``getpass.getuser()`` and
        ``pwd.getpwuid`` raise without them)."""
        if self._etc_dir is None:
            self._etc_dir = tempfile.mkdtemp(prefix="p2ppool-sandbox-")
            uid, gid = os.getuid(), os.getgid()
            with open(os.path.join(self._etc_dir, "passwd"), "w", encoding="ascii") as f:
                f.write(f"p2ppool-task:x:{uid}:{gid}:p2ppool task:{TASK_HOME}:/bin/sh\n")
            with open(os.path.join(self._etc_dir, "group"), "w", encoding="ascii") as f:
                f.write(f"p2ppool-task:x:{gid}:\n")
        return self._etc_dir


def task_command(rx_fd: int, tx_fd: int) -> List[str]:
    """The command a sandboxed task process runs: this interpreter, isolated (``-I``: no
    ``PYTHONPATH``, no user site, no cwd on ``sys.path``), importing this very p2ppool
    (which may come from ``PYTHONPATH`` rather than site-packages)."""
    return [sys.executable, "-I", "-c", _boot(), str(rx_fd), str(tx_fd)]


def _boot(then: str = "from p2ppool.execution.sandbox_child import main; main(sys.argv)") -> str:
    return f"import sys; sys.path.insert(0, {_package_parent()!r}); {then}"


def _package_parent() -> str:
    import p2ppool

    return os.path.dirname(os.path.realpath(list(p2ppool.__path__)[0]))


def _python_paths() -> List[str]:
    """What the task's interpreter needs, read-only: its prefixes and p2ppool's own source
    (never the worker's working directory, which may be the volunteer's home)."""
    import p2ppool

    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)),
                  os.path.dirname(os.path.abspath(sys.executable)),
                  os.path.realpath(list(p2ppool.__path__)[0])}
    candidates.update(getattr(site, "getsitepackages", list)())
    found: List[str] = []
    for path in sorted(candidates):
        real = os.path.realpath(path)
        if not os.path.isdir(real) or real == "/usr" or real.startswith("/usr/"):
            continue  # /usr is bound already
        if any(real == other or real.startswith(other + os.sep) for other in found):
            continue
        found = [p for p in found if not p.startswith(real + os.sep)] + [real]
    return found


#: What a task checks about its own surroundings in :func:`probe` (printed as JSON).
_PROBE_SCRIPT = """
import json, os, socket
import p2ppool.execution.sandbox_child  # the task entry imports in the sandbox
home = os.environ.get("P2PPOOL_PROBE_CANARY", "")
print(json.dumps({
    "pid": os.getpid(),
    "interfaces": [name for _, name in socket.if_nameindex()],
    "canary_visible": bool(home) and os.path.exists(home),
    "usr_writable": os.access("/usr", os.W_OK),
    "cwd_writable": os.access(os.getcwd(), os.W_OK),
    "ssh_agent": "SSH_AUTH_SOCK" in os.environ,
}))
"""


def probe(sandbox: Sandbox, timeout: float = 20.0) -> None:
    """Run the exact task command line once with a tiny script and check what it sees.

    Raises:
        SandboxUnavailable: bwrap is missing, cannot start, or the sandbox leaks (with a
            diagnosis from :func:`diagnose`).
    """
    if shutil.which(sandbox.bwrap) is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed; install it (Debian/Ubuntu: apt install "
            "bubblewrap; Fedora: dnf install bubblewrap) or run with --sandbox none")
    job_dir = tempfile.mkdtemp(prefix="p2ppool-probe-")
    try:  # a file in the volunteer's home that the task must not see
        canary_fd, canary = tempfile.mkstemp(prefix="p2ppool-canary-",
                                             dir=os.path.expanduser("~"))
        os.close(canary_fd)
    except OSError:
        canary = ""  # no writable home: nothing there to hide, nothing to check
    try:
        env = task_environment("probe", TASK_HOME, "/tmp")
        env["P2PPOOL_PROBE_CANARY"] = canary
        argv = sandbox.argv(job_dir, env=env) + [sys.executable, "-I", "-c",
                                                 _boot(_PROBE_SCRIPT)]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, close_fds=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bwrap did not run: {exc}") from None
        if proc.returncode != 0:
            raise SandboxUnavailable(diagnose(proc.stderr.decode("utf-8", "replace")))
        try:
            seen = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SandboxUnavailable(f"the sandbox probe printed no report: "
                                     f"{proc.stdout[-300:]!r} {proc.stderr[-300:]!r}") from None
        leaks = []
        if seen["pid"] > 3:
            leaks.append(f"it does not have its own PID namespace (pid {seen['pid']})")
        if not sandbox.allow_network and seen["interfaces"] != ["lo"]:
            leaks.append(f"it sees network interfaces {seen['interfaces']}")
        if seen["canary_visible"]:
            leaks.append("it can see files in your home directory")
        if seen["usr_writable"] or not seen["cwd_writable"]:
            leaks.append("its file system is not set up as intended")
        if seen["ssh_agent"]:
            leaks.append("it sees SSH_AUTH_SOCK")
        if leaks:
            raise SandboxUnavailable("the sandbox does not confine tasks: " + "; ".join(leaks))
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
        sandbox.close()  # its identity files are made again with the first session
        if canary:
            try:
                os.unlink(canary)
            except OSError:
                pass


def diagnose(stderr: str) -> str:
    """bwrap's failure, with what the volunteer can do about it (see the research note)."""
    line = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    if "setting up uid map" in stderr or "RTM_NEWADDR" in stderr:
        hint = ("AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+): install "
                "the bwrap-userns-restrict profile, or sysctl "
                "kernel.apparmor_restrict_unprivileged_userns=0")
    elif "No permissions to create" in stderr or "Operation not permitted" in stderr and (
            "namespace" in stderr):
        hint = ("user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=1 on "
                "Debian) or blocked by a container's seccomp profile")
    elif "ENOSPC" in stderr or "max_" in stderr:
        hint = "raise the sysctl user.max_user_namespaces"
    elif "Can't mount proc" in stderr:
        hint = "this looks like a container whose /proc is masked; run the worker outside it"
    elif "execvp" in stderr:
        hint = "the interpreter is not visible in the sandbox (a p2ppool bug: please report it)"
    else:
        hint = "see bwrap's message"
    return f"bwrap cannot build the sandbox here: {line} ({hint}; or run with --sandbox none)"
