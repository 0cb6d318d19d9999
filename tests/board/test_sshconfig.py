"""How ~/.ssh/config is applied to the board host (file parsing only; connections elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2ppool.board.sshconfig import known_hosts_name, resolve_target
from p2ppool.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config"
    path.write_text(text)
    return str(path)


def test_config_values_apply_and_explicit_values_win(tmp_path: Path) -> None:
    key = tmp_path / "id_board"
    key.write_text("not checked here")
    config = write(tmp_path, (
        "Host board\n  HostName 10.1.2.3\n  Port 2200\n  User zed\n"
        f"  IdentityFile {key}\n  IdentityFile {tmp_path}/missing\n"
        f"  UserKnownHostsFile {tmp_path}/kh\n"
    ))
    target = resolve_target("board", ssh_config=config)
    assert (target.host, target.port, target.user) == ("10.1.2.3", 2200, "zed")
    assert target.config_identities == (str(key),)  # missing files are skipped
    assert target.known_hosts == f"{tmp_path}/kh"
    assert target.jumps == ()
    explicit = resolve_target("board", 22, user="amy", identity=str(key),
                              known_hosts="/x/kh", ssh_config=config)
    assert (explicit.port, explicit.user, explicit.identity) == (22, "amy", str(key))
    assert explicit.known_hosts == "/x/kh"


def test_unlisted_host_uses_defaults(tmp_path: Path) -> None:
    target = resolve_target("example.org", ssh_config=write(tmp_path, "Host other\n  Port 1\n"))
    assert (target.host, target.port) == ("example.org", 22)
    assert target.known_hosts.endswith("/.ssh/known_hosts")


@pytest.mark.parametrize(
    "spec, hops",
    [
        ("j1", [("j1", 22, "me")]),
        ("ann@j1:2222", [("j1", 2222, "ann")]),
        ("ssh://ann@j1:2022,j2", [("j1", 2022, "ann"), ("j2", 22, "me")]),
        ("[::1]:2201", [("::1", 2201, "me")]),
    ],
)
def test_proxyjump_forms(tmp_path: Path, spec: str, hops: list) -> None:
    config = write(tmp_path, f"Host board\n  User me\n  ProxyJump {spec}\nHost j*\n  User me\n"
                             "Host ::1\n  User me\n")
    target = resolve_target("board", ssh_config=config)
    assert [(j.host, j.port, j.user) for j in target.jumps] == hops


def test_proxyjump_none_disables_it(tmp_path: Path) -> None:
    config = write(tmp_path, "Host board\n  ProxyJump none\n")
    assert resolve_target("board", ssh_config=config).jumps == ()


def test_jump_host_config_applies_to_the_hop(tmp_path: Path) -> None:
    config = write(tmp_path, "Host board\n  ProxyJump gate\nHost gate\n  HostName 10.0.0.9\n"
                             "  Port 2022\n  User gatekeeper\n")
    [hop] = resolve_target("board", ssh_config=config).jumps
    assert (hop.host, hop.port, hop.user) == ("10.0.0.9", 2022, "gatekeeper")


def test_bad_port_in_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Port"):
        resolve_target("board", ssh_config=write(tmp_path, "Host board\n  Port many\n"))


def test_known_hosts_name() -> None:
    assert known_hosts_name("h", 22) == "h"
    assert known_hosts_name("h", 2222) == "[h]:2222"
