"""A worker's per-job virtual environments: ``requirements=`` installed where the volunteer
allows it (``--allow-install``).

For each distinct requirement set (keyed by :func:`p2ppool.shipping.requirements.environment_key`:
the normalised set, the worker's Python and platform, and its pip index settings) the
worker builds one virtual environment of its own interpreter (``--system-site-packages``,
so what the worker has stays importable) and installs the packages into it, wheels only;
that job's task processes put the environment's site-packages first on ``sys.path`` (in
front of the worker's own packages, so ``numpy>=2`` wins over an older numpy installed
there).  uv is used when it is on ``PATH`` (much faster), else ``python -m venv`` and
``python -m pip --python``; each honours the worker's own configuration
(``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``UV_INDEX_URL``...).

States of a set: ``here`` (the worker's own environment satisfies it: nothing to install),
``missing`` (not satisfied and installs are not allowed: no offer), ``building`` (an
install runs in a background thread: offer once it is ``ready``), ``ready``, ``failed``
(the error names the requirements and the installer's last lines; the worker still
offers, and refuses the session with that error so the client learns why; retried after
a while).

The cache keeps environments up to ``max_bytes`` in all; the least recently used go first,
never one a session is using.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Sequence, Tuple

from .. import defaults
from .requirements import environment_key, normalize, unmet

__all__ = ["BUILDING", "Environments", "FAILED", "HERE", "MISSING", "READY"]

log = logging.getLogger("p2ppool.worker")

HERE, MISSING, BUILDING, READY, FAILED = "here", "missing", "building", "ready", "failed"

_INDEX_VARIABLES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX",
                    "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX")


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclasses.dataclass
class _Entry:
    state: str
    path: str | None = None
    error: str | None = None
    failed_at: float = 0.0
    seconds: float = 0.0  # how long the install took


class Environments:
    """The worker's requirement sets and their directories (thread-safe).

    Args:
        cache_dir: where environments live (one subdirectory per key).
        allow_install: False: only ``here``/``missing`` (nothing is ever installed).
        max_bytes: size bound of the cache (least recently used environments go).
        on_change: called (from the install thread) when a set became ready or failed.
        timeout: seconds an install may take.
    """

    def __init__(self, cache_dir: str | None, allow_install: bool,
                 max_bytes: int = defaults.WORKER_INSTALL_CACHE_BYTES,
                 on_change: Callable[[], None] = lambda: None,
                 timeout: float = defaults.WORKER_INSTALL_TIMEOUT_S) -> None:
        self.cache_dir = cache_dir
        self.allow_install = allow_install
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._on_change = on_change
        self._lock = threading.Lock()
        self._entries: Dict[str, _Entry] = {}
        self._in_use: Dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._python = f"{sys.version_info.major}.{sys.version_info.minor}"
        self._platform = f"{sys.platform}-{platform.machine()}"
        self._index = tuple(f"{k}={os.environ[k]}" for k in _INDEX_VARIABLES if k in os.environ)

    def key(self, requirements: Sequence[str]) -> str:
        return environment_key(requirements, self._python, self._platform, self._index)

    def state(self, requirements: Sequence[str]) -> Tuple[str, str | None]:
        """``(state, detail)`` of a set; starts its install when allowed and not done yet.

        ``detail`` is the directory for ``ready``, the error for ``failed``, what is
        missing for ``missing``.
        """
        missing = unmet(requirements, _installed_version)
        if not missing:
            return HERE, None
        if not self.allow_install or self.cache_dir is None:
            return MISSING, ", ".join(missing)
        key = self.key(requirements)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._find_on_disk(key)
            if entry is not None and entry.state == FAILED and (
                    time.monotonic() - entry.failed_at > defaults.WORKER_INSTALL_RETRY_S):
                entry = None  # try again: the index may have the package by now
            if entry is None:
                entry = self._entries[key] = _Entry(BUILDING)
                thread = threading.Thread(target=self._install, args=(key, tuple(requirements)),
                                          name=f"p2ppool-install-{key[:8]}", daemon=True)
                self._threads.append(thread)
                thread.start()
            if entry.state == READY:
                return READY, entry.path
            return entry.state, entry.error

    def acquire(self, requirements: Sequence[str]) -> str | None:
        """The site-packages directory a session of this set uses (None: the worker's own
        environment is enough); call :meth:`release` with it when the session ends.

        Raises:
            LookupError: the set is not ready (its detail says why).
        """
        state, detail = self.state(requirements)
        if state == HERE:
            return None
        if state != READY or detail is None:
            raise LookupError(detail or f"the environment for {', '.join(requirements)} is "
                                        f"{state}")
        with self._lock:
            self._in_use[detail] = self._in_use.get(detail, 0) + 1
        os.utime(detail)  # least recently used: by directory mtime
        return site_packages(detail)

    def release(self, site_dir: str) -> None:
        """A session of the environment whose site-packages is ``site_dir`` ended."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(site_dir))))
        with self._lock:
            left = self._in_use.get(root, 0) - 1
            if left > 0:
                self._in_use[root] = left
            else:
                self._in_use.pop(root, None)

    def install_seconds(self, requirements: Sequence[str]) -> float | None:
        """How long the install of a ready set took (None: not installed by this worker)."""
        with self._lock:
            entry = self._entries.get(self.key(requirements))
        return entry.seconds if entry is not None and entry.state == READY else None

    def close(self, timeout: float = 5.0) -> None:
        """Wait a little for installs in progress (they are daemon threads)."""
        for thread in self._threads:
            thread.join(timeout)

    # --- internals ---------------------------------------------------------------------

    def _find_on_disk(self, key: str) -> _Entry | None:
        assert self.cache_dir is not None
        path = os.path.join(self.cache_dir, key)
        if os.path.isfile(os.path.join(path, ".p2ppool-ready")):
            entry = self._entries[key] = _Entry(READY, path)
            return entry
        return None

    def _install(self, key: str, requirements: Tuple[str, ...]) -> None:
        assert self.cache_dir is not None
        started = time.monotonic()
        os.makedirs(self.cache_dir, exist_ok=True)
        final = os.path.join(self.cache_dir, key)
        staging = tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=self.cache_dir)
        commands = _install_commands(os.path.join(staging, "env"), requirements)
        log.info("installing %s for a job (%s)", ", ".join(requirements), commands[-1][0])
        ok, output = True, ""
        deadline = started + self.timeout
        for command in commands:
            try:
                proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=max(1.0, deadline - time.monotonic()))
                output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
                ok = proc.returncode == 0
            except (OSError, subprocess.TimeoutExpired) as exc:
                ok, output = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                break
        if ok:
            with open(os.path.join(staging, ".p2ppool-ready"), "w", encoding="utf-8") as f:
                json.dump({"requirements": list(normalize(requirements))}, f)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(staging, final)
            entry = _Entry(READY, final, seconds=time.monotonic() - started)
            log.info("installed %s in %.1f s", ", ".join(requirements), entry.seconds)
        else:
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join(output.strip().splitlines()[-8:])
            error = (f"cannot install {', '.join(requirements)} on this worker; the "
                     f"installer said:\n{tail}")
            entry = _Entry(FAILED, error=error, failed_at=time.monotonic())
            log.warning("%s", error)
        with self._lock:
            self._entries[key] = entry
        if ok:
            self._evict(keep=final)
        self._on_change()

    def _evict(self, keep: str) -> None:
        """Remove the least recently used environments over ``max_bytes``."""
        assert self.cache_dir is not None
        sizes = []
        for name in os.listdir(self.cache_dir):
            path = os.path.join(self.cache_dir, name)
            if name.startswith(".") or not os.path.isdir(path):
                continue
            sizes.append((os.stat(path).st_mtime, path, _tree_bytes(path)))
        total = sum(size for _, _, size in sizes)
        for _, path, size in sorted(sizes):
            if total <= self.max_bytes:
                break
            with self._lock:
                if path == keep or path in self._in_use:
                    continue
                self._entries = {k: e for k, e in self._entries.items() if e.path != path}
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            log.info("removed the unused environment %s (cache over %d MB)", path,
                     self.max_bytes // 1_000_000)


def _install_commands(env: str, requirements: Sequence[str]) -> list[list[str]]:
    """Create a virtual environment of this interpreter at ``env`` (seeing its system
    packages), then install ``requirements`` into it, wheels only."""
    python = os.path.join(env, "bin", "python")
    uv = shutil.which("uv")
    if uv is not None:
        return [[uv, "venv", "--quiet", "--python", sys.executable, "--system-site-packages",
                 env],
                [uv, "pip", "install", "--quiet", "--python", python, "--only-binary", ":all:",
                 *requirements]]
    return [[sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", env],
            [sys.executable, "-m", "pip", "--python", python, "install", "--only-binary",
             ":all:", "--disable-pip-version-check", "--no-input", "--quiet", *requirements]]


def site_packages(root: str) -> str:
    """The site-packages directory of the environment under ``root`` (a cache entry)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return os.path.join(root, "env", "lib", version, "site-packages")


def _tree_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
