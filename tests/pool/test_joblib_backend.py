"""joblib on p2ppool (issue 12, item 2): the same Parallel code gives the same results and
errors with joblib's own default backend (loky), with p2ppool locally, and with p2ppool on a
real LocalCluster; scikit-learn's n_jobs works on it."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator

import pytest

joblib = pytest.importorskip("joblib")

import p2ppool  # noqa: E402
from p2ppool.local.cluster import LocalCluster  # noqa: E402
from p2ppool.payload import WORKER_NAME_ENV  # noqa: E402

p2ppool.register_joblib()


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise KeyError(f"no {x}")
    return x


def inner_sum(n: int) -> int:
    """A Parallel inside a task (nested): must not deadlock."""
    return sum(joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(n)))


def where(_: Any) -> Any:
    return os.environ.get(WORKER_NAME_ENV)


@pytest.fixture(scope="module", autouse=True)
def no_loky_workers_left() -> Iterator[None]:
    """loky keeps its worker processes for reuse; this module's run must not leave them."""
    yield
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, processes_per_worker=1) as c:
        yield c


@pytest.fixture(params=["loky", "p2ppool-local", "p2ppool-cluster"])
def config(request: pytest.FixtureRequest) -> Dict[str, Any]:
    """``parallel_config`` arguments for each backend under test."""
    if request.param == "loky":
        return {"backend": "loky", "n_jobs": 2}
    if request.param == "p2ppool-local":
        return {"backend": "p2ppool", "n_jobs": 2}
    cluster = request.getfixturevalue("cluster")
    return {"backend": "p2ppool", "n_jobs": 2, **cluster.options, "fallback": None}


def test_results_in_order(config: Dict[str, Any]) -> None:
    with joblib.parallel_config(**config):
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(30)) == [
            i * i for i in range(30)]


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generators(config: Dict[str, Any], return_as: str) -> None:
    with joblib.parallel_config(**config):
        out = joblib.Parallel(return_as=return_as)(joblib.delayed(square)(i) for i in range(12))
        assert not isinstance(out, list)
        values = list(out)
    expected = [i * i for i in range(12)]
    assert (values if return_as == "generator" else sorted(values)) == expected


def test_an_exception_keeps_its_type(config: Dict[str, Any]) -> None:
    with joblib.parallel_config(**config):
        with pytest.raises(KeyError, match="no 3"):
            joblib.Parallel()(joblib.delayed(fail_on_three)(i) for i in range(8))
        # and the backend still works for the next call
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_nested_parallel_does_not_deadlock(config: Dict[str, Any]) -> None:
    with joblib.parallel_config(**config):
        out = joblib.Parallel()(joblib.delayed(inner_sum)(n) for n in (3, 4, 5))
    assert out == [5, 14, 30]


def test_auto_batching_of_many_tiny_calls(config: Dict[str, Any]) -> None:
    with joblib.parallel_config(**config):
        out = joblib.Parallel(batch_size="auto")(joblib.delayed(abs)(-i) for i in range(3000))
    assert out == list(range(3000))


def test_work_runs_on_the_cluster_workers(cluster: LocalCluster) -> None:
    with joblib.parallel_config(backend="p2ppool", n_jobs=2, **cluster.options,
                                fallback=None):
        seen = set(joblib.Parallel(batch_size=1)(joblib.delayed(where)(i) for i in range(20)))
    assert seen <= {"w1", "w2"} and None not in seen


def test_scikit_learn_gives_the_serial_results(config: Dict[str, Any]) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score

    X, y = datasets.load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500)
    serial = cross_val_score(model, X, y, cv=4, n_jobs=1)
    grid = {"C": [0.1, 1.0, 10.0]}
    serial_search = GridSearchCV(model, grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_config(**config):
        parallel = cross_val_score(model, X, y, cv=4, n_jobs=2)
        search = GridSearchCV(model, grid, cv=3, n_jobs=2).fit(X, y)
    assert list(parallel) == list(serial)
    assert search.best_params_ == serial_search.best_params_
    assert list(search.cv_results_["mean_test_score"]) == list(
        serial_search.cv_results_["mean_test_score"])


def test_a_misspelt_option_is_reported() -> None:
    with joblib.parallel_config(backend="p2ppool", n_jobs=2, clustr="alice/x"):
        with pytest.warns(UserWarning, match="ignores 'clustr'"):
            assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(2)) == [0, 1]


def test_register_joblib_says_what_to_install_without_joblib() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['joblib'] = None\n"
            "import p2ppool\n"
            "try:\n    p2ppool.register_joblib()\n"
            "except ModuleNotFoundError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "pip install 'p2ppool[joblib]'" in out.stdout, out
