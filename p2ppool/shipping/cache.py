"""A worker's code bundles on disk: one read-only directory per bundle, put on task processes'
``sys.path`` (worker side of :mod:`p2ppool.shipping.bundle`).

A bundle is written once per content digest, under the worker's own temporary directory,
and shared by every session that sends the same bytes.  A directory (rather than a meta-path
finder) gives shipped modules everything an installed module has: ``__file__``, source lines
in tracebacks, ``inspect.getsource``, data files next to ``__file__`` would resolve.  Bundles
no session uses any more are kept for later sessions up to ``keep`` of them (least recently
used go first); :meth:`CodeCache.close` removes the whole directory.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
from typing import Dict

from .. import defaults
from . import bundle as code_bundle

__all__ = ["CodeCache"]

log = logging.getLogger("p2ppool.worker")


class CodeCache:
    """Bundles unpacked for task processes (owned by the worker's main thread).

    Args:
        max_bytes: most uncompressed source per bundle (larger ones raise ProtocolError).
        keep: unused bundles kept for later sessions.
    """

    def __init__(self, max_bytes: int = defaults.WORKER_MAX_CODE_BYTES,
                 keep: int = defaults.WORKER_CODE_BUNDLES_KEPT) -> None:
        self.max_bytes = max_bytes
        self.keep = keep
        self.root: str | None = None
        self._users: Dict[str, int] = {}  # digest -> sessions using it
        self._unused: collections.OrderedDict[str, None] = collections.OrderedDict()

    def acquire(self, blob: bytes | memoryview) -> str:
        """The directory holding ``blob``'s modules (written on first use); call
        :meth:`release` with the same digest when the session is done with it.

        Raises:
            ProtocolError: the bundle is malformed or too large.
            OSError: the directory could not be written.
        """
        digest = code_bundle.digest(blob)
        path = self._path(digest)
        if digest not in self._users and digest not in self._unused:
            modules = code_bundle.decode(blob, self.max_bytes)
            self._write(path, modules)
        self._unused.pop(digest, None)
        self._users[digest] = self._users.get(digest, 0) + 1
        return path

    def release(self, path: str) -> None:
        """A session no longer uses the bundle at ``path``."""
        digest = os.path.basename(path)
        count = self._users.get(digest, 0) - 1
        if count > 0:
            self._users[digest] = count
            return
        self._users.pop(digest, None)
        self._unused[digest] = None
        while len(self._unused) > self.keep:
            old, _ = self._unused.popitem(last=False)
            shutil.rmtree(self._path(old), ignore_errors=True)

    def close(self) -> None:
        """Remove every bundle (the worker is stopping)."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self._users.clear()
        self._unused.clear()

    def _path(self, digest: str) -> str:
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix="p2ppool-code-")
        return os.path.join(self.root, digest)

    def _write(self, path: str, modules: list[code_bundle.ModuleSource]) -> None:
        staging = tempfile.mkdtemp(prefix=".staging-", dir=os.path.dirname(path))
        try:
            for module in modules:
                target = os.path.join(staging, code_bundle.relative_path(
                    module.name, module.is_package))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(module.source)
                os.chmod(target, 0o444)  # tasks must not change code other sessions share
            os.rename(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("unpacked %d shipped module(s) into %s", len(modules), path)
