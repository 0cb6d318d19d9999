"""The package's layering, read from its source: pure modules import no I/O (also through
relative imports of impure siblings), planes import only the planes below them, and the
import graph has no circle.  See ``docs/ARCHITECTURE.md`` for the map these rules encode."""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import Dict, FrozenSet, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "p2ppool"

#: modules with no I/O at all (pure logic, unit-tested without sockets or threads)
PURE = [
    "p2ppool.payload", "p2ppool.errors", "p2ppool.defaults", "p2ppool._version",
    "p2ppool.pool.chunking", "p2ppool.pool.scheduler",
    "p2ppool.board.protocol", "p2ppool.board.state", "p2ppool.board.commands",
    "p2ppool.worker.peer", "p2ppool.worker.settings", "p2ppool.cluster.recruit",
    "p2ppool.transfer.session_protocol", "p2ppool.transfer.framing",
    "p2ppool.shipping.bundle", "p2ppool.shipping.requirements",
    "p2ppool.board.auth",
]
#: package ``__init__`` modules a pure module's import runs first: they must be pure too
PURE_PACKAGES = ["p2ppool", "p2ppool.pool", "p2ppool.board", "p2ppool.worker", "p2ppool.cluster",
                 "p2ppool.transfer", "p2ppool.shipping"]
FORBIDDEN = {"socket", "threading", "subprocess", "multiprocessing", "paramiko", "twisted",
             "wormhole", "time", "select", "asyncio", "_thread", "signal", "selectors"}
#: exception classes a pure module may take from an I/O package (they are only types)
ALLOWED = {("multiprocessing", "TimeoutError"), ("multiprocessing.pool", "MaybeEncodingError")}

#: plane -> the planes its modules may import.  "base" is the top-level errors, defaults,
#: payload, config and _version; "entry" (the package's __init__, __main__ and cli) may
#: import anything.
PLANES: Dict[str, Set[str]] = {
    "base": {"base", "shipping"},  # config normalises requirements with shipping.requirements
    "board": {"base", "board"},
    "transfer": {"base", "transfer"},
    "shipping": {"base", "shipping"},
    "execution": {"base", "execution"},
    "pool": {"base", "pool", "execution", "cluster"},
    "cluster": {"base", "cluster", "board", "transfer", "shipping", "pool"},
    "worker": {"base", "worker", "board", "transfer", "shipping", "execution"},
    "local": {"base", "local", "board", "transfer", "pool"},
}
BASE = {"errors", "defaults", "payload", "config", "_version"}
ENTRY = {"p2ppool", "p2ppool.__main__", "p2ppool.cli"}
#: the one pool module that may import the cluster plane: the Pool facade wires its link
POOL_TO_CLUSTER = {"p2ppool.pool.api"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _nodes(tree: ast.AST, on_import: bool) -> List[ast.AST]:
    """Every node; with ``on_import``, only those importing the module runs (not the
    bodies of functions, such as a package's lazy ``__getattr__``, nor TYPE_CHECKING
    blocks)."""
    if not on_import:
        return list(ast.walk(tree))
    found: List[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        todo += [child for child in ast.iter_child_nodes(node)
                 if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                 and not _is_type_checking_block(child)]
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, root: Path, on_import: bool = False) -> List[Tuple[str, str | None]]:
    """(module, name) for every import in the file, relative ones resolved to absolute
    names (``from .state import X`` in p2ppool/board/server.py is p2ppool.board.state);
    name None for ``import module``.  TYPE_CHECKING and function-level imports count
    (with ``on_import``, only those that importing the module runs)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: List[Tuple[str, str | None]] = []
    for node in _nodes(ast.parse(path.read_text(), str(path)), on_import):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(module, alias.name) for alias in node.names]
    return found


@functools.cache
def internal_graph(root: Path, on_import: FrozenSet[str] = frozenset()) -> Dict[str, Set[str]]:
    """module -> the package's modules it imports (``from . import x`` names module x);
    for the modules in ``on_import``, only the imports that importing them runs."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in paths.items():
        deps: Set[str] = set()
        for module, imported in imports_of(path, root, name in on_import):
            if module.split(".")[0] != root.name:
                continue
            candidate = f"{module}.{imported}" if imported else module
            deps.add(candidate if candidate in paths else module)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def io_violations(path: Path, root: Path, on_import: bool = False) -> List[str]:
    """Forbidden I/O imports of one file (absolute standard-library imports)."""
    bad = []
    for module, name in imports_of(path, root, on_import):
        if module.split(".")[0] not in FORBIDDEN:
            continue
        if (module, name) in ALLOWED:
            continue
        if module == "multiprocessing" and name is None and path.stem == "errors":
            continue  # errors.py aliases multiprocessing.TimeoutError (a type, not I/O)
        bad.append(f"{module}" + (f".{name}" if name else ""))
    return bad


def impure_imports(name: str, root: Path, pure: Set[str]) -> List[str]:
    """The package modules ``name`` imports (directly or relatively) that are not pure."""
    return sorted(d for d in internal_graph(root, frozenset(PURE_PACKAGES))[name] if d not in pure)


def plane_of(name: str) -> str:
    parts = name.split(".")
    if name in ENTRY or (len(parts) == 2 and parts[1] not in PLANES and parts[1] not in BASE):
        return "entry"
    if len(parts) == 2:
        return "base" if parts[1] in BASE else parts[1]
    return parts[1]


def plane_violations(graph: Dict[str, Set[str]]) -> List[str]:
    bad = []
    for name, deps in sorted(graph.items()):
        plane = plane_of(name)
        if plane == "entry":
            continue
        for dep in sorted(deps):
            target = plane_of(dep)
            if target == "entry" and dep.count(".") == 1 and dep != "p2ppool.cli":
                target = "base"
            if target == "entry" and dep == "p2ppool":
                continue  # ``from .. import defaults`` resolved to the package itself
            if target not in PLANES.get(plane, set()):
                bad.append(f"{name} -> {dep}")
            elif plane == "pool" and target == "cluster" and name not in POOL_TO_CLUSTER:
                bad.append(f"{name} -> {dep}")
    return bad


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def _path(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else PACKAGE / relative.with_suffix(".py")


def test_every_listed_module_exists() -> None:
    """A renamed module must not silently drop out of the checks below."""
    graph = internal_graph(PACKAGE)
    assert [n for n in PURE + PURE_PACKAGES if n not in graph] == []


@pytest.mark.parametrize("name", PURE + PURE_PACKAGES)
def test_pure_module_imports_no_io(name: str) -> None:
    assert io_violations(_path(name), PACKAGE, on_import=name in PURE_PACKAGES) == []
    assert impure_imports(name, PACKAGE, set(PURE) | set(PURE_PACKAGES)) == []


def test_planes_import_only_the_planes_below_them() -> None:
    assert plane_violations(internal_graph(PACKAGE)) == []


#: circles still being taken apart (issue 14): none are left, and none may come back
KNOWN_CYCLES: List[List[str]] = []


def test_the_import_graph_has_no_circle() -> None:
    assert cycles(internal_graph(PACKAGE)) == KNOWN_CYCLES


# --- the checks themselves catch what they should ---------------------------------------


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    root = tmp_path / "p2ppool"
    root.mkdir()
    bad = root / "bad.py"
    bad.write_text("import time\nfrom socket import socket\nimport threading as t\n")
    assert io_violations(bad, root) == ["time", "socket.socket", "threading"]


def _write_package(root: Path, files: Dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_follows_relative_imports_of_impure_siblings(tmp_path: Path) -> None:
    root = tmp_path / "p2ppool"
    _write_package(root, {
        "__init__.py": "",
        "board/__init__.py": "",
        "board/state.py": "from .client import connect\nfrom ..errors import BoardError\n",
        "board/client.py": "import socket\n",
        "errors.py": "",
    })
    pure = {"p2ppool.board.state", "p2ppool.errors", "p2ppool", "p2ppool.board"}
    assert io_violations(root / "board" / "state.py", root) == []
    assert impure_imports("p2ppool.board.state", root, pure) == ["p2ppool.board.client"]


def test_the_checks_catch_a_plane_violation_and_a_circle(tmp_path: Path) -> None:
    root = tmp_path / "p2ppool"
    _write_package(root, {
        "__init__.py": "",
        "board/__init__.py": "",
        "board/server.py": "from ..worker import loop\nfrom .handlers import Session\n",
        "board/handlers.py": "from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n    from .server import BoardServer\n",
        "worker/__init__.py": "",
        "worker/loop.py": "from ..board.server import BoardServer\n",
        "pool/__init__.py": "",
        "pool/manager.py": "from ..cluster.link import ClusterLink\n",
        "cluster/__init__.py": "",
        "cluster/link.py": "",
    })
    graph = internal_graph(root)
    assert plane_violations(graph) == ["p2ppool.board.server -> p2ppool.worker.loop",
                                       "p2ppool.pool.manager -> p2ppool.cluster.link"]
    # one strongly connected component: server <-> handlers (TYPE_CHECKING) and server <-> loop
    assert cycles(graph) == [["p2ppool.board.handlers", "p2ppool.board.server",
                              "p2ppool.worker.loop"]]
