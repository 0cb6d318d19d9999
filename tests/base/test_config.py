"""Option precedence (kwargs > env > file > default) and clear errors naming the source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2ppool import defaults
from p2ppool.config import OPTIONS, Options, config_path, resolve_options, split_board
from p2ppool.errors import ConfigError


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"P2PPOOL_CONFIG": str(path)}


def test_defaults_without_any_source(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "none")}
    options = resolve_options({}, environ=env)
    assert options.progress is False
    assert options.cluster is None
    assert options.fallback == defaults.FALLBACK_S
    # No port in the default: the SSH config's Port for pipe.pico.sh applies, else 22.
    assert options.board_address == (defaults.BOARD_HOST, None)
    assert set(options.sources.values()) == {"default"}


def test_precedence_kwargs_then_env_then_file(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'progress = true\nfallback = 7\ncluster = "file/c"\n')
    env["P2PPOOL_FALLBACK"] = "5"
    env["P2PPOOL_CLUSTER"] = "env/c"
    options = resolve_options({"cluster": "kw/c"}, environ=env)
    assert options.cluster == "kw/c"
    assert options.fallback == 5.0
    assert options.progress is True
    assert options.sources["cluster"] == "keyword argument cluster="
    assert options.sources["fallback"] == "environment variable P2PPOOL_FALLBACK"
    assert options.sources["progress"].startswith("config file ")


def test_file_may_use_a_p2ppool_table(tmp_path: Path) -> None:
    env = write_config(tmp_path, '[p2ppool]\nboard = "board.example:2222"\n')
    assert resolve_options({}, environ=env).board_address == ("board.example", 2222)


def test_xdg_location_is_read_when_no_explicit_file(tmp_path: Path) -> None:
    (tmp_path / "p2ppool").mkdir()
    (tmp_path / "p2ppool" / "config.toml").write_text("progress = 1\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert config_path(env) == tmp_path / "p2ppool" / "config.toml"
    assert resolve_options({}, environ=env).progress is True


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("fallback", "none", None),
        ("fallback", "NEVER", None),
        ("fallback", "0.5", 0.5),
        ("progress", "yes", True),
        ("progress", "0", False),
        ("start_method", "spawn", "spawn"),
        ("max_attempts", "4", 4),
        ("loopback_only", "on", True),
    ],
)
def test_env_values_parse(name: str, raw: str, expected: object) -> None:
    env = {f"P2PPOOL_{name.upper()}": raw, "P2PPOOL_CONFIG": ""}
    assert getattr(resolve_options({}, environ=env, read_file=False), name) == expected


def test_fallback_none_keyword_means_never() -> None:
    assert resolve_options({"fallback": None}, environ={}, read_file=False).fallback is None


@pytest.mark.parametrize(
    "name, raw, fragment",
    [
        ("fallback", "soon", "number of seconds"),
        ("fallback", "-1", ">= 0"),
        ("progress", "maybe", "true/false"),
        ("start_method", "thread", "fork, spawn, forkserver"),
        ("cluster", "friends", "owner/name"),
        ("cluster", "a/b c", "owner/name"),
        ("board", "host:notaport", "host:port"),
        ("relay", "http://x/v1", "ws://"),
        ("max_attempts", "0", "positive integer"),
    ],
)
def test_bad_env_value_names_option_and_source(name: str, raw: str, fragment: str) -> None:
    env = {f"P2PPOOL_{name.upper()}": raw}
    with pytest.raises(ConfigError) as info:
        resolve_options({}, environ=env, read_file=False)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert fragment in message
    assert f"environment variable P2PPOOL_{name.upper()}" in message


def test_bad_keyword_value_names_the_keyword() -> None:
    with pytest.raises(ConfigError, match=r"progress: .*keyword argument progress="):
        resolve_options({"progress": "maybe"}, environ={}, read_file=False)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        resolve_options({"fallback": "x"}, environ={}, read_file=False)


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument.*'progres'"):
        resolve_options({"progres": True}, environ={}, read_file=False)


def test_bad_file_value_names_the_file(tmp_path: Path) -> None:
    env = write_config(tmp_path, "fallback = 'later'\n")
    with pytest.raises(ConfigError, match=r"fallback: .*config file .*config\.toml"):
        resolve_options({}, environ=env)


def test_unknown_file_option_is_refused(tmp_path: Path) -> None:
    env = write_config(tmp_path, "clustr = 'a/b'\n")
    with pytest.raises(ConfigError, match="unknown option.*clustr"):
        resolve_options({}, environ=env)


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    env = write_config(tmp_path, "progress = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_options({}, environ=env)


def test_missing_explicit_file_is_reported(tmp_path: Path) -> None:
    env = {"P2PPOOL_CONFIG": str(tmp_path / "absent.toml")}
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_options({}, environ=env)


def test_as_env_round_trips(tmp_path: Path) -> None:
    given = {
        "cluster": "alice/friends", "fallback": None, "progress": True,
        "board": "127.0.0.1:2222", "relay": "ws://127.0.0.1:4000/v1", "loopback_only": True,
    }
    options = resolve_options(given, environ={}, read_file=False)
    again = resolve_options({}, environ=options.as_env(), read_file=False)
    assert again == options


def test_every_option_is_a_field_with_the_same_default() -> None:
    fields = {f.name: f.default for f in Options.__dataclass_fields__.values()}
    for option in OPTIONS:
        assert fields[option.name] == option.default, option.name


@pytest.mark.parametrize(
    "text, expected",
    [
        ("myboard", ("myboard", None)),  # an SSH config alias: its Port applies downstream
        ("board.example:2222", ("board.example", 2222)),
        ("127.0.0.1:22", ("127.0.0.1", 22)),
        (" host ", ("host", None)),
        ("[::1]:2200", ("::1", 2200)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),  # a bare IPv6 address has no port
    ],
)
def test_split_board(text: str, expected: tuple) -> None:
    assert split_board(text) == expected


@pytest.mark.parametrize("text", ["", ":22", "h:", "h:x", "h:0", "h:65536", "[::1", "[::1]x",
                                  "[]:22", "h:-1"])
def test_split_board_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        split_board(text)


def test_every_entry_point_leaves_an_unnamed_port_to_the_ssh_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Pool's options, `p2ppool worker` and `p2ppool host/status` agree on the port."""
    import argparse

    from p2ppool.board.options import BoardSettings, add_board_arguments
    from p2ppool.worker import cli as worker

    for name in [k for k in os.environ if k.startswith("P2PPOOL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no config file
    monkeypatch.setenv("P2PPOOL_CLUSTER", "alice/c")
    for board, expected in (("myboard", ("myboard", None)), ("myboard:2200", ("myboard", 2200))):
        monkeypatch.setenv("P2PPOOL_BOARD", board)
        assert resolve_options({}).board_address == expected
        parser = argparse.ArgumentParser()
        worker.add_arguments(parser)
        settings = worker.settings_from_args(parser.parse_args([]))
        assert (settings.board_host, settings.board_port) == expected
        parser = argparse.ArgumentParser()
        add_board_arguments(parser)
        board_settings = BoardSettings.from_args(parser.parse_args([]))
        assert (board_settings.host, board_settings.port) == expected


def test_requirements_option_from_keywords_environment_and_json() -> None:
    from p2ppool.config import resolve_options

    assert resolve_options({"requirements": ["numpy>=2", "scipy"]}, environ={},
                           read_file=False).requirements == ("numpy>=2", "scipy")
    env = {"P2PPOOL_REQUIREMENTS": "numpy>=2 scipy"}
    options = resolve_options({}, environ=env, read_file=False)
    assert options.requirements == ("numpy>=2", "scipy")
    marker = ['pywin32; sys_platform == "win32"']
    as_env = resolve_options({"requirements": marker}, environ={}, read_file=False).as_env()
    assert resolve_options({}, environ=as_env, read_file=False).requirements == (
        'pywin32; sys_platform == "win32"',)
    with pytest.raises(ConfigError, match="direct URLs are not allowed"):
        resolve_options({"requirements": ["evil @ https://example.org/x.whl"]}, environ={},
                        read_file=False)
    with pytest.raises(ConfigError, match="not a requirement"):
        resolve_options({"requirements": ["numpy>>2"]}, environ={}, read_file=False)


def test_requirement_sets_key_by_content_not_spelling() -> None:
    from p2ppool.shipping.requirements import environment_key, normalize, unmet

    assert normalize(["SciPy", "numpy >=2"]) == normalize(["numpy>=2", "scipy"])
    key = environment_key(["numpy>=2", "scipy"], "3.11", "linux-x86_64")
    assert key == environment_key(["scipy", "NumPy>=2"], "3.11", "linux-x86_64")
    assert key != environment_key(["scipy", "numpy>=2"], "3.12", "linux-x86_64")
    assert key != environment_key(["scipy", "numpy>=2"], "3.11", "linux-x86_64", ["PIP_NO_INDEX=1"])
    versions = {"numpy": "1.26.0", "scipy": "1.13.0"}.get
    assert unmet(["numpy>=2", "scipy", 'pywin32; sys_platform == "win32"'], versions) == [
        "numpy>=2"]


def test_task_timeout_is_positive_seconds_or_none() -> None:
    assert resolve_options({"task_timeout": 30}, environ={}, read_file=False).task_timeout == 30.0
    assert resolve_options({}, environ={"P2PPOOL_TASK_TIMEOUT": "none"},
                           read_file=False).task_timeout is None
    assert resolve_options({}, environ={}, read_file=False).task_timeout is None
    for bad in (0, -1, "soon", True, float("inf")):
        with pytest.raises(ConfigError, match="task_timeout"):
            resolve_options({"task_timeout": bad}, environ={}, read_file=False)
