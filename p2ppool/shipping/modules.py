"""Which of the client's modules must travel to workers, and their bundle (client side).

A worker has the standard library and what is installed in its environment; it does not have
the user's own files: ``helpers.py`` beside the script, a local package ``mypkg/``, the test
suite's modules.  :class:`CodeShipper` looks at the modules the client has imported and
picks those that are *not installed*:

1. ``__main__`` stays out: cloudpickle sends its functions by value (its top-level code must
   not run on a worker);
2. p2ppool itself, built-in and frozen modules, and the standard library stay out;
3. a module whose file lies under one of the interpreter's install roots (``sysconfig``
   paths of this and of the base interpreter, ``site.getsitepackages()``, the user site) is
   installed and stays out;
4. every other module with a ``.py`` source file is shipped: the script's directory, the
   current directory, ``PYTHONPATH``, editable installs (PEP 660 points into the user's tree).

``ship_modules`` corrects the choice by name: ``"name"`` ships an installed module too
(with its submodules), ``"-name"`` keeps a module (and its submodules) out.

The bundle holds the source *on disk* when it is made, as a spawned ``multiprocessing``
child would import it; :meth:`CodeShipper.current` is called before every map and notices a
changed file (or a newly imported module) by ``stat``, without re-reading unchanged files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import site
import sys
import sysconfig
import threading
from typing import Dict, Iterable, List, Sequence, Tuple

from .. import defaults
from ..errors import ProtocolError
from . import bundle as code_bundle
from .bundle import ModuleSource

__all__ = ["Bundle", "CodeShipper", "parse_ship_modules", "shared_shipper"]

log = logging.getLogger("p2ppool.pool")

_NEVER = frozenset({"__main__", "__mp_main__", "p2ppool", "builtins"})


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The modules a job ships: the encoded bytes, their digest, and what is inside."""

    blob: bytes
    digest: str
    names: Tuple[str, ...]
    source_bytes: int


def parse_ship_modules(value: Iterable[str] | str) -> Tuple[str, ...]:
    """``"a,-b"`` or ``["a", "-b"]`` -> ``("a", "-b")``; raises ValueError for a bad name."""
    items = value.split(",") if isinstance(value, str) else list(value)
    parsed: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected module names, got {item!r}")
        item = item.strip()
        if not item:
            continue
        name = item[1:] if item.startswith("-") else item
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{item!r} is not a module name (or '-name' to keep one out)")
        parsed.append(item)
    return tuple(parsed)


def _covers(names: Iterable[str], module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


class CodeShipper:
    """Finds the client's own modules and keeps their bundle current.

    Args:
        ship_modules: names to ship although installed, and ``-names`` never to ship.
        max_bytes: a larger bundle (uncompressed) is not shipped: a warning names its
            largest modules and how to leave them out.
        modules: the module table to look at (default ``sys.modules``; tests pass their own).
    """

    def __init__(self, ship_modules: Sequence[str] = (),
                 max_bytes: int = defaults.MAX_CODE_BUNDLE_BYTES,
                 modules: Dict[str, object] | None = None) -> None:
        self.include = tuple(n for n in ship_modules if not n.startswith("-"))
        self.exclude = tuple(n[1:] for n in ship_modules if n.startswith("-"))
        self.max_bytes = max_bytes
        self._modules = sys.modules if modules is None else modules
        self._roots = _install_roots()
        self._stdlib = frozenset(getattr(sys, "stdlib_module_names", ()))
        #: module name -> (module object id, source path or None): the classification
        self._classified: Dict[str, Tuple[int, str | None, bool]] = {}
        self._seen_count = -1
        self._local: List[Tuple[str, str, bool]] = []  # (name, path, is_package)
        self._stats: Tuple[Tuple[str, int, int], ...] | None = None
        self._bundle: Bundle | None = None
        self._warned_size = False
        self._lock = threading.Lock()  # pools of one process share a shipper

    def current(self) -> Bundle | None:
        """The bundle of the local modules as they are on disk now (None: nothing to ship).

        Cheap when nothing changed: one pass over the module table when it grew, one
        ``stat`` per shipped file.  Thread-safe.
        """
        with self._lock:
            return self._current()

    def _current(self) -> Bundle | None:
        if len(self._modules) != self._seen_count:
            self._local = self._scan()
        stats = []
        for name, path, _ in self._local:
            try:
                st = os.stat(path)
            except OSError:
                continue  # deleted since import: nothing to send
            stats.append((name, st.st_mtime_ns, st.st_size))
        key = tuple(stats)
        if key == self._stats:
            return self._bundle
        self._stats = key
        self._bundle = self._build()
        return self._bundle

    # --- classification ------------------------------------------------------------------

    def _scan(self) -> List[Tuple[str, str, bool]]:
        table = self._modules
        self._seen_count = len(table)
        local = []
        for name, module in list(table.items()):
            if module is None:
                continue
            cached = self._classified.get(name)
            if cached is None or cached[0] != id(module):
                path, is_package = self._source_of(name, module)
                cached = self._classified[name] = (id(module), path, is_package)
            if cached[1] is not None:
                local.append((name, cached[1], cached[2]))
        local.sort()
        return local

    def _source_of(self, name: str, module: object) -> Tuple[str | None, bool]:
        """The source file to ship for ``module``, or None when it stays by reference."""
        top = name.partition(".")[0]
        if top in _NEVER or _covers(self.exclude, name):
            return None, False
        try:
            code_bundle.check_module_name(name)
        except ProtocolError:
            return None, False  # loaded under a name no import statement could use
        spec = getattr(module, "__spec__", None)
        origin = getattr(spec, "origin", None) or getattr(module, "__file__", None)
        if not isinstance(origin, str) or origin in ("built-in", "frozen"):
            return None, False
        if not origin.endswith(".py"):
            return None, False  # an extension module or bytecode only: cannot travel
        is_package = getattr(spec, "submodule_search_locations", None) is not None or (
            hasattr(module, "__path__"))
        if _covers(self.include, name):
            return origin, is_package
        if top in self._stdlib:
            return None, False
        real = os.path.realpath(origin)
        if any(real.startswith(root) for root in self._roots):
            return None, False
        return origin, is_package

    # --- the bundle ----------------------------------------------------------------------

    def _build(self) -> Bundle | None:
        sources: List[ModuleSource] = []
        for name, path, is_package in self._local:
            try:
                with open(path, "rb") as f:
                    source = f.read()
            except OSError:
                continue
            if is_package and os.path.basename(path) != "__init__.py":
                continue  # a package whose origin is not an __init__.py: leave it alone
            sources.append(ModuleSource(name, is_package, source))
        if not sources:
            return None
        total = sum(len(m.source) for m in sources)
        if total > self.max_bytes:
            if not self._warned_size:
                self._warned_size = True
                largest = sorted(sources, key=lambda m: -len(m.source))[:3]
                log.warning(
                    "not shipping your local modules to workers: their source is %d bytes, "
                    "over the %d-byte limit (largest: %s); leave some out with "
                    "ship_modules=['-name']", total, self.max_bytes,
                    ", ".join(f"{m.name} {len(m.source)} B" for m in largest))
            return None
        blob = code_bundle.encode(sources)
        names = tuple(m.name for m in sources)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        log.info("shipping %d local module(s) to workers (%d bytes of source, %d sent): %s",
                 len(names), total, len(blob), shown)
        return Bundle(blob, code_bundle.digest(blob), names, total)


def _install_roots() -> Tuple[str, ...]:
    """Directories (real paths, with a trailing separator) that hold installed modules."""
    roots: set[str] = set()
    schemes = [sysconfig.get_paths(), sysconfig.get_paths(vars={
        "base": sys.base_prefix, "platbase": sys.base_exec_prefix,
        "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix,
    })]
    for paths in schemes:
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(key):
                roots.add(paths[key])
    get_site = getattr(site, "getsitepackages", None)
    if get_site is not None:
        roots.update(get_site())
    if site.ENABLE_USER_SITE and hasattr(site, "getusersitepackages"):
        roots.add(site.getusersitepackages())
    return tuple(sorted({os.path.join(os.path.realpath(r), "") for r in roots}))


_shared: Dict[Tuple[int, Tuple[str, ...]], CodeShipper] = {}
_shared_lock = threading.Lock()


def shared_shipper(ship_modules: Sequence[str] = ()) -> CodeShipper:
    """This process's :class:`CodeShipper` for ``ship_modules``, made once.

    Every cluster pool of a process looks at the same module table, so they share one
    shipper: its first scan (about 10-20 ms with a few hundred modules imported) is paid
    once per process, not once per pool (issue 16: open -> first result -> close).
    """
    key = (os.getpid(), tuple(ship_modules))  # a forked child makes its own
    with _shared_lock:
        shipper = _shared.get(key)
        if shipper is None:
            for old in [k for k in _shared if k[0] != key[0]]:
                del _shared[old]
            shipper = _shared[key] = CodeShipper(ship_modules)
        return shipper


def _after_fork_in_child() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
