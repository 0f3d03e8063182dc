"""``natkit turn``: allocate, permit, bind, ping through the relay (RFC 8656).

End-to-end runs go against coturn and ``natkit serve`` on loopback (fixtures
from ``test_net_turn_client``), as a subprocess, the way a user runs it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from interop.peers import free_port
from natkit.cli import main
from test_net_turn_client import (
    NATKIT_ARGV,
    PASSWORD,
    REALM,
    USER,
    TurnServerUnderTest,
    natkit_env,
    pick_server,
    run_coturn,
    run_natkit,
    silent_udp_port,
)

RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def coturn_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_coturn(tmp_path_factory)


@pytest.fixture(scope="module")
def natkit_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_natkit(tmp_path_factory)


@pytest.fixture(params=["coturn", "natkit"])
def turn_server(request: pytest.FixtureRequest) -> TurnServerUnderTest:
    return pick_server(request)


def natkit_turn_cli(
    server: str, *args: str, user: str = USER, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    argv = [*NATKIT_ARGV, "turn", server, "--user", user, "--password", password]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        env=natkit_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``natkit: error:`` line a failing run must print."""
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("natkit: error: "), lines
    return lines[0]


# --- usage --------------------------------------------------------------------


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["turn", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert "natkit turn 127.0.0.1:3478 --user alice" in result.output
    assert "--allow-peer 127.0.0.1/32" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--peer", "127.0.0.1:9", "--echo"], "give --peer or --echo, not both"),
        (["--peer", "127.0.0.1"], "needs a port"),
        (["--peer", "nonsense:9"], "not an IP address"),
        (["--count", "0"], "--count"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str) -> None:
    done = natkit_turn_cli("127.0.0.1:9", *args)
    line = one_error_line(done)
    assert done.returncode == 2
    assert message in line


def test_missing_credentials_are_refused() -> None:
    done = subprocess.run(
        [*NATKIT_ARGV, "turn", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=natkit_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "--user" in one_error_line(done)


def test_refused_and_timeout_are_one_line() -> None:
    port = free_port("127.0.0.1")
    assert "connection refused" in one_error_line(natkit_turn_cli(f"127.0.0.1:{port}"))
    assert "connection refused" in one_error_line(
        natkit_turn_cli(f"127.0.0.1:{port}", "--transport", "tcp")
    )
    with silent_udp_port() as sock:
        silent = sock.getsockname()[1]
        line = one_error_line(
            natkit_turn_cli(f"127.0.0.1:{silent}", "--timeout", "0.5")
        )
    assert "no TURN response" in line and "0.5 s" in line


# --- against real servers --------------------------------------------------------


@pytest.mark.interop
def test_echo_json_has_zero_loss(turn_server: TurnServerUnderTest) -> None:
    done = natkit_turn_cli(
        turn_server.endpoint,
        "--echo",
        "--json",
        "--count",
        "20",
        "--interval",
        "5",
    )
    assert done.returncode == 0, done.stderr + turn_server.log_tail()
    data = json.loads(done.stdout)
    for key in (
        "relayed",
        "mapped",
        "lifetime",
        "server",
        "transport",
        "sent",
        "received",
        "loss",
        "rtt_ms",
    ):
        assert key in data, key
    assert data["server"] == turn_server.endpoint
    assert data["transport"] == "udp"
    assert data["relayed"].startswith("127.0.0.1:")
    assert (data["sent"], data["received"], data["loss"]) == (20, 20, 0.0)
    rtt = data["rtt_ms"]
    assert 0 < rtt["min"] <= rtt["p50"] <= rtt["max"]
    assert data["realm"] == REALM
    assert data["algorithm"] == ("SHA256" if turn_server.name == "natkit" else "MD5")


def _check_stream_echo(server: str, transport: str, *extra: str) -> None:
    done = natkit_turn_cli(
        server,
        "--echo",
        "--transport",
        transport,
        "--count",
        "5",
        "--interval",
        "5",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    assert f"({transport})" in done.stdout
    assert "sent/received    5/5 (loss 0.0 %)" in done.stdout


@pytest.mark.interop
def test_echo_over_tcp(turn_server: TurnServerUnderTest) -> None:
    _check_stream_echo(turn_server.endpoint, "tcp")


@pytest.mark.interop
def test_echo_over_tls_to_natkit(natkit_turn: TurnServerUnderTest) -> None:
    assert natkit_turn.tls_port is not None and natkit_turn.cafile is not None
    server = f"{natkit_turn.ip}:{natkit_turn.tls_port}"
    _check_stream_echo(server, "tls", "--cafile", str(natkit_turn.cafile))


@pytest.mark.interop
def test_send_indications_without_a_channel(coturn_turn: TurnServerUnderTest) -> None:
    done = natkit_turn_cli(
        coturn_turn.endpoint, "--echo", "--no-channel", "--count", "3", "--json"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["channel"] is None and data["received"] == 3


@pytest.mark.interop
def test_allocation_only_without_a_peer(turn_server: TurnServerUnderTest) -> None:
    done = natkit_turn_cli(turn_server.endpoint)
    assert done.returncode == 0, done.stderr
    assert "relayed address  127.0.0.1:" in done.stdout
    assert "lifetime         " in done.stdout


@pytest.mark.interop
def test_wrong_password_says_authentication_failed(
    turn_server: TurnServerUnderTest,
) -> None:
    line = one_error_line(natkit_turn_cli(turn_server.endpoint, password="wrong"))
    assert "authentication failed" in line and "401" in line


@pytest.mark.interop
def test_refused_loopback_peer_gets_the_allow_peer_hint(
    natkit_turn: TurnServerUnderTest,
) -> None:
    # the server allows 127.0.0.1/32 only; 127.0.0.2 is loopback too
    line = one_error_line(
        natkit_turn_cli(natkit_turn.endpoint, "--peer", "127.0.0.2:9", "--count", "1")
    )
    assert "403" in line
    assert "start it with --allow-peer 127.0.0.1/32" in line


@pytest.mark.interop
def test_silent_peer_is_total_loss(coturn_turn: TurnServerUnderTest) -> None:
    with silent_udp_port() as sock:
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        done = natkit_turn_cli(
            coturn_turn.endpoint, "--peer", peer, "--count", "2", "--wait", "0.2"
        )
    line = one_error_line(done)
    assert "no echoes" in line
    assert "loss 100.0 %" in done.stdout
