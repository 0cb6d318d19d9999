"""The process-wide reactor thread and the error translation at its edge."""

from __future__ import annotations

import queue
import threading
import time

import pytest
from twisted.internet import defer
from wormhole import errors as werrors

from p2ppool.errors import TransferError, TransferTimeout
from p2ppool.transfer import reactor as rx


def test_the_reactor_runs_once_in_a_named_daemon_thread() -> None:
    first = rx.ensure_running()
    assert rx.ensure_running() is first and first.running
    names = [t for t in threading.enumerate() if t.name == "p2ppool-reactor"]
    assert len(names) == 1 and names[0].daemon
    assert not rx.in_reactor_thread()
    assert rx.call(rx.in_reactor_thread, timeout=5) is True


def test_call_returns_plain_values_and_deferred_results() -> None:
    assert rx.call(lambda a, b: a + b, 2, 3, timeout=5) == 5
    from twisted.internet import reactor

    def later() -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0.05, d.callback, "fired")
        return d

    assert rx.call(later, timeout=5) == "fired"


def test_call_times_out_with_transfer_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(TransferTimeout, match="waiting for nothing did not finish within 0.3 s"):
        rx.call(defer.Deferred, timeout=0.3, what="waiting for nothing")
    assert time.monotonic() - started < 2
    assert isinstance(TransferTimeout("x"), TimeoutError)


def test_call_translates_errors_and_keeps_the_cause() -> None:
    def wrong() -> None:
        raise werrors.WrongPasswordError()

    with pytest.raises(TransferError, match="pairing failed: wrong code") as info:
        rx.call(wrong, timeout=5, what="pairing")
    assert isinstance(info.value.__cause__, werrors.WrongPasswordError)

    def broken() -> None:
        raise ValueError("bad thing")

    with pytest.raises(TransferError, match="step failed: ValueError: bad thing"):
        rx.call(broken, timeout=5, what="step")


@pytest.mark.parametrize(
    "exc, words",
    [
        (werrors.ServerConnectionError("ws://x", "refused"), "cannot reach the wormhole mailbox"),
        (werrors.KeyFormatError("bad"), "malformed wormhole code"),
        (werrors.LonelyError(), "never joined"),
        (werrors.ServerError("crowded"), "refused: crowded"),
        (defer.CancelledError(), "did not finish"),
    ],
)
def test_translate_failure(exc: Exception, words: str) -> None:
    err = rx.translate_failure(exc, what="it")
    assert isinstance(err, TransferError) and words in str(err)


def test_call_from_the_reactor_thread_is_refused() -> None:
    result: queue.Queue = queue.Queue()

    def inside() -> None:
        try:
            rx.call(lambda: None, timeout=1)
        except RuntimeError as exc:
            result.put(str(exc))

    rx.call_soon(inside)
    assert "would deadlock" in result.get(timeout=5)
