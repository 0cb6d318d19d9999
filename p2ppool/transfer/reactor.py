"""The one Twisted reactor of a process, running in a daemon background thread.

magic-wormhole is built on Twisted, and a Twisted reactor can run only once per process and
cannot be restarted.  p2ppool's public API is synchronous, so this module starts the global
reactor lazily, at most once, in a daemon thread named ``p2ppool-reactor``, and offers two ways
to reach it from ordinary threads:

* :func:`call` runs a function in the reactor thread and blocks until its result (or the
  result of the Deferred it returns) is ready, with a timeout.  Twisted and wormhole failures
  are translated into :mod:`p2ppool.errors` here, at the edge, so callers never see Twisted
  types.
* :func:`call_soon` schedules a function in the reactor thread and returns at once.

Code that already runs in the reactor thread (callbacks of protocols) must not use
:func:`call` (it would wait for itself); :func:`call` raises ``RuntimeError`` in that case.

If something else in the process already runs the global reactor (for example a program built
on Twisted), this module does not start a second thread; it uses the running reactor.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
from typing import Any, Callable, TypeVar

from p2ppool.errors import TransferError, TransferTimeout

__all__ = [
    "call",
    "call_soon",
    "ensure_running",
    "get_reactor",
    "in_reactor_thread",
    "translate_failure",
]

T = TypeVar("T")

#: Extra seconds :func:`call` waits beyond ``timeout`` for the reactor thread to answer at all.
_GRACE_S = 5.0

_lock = threading.Lock()
_thread: threading.Thread | None = None
_reactor_thread_ident: int | None = None


def get_reactor() -> Any:
    """Return Twisted's global reactor (typed as Any: Twisted's reactor stubs are partial)."""
    from twisted.internet import reactor

    return reactor


def ensure_running(timeout: float = 10.0) -> Any:
    """Start the process-wide reactor thread if it is not running yet, and return the reactor.

    Safe to call from any thread, any number of times.

    Args:
        timeout: seconds to wait for the reactor to report that it runs.

    Raises:
        TransferError: the reactor did not start (for example it was stopped earlier: a Twisted
            reactor cannot be restarted within one process).
    """
    global _thread, _reactor_thread_ident
    reactor = get_reactor()
    with _lock:
        if _reactor_thread_ident is not None:
            if reactor.running:
                return reactor
            raise TransferError(
                "the Twisted reactor of this process has stopped and cannot be restarted; "
                "start a new process to use wormhole sessions again"
            )
        if reactor.running:  # someone else runs the reactor (a Twisted program)
            started = threading.Event()

            def _mark() -> None:
                global _reactor_thread_ident
                _reactor_thread_ident = threading.get_ident()
                started.set()

            reactor.callFromThread(_mark)
            if not started.wait(timeout):
                raise TransferError("the running Twisted reactor did not answer")
            return reactor
        started = threading.Event()

        def _mark_running() -> None:
            global _reactor_thread_ident
            _reactor_thread_ident = threading.get_ident()
            started.set()

        reactor.callWhenRunning(_mark_running)
        _thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="p2ppool-reactor",
            daemon=True,
        )
        _thread.start()
        if not started.wait(timeout):
            raise TransferError(f"the Twisted reactor thread did not start within {timeout:g} s")
        atexit.register(_stop_at_exit)
        return reactor


def _stop_at_exit() -> None:
    """Stop the reactor when the interpreter exits, so pending connections close cleanly."""
    reactor = get_reactor()
    thread = _thread
    if thread is None or not reactor.running:
        return
    try:
        reactor.callFromThread(reactor.stop)
    except Exception:  # the reactor may already be shutting down
        return
    thread.join(2.0)


def in_reactor_thread() -> bool:
    """Return True when the caller runs in the reactor thread."""
    return _reactor_thread_ident is not None and threading.get_ident() == _reactor_thread_ident


def call_soon(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Schedule ``fn(*args, **kwargs)`` in the reactor thread and return at once.

    Thread-safe.  Exceptions raised by ``fn`` are logged by Twisted, not propagated.
    """
    reactor = ensure_running()
    if in_reactor_thread():
        reactor.callLater(0, fn, *args, **kwargs)
    else:
        reactor.callFromThread(fn, *args, **kwargs)


def call(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float | None = None,
    what: str = "wormhole operation",
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` in the reactor thread and wait for its result.

    If ``fn`` returns a Deferred, wait for it to fire.  Failures are translated into
    p2ppool errors by :func:`translate_failure`.

    Args:
        fn: the function to run in the reactor thread.
        timeout: seconds to wait; on expiry the Deferred is cancelled and
            :class:`~p2ppool.errors.TransferTimeout` is raised.  None waits forever (avoid).
        what: a few words describing the operation, used in error messages.

    Raises:
        TransferTimeout: the operation did not finish within ``timeout``.
        TransferError: the operation failed (the message says why).
        RuntimeError: called from the reactor thread itself (it would deadlock).
    """
    from twisted.internet import defer

    reactor = ensure_running()
    if in_reactor_thread():
        raise RuntimeError(
            "p2ppool.transfer.reactor.call() used from the reactor thread would deadlock"
        )
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def _in_reactor() -> None:
        d = defer.maybeDeferred(fn, *args, **kwargs)
        if timeout is not None:
            d.addTimeout(timeout, reactor)
        d.addCallbacks(result.set_result, lambda f: result.set_exception(_FailureBox(f)))

    reactor.callFromThread(_in_reactor)
    wait = None if timeout is None else timeout + _GRACE_S
    try:
        return result.result(wait)
    except concurrent.futures.TimeoutError:
        raise TransferTimeout(
            f"{what}: the reactor thread did not answer within {wait:g} s"
        ) from None
    except _FailureBox as box:
        raise translate_failure(box.failure, what=what, timeout=timeout) from box.failure.value


class _FailureBox(Exception):
    """Carries a Twisted Failure across threads."""

    def __init__(self, failure: Any) -> None:
        super().__init__(str(failure.value))
        self.failure = failure


def translate_failure(failure: Any, *, what: str, timeout: float | None = None) -> Exception:
    """Return the p2ppool error that describes a Twisted Failure or an exception.

    Errors that are already p2ppool errors pass through unchanged.

    Args:
        failure: a ``twisted.python.failure.Failure`` or an exception instance.
        what: a few words describing the operation that failed.
        timeout: the timeout that applied, for the message of a timeout.
    """
    from twisted.internet import defer
    from twisted.internet import error as terror
    from wormhole import errors as werrors

    exc = getattr(failure, "value", failure)
    if isinstance(exc, (TransferError,)):
        return exc
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError, terror.TimeoutError)):
        limit = f" within {timeout:g} s" if timeout is not None else ""
        return TransferTimeout(f"{what} did not finish{limit}")
    if isinstance(exc, werrors.WrongPasswordError):
        return TransferError(
            f"{what} failed: wrong code (the peer used a different wormhole code, "
            "or a third party tried to claim this one)"
        )
    if isinstance(exc, werrors.ServerConnectionError):
        return TransferError(f"{what} failed: cannot reach the wormhole mailbox server ({exc})")
    if isinstance(exc, werrors.KeyFormatError):
        return TransferError(f"{what} failed: malformed wormhole code ({exc})")
    if isinstance(exc, werrors.LonelyError):
        return TransferError(f"{what} failed: the peer never joined the wormhole")
    if isinstance(exc, werrors.ServerError):
        return TransferError(f"{what} failed: the mailbox server refused: {exc}")
    if isinstance(exc, werrors.WormholeError):
        return TransferError(f"{what} failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, terror.ConnectError):
        return TransferError(f"{what} failed: connection error: {exc}")
    return TransferError(f"{what} failed: {type(exc).__name__}: {exc}")
