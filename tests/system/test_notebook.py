"""A real notebook (nbclient + ipykernel) on a LocalCluster (issue 12, item 4): a widget
progress bar, a cell-defined function computed on the workers, and a kernel interrupt
mid-map that stops the map at once and leaves the Pool usable for the next cell."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

from jupyter_core.utils import run_sync  # noqa: E402

pytestmark = pytest.mark.system

CELLS = [
    "import os, time\n"
    "from pathlib import Path\n"
    "from p2ppool import LocalCluster, Pool\n"
    "cluster = LocalCluster(workers=2, processes_per_worker=1)\n"
    "options = dict(cluster.options, fallback=None)",

    "def cube(x):  # defined in a cell: travels by value\n"
    "    return x ** 3, os.environ.get('P2PPOOL_WORKER')",

    "with Pool(2, progress=True, **options) as pool:\n"
    "    results = pool.map(cube, range(20))\n"
    "print(results)",

    "pool = Pool(2, **options)\n"
    "pool.map(abs, [-1, -2])",

    "def started_then_wait(i):\n"
    "    Path({directory!r}, f'started-{{i}}').write_text('')\n"
    "    time.sleep(30)\n"
    "    return i\n"
    "pool.map(started_then_wait, range(8), chunksize=1)",

    "print(pool.map(abs, range(-5, 0)))",

    "pool.terminate()\n"
    "cluster.stop()",
]


def outputs_of(cell: Any) -> List[Any]:
    return list(cell.get("outputs", []))


def text_of(cell: Any) -> str:
    return "".join(o.get("text", "") for o in outputs_of(cell) if o["output_type"] == "stream")


def test_a_notebook_on_a_local_cluster(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src.format(directory=str(tmp_path)))
                for src in CELLS]
    client = nbclient.NotebookClient(nb, timeout=90, kernel_name="python3",
                                     allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        try:
            for index in range(4):
                client.execute_cell(nb.cells[index], index)
            # The interrupt: while the map's first tasks run (they said so), interrupt the
            # kernel as Jupyter's stop button does.
            done = threading.Event()

            def run() -> None:
                client.execute_cell(nb.cells[4], 4)
                done.set()

            runner = threading.Thread(target=run, daemon=True)
            runner.start()
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob("started-*")) and time.monotonic() < deadline:
                time.sleep(0.02)
            interrupted_at = time.monotonic()
            run_sync(client.km.interrupt_kernel)()  # what the stop button does
            assert done.wait(10), "the interrupted cell did not finish"
            stopped_after = time.monotonic() - interrupted_at
            for index in (5, 6):
                client.execute_cell(nb.cells[index], index)
        finally:
            if not nb.cells[6].get("outputs") and client.kc is not None:
                client.kc.execute("cluster.stop()")  # whatever failed, stop the cluster
    for index in (0, 1, 2, 3, 5, 6):
        errors = [o for o in outputs_of(nb.cells[index]) if o["output_type"] == "error"]
        assert not errors, (index, errors)
    # A widget bar, and the cell's function computed on the workers.
    widgets = [o for o in outputs_of(nb.cells[2]) if o["output_type"] == "display_data"
               and "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, outputs_of(nb.cells[2])
    results = eval(text_of(nb.cells[2]).strip())  # noqa: S307 - our own printed list
    assert [r[0] for r in results] == [x ** 3 for x in range(20)]
    assert {r[1] for r in results} <= {"w1", "w2"}
    # The interrupt: KeyboardInterrupt at once; the next cell's map works.
    [error] = [o for o in outputs_of(nb.cells[4]) if o["output_type"] == "error"]
    assert error["ename"] == "KeyboardInterrupt"
    assert stopped_after < 2, stopped_after
    assert text_of(nb.cells[5]).strip() == "[5, 4, 3, 2, 1]"
    assert len(list(tmp_path.glob("started-*"))) <= 2
