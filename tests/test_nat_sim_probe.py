"""RFC 5780 discovery end to end in the NAT simulator (simulated time).

The prober (natkit.nat.discovery), the RFC 5780 server
(natkit.nat.server) and the plain STUN server (natkit.stun.server) run on
the in-memory network of natkit.lab.sim, behind NAT boxes configured with
every RFC 4787 behaviour; each test checks that the probe names the
behaviour the box was given, or says it cannot tell.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natkit.lab.sim import (
    NAT_EXTERNAL_IP,
    PRIVATE_HOST_IP,
    BindingServer,
    FilteringPolicy,
    LinkProfile,
    MappingPolicy,
    NatConfig,
    Network,
    PortPolicy,
    ProbeHost,
    Rfc5780Server,
    build_lab,
)
from natkit.nat.classify import Behaviour, NatType, PortAllocation
from natkit.nat.discovery import ProbeConfig, ProbeResult
from natkit.nat.endpoint import Endpoint

EIM = MappingPolicy.ENDPOINT_INDEPENDENT
ADM = MappingPolicy.ADDRESS_DEPENDENT
APDM = MappingPolicy.ADDRESS_AND_PORT_DEPENDENT
EIF = FilteringPolicy.ENDPOINT_INDEPENDENT
ADF = FilteringPolicy.ADDRESS_DEPENDENT
APDF = FilteringPolicy.ADDRESS_AND_PORT_DEPENDENT

#: RFC 3489 §5 names of the nine RFC 4787 combinations
CLASSIC = {
    (EIM, EIF): NatType.FULL_CONE,
    (EIM, ADF): NatType.RESTRICTED_CONE,
    (EIM, APDF): NatType.PORT_RESTRICTED_CONE,
    **{(m, f): NatType.SYMMETRIC for m in (ADM, APDM) for f in (EIF, ADF, APDF)},
}


def probe(
    nat: NatConfig | None,
    *,
    seed: int = 0,
    profile: LinkProfile | None = None,
    config: ProbeConfig | None = None,
) -> ProbeResult:
    return build_lab(nat, seed=seed, profile=profile).probe(config=config)


def assert_behaviours(
    result: ProbeResult, mapping: MappingPolicy, filtering: FilteringPolicy
) -> None:
    assert result.mapping.value == mapping.value, result.notes
    assert result.filtering.value == filtering.value, result.notes
    assert result.nat_type is CLASSIC[mapping, filtering], result.notes


# --- RFC 5780 §4.3 and §4.4: the nine combinations -------------------------------


@pytest.mark.parametrize("ports", list(PortPolicy))
@pytest.mark.parametrize("filtering", [EIF, ADF, APDF])
@pytest.mark.parametrize("mapping", [EIM, ADM, APDM])
def test_mapping_and_filtering(
    mapping: MappingPolicy, filtering: FilteringPolicy, ports: PortPolicy
) -> None:
    lab = build_lab(NatConfig(mapping=mapping, filtering=filtering, ports=ports))
    result = lab.probe()

    assert_behaviours(result, mapping, filtering)
    assert result.mapped is not None and result.mapped.ip == NAT_EXTERNAL_IP
    assert result.local.ip == PRIVATE_HOST_IP
    assert result.other_address == lab.server.responder.alternate
    assert result.recommended_keepalive_s == 15.0
    # without the lifetime search the probe is quick, even with timeouts
    assert lab.network.now < 15.0


def test_open_internet() -> None:
    result = probe(None)
    assert result.nat_type is NatType.OPEN
    assert result.mapping is Behaviour.ENDPOINT_INDEPENDENT
    assert result.filtering is Behaviour.ENDPOINT_INDEPENDENT
    assert result.mapped == result.local
    assert result.recommended_keepalive_s is None


def test_udp_blocked() -> None:
    result = probe(NatConfig(block_udp=True))
    assert result.nat_type is NatType.UDP_BLOCKED
    assert result.mapping is Behaviour.UNDETERMINED
    assert result.filtering is Behaviour.UNDETERMINED
    assert result.mapped is None
    assert result.port_allocation is PortAllocation.UNDETERMINED
    assert result.to_json()["nat_type"] == "udp-blocked"


# --- hairpinning (RFC 5780 §3.4) and ports --------------------------------------


@pytest.mark.parametrize("mapping", [EIM, APDM])
@pytest.mark.parametrize("filtering", [EIF, APDF])
@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(
    hairpinning: bool, mapping: MappingPolicy, filtering: FilteringPolicy
) -> None:
    config = NatConfig(mapping=mapping, filtering=filtering, hairpinning=hairpinning)
    result = probe(config)
    assert result.hairpinning is hairpinning
    assert_behaviours(result, mapping, filtering)


@pytest.mark.parametrize("mapping", [EIM, ADM, APDM])
@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (PortPolicy.PRESERVING, PortAllocation.PRESERVING),
        (PortPolicy.SEQUENTIAL, PortAllocation.SEQUENTIAL),
        (PortPolicy.RANDOM, PortAllocation.RANDOM),
    ],
)
def test_port_allocation(
    mapping: MappingPolicy, ports: PortPolicy, expected: PortAllocation
) -> None:
    for seed in range(3):
        result = probe(NatConfig(mapping=mapping, ports=ports), seed=seed)
        assert result.port_allocation is expected, result.notes


def test_sequential_with_a_larger_step() -> None:
    result = probe(NatConfig(ports=PortPolicy.SEQUENTIAL, step=7))
    assert result.port_allocation is PortAllocation.SEQUENTIAL


def test_ports_preserved_on_the_open_internet() -> None:
    assert probe(None).port_allocation is PortAllocation.PRESERVING


# --- binding lifetime (RFC 5780 §4.6) ----------------------------------------------


@pytest.mark.parametrize("timeout", [15.0, 30.0, 45.0, 100.0])
@pytest.mark.parametrize("inbound_refresh", [False, True])
def test_binding_lifetime(timeout: float, inbound_refresh: bool) -> None:
    nat = NatConfig(
        filtering=APDF, binding_timeout=timeout, inbound_refresh=inbound_refresh
    )
    lab = build_lab(nat, profile=LinkProfile(delay=0.02))
    result = lab.probe(config=ProbeConfig(lifetime_max=120.0))

    lifetime = result.binding_lifetime_s
    assert lifetime is not None, result.notes
    assert 0.85 * timeout <= lifetime < timeout
    assert result.recommended_keepalive_s is not None
    assert result.recommended_keepalive_s < lifetime
    # bounded: at most a few times the maximum, in simulated seconds
    assert lab.network.now < 6 * 120


def test_binding_lifetime_longer_than_the_maximum() -> None:
    result = probe(
        NatConfig(binding_timeout=300.0), config=ProbeConfig(lifetime_max=60.0)
    )
    assert result.binding_lifetime_s == 60.0
    assert any("at least" in note for note in result.notes)


def test_binding_lifetime_with_sequential_ports_and_symmetric_nat() -> None:
    nat = NatConfig(mapping=APDM, ports=PortPolicy.SEQUENTIAL, binding_timeout=20.0)
    result = probe(nat, config=ProbeConfig(lifetime_max=60.0, lifetime_start=5.0))
    assert result.binding_lifetime_s is not None
    assert 17.0 <= result.binding_lifetime_s < 20.0


def test_binding_lifetime_shorter_than_resolution() -> None:
    nat = NatConfig(binding_timeout=0.5)
    config = ProbeConfig(lifetime_max=30.0, lifetime_start=2.0)
    result = probe(nat, config=config)
    assert result.binding_lifetime_s is None
    assert any("expired in less than 1 s" in n for n in result.notes)
    assert result.recommended_keepalive_s == 0.5


# --- delay and loss ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("filtering", [EIF, ADF, APDF])
@pytest.mark.parametrize("mapping", [EIM, ADM, APDM])
def test_ten_percent_loss_with_retransmissions(
    mapping: MappingPolicy, filtering: FilteringPolicy, seed: int
) -> None:
    profile = LinkProfile(delay=0.04, jitter=0.03, loss=0.1)
    config = NatConfig(mapping=mapping, filtering=filtering, hairpinning=True)
    result = probe(config, seed=seed, profile=profile)
    assert_behaviours(result, mapping, filtering)
    assert result.hairpinning is True


def test_loss_makes_retransmissions_happen() -> None:
    lab = build_lab(NatConfig(), seed=1, profile=LinkProfile(delay=0.01, loss=0.3))
    result = lab.probe()
    assert max(t.transmissions for t in result.tests) > 1
    assert lab.network.drops


@settings(max_examples=40, deadline=None)
@given(
    mapping=st.sampled_from(list(MappingPolicy)),
    filtering=st.sampled_from(list(FilteringPolicy)),
    ports=st.sampled_from(list(PortPolicy)),
    hairpinning=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
    delay=st.floats(min_value=0.0, max_value=0.1),
    loss=st.floats(min_value=0.0, max_value=0.05),
)
def test_any_nat(
    mapping: MappingPolicy,
    filtering: FilteringPolicy,
    ports: PortPolicy,
    hairpinning: bool,
    seed: int,
    delay: float,
    loss: float,
) -> None:
    config = NatConfig(
        mapping=mapping, filtering=filtering, ports=ports, hairpinning=hairpinning
    )
    result = probe(config, seed=seed, profile=LinkProfile(delay=delay, loss=loss))
    assert_behaviours(result, mapping, filtering)
    assert result.hairpinning is hairpinning


# --- a server without RFC 5780 -------------------------------------------------------

PLAIN_A = Endpoint("198.51.100.30", 3478)
PLAIN_A2 = Endpoint("198.51.100.30", 3479)
PLAIN_B = Endpoint("198.51.100.31", 3478)


def plain_probe(
    nat: NatConfig, extra: tuple[Endpoint, ...], *, config: ProbeConfig | None = None
) -> ProbeResult:
    network = Network(seed=4)
    for address in (PLAIN_A, PLAIN_A2, PLAIN_B):
        BindingServer(network, address)
    box = network.add_nat(nat, external_ip=NAT_EXTERNAL_IP)
    network.add_host(PRIVATE_HOST_IP, realm=box.inside)
    host = ProbeHost(
        network, PRIVATE_HOST_IP, PLAIN_A, extra_servers=extra, config=config
    )
    return host.run()


def test_plain_servers_endpoint_independent_mapping() -> None:
    result = plain_probe(NatConfig(mapping=EIM, filtering=APDF), (PLAIN_B,))
    assert result.mapping is Behaviour.ENDPOINT_INDEPENDENT
    assert result.filtering is Behaviour.UNDETERMINED
    assert result.nat_type is NatType.UNDETERMINED
    assert result.other_address is None
    assert any("does not support RFC 5780" in n for n in result.notes)
    # what needs no alternate address is still measured
    assert result.hairpinning is False
    assert result.port_allocation is PortAllocation.PRESERVING
    assert result.recommended_keepalive_s == 15.0


def test_plain_servers_symmetric_mapping() -> None:
    result = plain_probe(NatConfig(mapping=APDM), (PLAIN_B,))
    assert result.nat_type is NatType.SYMMETRIC
    assert result.mapping is Behaviour.UNDETERMINED
    assert any("two servers on one IP" in n for n in result.notes)


@pytest.mark.parametrize("mapping", [ADM, APDM])
def test_plain_servers_on_two_ports_tell_port_dependence(
    mapping: MappingPolicy,
) -> None:
    result = plain_probe(NatConfig(mapping=mapping), (PLAIN_A2, PLAIN_B))
    assert result.mapping.value == mapping.value
    assert result.nat_type is NatType.SYMMETRIC
    assert result.filtering is Behaviour.UNDETERMINED


def test_plain_server_alone_determines_nothing_it_cannot() -> None:
    result = plain_probe(NatConfig(), ())
    assert result.mapping is Behaviour.UNDETERMINED
    assert result.filtering is Behaviour.UNDETERMINED
    assert result.nat_type is NatType.UNDETERMINED
    assert result.mapped is not None


def test_plain_server_that_does_not_answer_is_noted() -> None:
    dead = Endpoint("198.51.100.99", 3478)
    result = plain_probe(NatConfig(), (dead,))
    assert result.mapping is Behaviour.UNDETERMINED
    assert any(str(dead) in n for n in result.notes)


def test_plain_server_lifetime_is_undetermined() -> None:
    result = plain_probe(NatConfig(), (), config=ProbeConfig(lifetime_max=30.0))
    assert result.binding_lifetime_s is None
    assert any("420" in n for n in result.notes)


# --- more topologies -----------------------------------------------------------------


def test_double_nat() -> None:
    """A full-cone home NAT behind a port-restricted carrier NAT."""
    network = Network(seed=9)
    server = Rfc5780Server(network)
    cgn = network.add_nat(NatConfig(filtering=APDF), external_ip="203.0.113.77")
    home = network.add_nat(NatConfig(), external_ip="100.64.0.2", outside=cgn.inside)
    network.add_host(PRIVATE_HOST_IP, realm=home.inside)
    result = ProbeHost(network, PRIVATE_HOST_IP, server.primary).run()
    assert result.nat_type is NatType.PORT_RESTRICTED_CONE
    assert result.mapped is not None and result.mapped.ip == "203.0.113.77"


def test_primary_down_but_extra_server_answers() -> None:
    network = Network(seed=1)
    BindingServer(network, PLAIN_B)
    network.add_host(PLAIN_A.ip)  # nothing listens on the primary
    box = network.add_nat(NatConfig(), external_ip=NAT_EXTERNAL_IP)
    network.add_host(PRIVATE_HOST_IP, realm=box.inside)
    host = ProbeHost(network, PRIVATE_HOST_IP, PLAIN_A, extra_servers=(PLAIN_B,))
    result = host.run()
    assert result.nat_type is NatType.UNDETERMINED
    assert any("check the server address" in n for n in result.notes)


def test_ipv6_nat() -> None:
    """The same tests over IPv6 (documentation prefix 2001:db8::/32)."""
    network = Network(seed=5)
    server = Rfc5780Server(
        network, Endpoint("2001:db8::10", 3478), Endpoint("2001:db8::11", 3479)
    )
    box = network.add_nat(
        NatConfig(mapping=ADM, filtering=ADF), external_ip="2001:db8:1::1"
    )
    network.add_host("fd00::2", realm=box.inside)
    result = ProbeHost(network, "fd00::2", server.primary).run()
    assert_behaviours(result, ADM, ADF)
    assert result.mapped is not None and result.mapped.ip == "2001:db8:1::1"
    assert str(result.local).startswith("[fd00::2]:")
