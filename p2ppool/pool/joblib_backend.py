"""joblib on p2ppool: ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on a Pool.

::

    import joblib, p2ppool
    p2ppool.register_joblib()
    with joblib.parallel_config(backend="p2ppool", n_jobs=8, cluster="alice/friends"):
        scores = cross_val_score(model, X, y, cv=8)      # runs on the cluster

Keyword arguments of ``parallel_config`` other than joblib's own are p2ppool options
(``cluster=``, ``fallback=``, ``progress=``...).  The backend uses joblib's public backend
API only (``ParallelBackendBase``, with its auto-batching mixin): each ``Parallel`` call
opens one Pool of ``n_jobs`` processes (``-1``: this machine's CPU count) and closes it at
the end; a batch of joblib calls is one ``apply_async`` of the Pool, so it runs locally or
on peers as any Pool task does, exceptions keep their types, and
``return_as="generator"``/``"generator_unordered"`` work.  A ``Parallel`` nested inside a
task runs sequentially there (as dask's backend does), so nesting never deadlocks.

joblib is an optional dependency (``pip install p2ppool[joblib]``), imported only here.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict

from joblib import ParallelBackendBase, register_parallel_backend
from joblib.parallel import AutoBatchingMixin, SequentialBackend

from .api import Pool

__all__ = ["P2PPoolBackend", "register"]

#: What joblib itself passes to every backend's ``configure`` (memory mapping, verbosity,
#: context): not p2ppool options, ignored quietly (other unknown names with a warning).
_JOBLIB_KWARGS = frozenset({"max_nbytes", "mmap_mode", "temp_folder", "verbose", "context"})

#: The name ``register`` gives the backend (``parallel_config(backend="p2ppool")``).
NAME = "p2ppool"


class _Failure:
    """A batch's exception, handed to joblib's callback (which raises it)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _run_batch(batch: Callable[[], Any]) -> Any:
    """A task: one batch of joblib calls (the function stays the same, so workers keep it
    and only the batch travels with each task)."""
    return batch()


class P2PPoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """A joblib backend whose workers are a :class:`p2ppool.Pool` (local or a cluster)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None, **pool_options: Any) -> None:
        super().__init__(nesting_level=nesting_level)
        self.pool_options: Dict[str, Any] = pool_options
        self._pool: Pool | None = None
        self._n_jobs = 1

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        """Open the Pool for one ``Parallel`` call; returns its number of processes."""
        self.parallel = parallel
        self._n_jobs = self.effective_n_jobs(n_jobs)
        from ..config import OPTIONS

        ours = {option.name for option in OPTIONS}
        given = {**self.pool_options, **backend_kwargs}
        strange = sorted(set(given) - ours - _JOBLIB_KWARGS)
        if strange:
            warnings.warn(f"the p2ppool joblib backend ignores {', '.join(map(repr, strange))}"
                          f" (p2ppool options are: {', '.join(sorted(ours))})", stacklevel=2)
        options = {k: v for k, v in given.items() if k in ours}
        if self._pool is None:
            self._pool = Pool(self._n_jobs, **options)
        return self._n_jobs

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None
               ) -> Any:
        """One batch of joblib calls as one Pool task."""
        assert self._pool is not None, "configure() opens the pool first"
        done = callback or (lambda _: None)
        return self._pool.apply_async(
            _run_batch, (func,), callback=done,
            error_callback=lambda error: done(_Failure(error)))

    def retrieve_result_callback(self, out: Any) -> Any:
        if isinstance(out, _Failure):
            raise out.error
        return out

    def get_nested_backend(self) -> Any:
        """Inside a task: ``Parallel`` runs sequentially (no pool inside a pool's task)."""
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None

    def terminate(self) -> None:
        """End of a ``Parallel`` call: close the Pool (its processes or sessions end)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()
            pool.join()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task raised: drop the rest; keep a working Pool if more calls may come."""
        self.terminate()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


def register(name: str = NAME) -> None:
    """Register the backend with joblib as ``name`` (see the module docstring)."""
    register_parallel_backend(name, P2PPoolBackend)
