"""Which client modules travel to workers (CodeShipper), and how a worker keeps them
(CodeCache): classification, change detection, limits, the cache's directories."""

from __future__ import annotations

import importlib
import json
import logging
import os
import stat
import sys
import types
from pathlib import Path
from typing import Iterator

import cloudpickle
import pytest

import p2ppool
from p2ppool.config import ConfigError, resolve_options
from p2ppool.errors import ProtocolError
from p2ppool.shipping import bundle as code_bundle
from p2ppool.shipping import modules as shipping
from p2ppool.shipping.cache import CodeCache
from p2ppool.shipping.modules import CodeShipper, parse_ship_modules


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A script's directory with its own module and local package, imported for real."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("from .sub import f\n")
    (tmp_path / "mypkg" / "sub.py").write_text("def f():\n    return 1\n")
    (tmp_path / "helpers_for_shipping.py").write_text("import mypkg\nX = 1\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    import helpers_for_shipping  # noqa: F401

    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("helpers_for_shipping", "mypkg", "mypkg.sub", "extra_mod"):
            sys.modules.pop(name, None)


def bundle_modules(shipper: CodeShipper) -> dict[str, bytes]:
    bundle = shipper.current()
    if bundle is None:
        return {}
    return {m.name: m.source for m in code_bundle.decode(bundle.blob, 10**8)}


def test_own_modules_travel_installed_ones_do_not(project: Path) -> None:
    shipped = bundle_modules(CodeShipper())
    assert shipped["helpers_for_shipping"] == b"import mypkg\nX = 1\n"
    assert shipped["mypkg"] == b"from .sub import f\n"
    assert shipped["mypkg.sub"].startswith(b"def f()")
    for installed in ("json", "cloudpickle", "pytest", "p2ppool", "p2ppool.pool", "__main__",
                      "sys", "_pytest.python"):
        assert installed not in shipped
    assert "tests.shipping.test_shipping" in shipped  # the test suite is the caller's own code


def test_package_flags_and_digest(project: Path) -> None:
    bundle = CodeShipper().current()
    assert bundle is not None
    flags = {m.name: m.is_package for m in code_bundle.decode(bundle.blob, 10**8)}
    assert flags["mypkg"] is True and flags["mypkg.sub"] is False
    assert bundle.digest == code_bundle.digest(bundle.blob)
    assert "mypkg.sub" in bundle.names


def test_ship_modules_adds_installed_and_excludes_local(project: Path) -> None:
    shipped = bundle_modules(CodeShipper(["cloudpickle", "-mypkg"]))
    assert "cloudpickle" in shipped and "cloudpickle.cloudpickle" in shipped
    assert "mypkg" not in shipped and "mypkg.sub" not in shipped
    assert "helpers_for_shipping" in shipped


def test_an_edited_or_new_module_gives_a_new_bundle(project: Path) -> None:
    shipper = CodeShipper()
    first = shipper.current()
    assert first is not None and shipper.current() is first  # unchanged: the same object
    path = project / "mypkg" / "sub.py"
    path.write_text("def f():\n    return 22\n")
    os.utime(path, ns=(1, 1))  # a distinct mtime even on a coarse clock
    second = shipper.current()
    assert second is not None and second.digest != first.digest
    assert b"return 22" in bundle_modules(shipper)["mypkg.sub"]
    (project / "extra_mod.py").write_text("Y = 2\n")
    importlib.import_module("extra_mod")
    third = shipper.current()
    assert third is not None and "extra_mod" in third.names and third.digest != second.digest


def test_nothing_to_ship_gives_none() -> None:
    table = {"json": sys.modules["json"], "p2ppool": p2ppool, "__main__": types.ModuleType("m")}
    assert CodeShipper(modules=table).current() is None  # type: ignore[arg-type]


def test_extension_modules_builtins_and_unimportable_names_stay(tmp_path: Path) -> None:
    compiled = types.ModuleType("fast")
    compiled.__file__ = str(tmp_path / "fast.cpython-311-x86_64-linux-gnu.so")
    (tmp_path / "odd-name.py").write_text("X = 1\n")
    odd = types.ModuleType("odd-name")
    odd.__file__ = str(tmp_path / "odd-name.py")
    table = {"fast": compiled, "sys": sys, "odd-name": odd}
    assert CodeShipper(modules=table).current() is None  # type: ignore[arg-type]


def test_too_much_source_is_not_shipped_and_says_how_to_exclude(
        project: Path, caplog: pytest.LogCaptureFixture) -> None:
    shipper = CodeShipper(max_bytes=10)
    with caplog.at_level(logging.WARNING, logger="p2ppool.pool"):
        assert shipper.current() is None
    assert "not shipping your local modules" in caplog.text
    assert "ship_modules=['-name']" in caplog.text


def test_parse_ship_modules_and_the_option() -> None:
    assert parse_ship_modules("a, -b.c ,") == ("a", "-b.c")
    assert parse_ship_modules(["x"]) == ("x",)
    with pytest.raises(ValueError, match="not a module name"):
        parse_ship_modules("a b")
    options = resolve_options({}, environ={"P2PPOOL_SHIP_MODULES": "mylib,-big"},
                              read_file=False)
    assert options.ship_modules == ("mylib", "-big")
    assert options.as_env()["P2PPOOL_SHIP_MODULES"] == "mylib,-big"
    assert resolve_options({"ship_modules": ["q"]}, environ={}, read_file=False
                           ).ship_modules == ("q",)
    with pytest.raises(ConfigError, match="ship_modules"):
        resolve_options({"ship_modules": 3}, environ={}, read_file=False)


def test_the_install_roots_cover_the_stdlib_and_site_packages() -> None:
    roots = shipping._install_roots()
    for module in (json, cloudpickle, pytest):
        real = os.path.realpath(module.__file__ or "")
        assert any(real.startswith(root) for root in roots), (real, roots)


# --- the worker's cache ----------------------------------------------------------------------


def make_blob(**sources: str) -> bytes:
    return code_bundle.encode([
        code_bundle.ModuleSource(name.replace("__", "."), name == "pkg", text.encode())
        for name, text in sources.items()])


def test_cache_writes_each_bundle_once_read_only_and_cleans_up() -> None:
    cache = CodeCache(keep=1)
    blob = make_blob(pkg="", pkg__mod="A = 1\n", top="B = 2\n")
    path = cache.acquire(blob)
    assert os.path.basename(path) == code_bundle.digest(blob)
    module_file = os.path.join(path, "pkg", "mod.py")
    with open(module_file) as f:
        assert f.read() == "A = 1\n"
    assert not os.stat(module_file).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    os.chmod(module_file, 0o644)
    with open(module_file, "w") as f:
        f.write("changed")  # a second acquire must not write it again
    assert cache.acquire(blob) == path
    with open(module_file) as f:
        assert f.read() == "changed"
    root = cache.root
    assert root is not None
    cache.release(path)
    cache.release(path)
    other = cache.acquire(make_blob(top="C = 3\n"))
    cache.release(other)  # two unused, keep=1: the least recently used goes
    assert not os.path.exists(path) and os.path.exists(other)
    assert not [e for e in os.listdir(root) if e.startswith(".staging")]
    cache.close()
    assert not os.path.exists(root)


def test_cache_refuses_bad_bundles_and_leaves_nothing() -> None:
    cache = CodeCache(max_bytes=100)
    with pytest.raises(ProtocolError):
        cache.acquire(make_blob(top="#" * 1000))
    with pytest.raises(ProtocolError):
        cache.acquire(b"garbage")
    if cache.root is not None:
        assert os.listdir(cache.root) == []
    cache.close()


def test_bundle_header_is_json_so_workers_never_unpickle() -> None:
    import zlib

    raw = zlib.decompress(make_blob(top="x = 1\n"))
    assert json.loads(raw.split(b"\n", 1)[0])["modules"] == [["top", False, 6]]
