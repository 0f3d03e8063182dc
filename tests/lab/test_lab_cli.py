"""``natkit lab up/exec/down/list``, run as a user would: subprocesses.

Each command runs ``python -m natkit lab ...`` with the test's private state
directory (``NATKIT_LAB_STATE_DIR``, set by conftest). The root tests check
that nothing is left behind: ``ip netns list`` and the host's links are the
same before and after, and no state file remains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.lab.topology import Lab

from .conftest import host_links, netns_names, prefix


def natkit(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``natkit ARGS`` (this checkout's) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "natkit", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else Lab.python_env(),
    )


def one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    """Non-zero exit, a single ``natkit: error:`` line mentioning ``words``."""
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("natkit: error: "), proc.stderr
    for word in words:
        assert word in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def own_namespaces() -> list[str]:
    """``ip netns list``, this test process's labs only (other runs may be busy)."""
    return [n for n in netns_names() if n.startswith(f"nk-{os.getpid()}-")]


@pytest.fixture
def untouched_host(lab_state_dir: Path) -> Iterator[None]:
    """The test leaves the namespaces, host links and state files as it found them."""
    netns, links = own_namespaces(), host_links()
    states = sorted(lab_state_dir.iterdir())
    yield
    for state in Lab.list_labs():  # a failed test: remove its labs, then fail
        if state.prefix.startswith(f"nk-{os.getpid()}-"):
            Lab.down(state.prefix)
    assert own_namespaces() == netns
    assert host_links() == links
    assert sorted(lab_state_dir.iterdir()) == states


# --- without root -------------------------------------------------------------


def test_help_has_examples() -> None:
    for command in ([], ["up"], ["exec"], ["down"], ["list"]):
        proc = natkit("lab", *command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "Examples:" in proc.stdout
    assert "--nat TYPE" in natkit("lab", "up", "--help").stdout


def test_unknown_nat_type_is_one_line() -> None:
    proc = natkit("lab", "up", "--nat", "cone-ish")
    assert proc.returncode == 2
    one_error_line(proc, "unknown NAT type 'cone-ish'", "port-restricted-cone")


def test_bad_values_are_one_line() -> None:
    one_error_line(natkit("lab", "up", "--nat", "open", "--loss", "200"), "--loss")
    one_error_line(natkit("lab", "up"), "--nat")
    one_error_line(natkit("lab", "up", "--nat", "open", "--name", "Bad_Name"), "pref")
    one_error_line(natkit("lab", "down", "--lab", "x", "--all"), "not both")


# --- as root: a real lab ------------------------------------------------------


@pytest.mark.root
def test_up_exec_down_leaves_nothing(untouched_host: None) -> None:
    """``lab up``, ``exec`` on each namespace kind, ``down``: nothing left."""
    pfx = prefix("cli")
    up = natkit(
        "lab",
        "up",
        "--nat",
        "symmetric",
        "--nat",
        "open",
        "--name",
        pfx,
        "--udp-timeout",
        "20",
        "--json",
    )
    assert up.returncode == 0, up.stderr
    info: dict[str, Any] = json.loads(up.stdout)
    assert info["lab"] == pfx
    assert info["server_ips"] == ["203.0.113.10", "203.0.113.11"]
    h1, h2 = info["hosts"]
    assert (h1["name"], h1["nat"], h1["netns"]) == ("h1", "symmetric", f"{pfx}h1")
    assert (h1["ip"], h1["router_wan_ip"], h1["udp_timeout"]) == (
        "10.1.0.2",
        "203.0.113.101",
        20,
    )
    assert (h2["nat"], h2["public_ip"]) == ("open", h2["ip"])
    ours = [n for n in netns_names() if n.startswith(pfx)]
    assert len(ours) == 5

    # the lab outlives `up`, and `list` shows it
    listed = json.loads(natkit("lab", "list", "--json").stdout)
    mine = [lab for lab in listed if lab["lab"] == pfx]
    assert mine and mine[0]["detached"] and mine[0]["status"] == "up (detached)"
    assert pfx in natkit("lab", "list").stdout

    # exec: host, router, internet; exit status and stdin pass through
    run = natkit("lab", "exec", "--lab", pfx, "h1", "--", "ip", "-o", "-4", "addr")
    assert run.returncode == 0 and "10.1.0.2/24" in run.stdout, run.stderr
    rules = natkit("lab", "exec", "--lab", pfx, "r1", "--", "nft", "list", "ruleset")
    assert "fully-random" in rules.stdout, rules.stderr
    inet = natkit("lab", "exec", "--lab", pfx, "inet", "ip", "-o", "-4", "addr")
    assert "203.0.113.11/24" in inet.stdout, inet.stderr
    status = natkit("lab", "exec", "--lab", pfx, "h2", "--", "sh", "-c", "exit 7")
    assert status.returncode == 7
    echo = natkit("lab", "exec", "--lab", pfx, "h2", "--", "cat", input="hello\n")
    assert echo.stdout == "hello\n"

    # natkit itself runs inside, even from a PATH without this Python's bin
    env = {**Lab.python_env(), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    version = natkit(
        "lab", "exec", "--lab", pfx, "h1", "--", "natkit", "--version", env=env
    )
    assert version.returncode == 0 and "natkit" in version.stdout, version.stderr

    down = natkit("lab", "down", "--lab", pfx)
    assert down.returncode == 0, down.stderr
    assert not [n for n in netns_names() if n.startswith(pfx)]
    one_error_line(natkit("lab", "down", "--lab", pfx), "no lab")


@pytest.mark.root
def test_errors_of_a_running_lab(untouched_host: None) -> None:
    """No such lab, no such host, several labs without --lab: one line each."""
    one_error_line(natkit("lab", "exec", "h1", "--", "true"), "no lab is up")
    one_error_line(natkit("lab", "down"), "no lab is up")
    one_error_line(natkit("lab", "exec", "--lab", "nope", "h1", "true"), "no lab")

    a, b = prefix("ea"), prefix("eb")
    for pfx in (a, b):
        assert natkit("lab", "up", "--nat", "full-cone", "--name", pfx).returncode == 0
    one_error_line(natkit("lab", "up", "--nat", "open", "--name", a), "in use")
    one_error_line(natkit("lab", "exec", "h1", "--", "true"), "several labs", a, b)
    missing = natkit("lab", "exec", "--lab", a, "h7", "--", "true")
    assert missing.returncode == 2
    one_error_line(missing, "host 'h7' not found", "h1, r1, inet")
    nocmd = natkit("lab", "exec", "--lab", a, "h1", "--", "no-such-command-here")
    assert nocmd.returncode == 127
    one_error_line(nocmd, "command not found")

    # down --all removes both
    every = natkit("lab", "down", "--all")
    assert every.returncode == 0, every.stderr
    assert f"lab {a} removed" in every.stdout and f"lab {b} removed" in every.stdout


@pytest.mark.root
def test_up_failing_halfway_cleans_up(untouched_host: None, tmp_path: Path) -> None:
    """A build that fails at the second router's nftables removes what was made."""
    fake = tmp_path / "bin"
    fake.mkdir()
    nft = fake / "nft"
    real = shutil.which("nft")
    assert real is not None
    # the first ruleset loads, the second fails
    counter = tmp_path / "count"
    nft.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
        f'if [ "$n" -ge 1 ]; then echo "nft: simulated failure" >&2; exit 1; fi\n'
        f'exec {real} "$@"\n'
    )
    nft.chmod(0o755)
    env = Lab.python_env()
    env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', os.defpath)}"
    pfx = prefix("half")
    proc = natkit(
        "lab", "up", "--nat", "symmetric", "--nat", "full-cone", "--name", pfx, env=env
    )
    one_error_line(proc, "nft", "simulated failure")
    assert counter.read_text().strip() == "2"  # it did get half-way
    assert not [n for n in netns_names() if n.startswith(pfx)]


@pytest.mark.root
def test_not_root_is_one_line() -> None:
    """As an ordinary user (nobody): one line, exit 1, nothing attempted."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop root")
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    for args in (["up", "--nat", "open"], ["exec", "h1", "true"], ["down"]):
        proc = subprocess.run(
            [*drop, sys.executable, "-m", "natkit", "lab", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=Lab.python_env(),
            cwd="/",
        )
        assert proc.returncode == 1
        one_error_line(proc, "needs root")
