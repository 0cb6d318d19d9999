"""Per-job requirements on consenting workers (issue 11, item 3): a worker started with
``--allow-install`` installs a job's ``requirements=`` (a wheel built here, installed with
``--no-index``) into a cached directory and runs the job's tasks with it; a worker without
``--allow-install`` does not offer.  Real board, wormhole servers, workers and pip."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest

from p2ppool import P2PPoolError, Pool
from p2ppool.local.cluster import LocalCluster
from p2ppool.payload import WORKER_NAME_ENV
from tests.shipping.test_capability_routing import build_wheel

pytestmark = pytest.mark.system

PACKAGE = "p2ptest_capmod"  # the wheel of test_capability_routing: VALUE = 7


def uses_package(x: int) -> Tuple[int, Any]:
    import p2ptest_capmod  # not installed here: only the job's environment has it

    return p2ptest_capmod.VALUE * x, os.environ.get(WORKER_NAME_ENV)


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local 'index' the workers' pip reads (inherited through their environment)."""
    directory = tmp_path / "wheels"
    directory.mkdir()
    build_wheel(directory)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(directory))
    yield directory


def test_requirements_install_on_the_consenting_worker_and_are_reused(
        wheels: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with LocalCluster(workers=0) as cluster:
        cluster.add_worker(extra_args=["--allow-install", "--install-cache", str(cache)])
        cluster.add_worker()  # w2: may not install, so it does not offer for the job
        options = dict(cluster.options, fallback=None, max_attempts=1)
        needs = [f"{PACKAGE}==1.0"]
        times = []
        for _ in range(2):
            started = time.monotonic()
            with Pool(2, requirements=needs, **options) as pool:
                results = pool.map(uses_package, range(6), chunksize=1)
            times.append(time.monotonic() - started)
            assert results == [(7 * x, "w1") for x in range(6)]
        installed = [e for e in os.listdir(cache) if not e.startswith(".")]
        assert len(installed) == 1, installed  # the second job reused the first one's
        assert (cache / installed[0] / "env" / "pyvenv.cfg").is_file()  # a virtual env
        log = Path(cluster.workers[0].log_path).read_text()
        assert log.count(f"installing {PACKAGE}==1.0") == 1
        assert "installed" in log
        print(f"first job (install included) {times[0]:.2f} s, second {times[1]:.2f} s")

        # Without --allow-install w2 never offered; alone, it leaves the job waiting.
        cluster.kill_worker(0, signal.SIGTERM)
        cluster.wait_for_bye("w1")
        with Pool(1, requirements=needs, **options) as pool:
            pending = pool.map_async(uses_package, [1])
            with pytest.raises(multiprocessing.TimeoutError):
                pending.get(timeout=3)
            log2 = Path(cluster.workers[1].log_path).read_text()
            assert (f"requires {PACKAGE}==1.0, which this worker lacks (see --allow-install)"
                    in log2)


def test_a_failed_install_reaches_the_client_with_the_installers_words(
        wheels: Path, tmp_path: Path) -> None:
    with LocalCluster(workers=0) as cluster:
        cluster.add_worker(extra_args=["--allow-install", "--install-cache",
                                       str(tmp_path / "cache")])
        options = dict(cluster.options, fallback=None)
        started = time.monotonic()
        with Pool(1, requirements=["p2ptest-no-such-package==9"], **options) as pool:
            with pytest.raises(P2PPoolError) as caught:
                pool.map(uses_package, [1])
        assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "no worker of alice/local can run this job" in message
    assert re.search(r"\bw1~\S+ refused it", message), message
    assert "cannot install p2ptest-no-such-package==9" in message
    assert "No matching distribution" in message or "not find a version" in message, message
