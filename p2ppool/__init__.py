"""p2ppool: a drop-in ``multiprocessing.Pool`` whose processes are volunteer peers.

``from p2ppool import Pool`` replaces ``from multiprocessing import Pool`` (and ``from p2ppool
import ProcessPoolExecutor`` replaces concurrent.futures').  With no cluster
configured the work runs on local processes; with one (``Pool(cluster="alice/friends")`` or
``P2PPOOL_CLUSTER``) it runs on peers that volunteered with ``python -m p2ppool.worker``.

Importing p2ppool starts nothing: the names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AccessDenied,
    BoardAuthError,
    BoardConnectionError,
    BoardError,
    BrokenPool,
    ChunkFailed,
    ConfigError,
    HostKeyMismatch,
    InitializerFailed,
    MaybeEncodingError,
    NoWorkers,
    P2PPoolError,
    PoolNotRunning,
    ProcessLost,
    ProtocolError,
    RemoteTraceback,
    SessionLost,
    TaskLimitExceeded,
    TimeoutError,
    TransferError,
    TransferTimeout,
)

if TYPE_CHECKING:
    from .local.cluster import LocalCluster
    from .pool.api import AsyncResult, IMapIterator, MapResult, Pool
    from .pool.futures import ProcessPoolExecutor

# name -> module that defines it; loaded on first attribute access (PEP 562).
_LAZY = {
    "Pool": "pool.api",
    "AsyncResult": "pool.api",
    "MapResult": "pool.api",
    "IMapIterator": "pool.api",
    "LocalCluster": "local.cluster",
    "ProcessPoolExecutor": "pool.futures",
}

__all__ = [
    "AccessDenied",
    "AsyncResult",
    "BoardAuthError",
    "BoardConnectionError",
    "BoardError",
    "BrokenPool",
    "ChunkFailed",
    "ConfigError",
    "HostKeyMismatch",
    "IMapIterator",
    "InitializerFailed",
    "LocalCluster",
    "MapResult",
    "MaybeEncodingError",
    "NoWorkers",
    "P2PPoolError",
    "Pool",
    "PoolNotRunning",
    "ProcessLost",
    "ProcessPoolExecutor",
    "ProtocolError",
    "RemoteTraceback",
    "SessionLost",
    "TaskLimitExceeded",
    "TimeoutError",
    "TransferError",
    "TransferTimeout",
    "__version__",
    "register_joblib",
]


def register_joblib(name: str = "p2ppool") -> None:
    """Register p2ppool as joblib backend ``name``: then ``with
    joblib.parallel_config(backend="p2ppool", n_jobs=N, cluster=...)`` runs
    ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on a Pool.  Needs joblib
    (``pip install p2ppool[joblib]``); see :mod:`p2ppool.pool.joblib_backend`."""
    try:
        from .pool.joblib_backend import register
    except ModuleNotFoundError as exc:
        if exc.name != "joblib":
            raise
        raise ModuleNotFoundError(
            "register_joblib needs joblib: pip install 'p2ppool[joblib]'", name="joblib"
        ) from None
    register(name)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2ppool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
