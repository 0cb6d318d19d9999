"""The dilation patches refuse a magic-wormhole that lacks an internal they patch (issue 14):
start-up fails with a message that names it and the checked range, which setup.cfg pins."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys

import pytest

from p2ppool.transfer import wormhole_patches
from p2ppool.transfer.wormhole_patches import CHECKED_VERSIONS, PATCHED_INTERNALS, check_internals

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_installed_magic_wormhole_has_every_patched_internal() -> None:
    check_internals()


@pytest.mark.parametrize("module_name, path", PATCHED_INTERNALS)
def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch, module_name: str,
                                     path: str) -> None:
    import importlib

    owner = importlib.import_module(module_name)
    *parents, leaf = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    # None hides it also where a base class defines the name (a Twisted Protocol method)
    monkeypatch.setattr(owner, leaf, None)
    with pytest.raises(ImportError) as caught:
        check_internals()
    message = str(caught.value)
    assert f"{module_name}.{path}" in message
    assert f"magic-wormhole[dilate]{CHECKED_VERSIONS}" in message


def test_install_patches_checks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from wormhole._dilation.manager import Manager

    monkeypatch.setattr(wormhole_patches, "_patched", False)
    monkeypatch.delattr(Manager, "send_ack")
    with pytest.raises(ImportError, match="Manager.send_ack"):
        wormhole_patches.install_patches()


def test_start_up_fails_clearly_without_an_internal() -> None:
    """A fresh interpreter whose magic-wormhole lacks one internal cannot import the
    transfer session (the worker and the cluster client import it at start)."""
    code = ("from wormhole._dilation.inbound import Inbound\n"
            "del Inbound.handle_data\n"
            "import p2ppool.transfer.session\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: p2ppool.transfer: magic-wormhole ")
    assert "wormhole._dilation.inbound.Inbound.handle_data" in last


def test_setup_cfg_pins_the_checked_range() -> None:
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    requires = config["options"]["install_requires"].split()
    assert f"magic-wormhole[dilate]{CHECKED_VERSIONS}" in requires
