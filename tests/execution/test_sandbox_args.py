"""The sandbox's command line and environment (what bwrap is asked to do), without bwrap."""

from __future__ import annotations

import os

import pytest

from p2ppool.execution.sandbox import BWRAP, TASK_HOME, Sandbox, diagnose, task_environment


@pytest.fixture
def argv() -> list[str]:
    sandbox = Sandbox(BWRAP, read_only=("/srv/data",), read_write=("/srv/out",))
    try:
        return sandbox.argv("/tmp/jobs/session-1", ["/tmp/code/abc"], {"A": "1"})
    finally:
        sandbox.close()


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_namespaces_lifetime_and_no_network(argv: list[str]) -> None:
    assert argv[:2] == ["bwrap", "--unshare-all"]
    assert "--share-net" not in argv
    assert {"--die-with-parent", "--new-session", "--clearenv"} <= set(argv)
    assert argv[-1] == "--"


def test_binds_come_after_the_tmpfs_that_would_hide_them(argv: list[str]) -> None:
    last_tmpfs = max(i for i, a in enumerate(argv) if a == "--tmpfs")
    code = argv.index("/tmp/code/abc")
    assert code > last_tmpfs and argv[code - 1] == "--ro-bind"
    assert pairs(argv, "--tmpfs")[-2:] == ["/tmp", TASK_HOME]
    assert "/srv/data" in pairs(argv, "--ro-bind") and "/srv/out" in pairs(argv, "--bind")
    assert pairs(argv, "--chdir") == ["/tmp/jobs/session-1"]
    assert argv.index("--remount-ro") > argv.index("/tmp/jobs/session-1")


def test_the_volunteers_home_and_runtime_dirs_are_never_bound(argv: list[str]) -> None:
    bound = pairs(argv, "--ro-bind") + pairs(argv, "--bind")
    home = os.path.realpath(os.path.expanduser("~"))
    assert home not in bound and "/run" not in bound
    assert os.path.realpath(os.getcwd()) not in bound  # (the worker's cwd may be a home)


def test_network_only_when_allowed() -> None:
    sandbox = Sandbox(BWRAP, allow_network=True)
    try:
        argv = sandbox.argv("/tmp/j", [], {})
    finally:
        sandbox.close()
    assert "--share-net" in argv and "/etc/resolv.conf" in argv
    assert sandbox.label == "bwrap+network" and Sandbox().label == "none"


def test_the_task_environment_is_an_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DISPLAY",
                 "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "P2PPOOL_IDENTITY"):
        monkeypatch.setenv(name, "secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = task_environment("w1", "/home/t", "/tmp")
    assert "secret" not in env.values()
    assert env["P2PPOOL_WORKER"] == "w1" and env["HOME"] == "/home/t"
    assert env["OMP_NUM_THREADS"] == "2" and "PATH" in env


@pytest.mark.parametrize("stderr, hint", [
    ("bwrap: setting up uid map: Permission denied", "AppArmor"),
    ("bwrap: No permissions to create new namespace, likely because", "user namespaces"),
    ("bwrap: Creating new namespace failed: nesting depth or /proc/sys/user/"
     "max_*_namespaces exceeded (ENOSPC)", "max_user_namespaces"),
    ("bwrap: Can't mount proc on /newroot/proc: Operation not permitted", "container"),
    ("bwrap: execvp /x/bin/python: No such file or directory", "p2ppool bug"),
])
def test_diagnoses_name_the_fix(stderr: str, hint: str) -> None:
    message = diagnose(stderr)
    assert hint in message and "--sandbox none" in message


def test_a_task_process_let_go_before_its_settings_exits_quietly(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A spare (or a session that never opened) is let go by closing its pipe: the task
    process ends without a traceback in the worker's log."""
    from p2ppool.execution.sandbox_child import main

    rx, worker_end = os.pipe()
    worker_rx, child_tx = os.pipe()
    os.close(worker_end)
    try:
        main(["-", str(rx), str(child_tx)])
    finally:
        for fd in (rx, child_tx, worker_rx):
            os.close(fd)
    assert capfd.readouterr().err == ""
