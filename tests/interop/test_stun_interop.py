"""STUN Binding between natkit and real peers, over loopback.

* coturn's ``turnutils_stunclient`` (RFC 5389 client) against ``natkit serve``;
* Debian's ``stun`` (RFC 3489 client) against ``natkit serve``: RFC 8489 §12.2
  backwards compatibility, MAPPED-ADDRESS for requests without the magic cookie;
* ``natkit stun`` against coturn's ``turnserver`` over UDP and TCP;
* ``natkit stun`` against ``natkit serve`` over UDP, TCP and TLS, IPv4 and IPv6.

How each peer is started and what it prints is described in ``conftest.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from natkit.security.certs import CERT_FILE

from .peers import (
    TURNUTILS_FAILURES,
    Completed,
    Endpoint,
    ServerProcess,
    free_udp_port_pair,
    json_output,
    require_binary,
    rfc3489_mapped,
    rfc3489_primary,
    rfc3489_test_answered,
    run_client,
    turnutils_reflexive,
)

pytestmark = pytest.mark.interop

#: the limit natkit stun is given for one Binding transaction, in seconds
NATKIT_STUN_TIMEOUT = "5"


def _explain(done: Completed, server: ServerProcess) -> str:
    return f"{done.describe()}--- {server.name} log (tail)\n{server.log_tail()}"


# -- coturn's turnutils_stunclient -> natkit serve --------------------------


def test_turnutils_stunclient_against_coturn(coturn_server: ServerProcess) -> None:
    """Harness check: the reference client and server agree, so the output
    parsing used against natkit below is right."""
    client = require_binary("turnutils_stunclient", "coturn")
    server = coturn_server.endpoint
    done = run_client([client, "-p", str(server.port), server.ip])

    mapped = turnutils_reflexive(done.stdout)
    assert mapped, _explain(done, coturn_server)
    assert mapped[0].ip == "127.0.0.1", _explain(done, coturn_server)


def test_turnutils_stunclient_against_natkit_udp(natkit_server: ServerProcess) -> None:
    """RFC 8489 §6.3.1: the response is accepted and XOR-MAPPED-ADDRESS is the
    client's loopback address."""
    client = require_binary("turnutils_stunclient", "coturn")
    server = natkit_server.endpoint
    done = run_client([client, "-p", str(server.port), server.ip])

    output = done.stdout + done.stderr
    for failure in TURNUTILS_FAILURES:
        assert failure not in output, _explain(done, natkit_server)
    mapped = turnutils_reflexive(done.stdout)
    assert mapped, _explain(done, natkit_server)
    assert mapped[0].ip == "127.0.0.1", _explain(done, natkit_server)


def test_turnutils_stunclient_against_natkit_ipv6(
    natkit_server_v6: ServerProcess,
) -> None:
    """RFC 8489 §14.2: the IPv6 XOR-MAPPED-ADDRESS (XORed with cookie and
    transaction id) decodes to ::1 in coturn's client."""
    client = require_binary("turnutils_stunclient", "coturn")
    server = natkit_server_v6.endpoint
    done = run_client([client, "-p", str(server.port), server.ip])

    output = done.stdout + done.stderr
    for failure in TURNUTILS_FAILURES:
        assert failure not in output, _explain(done, natkit_server_v6)
    mapped = turnutils_reflexive(done.stdout)
    assert mapped, _explain(done, natkit_server_v6)
    assert mapped[0].ip == "::1", _explain(done, natkit_server_v6)


# -- Debian's stun (RFC 3489) -> natkit serve -------------------------------


def test_rfc3489_client_gets_mapped_address(natkit_server: ServerProcess) -> None:
    """RFC 8489 §12.2: a request without the magic cookie gets a response that
    echoes its 128-bit transaction id and carries MAPPED-ADDRESS, which the old
    client decodes as its own source address."""
    client = require_binary("stun", "stun-client")
    server = natkit_server.endpoint
    source_port = free_udp_port_pair()
    done = run_client([client, str(server), "-v", "-p", str(source_port)])

    # its first request (test I) comes from source_port and has no change flags
    assert rfc3489_test_answered(done.stderr, "I"), _explain(done, natkit_server)
    mapped = rfc3489_mapped(done.stderr)
    assert mapped, _explain(done, natkit_server)
    assert mapped[0] == Endpoint("127.0.0.1", source_port), _explain(
        done, natkit_server
    )

    # loopback has no NAT: anything but "Blocked"/an error means it was understood
    primary = rfc3489_primary(done.stdout)
    assert primary is not None, _explain(done, natkit_server)
    assert not primary.startswith(("Blocked", "Some")), _explain(done, natkit_server)


# -- natkit stun -> coturn turnserver, natkit serve -------------------------


@dataclass(frozen=True, slots=True)
class StunReport:
    """What ``natkit stun --json`` reported, reduced to what the tests check."""

    mapped: Endpoint
    local: Endpoint
    rtt_ms: float


def _endpoint(value: object, done: Completed) -> Endpoint:
    """An address in the JSON output: ``"ip:port"`` or ``"[ip]:port"``."""
    if isinstance(value, str):
        host, _, port_text = value.rpartition(":")
        if port_text.isdigit():
            return Endpoint(host.removeprefix("[").removesuffix("]"), int(port_text))
    pytest.fail(f"not an address: {value!r}\n{done.describe()}")


def _report(done: Completed) -> StunReport:
    data = json_output(done)
    if not isinstance(data, dict):
        pytest.fail(f"expected a JSON object:\n{done.describe()}")
    rtt = data.get("rtt_ms")
    if not isinstance(rtt, int | float):
        pytest.fail(f"no numeric rtt_ms:\n{done.describe()}")
    return StunReport(
        mapped=_endpoint(data.get("mapped"), done),
        local=_endpoint(data.get("local"), done),
        rtt_ms=float(rtt),
    )


def natkit_stun(
    natkit_argv: list[str],
    server: Endpoint,
    *,
    transport: str = "udp",
    extra: tuple[str, ...] = (),
) -> Completed:
    """``natkit stun SERVER --json`` over ``transport``."""
    argv = [*natkit_argv, "stun", str(server), "--json"]
    argv += ["--transport", transport, "--timeout", NATKIT_STUN_TIMEOUT, *extra]
    return run_client(argv)


def _check_loopback_mapping(
    done: Completed, server: ServerProcess, *, family_ip: str
) -> None:
    """On loopback there is no NAT: mapped == local, and the ip is ``family_ip``."""
    assert done.returncode == 0, _explain(done, server)
    report = _report(done)
    assert report.mapped.ip == family_ip, _explain(done, server)
    assert report.mapped == report.local, _explain(done, server)
    assert report.rtt_ms > 0, _explain(done, server)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_natkit_stun_against_coturn(
    natkit_argv: list[str], coturn_server: ServerProcess, transport: str
) -> None:
    """RFC 8489 §6.3.1 against the reference server, over UDP and TCP."""
    done = natkit_stun(natkit_argv, coturn_server.endpoint, transport=transport)
    _check_loopback_mapping(done, coturn_server, family_ip="127.0.0.1")


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_natkit_stun_against_natkit_serve(
    natkit_argv: list[str], natkit_server: ServerProcess, transport: str
) -> None:
    """natkit's client and server, IPv4, each transport (TLS verified against
    the certificate the server generated in its data directory)."""
    done = _natkit_stun_to(natkit_argv, natkit_server, transport)
    _check_loopback_mapping(done, natkit_server, family_ip="127.0.0.1")


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_natkit_stun_against_natkit_serve_ipv6(
    natkit_argv: list[str], natkit_server_v6: ServerProcess, transport: str
) -> None:
    """The same over [::1] (skipped where the machine has no IPv6 loopback)."""
    done = _natkit_stun_to(natkit_argv, natkit_server_v6, transport)
    _check_loopback_mapping(done, natkit_server_v6, family_ip="::1")


def _natkit_stun_to(
    natkit_argv: list[str], server: ServerProcess, transport: str
) -> Completed:
    if transport != "tls":
        return natkit_stun(natkit_argv, server.endpoint, transport=transport)
    if server.tls_endpoint is None:
        pytest.fail(f"{server.name} was started without a TLS listener")
    cafile = server.workdir / "data" / CERT_FILE
    assert cafile.is_file(), (
        f"no generated certificate at {cafile}\n{server.log_tail()}"
    )
    return natkit_stun(
        natkit_argv,
        server.tls_endpoint,
        transport="tls",
        extra=("--cafile", str(cafile)),
    )
