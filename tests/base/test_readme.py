"""README.rst tells the truth about how CI runs the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.rst").read_text().splitlines()
    start = lines.index(".. code-block:: console") + 1
    commands = []
    for line in lines[start:]:
        if line.strip() == "":
            if commands:
                break
            continue
        commands.append(line.strip())
    return commands


def test_readme_opens_with_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert "p2ppool demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = ci.index("# README test command:")
    assert ci[marker + 1].strip() == readme_commands()[1]


def test_ci_creates_the_venv_the_readme_creates() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in ci
    assert readme_commands()[0].startswith("python3 -m venv .venv")


def test_readme_renders_without_errors() -> None:
    import docutils.core
    import docutils.utils

    try:
        docutils.core.publish_string(
            (ROOT / "README.rst").read_text(),
            writer="null",
            settings_overrides={"report_level": 5, "halt_level": 2},
        )
    except docutils.utils.SystemMessage as exc:  # warnings and errors halt
        raise AssertionError(f"README.rst: {exc}") from None
