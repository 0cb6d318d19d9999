"""ClusterBackend's one owner: other threads only post to its inbox (no board, no sessions)."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest

from p2ppool.cluster.backend import (
    _OPENING,
    _READY,
    BoardTrouble,
    ClusterBackend,
    RemoteTaskDone,
    RemoteTaskLost,
    _Remote,
)
from p2ppool.config import resolve_options
from p2ppool.transfer import session as session_mod
from p2ppool.transfer.session_protocol import Lost, Result, Unable, encode_frame


class _FakeSession:
    def __init__(self) -> None:
        self.sent: List[bytes] = []
        self.closed: List[str] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, reason: str = "") -> None:
        self.closed.append(reason)


def _backend(notify: Any = lambda: None) -> ClusterBackend:
    options = resolve_options({"cluster": "alice/friends"}, environ={}, read_file=False)
    return ClusterBackend(options, "job-1", 4, None, None, notify, python="3.11")


def _opening(backend: ClusterBackend) -> _Remote:
    remote = _Remote("w1#1", "w1", 2)
    backend._remotes[remote.executor_id] = remote
    backend._by_worker["w1"] = remote
    assert remote.state == _OPENING
    return remote


def test_posts_from_other_threads_wait_for_collect_and_notify_once_per_burst() -> None:
    calls: List[int] = []
    backend = _backend(lambda: calls.append(1))
    remote = _opening(backend)
    session = _FakeSession()
    poster = threading.Thread(target=lambda: [backend._post(backend._opened, remote, session)
                                              for _ in range(3)])
    poster.start()
    poster.join()
    assert remote.session is None and not session.sent  # nothing applied off the owner
    assert calls == [1]  # one wakeup for the burst
    backend.collect()
    assert remote.session is session and session.sent  # the owner sent Open
    backend._post(backend._got_job_done, None)  # a failing handler is reported, not raised
    assert calls == [1, 1]
    (trouble,) = backend.collect()
    assert isinstance(trouble, BoardTrouble) and "internal error" in trouble.message


def test_a_session_opened_after_close_is_closed_by_its_opener(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend()
    remote = _opening(backend)
    session = _FakeSession()
    monkeypatch.setattr(session_mod.TransferSession, "open",
                        staticmethod(lambda *args, **kwargs: session))
    backend.close(timeout=0.1)  # the owner drains no more
    backend._open(remote, "1-code")
    assert session.closed == ["not needed any more"]


class _ReadySession(_FakeSession):
    def send_parts(self, parts: Any) -> None:
        self.sent.append(b"".join(bytes(p) for p in parts))


def _ready(backend: ClusterBackend, executor_id: str = "w1#1", worker: str = "w1") -> _Remote:
    remote = _Remote(executor_id, worker, 2)
    backend._remotes[executor_id] = remote
    backend._by_worker[worker] = remote
    remote.state = _READY
    remote.session = _ReadySession()
    return remote


def test_a_result_taken_by_its_waiter_is_handed_over_on_the_reactor_thread_once() -> None:
    """Issue 16: submit(deliver=...) hands that task's Result to ``deliver`` where the
    frame arrives, before the owner's turn; the owner still reports it; a cancelled or
    lost task's entry goes, so a late Result reaches nobody but the owner's drop count."""
    backend = _backend()
    remote = _ready(backend)
    handed: List[Any] = []
    for task_id in (1, 2, 3):
        backend.submit(remote.executor_id, task_id, 7, b"func", b"args",
                       lambda ok, blob, t=task_id: handed.append((t, ok, bytes(blob))))
    backend.submit(remote.executor_id, 4, 7, b"func", b"args")  # nobody waits on it
    assert set(remote.direct) == {1, 2, 3}

    backend._frame_arrived(remote, encode_frame(Result(1, True, b"one")))
    assert handed == [(1, True, b"one")] and set(remote.direct) == {2, 3}
    backend.cancel(remote.executor_id, [2])
    backend._frame_arrived(remote, encode_frame(Lost(3, True, "its child died")))
    backend._frame_arrived(remote, encode_frame(Result(2, True, b"late")))
    backend._frame_arrived(remote, encode_frame(Result(4, False, b"err")))
    assert handed == [(1, True, b"one")] and set(remote.direct) == {3}
    events = backend.collect()
    assert remote.direct == {}  # the owner dropped the lost task's
    done = [(e.task_id, e.ok, bytes(e.blob)) for e in events if isinstance(e, RemoteTaskDone)]
    assert done == [(1, True, b"one"), (4, False, b"err")]
    assert [e.task_id for e in events if isinstance(e, RemoteTaskLost)] == [3]
    assert backend.dropped_frames == 1  # the cancelled task's late Result

    backend.submit(remote.executor_id, 5, 7, b"func", b"args", handed.append)
    backend._frame_arrived(remote, b"\xff not a frame")  # the owner reports it, as before
    assert handed == [(1, True, b"one")]
    backend.collect()
    assert remote.end_cause is not None and "malformed frame" in remote.end_cause


def test_a_declined_or_ended_session_hands_over_nothing_more() -> None:
    """A worker that cannot load the job is declined: its other tasks run elsewhere, so a
    late Result of one reaches no caller directly (only the owner, which drops it).  An
    ended session keeps no entry either."""
    backend = _backend()
    remote = _ready(backend)
    handed: List[Any] = []
    for task_id in (1, 2):
        backend.submit(remote.executor_id, task_id, 7, b"func", b"args",
                       lambda ok, blob: handed.append(blob))
    backend._frame_arrived(remote, encode_frame(Unable(1, "function", "numpy",
                                                       "No module named 'numpy'", "h")))
    backend.collect()
    assert remote.direct == {}
    backend._frame_arrived(remote, encode_frame(Result(2, True, b"late")))
    assert handed == []

    other = _ready(backend, "w2#2", "w2")
    backend.submit(other.executor_id, 3, 7, b"func", b"args", handed.append)
    backend._lost(other, "the connection was lost")
    assert other.direct == {} and handed == []
