"""TURN (RFC 8656) between natkit and coturn's tools, over loopback.

* coturn's ``turnutils_uclient`` against ``natkit serve``: relayed traffic to
  coturn's echo peer ``turnutils_peer`` over UDP, TCP and TLS, with channels
  (ChannelBind/ChannelData, RFC 8656 §11-12) and with Send/Data indications
  (``-s``, §10), and client to client (``-y``: two allocations send to each
  other's relayed addresses) against a server with the default peer policy,
  where only the relayed-address exception lets them through;
* ``natkit turn`` against coturn's ``turnserver`` over UDP and TCP, with a
  channel and with Send/Data indications.

Every run must lose nothing. How each peer is started and what it prints is
described in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from .peers import (
    TURN_PASSWORD,
    TURN_REALM,
    TURN_USER,
    Completed,
    Endpoint,
    ServerProcess,
    json_output,
    require_binary,
    run_client,
    run_clients_together,
    uclient_errors,
    uclient_summary,
)

pytestmark = pytest.mark.interop

#: messages per uclient session (-n) and their size in bytes (-l)
MESSAGES = 20
LENGTH = 120
#: one uclient run takes 2-7 s on an idle machine; all of them run together
UCLIENT_TIMEOUT = 40.0
#: the relay port windows of the server fixtures (peers.relay_port_window)
RELAY_PORTS = range(50000, 60000)


def _explain(done: Completed, *servers: ServerProcess) -> str:
    logs = "".join(
        f"--- {s.name} log (tail)\n{s.log_tail()}\n" for s in servers if s is not None
    )
    return f"{done.describe()}{logs}"


# -- turnutils_uclient -> natkit serve ----------------------------------------


@dataclass(frozen=True, slots=True)
class UclientRun:
    """One turnutils_uclient configuration and what it must report."""

    #: the uclient flags besides credentials, server and peer
    flags: tuple[str, ...]
    #: -m: clients (paired up with -y)
    clients: int
    #: allocations, each one session of MESSAGES messages, per client
    sessions: int = 1
    #: against the default-policy server (no --allow-peer)
    strict: bool = False

    @property
    def tls(self) -> bool:
        return "-S" in self.flags

    @property
    def expected(self) -> int:
        return MESSAGES * self.clients * self.sessions


RUNS: Mapping[str, UclientRun] = {
    # without -c: an RTP and an RTCP allocation, the RTCP one to peer port + 1
    "udp-channel-rtp-rtcp": UclientRun((), clients=1, sessions=2),
    "udp-channel": UclientRun(("-c",), clients=2),
    "tcp-channel": UclientRun(("-c", "-t"), clients=2),
    "tls-channel": UclientRun(("-c", "-t", "-S"), clients=2),
    "udp-send": UclientRun(("-c", "-s"), clients=2),
    "tcp-send": UclientRun(("-c", "-t", "-s"), clients=1),
    "tls-send": UclientRun(("-c", "-t", "-S", "-s"), clients=1),
    # client to client: relayed address to relayed address, no --allow-peer
    "udp-client-to-client": UclientRun(("-c", "-y"), clients=2, strict=True),
    "udp-client-to-client-send": UclientRun(("-c", "-y", "-s"), clients=2, strict=True),
    "tcp-client-to-client": UclientRun(("-c", "-y", "-t"), clients=2, strict=True),
    "tls-client-to-client": UclientRun(
        ("-c", "-y", "-t", "-S"), clients=2, strict=True
    ),
}
#: the echo peer on loopback is denied by the default policy (403)
DENIED_RUN = "udp-channel-denied-peer"


def _uclient_argv(
    binary: str, server: ServerProcess, peer: Endpoint, run: UclientRun
) -> list[str]:
    endpoint = server.tls_endpoint if run.tls else server.endpoint
    if endpoint is None:
        raise RuntimeError(f"{server.name} has no TLS listener")
    return [
        binary,
        *("-u", TURN_USER, "-w", TURN_PASSWORD),
        *("-p", str(endpoint.port)),
        *("-e", peer.ip, "-r", str(peer.port)),
        *("-n", str(MESSAGES), "-l", str(LENGTH), "-m", str(run.clients)),
        *run.flags,
        endpoint.ip,
    ]


@pytest.fixture(scope="module")
def uclient_results(
    natkit_turn_server: ServerProcess,
    natkit_turn_server_strict: ServerProcess,
    turnutils_echo_peer: ServerProcess,
) -> dict[str, Completed]:
    """Every uclient run of :data:`RUNS` (and the denied one), all at once:
    each spends seconds waiting, so together they take as long as one."""
    binary = require_binary("turnutils_uclient", "coturn")
    peer = turnutils_echo_peer.endpoint
    argvs = {
        name: _uclient_argv(
            binary,
            natkit_turn_server_strict if run.strict else natkit_turn_server,
            peer,
            run,
        )
        for name, run in RUNS.items()
    }
    argvs[DENIED_RUN] = _uclient_argv(
        binary, natkit_turn_server_strict, peer, UclientRun(("-c",), clients=1)
    )
    return run_clients_together(argvs, timeout=UCLIENT_TIMEOUT)


@pytest.mark.parametrize("name", list(RUNS))
def test_turnutils_uclient_through_natkit(
    name: str,
    uclient_results: dict[str, Completed],
    natkit_turn_server: ServerProcess,
    natkit_turn_server_strict: ServerProcess,
) -> None:
    """RFC 8656 §7-12 as coturn's client uses them: Allocate (with the 401
    challenge), Refresh, ChannelBind or CreatePermission, ChannelData or
    Send/Data; every message comes back and none is lost."""
    run = RUNS[name]
    done = uclient_results[name]
    server = natkit_turn_server_strict if run.strict else natkit_turn_server
    explain = _explain(done, server)

    assert done.returncode == 0, explain
    assert not uclient_errors(done.stdout + done.stderr), explain
    summary = uclient_summary(done.stdout + done.stderr)
    assert summary is not None, explain
    assert summary.sent == run.expected, explain
    assert summary.received == summary.sent, explain
    assert summary.lost == 0 and summary.send_dropped == 0, explain


def test_turnutils_uclient_loopback_peer_denied_by_default(
    uclient_results: dict[str, Completed],
    natkit_turn_server_strict: ServerProcess,
) -> None:
    """The control for the client-to-client runs: without --allow-peer the
    same server refuses the loopback echo peer (403, RFC 8656 §11.2), so what
    let those through is the relayed-address exception alone."""
    done = uclient_results[DENIED_RUN]
    explain = _explain(done, natkit_turn_server_strict)

    assert done.returncode != 0, explain
    assert 403 in uclient_errors(done.stdout + done.stderr), explain
    assert " denied: " in natkit_turn_server_strict.log_text(), explain


def test_turnutils_uclient_against_coturn(
    coturn_turn_server: ServerProcess, turnutils_echo_peer: ServerProcess
) -> None:
    """Harness check: coturn's client and server agree, so the summary parsing
    used against natkit above is right."""
    binary = require_binary("turnutils_uclient", "coturn")
    run = UclientRun(("-c",), clients=1)
    argv = _uclient_argv(binary, coturn_turn_server, turnutils_echo_peer.endpoint, run)
    done = run_client(argv, timeout=UCLIENT_TIMEOUT)
    explain = _explain(done, coturn_turn_server)

    summary = uclient_summary(done.stdout + done.stderr)
    assert summary is not None, explain
    assert summary.sent == run.expected and summary.received == summary.sent, explain
    assert summary.lost == 0, explain


# -- natkit turn -> coturn ------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "send"])
def test_natkit_turn_against_coturn(
    natkit_argv: list[str],
    coturn_turn_server: ServerProcess,
    transport: str,
    channel: bool,
) -> None:
    """natkit's TURN client allocates on coturn (answering its 401 challenge),
    relays to its own loopback echo peer and gets every payload back."""
    server = coturn_turn_server.endpoint
    argv = [
        *natkit_argv,
        "turn",
        str(server),
        *("--user", TURN_USER, "--password", TURN_PASSWORD),
        *("--realm", TURN_REALM, "--transport", transport),
        *("--echo", "--count", "20", "--interval", "10", "--wait", "2"),
        *("--timeout", "5", "--json"),
    ]
    if not channel:
        argv.append("--no-channel")
    done = run_client(argv, timeout=30)
    explain = _explain(done, coturn_turn_server) + _coturn_log(coturn_turn_server)

    assert done.returncode == 0, explain
    report = json_output(done)
    assert isinstance(report, dict), explain
    assert report["transport"] == transport, explain
    assert report["realm"] == TURN_REALM, explain
    relayed_ip, _, relayed_port = str(report["relayed"]).rpartition(":")
    assert relayed_ip == "127.0.0.1", explain
    assert int(relayed_port) in RELAY_PORTS, explain
    assert report["sent"] == 20 and report["received"] == 20, explain
    assert report["loss"] == 0, explain
    if channel:
        assert 0x4000 <= int(report["channel"]) <= 0x4FFF, explain
    else:
        assert report.get("channel") is None, explain


def _coturn_log(server: ServerProcess, lines: int = 40) -> str:
    """The tail of coturn's own log file (its stdout is quiet)."""
    try:
        text = (server.workdir / "turn.log").read_text(errors="replace")
    except OSError as exc:
        return f"--- turn.log: {exc}\n"
    return "--- turn.log (tail)\n" + "\n".join(text.splitlines()[-lines:]) + "\n"
