"""Each lab NAT type checked directly with UDP, independent of natkit's prober.

A server in the internet namespace listens on both server addresses and two
ports and answers with the source address it saw (RFC 5780 §4.3 style), so
the tests read the mapping (RFC 4787 §4.1) from three destinations and the
filtering (RFC 4787 §5) from unsolicited packets sent to the mapped address
from the other address/port combinations.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from natkit.lab.nat_rules import Behaviour, NatSpec, NatType, ShapingMethod
from natkit.lab.topology import Lab, LabHost

from .conftest import PORTS, client, prefix, start_server

pytestmark = pytest.mark.root

ALL_TYPES = list(NatType)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One lab with every NAT type (h1..h5 in NatType order) and the server."""
    with Lab(ALL_TYPES, name_prefix=prefix("types")) as built:
        start_server(built)
        yield built


def host_of(lab: Lab, nat: NatType) -> LabHost:
    return next(h for h in lab.hosts if h.nat.type is nat)


@pytest.mark.parametrize("nat", ALL_TYPES, ids=str)
def test_mapping(lab: Lab, nat: NatType) -> None:
    """RFC 4787 §4.1: the mapped address seen from S1:P, S2:P and S1:Q."""
    host = host_of(lab, nat)
    result = client(lab, host, "mapping")
    seen = [tuple(s) for s in result["seen"]]
    local = result["local"]

    assert all(ip == host.public_ip for ip, _ in seen), seen
    if nat.mapping is None:
        # open: no translation at all
        assert seen == [(host.ip, local)] * 3
    elif nat.mapping is Behaviour.ENDPOINT_INDEPENDENT:
        # one mapping for every destination, and Linux keeps the port
        assert seen == [(host.router_wan_ip, local)] * 3
    else:
        # symmetric: a new mapping per destination address and port
        assert len(set(seen)) == 3, seen


EXPECTED_FROM = {
    Behaviour.ENDPOINT_INDEPENDENT: 3,
    Behaviour.ADDRESS_DEPENDENT: 1,
    Behaviour.ADDRESS_AND_PORT_DEPENDENT: 0,
}


@pytest.mark.parametrize("nat", ALL_TYPES, ids=str)
def test_filtering(lab: Lab, nat: NatType) -> None:
    """RFC 4787 §5: which unsolicited packets to the mapping reach the host.

    The host has talked to S1:P only; S1:Q, S2:P and S2:Q then send to its
    mapped address, and S1:P closes with "done" (always allowed).
    """
    host = host_of(lab, nat)
    result = client(lab, host, "filtering")
    s1, s2 = lab.server_ips
    got = sorted(tuple(src) for src in result["from"])

    assert result["done"], result
    if nat.filtering is Behaviour.ENDPOINT_INDEPENDENT:
        assert got == sorted([(s1, PORTS[1]), (s2, PORTS[0]), (s2, PORTS[1])])
    elif nat.filtering is Behaviour.ADDRESS_DEPENDENT:
        assert got == [(s1, PORTS[1])]
    else:
        assert got == []
    assert len(got) == EXPECTED_FROM[nat.filtering]


def test_unsolicited_is_dropped_not_rejected(lab: Lab) -> None:
    """A packet to an unmapped port of a router gets no ICMP error back."""
    host = host_of(lab, NatType.PORT_RESTRICTED_CONE)
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
        f"s.connect(('{host.router_wan_ip}', 40999)); s.settimeout(0.5);"
        "s.send(b'x');\n"
        "try:\n s.recv(10); print('answered')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except TimeoutError: print('silent')"
    )
    proc = lab.exec("inet", [sys.executable, "-c", code])
    assert proc.stdout.strip() == "silent", proc.stderr


def test_binding_timeout() -> None:
    """RFC 4787 §4.3: with a 5 s UDP timeout a binding idle 3 s lives, 6.5 s dies."""
    spec = NatSpec(type=NatType.PORT_RESTRICTED_CONE, udp_timeout=5)
    with Lab([spec], name_prefix=prefix("tmo")) as lab:
        start_server(lab)
        router = lab.hosts[0].router_netns
        sysctl = ["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout_stream"]
        assert lab.exec(router, sysctl).stdout.strip() == "5"

        result = client(lab, lab.hosts[0], "timeout", 3.0, 6.5)

        assert result == {"short": True, "long": False}
        entries = lab.exec(router, ["conntrack", "-L", "-p", "udp"])
        assert entries.returncode == 0, entries.stderr


def test_udp_timeout_is_per_namespace() -> None:
    """The conntrack timeout set in a router does not change the host's."""
    key = "net.netfilter.nf_conntrack_udp_timeout"
    before = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True)
    spec = NatSpec(type=NatType.SYMMETRIC, udp_timeout=7)
    with Lab([spec], name_prefix=prefix("sysctl")) as lab:
        inside = lab.exec(lab.hosts[0].router_netns, ["sysctl", "-n", key])
        after = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True)
    assert inside.stdout.strip() == "7"
    assert after.stdout == before.stdout


def test_delay_visible_in_rtt() -> None:
    """50 ms of WAN delay adds about 50 ms to the round trip."""
    with Lab([NatType.PORT_RESTRICTED_CONE], name_prefix=prefix("delay")) as lab:
        start_server(lab)
        host = lab.hosts[0]
        base = statistics.median(client(lab, host, "rtt", 5)["rtt_ms"])

        method = lab.set_shaping(host, delay_ms=50)
        delayed = statistics.median(client(lab, host, "rtt", 5)["rtt_ms"])

        lab.set_shaping(host)
        again = statistics.median(client(lab, host, "rtt", 5)["rtt_ms"])
    print(f"shaping by {method}: rtt {base:.2f} -> {delayed:.2f} -> {again:.2f} ms")
    assert method in (ShapingMethod.NETEM, ShapingMethod.NFTABLES)
    assert 48 <= delayed - base <= 250
    assert again < 25


def test_loss_drops_a_share() -> None:
    """50 % loss on the WAN link: of 60 echoes, clearly some but not all return."""
    spec = NatSpec(type=NatType.FULL_CONE, loss_percent=50)
    with Lab([spec], name_prefix=prefix("loss")) as lab:
        start_server(lab)
        result = client(lab, lab.hosts[0], "loss", 60)
    # binomial(60, 0.5): mean 30, sd 3.9; 10..50 is more than 5 sd either side
    assert 10 <= result["replies"] <= 50, result


def test_spec_delay_applies_at_start() -> None:
    """A NatSpec's delay_ms is in force as soon as the lab is up."""
    spec = NatSpec(type=NatType.SYMMETRIC, delay_ms=30)
    started = time.monotonic()
    with Lab([spec], name_prefix=prefix("sdel")) as lab:
        start_server(lab)
        rtts = client(lab, lab.hosts[0], "rtt", 3)["rtt_ms"]
    assert min(rtts) >= 29, rtts
    assert time.monotonic() - started < 20
