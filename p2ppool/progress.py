"""Progress bars for map/imap/starmap: a tqdm bar on stderr, updated once per finished chunk.

Off by default, so that swapping ``multiprocessing.Pool`` for ``p2ppool.Pool`` changes no
output.  Turn it on with ``Pool(progress=True)`` or ``P2PPOOL_PROGRESS=1``.  The Pool's
manager thread is the only caller, so the bar needs no lock of its own.
"""

from __future__ import annotations

import sys
from typing import IO, Any

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
        from tqdm import tqdm  # imported only when a bar is wanted

        self._bar: Any = tqdm(
            total=total,
            file=file if file is not None else sys.stderr,
            desc=desc,
            unit="item",
            dynamic_ncols=True,
            leave=True,
        )
        self._workers = ""  # the postfix last shown by set_workers

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

    def update(self, items: int) -> None:
        """Count ``items`` more finished items."""
        if items:
            self._bar.update(items)

    def close(self) -> None:
        """Draw the final state and release the line."""
        self._bar.close()
