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


def test_version_and_help_load_no_subcommand_module() -> None:
    code = (
        "import sys\n"
        "from p2ppool.cli import main\n"
        "for argv in (['--version'], ['--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('paramiko', 'twisted', 'wormhole', 'p2ppool.board.server')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   stdout=subprocess.DEVNULL)


def test_a_subcommand_gets_its_own_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["board", "--help"])
    assert info.value.code == 0
    assert "--host-key" in capsys.readouterr().out


def test_local_isolates_its_workers_unless_told_not_to() -> None:
    from p2ppool.cli import build_parser

    assert build_parser("local").parse_args(["local"]).isolated is True
    assert build_parser("local").parse_args(["local", "--no-isolation"]).isolated is False
