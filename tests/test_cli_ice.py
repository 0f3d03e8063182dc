"""``natkit ice offer|answer``: two peers as subprocesses, the way a user runs them.

Both bind their host candidates to 127.0.0.1 only (``--loopback --host-ip
127.0.0.1``): nothing leaves loopback. They swap descriptions through files
in the test's directory, or through each other's stdin and stdout. The
relay case uses ``natkit serve`` from ``test_net_turn_client``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from natkit.cli import main
from ports import pick_block
from test_net_turn_client import (
    NATKIT_ARGV,
    PASSWORD,
    USER,
    TurnServerUnderTest,
    natkit_env,
    run_natkit,
)

RUN_TIMEOUT = 30
LOOPBACK = ["--loopback", "--host-ip", "127.0.0.1", "--timeout", "15"]


@pytest.fixture(scope="module")
def natkit_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_natkit(tmp_path_factory)


def _start(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*NATKIT_ARGV, "ice", *args],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=natkit_env(),
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def _pair_with_files(tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    offer_file, answer_file = tmp_path / "offer.json", tmp_path / "answer.json"
    files = ["--out", str(offer_file), "--peer", str(answer_file)]
    offer = _start("offer", *files, *extra, "--json")
    files = ["--peer", str(offer_file), "--out", str(answer_file)]
    answer = _start("answer", *files, *extra, "--json")
    reports = []
    for process in (offer, answer):
        code, out, err = _finish(process)
        assert code == 0, err
        assert err == "", err
        reports.append(json.loads(out))

    # the descriptions the two wrote
    described = json.loads(offer_file.read_text())
    assert described["controlling"] is True
    assert all(line.startswith("candidate:") for line in described["candidates"])
    assert json.loads(answer_file.read_text())["offer_ufrag"] == described["ufrag"]
    return reports


def test_offer_and_answer_connect_host_to_host_through_files(tmp_path: Path) -> None:
    offer, answer = _pair_with_files(tmp_path, *LOOPBACK)
    assert (offer["role"], answer["role"]) == ("controlling", "controlled")
    for report in (offer, answer):
        assert report["local"]["type"] == "host"
        assert report["remote"]["type"] == "host"
        assert report["local"]["address"].startswith("127.0.0.1:")
        assert report["relayed"] is False
        assert 0 < report["connected_ms"] < 15000
        assert report["rtt_ms"] is not None and report["rtt_ms"] > 0
        assert report["data_rtt_ms"] is not None and report["data_rtt_ms"] > 0
    assert offer["local"]["address"] == answer["remote"]["address"]
    assert offer["remote"]["address"] == answer["local"]["address"]


def _wait_for_tcp(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail("natkit ice rendezvous did not start")


def test_offer_and_answer_through_the_http_rendezvous() -> None:
    port = pick_block(1)
    server = _start("rendezvous", "--listen", f"127.0.0.1:{port}")
    try:
        _wait_for_tcp(port, server)
        room = f"http://127.0.0.1:{port}/cli-test"
        offer = _start(
            "offer", *LOOPBACK, "--out", f"{room}/offer", "--peer", f"{room}/answer"
        )
        answer = _start(
            "answer", *LOOPBACK, "--peer", f"{room}/offer", "--out", f"{room}/answer"
        )
        for process in (offer, answer):
            code, out, err = _finish(process)
            assert code == 0, err
            assert "host 127.0.0.1:" in out, out
    finally:
        server.terminate()
        code, _, err = _finish(server)
    assert code == 0, err
    assert f"on http://127.0.0.1:{port}/" in err


def test_offer_and_answer_through_stdin_and_stdout() -> None:
    offer = _start("offer", *LOOPBACK, "--json", stdin=subprocess.PIPE)
    answer = _start("answer", *LOOPBACK, "--json", stdin=subprocess.PIPE)
    assert offer.stdin and offer.stdout and answer.stdin and answer.stdout
    # each description is the first stdout line; the report follows
    answer.stdin.write(offer.stdout.readline())
    answer.stdin.flush()
    offer.stdin.write(answer.stdout.readline())
    offer.stdin.flush()
    reports = []
    for process in (offer, answer):
        code, out, err = _finish(process)
        assert code == 0, err
        reports.append(json.loads(out))
    assert [r["role"] for r in reports] == ["controlling", "controlled"]
    assert all(r["local"]["type"] == r["remote"]["type"] == "host" for r in reports)


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_relay_only_through_natkit_serve(
    tmp_path: Path, natkit_turn: TurnServerUnderTest, transport: str
) -> None:
    turn = ["--turn-user", USER, "--turn-password", PASSWORD, "--relay-only"]
    turn += ["--timeout", "15", "--turn-transport", transport]
    if transport == "tls":
        assert natkit_turn.tls_port is not None and natkit_turn.cafile is not None
        turn += ["--turn", f"{natkit_turn.ip}:{natkit_turn.tls_port}"]
        turn += ["--turn-cafile", str(natkit_turn.cafile)]
    else:
        turn += ["--turn", natkit_turn.endpoint]
    offer, answer = _pair_with_files(tmp_path, *turn)
    for report in (offer, answer):
        assert report["local"]["type"] == "relay", natkit_turn.log_tail()
        assert report["remote"]["type"] == "relay"
        assert report["relayed"] is True
        assert report["local_candidates"] == 1


def test_text_output_names_the_pair(tmp_path: Path) -> None:
    offer_file, answer_file = tmp_path / "o.json", tmp_path / "a.json"
    offer = _start(
        "offer", "--out", str(offer_file), "--peer", str(answer_file), *LOOPBACK
    )
    answer = _start(
        "answer", "--peer", str(offer_file), "--out", str(answer_file), *LOOPBACK
    )
    _finish(offer)
    code, out, err = _finish(answer)
    assert code == 0, err
    lines = out.splitlines()
    assert any(
        line.startswith("selected pair") and "host 127.0.0.1:" in line for line in lines
    )
    assert any(
        line.startswith("connected in") and line.endswith(" ms") for line in lines
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["offer", "--relay-only"], "--relay-only needs --turn"),
        (["offer", "--turn", "127.0.0.1:3478"], "--turn needs --turn-user"),
        (["offer", "--turn-user", "u"], "need --turn"),
        (["answer", "--host-ip", "nope"], "--host-ip 'nope' is not an IP address"),
        (["offer", "--stun", "bad host:1"], "malformed address"),
        (["offer", "--turn-transport", "sctp"], "invalid value"),
        (["rendezvous", "--listen", "no such:host:1"], "--listen"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["ice", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("natkit: error:"), result.output
    assert message in lines[0]


def test_a_bad_or_missing_peer_description_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"ufrag": "abcd", "pwd": "short"}')
    cases = [
        (["--peer", str(bad)], "pwd must be 22-256 characters"),
        (["--peer", str(tmp_path / "missing.json")], "no peer description in"),
    ]
    for peer, message in cases:
        args = ["ice", "answer", *peer, "--host-ip", "127.0.0.1", "--timeout", "0.3"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output
