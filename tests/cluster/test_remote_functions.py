"""Which functions a client keeps on a worker per session (``_Remote.make_room``, no I/O)."""

from __future__ import annotations

import pytest

from p2ppool import defaults
from p2ppool.cluster.backend import _Remote


def keep(remote: _Remote, key: int, size: int) -> tuple[int, ...]:
    """What submit does for a function not yet on the worker."""
    forget = remote.make_room(size)
    remote.funcs[key] = size
    remote.func_bytes += size
    return forget


def test_functions_are_forgotten_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "REMOTE_FUNCTIONS_PER_SESSION", 2)
    remote = _Remote("w1#1", "w1", 1)
    assert keep(remote, 1, 10) == ()
    assert keep(remote, 2, 10) == ()
    assert keep(remote, 3, 10) == (1,)  # never more than 2 on the worker, even for a moment
    assert list(remote.funcs) == [2, 3]


def test_functions_are_forgotten_by_bytes_before_the_new_one_is_sent() -> None:
    remote = _Remote("w1#1", "w1", 1)
    remote.max_function_bytes = 100  # from the worker's Ready
    assert keep(remote, 1, 40) == ()
    assert keep(remote, 2, 40) == ()
    remote.funcs.move_to_end(1)  # 1 was used again: 2 is the least recently used now
    assert keep(remote, 3, 50) == (2,)
    assert remote.func_bytes == 90
    assert keep(remote, 4, 100) == (1, 3)  # as much room as the worker allows
    assert remote.func_bytes == 100


def test_a_worker_that_says_no_byte_limit_is_held_to_the_count_only() -> None:
    remote = _Remote("w1#1", "w1", 1)
    assert keep(remote, 1, 10**12) == () and keep(remote, 2, 10**12) == ()
