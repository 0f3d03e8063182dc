"""RFC 5780 NAT discovery interop: natkit and coturn, both ways, on loopback.

Servers, each with two loopback IPs (127.0.0.1 and 127.0.0.2 are both on
``lo`` on Linux) and two ports:

coturn ``turnserver`` 4.6.1
    ``turnserver -n --listening-ip 127.0.0.1 --listening-ip 127.0.0.2
    --relay-ip 127.0.0.1 --listening-port P --no-tls --no-dtls --no-cli
    --stun-only --no-auth --log-file DIR/turn.log --simple-log
    --no-stdout-log --userdb DIR/turndb --pidfile DIR/turnserver.pid``.
    RFC 5780 is on by itself when there are two listening IPs of one family
    (``--no-rfc5780`` would turn it off); the alternate port is
    ``--alt-listening-port``, by default the listening port + 1, and it
    listens on all four addresses (UDP and TCP).

    What it does on the wire, seen with raw requests: OTHER-ADDRESS is
    always 127.0.0.2 with the other port, also for a request that came in on
    127.0.0.2 (RFC 5780 §7.4 asks for the other IP, 127.0.0.1); a
    CHANGE-REQUEST for another IP is honoured only on 127.0.0.1 (on 127.0.0.2
    the response comes from the same address); a 424-byte request with
    PADDING gets a 1596-byte response (padded towards the MTU, RFC 5780
    §6.1), where natkit never answers with more than the request's size.
    None of this changes a probe that starts at 127.0.0.1:P.

``natkit serve --rfc5780``
    ``natkit serve --listen udp:127.0.0.1:P --listen tcp:127.0.0.1:P
    --rfc5780 --alternate-ip 127.0.0.2 --data-dir DIR/data --no-turn``
    (alternate port P + 1 by default).

Clients:

``turnutils_natdiscovery`` (coturn 4.6.1)
    ``turnutils_natdiscovery -m -f -p P 127.0.0.1``: ``-m`` mapping, ``-f``
    filtering, ``-H`` hairpinning, ``-t -T SECONDS`` mapping lifetime,
    ``-c -A IP`` collision, ``-P`` adds 1500 bytes of PADDING, ``-L IP``
    local address. It prints one block per response (``RFC 5780 response
    N``, ``Response origin: : IP:PORT``, ``Other addr: : IP:PORT``, ``UDP
    reflexive addr: IP:PORT``) and a verdict between ``====`` lines: ``NAT
    with Endpoint Independent Mapping!`` (or ``Address Dependent``,
    ``Address and Port Dependent``), the same with ``Filtering!``, and for
    ``-H`` ``Received a request (maybe a successful hairpinning)``. It says
    "NAT with Endpoint Independent Mapping!" on loopback too, where natkit
    says "open" (no NAT) with endpoint-independent mapping: the behaviours
    agree, only the names differ. It always exits 0.

``natkit probe HOST:PORT --json``
    mapping, filtering, nat_type, other_address, hairpinning,
    binding_lifetime_s.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from natkit.bench.cpu import coturn_base_options

from .peers import (
    Completed,
    Endpoint,
    Listener,
    ServerProcess,
    json_output,
    require_binary,
    run_client,
    running_server,
)

pytestmark = pytest.mark.interop

A1 = "127.0.0.1"
A2 = "127.0.0.2"

#: turnutils_natdiscovery's verdict lines, in natkit's (RFC 4787) words
_VERDICT = re.compile(
    r"^NAT with (Endpoint Independent|Address Dependent|Address and Port Dependent)"
    r" (Mapping|Filtering)!\s*$",
    re.M,
)
_NO_NAT = re.compile(r"^No NAT! \(Endpoint Independent Mapping\)\s*$", re.M)
_OTHER = re.compile(r"Other addr: : (\S+):(\d+)\s*$", re.M)
_RESPONSE = re.compile(r"^RFC 5780 response \d+\s*$", re.M)
_HAIRPIN = "Received a request (maybe a successful hairpinning)"
_WORDS = {
    "Endpoint Independent": "endpoint-independent",
    "Address Dependent": "address-dependent",
    "Address and Port Dependent": "address-and-port-dependent",
}


def _bindable(ip: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def _two_port_pair(attempts: int = 100) -> int:
    """P with P and P + 1 free for UDP and TCP on 127.0.0.1 and 127.0.0.2."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((A1, 0))
            port = int(sock.getsockname()[1])
        if port < 0xFFFF and all(
            _bindable(ip, p, kind)
            for ip in (A1, A2)
            for p in (port, port + 1)
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        ):
            return port
    raise RuntimeError("no free ports P, P+1 on 127.0.0.1 and 127.0.0.2")


def _need_two_loopback_ips() -> None:
    if not _bindable(A2, 0, socket.SOCK_DGRAM):
        pytest.skip("127.0.0.2 cannot be bound here (needs 127.0.0.0/8 on lo)")


@dataclass(frozen=True, slots=True)
class Rfc5780Server:
    """A running RFC 5780 server: its name, its primary port P, its process."""

    name: str
    port: int
    process: ServerProcess


def _listeners(port: int) -> list[Listener]:
    # every one of the four UDP addresses answers before the tests start
    return [
        Listener(Endpoint(ip, p), udp=True) for ip in (A1, A2) for p in (port, port + 1)
    ]


@pytest.fixture(scope="module")
def coturn_rfc5780(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rfc5780Server]:
    """coturn's ``turnserver`` with RFC 5780 on 127.0.0.1 and 127.0.0.2."""
    _need_two_loopback_ips()
    binary = require_binary("turnserver", "coturn")
    workdir = tmp_path_factory.mktemp("coturn-rfc5780")
    port = _two_port_pair()
    argv = [
        binary,
        "-n",
        "--listening-ip",
        A1,
        "--listening-ip",
        A2,
        "--relay-ip",
        A1,
        "--listening-port",
        str(port),
        "--stun-only",
        "--no-auth",
        *coturn_base_options(workdir),
    ]
    with running_server(
        "turnserver", argv, workdir=workdir, listeners=_listeners(port)
    ) as process:
        yield Rfc5780Server("coturn", port, process)


@pytest.fixture(scope="module")
def natkit_rfc5780(
    natkit_argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rfc5780Server]:
    """``natkit serve --rfc5780`` on 127.0.0.1, alternate 127.0.0.2."""
    _need_two_loopback_ips()
    workdir = tmp_path_factory.mktemp("natkit-rfc5780")
    port = _two_port_pair()
    argv = [
        *natkit_argv,
        "serve",
        "--listen",
        f"udp:{A1}:{port}",
        "--listen",
        f"tcp:{A1}:{port}",
        "--rfc5780",
        "--alternate-ip",
        A2,
        "--data-dir",
        str(workdir / "data"),
        "--no-turn",
        "--log-level",
        "debug",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    with running_server(
        "natkit-serve", argv, workdir=workdir, listeners=_listeners(port), env=env
    ) as process:
        yield Rfc5780Server("natkit", port, process)


@pytest.fixture(params=["coturn", "natkit"])
def rfc5780_server(request: pytest.FixtureRequest) -> Rfc5780Server:
    fixture = "coturn_rfc5780" if request.param == "coturn" else "natkit_rfc5780"
    server: Rfc5780Server = request.getfixturevalue(fixture)
    return server


@pytest.fixture(scope="session")
def natdiscovery() -> str:
    return require_binary("turnutils_natdiscovery", "coturn")


# -- the two clients -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What ``turnutils_natdiscovery`` concluded, in RFC 4787 words."""

    mapping: str | None
    filtering: str | None
    other: list[Endpoint]
    responses: int


def parse_natdiscovery(output: str) -> Verdicts:
    mapping = filtering = None
    for words, kind in _VERDICT.findall(output):
        if kind == "Mapping":
            mapping = _WORDS[words]
        else:
            filtering = _WORDS[words]
    if mapping is None and _NO_NAT.search(output):
        mapping = "endpoint-independent"
    other = [Endpoint(ip, int(port)) for ip, port in _OTHER.findall(output)]
    return Verdicts(mapping, filtering, other, len(_RESPONSE.findall(output)))


def run_natdiscovery(binary: str, port: int, *flags: str) -> tuple[Verdicts, Completed]:
    done = run_client([binary, *flags, "-p", str(port), A1])
    return parse_natdiscovery(done.stdout + done.stderr), done


def run_probe(natkit_argv: list[str], port: int, *flags: str) -> dict[str, Any]:
    done = run_client([*natkit_argv, "probe", f"{A1}:{port}", "--json", *flags])
    assert done.returncode == 0, done.describe()
    data = json_output(done)
    assert isinstance(data, dict), done.describe()
    return data


# -- agreement -------------------------------------------------------------------------


def test_natkit_probe_and_natdiscovery_agree(
    rfc5780_server: Rfc5780Server, natdiscovery: str, natkit_argv: list[str]
) -> None:
    """Both clients against one server: the same mapping and filtering.

    On loopback there is no NAT: endpoint-independent for both.
    """
    port = rfc5780_server.port
    verdicts, done = run_natdiscovery(natdiscovery, port, "-m", "-f")
    probe = run_probe(natkit_argv, port)

    assert verdicts.mapping == probe["mapping"], done.describe()
    assert verdicts.filtering == probe["filtering"], done.describe()
    assert probe["mapping"] == "endpoint-independent"
    assert probe["filtering"] == "endpoint-independent"
    assert probe["nat_type"] == "open"
    assert probe["mapped"] == probe["local"]

    # test I's OTHER-ADDRESS, as both clients read it
    other = Endpoint(A2, port + 1)
    assert probe["other_address"] == str(other)
    assert verdicts.other[0] == other, done.describe()


def test_natkit_probe_against_both_servers_agrees(
    coturn_rfc5780: Rfc5780Server,
    natkit_rfc5780: Rfc5780Server,
    natkit_argv: list[str],
) -> None:
    """One client, two servers: the same verdict from coturn and natkit."""
    keys = ("mapping", "filtering", "nat_type", "hairpinning", "port_allocation")
    at_coturn = run_probe(natkit_argv, coturn_rfc5780.port)
    at_natkit = run_probe(natkit_argv, natkit_rfc5780.port)
    assert {k: at_coturn[k] for k in keys} == {k: at_natkit[k] for k in keys}


def test_natdiscovery_against_both_servers_agrees(
    coturn_rfc5780: Rfc5780Server, natkit_rfc5780: Rfc5780Server, natdiscovery: str
) -> None:
    at_coturn, done_coturn = run_natdiscovery(
        natdiscovery, coturn_rfc5780.port, "-m", "-f"
    )
    at_natkit, done_natkit = run_natdiscovery(
        natdiscovery, natkit_rfc5780.port, "-m", "-f"
    )
    assert (at_natkit.mapping, at_natkit.filtering) == (
        at_coturn.mapping,
        at_coturn.filtering,
    ), done_natkit.describe() + done_coturn.describe()
    assert at_natkit.mapping == "endpoint-independent", done_natkit.describe()
    assert at_natkit.filtering == "endpoint-independent", done_natkit.describe()


# -- the other natdiscovery tests against natkit serve ---------------------------------


def test_natdiscovery_hairpinning_against_natkit(
    natkit_rfc5780: Rfc5780Server, natdiscovery: str, natkit_argv: list[str]
) -> None:
    _, done = run_natdiscovery(natdiscovery, natkit_rfc5780.port, "-H")
    assert _HAIRPIN in done.stdout + done.stderr, done.describe()
    assert run_probe(natkit_argv, natkit_rfc5780.port)["hairpinning"] is True


def test_natdiscovery_with_padding_against_natkit(
    natkit_rfc5780: Rfc5780Server, natdiscovery: str
) -> None:
    """``-P``: 1500 bytes of PADDING in every request; still answered
    (natkit pads the response up to the request's size, no more)."""
    verdicts, done = run_natdiscovery(
        natdiscovery, natkit_rfc5780.port, "-m", "-f", "-P"
    )
    assert "error" not in done.stdout.lower(), done.describe()
    assert verdicts.mapping == "endpoint-independent", done.describe()
    assert verdicts.filtering == "endpoint-independent", done.describe()


def test_natdiscovery_lifetime_test_against_both_servers(
    coturn_rfc5780: Rfc5780Server, natkit_rfc5780: Rfc5780Server, natdiscovery: str
) -> None:
    """``-t -T 1``: the RFC 5780 §4.6 exchange gets as many answers from
    natkit as from coturn."""
    at_coturn, done_coturn = run_natdiscovery(
        natdiscovery, coturn_rfc5780.port, "-t", "-T", "1"
    )
    at_natkit, done_natkit = run_natdiscovery(
        natdiscovery, natkit_rfc5780.port, "-t", "-T", "1"
    )
    assert at_coturn.responses >= 2, done_coturn.describe()
    assert at_natkit.responses == at_coturn.responses, done_natkit.describe()


def test_natkit_lifetime_probe_against_coturn(
    coturn_rfc5780: Rfc5780Server, natkit_argv: list[str]
) -> None:
    """natkit's §4.6 search uses RESPONSE-PORT; coturn honours it."""
    probe = run_probe(natkit_argv, coturn_rfc5780.port, "--lifetime-max", "1")
    assert probe["binding_lifetime_s"] == 1.0


def test_natkit_serve_logs_its_four_addresses(natkit_rfc5780: Rfc5780Server) -> None:
    p1, p2 = natkit_rfc5780.port, natkit_rfc5780.port + 1
    expected = f"RFC 5780 on {A1}:{p1}, {A1}:{p2}, {A2}:{p1}, {A2}:{p2}"
    assert expected in natkit_rfc5780.process.log_text()
