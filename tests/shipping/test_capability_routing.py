"""A worker that lacks a package declines the job; the work runs where it can (issue 11, 2).

Two real environments: this interpreter (which lacks the test package) and a virtual
environment that has it, installed from a wheel built here with ``--no-index``.  The client
runs in the environment that has it; LocalCluster workers run in either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import site
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict

import pytest

pytestmark = pytest.mark.system

PACKAGE = "p2ptest_capmod"


def build_wheel(directory: Path) -> Path:
    """A one-module wheel, written by hand (no build backend, no network)."""
    files = {
        f"{PACKAGE}.py": b"VALUE = 7\n",
        f"{PACKAGE}-1.0.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n".encode(),
        f"{PACKAGE}-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: p2ppool-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{PACKAGE}-1.0.dist-info/RECORD,,")
    files[f"{PACKAGE}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{PACKAGE}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def capable_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The python of a virtual environment with everything this one has, plus PACKAGE."""
    root = tmp_path_factory.mktemp("capable-env")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = str(venv / "bin" / "python")
    # Everything this interpreter has (it may itself be a virtual environment, as in CI,
    # where --system-site-packages would reach only the base interpreter's packages).
    inner_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
    Path(inner_site, "_p2ppool_tests_outer.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
                    "--no-index", "--no-deps", str(build_wheel(root))], check=True, timeout=120)
    probe = subprocess.run([python, "-c", f"import {PACKAGE}, p2ppool"], timeout=60)
    assert probe.returncode == 0
    return python


SCRIPT = '''\
import functools, json, logging, os, signal, sys, time
import {package}
from p2ppool import LocalCluster, Pool

messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("p2ppool").addHandler(handler)
logging.getLogger("p2ppool").setLevel(logging.INFO)


def scaled(x):
    return {package}.VALUE * x, os.environ.get("P2PPOOL_WORKER")


def whoami(_):
    return os.environ.get("P2PPOOL_WORKER")


out = {{}}
with LocalCluster(workers=0) as cluster:
    cluster.add_worker(python={base!r})  # w1: lacks the package
    cluster.add_worker()  # w2: this environment, which has it
    options = dict(cluster.options, fallback=None, max_attempts=1)
    with Pool(2, **options) as pool:
        seen = set()
        for _ in range(50):  # until both workers take chunks of this pool
            # a new function object each time: no earlier map's timing, so its chunks are
            # never batched onto one worker (a map that small would be)
            seen.update(pool.map(functools.partial(whoami), range(4), chunksize=1))
            if seen == {{"w1", "w2"}}:
                break
        out["both_joined"] = sorted(seen)
        out["mixed"] = pool.map(scaled, range(8), chunksize=1)
        out["again"] = pool.map(scaled, range(4), chunksize=1)
    out["declined_log"] = [m for m in messages if "cannot load" in m]
    cluster.kill_worker(1, signal.SIGTERM)
    cluster.wait_for_bye("w2")
    started = time.monotonic()
    with Pool(2, **options) as pool:
        try:
            pool.map(scaled, range(4))
        except ImportError as exc:
            out["none"] = [type(exc).__name__, str(exc), exc.name]
    out["none_took"] = time.monotonic() - started
    with Pool(2, **dict(options, fallback=0.2)) as pool:
        out["fallback"] = pool.map(scaled, range(3))
json.dump(out, sys.stdout)
'''


def test_work_goes_to_the_worker_that_can_load_it(tmp_path: Path, capable_python: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(package=PACKAGE, base=sys.executable))
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")}
    env["P2PPOOL_CONFIG"] = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.run([capable_python, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, timeout=150)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out: Dict[str, Any] = json.loads(proc.stdout)

    assert out["both_joined"] == ["w1", "w2"]
    # Every chunk computed on w2, none lost although each chunk had a single attempt.
    assert out["mixed"] == [[7 * x, "w2"] for x in range(8)]
    assert out["again"] == [[7 * x, "w2"] for x in range(4)]
    # (a worker is named by its board id, w1~<its key>)
    assert any(re.search(r"\bw1~\S+:? (it )?cannot load (this|the) job's function", m)
               and PACKAGE in m for m in out["declined_log"]), out["declined_log"]
    # Only a worker without it: the error names the module and the worker, quickly.
    kind, message, name = out["none"]
    assert kind == "ModuleNotFoundError" and name == PACKAGE
    assert re.search(rf"no worker of alice/local can import '{PACKAGE}' \(tried: w1~\S+ \(",
                     message), message
    assert out["none_took"] < 20
    # With fallback, the client's own processes (which have it) compute it.
    assert out["fallback"] == [[7 * x, None] for x in range(3)]


def test_a_missing_module_in_the_arguments_or_initializer_is_a_capability_miss() -> None:
    from p2ppool import payload

    assert payload.load_failure(ModuleNotFoundError("x", name="numpy"), "arguments") is not None
    info = json.loads(payload.load_failure(ImportError("cannot import name 'f'"), "initializer")
                      or b"{}")
    assert info == {"phase": "initializer", "module": None, "type": "ImportError",
                    "error": "ImportError: cannot import name 'f'"}
    assert payload.load_failure(ValueError("user's own"), "arguments") is None
