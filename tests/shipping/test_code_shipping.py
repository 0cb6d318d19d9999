"""The caller's own code reaches workers that cannot import it (issue 11, items 1 and 4).

A script in directory A with its own module (``helpers.py``) and local package (``mypkg/``),
started from directory B, maps over a LocalCluster whose workers run in their own empty
directories: what a remote machine sees.  Real board, wormhole servers and worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest

from p2ppool import Pool
from p2ppool.local.cluster import LocalCluster
from p2ppool.payload import WORKER_NAME_ENV

pytestmark = pytest.mark.system

HELPERS = '''\
import os
from mypkg import double, Point

MODEL = None


def init(value):
    global MODEL
    MODEL = value


def work(x):
    return [MODEL, double(x), os.environ.get("P2PPOOL_WORKER"), __file__]


def move(p):
    return Point(p.x + 1, p.y)


def boom(x):
    raise ValueError(f"bad input {x}")  # the line a traceback must show


def lazy(x):
    from mypkg import util  # an import inside the function body
    return util.twice(x)
'''

SCRIPT = '''\
import json, os, sys, traceback
from p2ppool import LocalCluster, Pool
import helpers
import mypkg.util
from mypkg import Point

out = {}
norm2 = Point.norm2
with LocalCluster(workers=2) as cluster:
    options = dict(cluster.options, fallback=None)
    with Pool(2, initializer=helpers.init, initargs=(42,), **options) as pool:
        out["work"] = pool.map(helpers.work, range(6))
        moved = pool.apply(helpers.move, (Point(1, 2),))
        out["moved"] = [moved.x, moved.y, type(moved) is Point, moved.norm2()]
        out["methods_untouched"] = Point.norm2 is norm2
        out["lazy"] = pool.map(helpers.lazy, [1, 2])
        try:
            pool.apply(helpers.boom, (7,))
        except ValueError as exc:
            out["boom"] = "".join(traceback.format_exception(exc))
        # Edited between two maps: the next map uses the new source.
        with open(mypkg.util.__file__, "w") as f:
            f.write("def twice(v):\\n    return 1000 * v\\n")
        os.utime(mypkg.util.__file__, ns=(1, 1))
        out["edited"] = pool.map(helpers.lazy, [1, 2])
    with Pool(2, ship_modules=["-helpers"], **options) as pool:
        try:
            pool.map(helpers.work, [1], chunksize=1)
        except Exception as exc:
            out["unshipped"] = [type(exc).__name__, str(exc)]
json.dump(out, sys.stdout)
'''


def write_project(root: Path) -> Path:
    a = root / "A"
    (a / "mypkg").mkdir(parents=True)
    (a / "helpers.py").write_text(HELPERS)
    (a / "mypkg" / "__init__.py").write_text("from .sub import double, Point\n")
    (a / "mypkg" / "sub.py").write_text(textwrap.dedent('''\
        from __future__ import annotations
        import dataclasses
        from . import util


        @dataclasses.dataclass
        class Point:
            x: int
            y: int

            def norm2(self) -> int:
                return self.x * self.x + self.y * self.y


        def double(v):
            return util.twice(v)
        '''))
    (a / "mypkg" / "util.py").write_text("def twice(v):\n    return 2 * v\n")
    (a / "job.py").write_text(SCRIPT)
    (root / "B").mkdir()
    return a


def test_a_script_with_its_own_module_and_package_maps_on_workers(tmp_path: Path) -> None:
    a = write_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")}
    env["P2PPOOL_CONFIG"] = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    proc = subprocess.run([sys.executable, str(a / "job.py")], cwd=tmp_path / "B", env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out: Dict[str, Any] = json.loads(proc.stdout)

    # Computed on the workers, with the initializer's global seen by the task function,
    # from the shipped copy of helpers.py (not the caller's file).
    assert [row[:2] for row in out["work"]] == [[42, 2 * x] for x in range(6)]
    assert {row[2] for row in out["work"]} <= {"w1", "w2"} and None not in {
        row[2] for row in out["work"]}
    caller_copy = str(a / "helpers.py")
    assert all(row[3].endswith("helpers.py") and row[3] != caller_copy
               and ("p2ppool-code-" in row[3] or "p2ppool-jobs-" in row[3])
               for row in out["work"]), out["work"]
    # A class of the local package round-trips as the caller's own class, untouched.
    assert out["moved"] == [2, 2, True, 8]
    assert out["methods_untouched"] is True
    assert out["lazy"] == [2, 4]
    # The remote traceback names the worker, the module's file and its source line.
    boom = out["boom"]
    assert "on worker w" in boom
    assert "helpers.py\", line 21, in boom" in boom
    assert 'raise ValueError(f"bad input {x}")' in boom
    assert out["edited"] == [1000, 2000]
    # Kept out with ship_modules: the workers cannot import it (they do not see A).
    kind, message = out["unshipped"]
    assert kind == "ModuleNotFoundError" and "helpers" in message


def where_am_i(_: Any = None) -> Dict[str, Any]:
    return {"cwd": os.getcwd(), "path": sys.path, "file": __file__,
            "worker": os.environ.get(WORKER_NAME_ENV)}


@pytest.mark.parametrize("isolated", [True, False])
def test_localcluster_workers_do_not_see_the_callers_files_unless_asked(
        isolated: bool) -> None:
    caller_dir = os.getcwd()
    with LocalCluster(workers=1, isolated=isolated) as cluster:
        with Pool(1, fallback=None, **cluster.options) as pool:
            seen = pool.apply(where_am_i)
    assert seen["worker"] == "w1"
    if isolated:
        assert seen["cwd"].startswith(cluster.directory) and seen["cwd"] != caller_dir
        assert caller_dir not in seen["path"] and "" not in seen["path"]
        # This very module reached the worker as shipped source.
        assert "p2ppool-code-" in seen["file"]
        assert seen["file"].endswith(os.path.join("tests", "shipping", "test_code_shipping.py"))
    else:
        assert seen["cwd"] == caller_dir
