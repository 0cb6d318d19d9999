"""Unit tests of board command parsing (p2ppool.board.commands), against pico's behaviour."""

from __future__ import annotations

import pytest

from p2ppool.board.commands import (
    Command,
    UsageFailure,
    format_duration,
    help_text,
    parse_command,
    parse_duration,
    split_command,
    user_text,
)


@pytest.mark.parametrize(
    "command, argv",
    [
        ("pub t -a bob", ["pub", "t", "-a", "bob"]),
        ("accept --comment 'here we go' 101", ["accept", "--comment", "here we go", "101"]),
        ('pub "a b" -c', ["pub", "a b", "-c"]),
        ("pub  t", ["pub", "", "t"]),
        ("pub 'unbalanced", []),
        ("", []),
    ],
)
def test_split_command_like_pico(command: str, argv: list) -> None:
    assert split_command(command) == argv


@pytest.mark.parametrize(
    "text, ns",
    [
        ("0", 0),
        ("500ms", 500_000_000),
        ("1h30m", 5_400_000_000_000),
        ("1.5s", 1_500_000_000),
        ("2us", 2_000),
        ("2\u00b5s", 2_000),
        ("-1m", -60_000_000_000),
        ("720h", 720 * 3600 * 10**9),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "1", "1d", "h", "1.2.3s", "abc", "5 s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "ns, text",
    [
        (0, "0s"),
        (720 * 3600 * 10**9, "720h0m0s"),
        (500_000_000, "500ms"),
        (60 * 10**9, "1m0s"),
        (1_500_000_000, "1.5s"),
        (1_500, "1.5\u00b5s"),
        (999, "999ns"),
        (3_723_000_000_000, "1h2m3s"),
    ],
)
def test_format_duration_like_go(ns: int, text: str) -> None:
    assert format_duration(ns) == text


def test_parse_command_defaults_and_topic() -> None:
    cmd = parse_command(["pub", "t"])
    assert isinstance(cmd, Command)
    assert cmd.topic == "t"
    assert cmd.flags == {
        "a": "",
        "e": False,
        "p": False,
        "b": True,
        "t": 720 * 3600 * 10**9,
        "c": False,
        "d": "multicast",
    }


def test_go_bool_flags_only_take_equals_values() -> None:
    cmd = parse_command(["pub", "t", "-b=false"])
    assert isinstance(cmd, Command) and cmd.flag("b") is False
    # "-b false": false is a positional argument and -b stays true (Go semantics)
    cmd = parse_command(["pub", "t", "-b", "false"])
    assert isinstance(cmd, Command) and cmd.flag("b") is True and cmd.rest == ["false"]


def test_flag_forms_and_lists() -> None:
    cmd = parse_command(["pipe", "t", "--a", "bob, SHA256:x ,", "-r", "-d=round_robin"])
    assert isinstance(cmd, Command)
    assert cmd.access == ("bob", "SHA256:x")
    assert cmd.flag("r") is True and cmd.flag("d") == "round_robin"


def test_single_positional_becomes_topic() -> None:
    cmd = parse_command(["pub", "-c", "foo"])
    assert isinstance(cmd, Command) and cmd.topic == "foo"
    cmd = parse_command(["pub", "-c", "foo", "-a", "bob"])
    assert isinstance(cmd, Command) and cmd.topic == "" and cmd.flag("a") == ""


@pytest.mark.parametrize(
    "argv, first_line",
    [
        (["pub", "t", "-x"], "flag provided but not defined: -x"),
        (["pub", "t", "-t", "1d"], 'invalid value "1d" for flag -t: parse error'),
        (["pub", "t", "-b=maybe"], 'invalid boolean value "maybe" for -b: parse error'),
        (["pub", "t", "-a"], "flag needs an argument: -a"),
        (["sub", "t", "-=x"], "bad flag syntax: -=x"),
        (["pub", "t", "-h"], "Usage: pub <topic> [args...]"),
        (["sub", "help"], "Usage: sub <topic> [args...]"),
    ],
)
def test_bad_args_give_usage(argv: list, first_line: str) -> None:
    result = parse_command(argv)
    assert isinstance(result, UsageFailure)
    assert result.output.splitlines()[0] == first_line
    assert f"Usage: {argv[0]} <topic> [args...]\nArgs:\n" in result.output


def test_usage_text_matches_pico_docs() -> None:
    result = parse_command(["sub", "-h"])
    assert isinstance(result, UsageFailure)
    assert result.output == (
        "Usage: sub <topic> [args...]\n"
        "Args:\n"
        "  -a string\n"
        "    \tComma separated list of pico usernames or ssh-key fingerprints to allow access"
        " to a topic\n"
        "  -c\tDon't send status messages\n"
        "  -k\tKeep the subscription alive even after the publisher has died\n"
        "  -p\tSubscribe to a public topic\n"
    )
    pub = parse_command(["pub", "-h"])
    assert isinstance(pub, UsageFailure)
    assert "  -b\tBlock writes until a subscriber is available (default true)\n" in pub.output
    assert "Default is 30 days. (default 720h0m0s)\n" in pub.output


def test_help_text_line_ends() -> None:
    text = help_text("-p 2222 127.0.0.1")
    assert text.startswith("Command: ssh -p 2222 127.0.0.1 <command> [args...]\r\n")
    assert text.endswith('for help on a specific command.\n')
    assert "\n" not in text[:-1].replace("\r\n", "")


def test_user_text_has_the_name_first_and_pico_line_ends() -> None:
    text = user_text("alice", "SHA256:abc")
    assert text.split("\n")[:2] == ["alice", "SHA256:abc"]
    assert text.endswith("\r\n") and text.count("\n") == 4


def test_unknown_and_empty_commands() -> None:
    assert parse_command([]) == Command(name="")
    cmd = parse_command(["monitor", "x"])
    assert isinstance(cmd, Command) and cmd.name == "monitor"
