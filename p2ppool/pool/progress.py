"""Progress bars for map/imap/starmap: a tqdm bar on stderr, updated once per finished chunk.

Off by default, so that swapping ``multiprocessing.Pool`` for ``p2ppool.Pool`` changes no
output.  Turn it on with ``Pool(progress=True)`` or ``P2PPOOL_PROGRESS=1``.  The Pool's
manager thread is the only caller, so the bar needs no lock of its own.

While a bar is shown, p2ppool's own log lines (the fallback notice, a lost peer) would break
the bar's line on the terminal; they go through ``tqdm.write`` instead (see
:class:`_LogAboveBars`), with the format and level of the console handler that would have
printed them.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import IO, Any, List

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar counting finished input items.

    Args:
        total: the number of items, when the input has a length (else the bar counts up
            without a total).
        file: where to draw (default ``sys.stderr``, looked up when the bar is made).
        desc: the label in front of the bar.
    """

    def __init__(self, total: int | None, file: IO[str] | None = None,
                 desc: str = "p2ppool") -> None:
        from tqdm.auto import tqdm  # only when a bar is wanted; a widget in Jupyter

        self._bar: Any = tqdm(
            total=total,
            file=file if file is not None else sys.stderr,
            desc=desc,
            unit="item",
            dynamic_ncols=True,
            leave=True,
        )
        self._workers = ""  # the postfix last shown by set_workers
        _log_above_bars.bar_opened()

    def set_workers(self, peers: int, local_slots: int) -> None:
        """Show who is working: ``peers=P local=K`` after the count (redrawn when it changes).

        Args:
            peers: worker sessions (peers) the pool runs chunks on.
            local_slots: local processes taking chunks (0 until local fallback starts).
        """
        text = f"peers={peers} local={local_slots}"
        if text != self._workers:
            self._workers = text
            self._bar.set_postfix_str(text, refresh=True)

    def add_total(self, items: int) -> None:
        """``items`` more to do: an executor's bar grows as tasks are submitted (shown at
        the next redraw, which tqdm paces)."""
        if items:
            self._bar.total = (self._bar.total or 0) + items

    def update(self, items: int) -> None:
        """Count ``items`` more finished items."""
        if items:
            self._bar.update(items)

    def close(self) -> None:
        """Draw the final state and release the line (once; later calls do nothing)."""
        if self._bar is None:
            return
        bar, self._bar = self._bar, None
        bar.close()
        _log_above_bars.bar_closed()


_CONSOLE_STREAMS = ("<stderr>", "<stdout>")


def _console_stream(handler: logging.Handler) -> Any:
    """The terminal stream ``handler`` writes to (stderr or stdout), or None."""
    if type(handler) is not logging.StreamHandler and handler is not logging.lastResort:
        return None
    stream = getattr(handler, "stream", None)
    return stream if getattr(stream, "name", None) in _CONSOLE_STREAMS else None


class _LogAboveBars(logging.Handler):
    """While any bar is open: the handler of the ``p2ppool`` logger, which then does not
    propagate; it does what propagation would have done, except that console handlers'
    lines are written with ``tqdm.write`` (above the bars) rather than into the bar's line.

    Handlers of ancestor loggers that are not console streams (files, sockets) get the
    record as usual; with no handler at all, ``logging.lastResort``'s level and format apply.
    """

    def __init__(self) -> None:
        super().__init__()
        self._open_bars = 0
        self._propagated = True
        self._state_lock = threading.Lock()

    def bar_opened(self) -> None:
        with self._state_lock:
            self._open_bars += 1
            if self._open_bars == 1:
                logger = logging.getLogger("p2ppool")
                self._propagated = logger.propagate
                logger.addHandler(self)
                logger.propagate = False

    def bar_closed(self) -> None:
        with self._state_lock:
            self._open_bars -= 1
            if self._open_bars == 0:
                logger = logging.getLogger("p2ppool")
                logger.removeHandler(self)
                logger.propagate = self._propagated

    def emit(self, record: logging.LogRecord) -> None:
        if not self._propagated:
            return  # the user had stopped p2ppool's records from propagating
        handlers: List[logging.Handler] = []
        logger: Any = logging.getLogger("p2ppool").parent
        while logger is not None:
            handlers.extend(logger.handlers)
            logger = logger.parent if logger.propagate else None
        if not handlers and logging.lastResort is not None:
            handlers = [logging.lastResort]
        for handler in handlers:
            if record.levelno < handler.level:
                continue
            stream = _console_stream(handler)
            if stream is not None:
                if not handler.filter(record):
                    continue
                try:
                    from tqdm import tqdm

                    tqdm.write(handler.format(record), file=stream)
                except Exception:
                    handler.handleError(record)
            else:
                handler.handle(record)


_log_above_bars = _LogAboveBars()
