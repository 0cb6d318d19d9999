"""The benchmarks' task functions, in a module that imports nothing but ``time``.

A cluster worker's task process imports the module a function comes from (shipped to it
from the client) when its first task arrives, so that import is part of every figure that
opens a pool.  Kept here, apart from the benchmark drivers (which import ``p2ppool.Pool``
and its whole client stack, about 40-60 ms in a fresh task process), the figures measure
p2ppool rather than the import of the benchmark itself; a user's own ``helpers.py`` is
usually as light.  multiprocessing's forked children inherit every module, so its figures
never included that import.
"""

from __future__ import annotations

import time


def tiny(x: int) -> int:
    return x + 1


def burn(seconds: float) -> float:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def echo(blob: bytes) -> bytes:
    return blob
