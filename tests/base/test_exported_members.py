"""The public surface: a sorted __all__, every name importable, nothing started on import."""

from __future__ import annotations

import subprocess
import sys

import p2ppool


def test_all_is_sorted_and_complete() -> None:
    assert p2ppool.__all__ == sorted(p2ppool.__all__)
    for name in p2ppool.__all__:
        assert getattr(p2ppool, name) is not None, name


def test_timeout_error_is_multiprocessings() -> None:
    import multiprocessing

    assert p2ppool.TimeoutError is multiprocessing.TimeoutError


def test_import_starts_nothing_heavy() -> None:
    code = (
        "import sys, threading, p2ppool\n"
        "heavy = [m for m in ('twisted', 'paramiko', 'wormhole', 'tqdm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
