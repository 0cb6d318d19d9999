"""Issue 15.4: p2ppool's log lines do not tear the progress bar's line.

The fallback notice is logged while the bar is drawn; it must appear on a line of its own
(written above the bar through tqdm), exactly once, whether the script configured logging
or not (Python's last-resort handler).  A fresh interpreter per case: logging is global.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent("""
    import logging, sys
    from p2ppool import LocalCluster
    if sys.argv[1] == "basicConfig":
        logging.basicConfig(format="LOG %(levelname)s %(message)s")
    with LocalCluster(workers=0) as cluster:
        with cluster.pool(1, fallback=0.3, progress=True) as pool:
            print(pool.map(abs, range(-3, 3)))
""")

_NOTICE = b"no peer of cluster alice/local answered within 0.3 s: running on local processes"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("logging_setup", ["none", "basicConfig"])
def test_the_fallback_notice_gets_its_own_line_above_the_bar(
    tmp_path: object, logging_setup: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, logging_setup], capture_output=True, timeout=80,
        cwd=str(tmp_path),
        env={**{k: v for k, v in os.environ.items()
                if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"},
             "PYTHONPATH": _ROOT})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.strip() == b"[3, 2, 1, 0, 1, 2]"
    # What a terminal shows: each \r returns to the line's start, each \n ends it.
    pieces = [p for p in re.split(rb"[\r\n]", result.stderr) if _NOTICE in p]
    prefix = b"LOG WARNING " if logging_setup == "basicConfig" else b""
    assert len(pieces) == 1, result.stderr
    assert pieces[0].startswith(prefix + _NOTICE), \
        f"the notice shares its line with the bar: {pieces[0]!r}"
    # The bar was drawn (and finished) around it.
    assert b"6/6" in result.stderr
