"""The ``p2ppool`` console script: --version, --help, subcommand wiring."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2ppool import __version__
from p2ppool.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"p2ppool {__version__}"


def test_help_lists_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "usage: p2ppool" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: p2ppool" in capsys.readouterr().out


def test_module_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "p2ppool", "--version"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    assert __version__ in out
