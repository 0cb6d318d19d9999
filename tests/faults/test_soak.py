"""The soak run, shortened for CI: ``benchmarks/soak.py --minutes 0.5`` (4 workers, 3
concurrent pools, random SIGKILLs every ~3 s): nothing lost, duplicated or wrong, no pool
hung, no file descriptor left behind.  The full run: ``python benchmarks/soak.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


def test_a_short_soak_loses_and_duplicates_nothing() -> None:
    # Its own TMPDIR: a soak that overruns the timeout is SIGKILLed, and cannot remove its
    # temporary directories then.
    with tempfile.TemporaryDirectory(prefix="tmp-soak-") as tmp:
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "soak.py"), "--minutes", "0.5",
             "--kill-every", "3", "--items", "100"],
            capture_output=True, text=True, timeout=170, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT, "TMPDIR": tmp},
        )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no report; stderr:\n{done.stderr[-3000:]}"
    report = json.loads(lines[-1])
    print(f"\nsoak (30 s): {json.dumps(report)}")
    assert done.returncode == 0, report
    assert (report["duplicates"], report["lost"], report["wrong"]) == (0, 0, 0)
    assert report["hung_pools"] == []
    assert report["kills"] >= 3 and report["tasks_completed"] >= 600, report
    assert report["fds_after"] <= report["fds_before"] + 2, report
