"""The userspace NAT simulator: links, clock, RFC 4787 NAT behaviours."""

import pytest

from natkit.lab.sim import (
    BindingServer,
    DropReason,
    FilteringPolicy,
    LinkProfile,
    MappingPolicy,
    NatBox,
    NatConfig,
    Network,
    Packet,
    PortPolicy,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import XorMappedAddress
from natkit.stun.constants import MessageClass
from natkit.stun.errors import UsageError
from natkit.stun.message import decode, encode
from natkit.stun.transaction import binding_request

S1 = Endpoint("198.51.100.1", 5000)
S1B = Endpoint("198.51.100.1", 5001)
S2 = Endpoint("198.51.100.2", 5000)
HOST = "10.0.0.2"
INTERNAL = Endpoint(HOST, 40000)
EXTERNAL_IP = "203.0.113.1"


class Inbox:
    """A handler that keeps what it gets."""

    def __init__(self) -> None:
        self.packets: list[Packet] = []
        self.times: list[float] = []

    def __call__(self, packet: Packet, now: float) -> None:
        self.packets.append(packet)
        self.times.append(now)


def world(
    config: NatConfig, *, profile: LinkProfile | None = None
) -> tuple[Network, NatBox, dict[Endpoint, Inbox]]:
    network = Network(seed=7, profile=profile)
    nat = network.add_nat(config, external_ip=EXTERNAL_IP)
    network.add_host(HOST, realm=nat.inside)
    for ip in ("198.51.100.1", "198.51.100.2"):
        network.add_host(ip)
    inboxes = {e: Inbox() for e in (S1, S1B, S2, INTERNAL)}
    for endpoint, inbox in inboxes.items():
        network.bind(endpoint, inbox)
    return network, nat, inboxes


def out_and_back(
    network: Network, inboxes: dict[Endpoint, Inbox], server: Endpoint
) -> Endpoint:
    """Send from the internal host to ``server``; return the source it saw."""
    before = len(inboxes[server].packets)
    network.send(INTERNAL, server, b"hello")
    network.advance(network.now + 1)
    assert len(inboxes[server].packets) == before + 1
    return inboxes[server].packets[-1].src


# --- links and clock ----------------------------------------------------------


def test_delivery_after_the_link_delay() -> None:
    network = Network(profile=LinkProfile(delay=0.05))
    network.add_host("198.51.100.1")
    network.add_host("198.51.100.2")
    inbox = Inbox()
    network.bind(S2, inbox)
    network.send(S1, S2, b"x")
    network.advance(0.049)
    assert inbox.packets == []
    network.advance(0.05)
    assert inbox.packets == [Packet(S1, S2, b"x")]
    assert inbox.times == [pytest.approx(0.05)]
    assert network.now == pytest.approx(0.05)


def test_loss_is_seeded() -> None:
    def run(seed: int) -> list[int]:
        network = Network(seed=seed, profile=LinkProfile(loss=0.3))
        network.add_host("198.51.100.1")
        network.add_host("198.51.100.2")
        inbox = Inbox()
        network.bind(S2, inbox)
        for i in range(200):
            network.send(S1, S2, bytes([i]))
        network.advance(1.0)
        assert network.drops[DropReason.LOSS] == 200 - len(inbox.packets)
        return [p.data[0] for p in inbox.packets]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 100 < len(run(1)) < 180


def test_jitter_can_reorder() -> None:
    network = Network(seed=3, profile=LinkProfile(delay=0.01, jitter=0.05))
    network.add_host("198.51.100.1")
    network.add_host("198.51.100.2")
    inbox = Inbox()
    network.bind(S2, inbox)
    for i in range(50):
        network.send(S1, S2, bytes([i]))
    network.advance(1.0)
    order = [p.data[0] for p in inbox.packets]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))


def test_timers_and_cancel() -> None:
    network = Network()
    fired: list[float] = []
    network.call_at(2.0, lambda: fired.append(network.now))
    cancelled = network.call_at(1.0, lambda: fired.append(-1.0))
    cancelled.cancel()
    assert network.pending == 1
    network.advance(5.0)
    assert fired == [2.0]
    assert network.now == 5.0


def test_run_until_stops_at_predicate_or_limit() -> None:
    network = Network()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(network.now)
        network.call_at(network.now + 1.0, tick)

    network.call_at(0.0, tick)
    assert network.run_until(lambda: len(ticks) == 3, limit=100.0)
    assert ticks == [0.0, 1.0, 2.0]
    assert not network.run_until(lambda: False, limit=10.0)
    assert ticks[-1] == 10.0
    assert not network.run_until(lambda: False, limit=1e9, max_events=5)
    assert len(ticks) == 16


def test_no_route_and_no_listener() -> None:
    network = Network()
    network.add_host("198.51.100.1")
    network.add_host("198.51.100.2")
    network.send(S1, Endpoint("192.0.2.99", 1), b"x")
    network.send(S1, S2, b"x")
    network.advance(1.0)
    assert network.drops[DropReason.NO_ROUTE] == 1
    assert network.drops[DropReason.NO_LISTENER] == 1


def test_topology_usage_errors() -> None:
    network = Network()
    network.add_host("198.51.100.1")
    with pytest.raises(UsageError):
        network.add_host("198.51.100.1")
    with pytest.raises(UsageError):
        network.send(Endpoint("198.51.100.9", 1), S1, b"")
    with pytest.raises(UsageError):
        network.bind(Endpoint("198.51.100.9", 1), Inbox())
    network.bind(S1, Inbox())
    with pytest.raises(UsageError):
        network.bind(S1, Inbox())
    with pytest.raises(UsageError):
        LinkProfile(loss=1.0)
    with pytest.raises(UsageError):
        NatConfig(binding_timeout=0)


def test_ephemeral_ports_are_seeded_and_distinct() -> None:
    def ports(seed: int) -> list[int]:
        network = Network(seed=seed)
        network.add_host(HOST)
        return [network.bind(Endpoint(HOST, 0), Inbox()).port for _ in range(20)]

    assert ports(5) == ports(5)
    assert len(set(ports(5))) == 20
    assert all(32768 <= p <= 60999 for p in ports(5))


# --- mapping (RFC 4787 §4.1) --------------------------------------------------


def test_endpoint_independent_mapping() -> None:
    network, _, inboxes = world(NatConfig(mapping=MappingPolicy.ENDPOINT_INDEPENDENT))
    seen = {out_and_back(network, inboxes, s) for s in (S1, S1B, S2)}
    assert len(seen) == 1
    assert next(iter(seen)).ip == EXTERNAL_IP


def test_address_dependent_mapping() -> None:
    network, _, inboxes = world(NatConfig(mapping=MappingPolicy.ADDRESS_DEPENDENT))
    a, b, c = (out_and_back(network, inboxes, s) for s in (S1, S1B, S2))
    assert a == b != c


def test_address_and_port_dependent_mapping() -> None:
    network, nat, inboxes = world(
        NatConfig(mapping=MappingPolicy.ADDRESS_AND_PORT_DEPENDENT)
    )
    seen = [out_and_back(network, inboxes, s) for s in (S1, S1B, S2)]
    assert len(set(seen)) == 3
    assert nat.bindings(network.now) == 3


# --- filtering (RFC 4787 §5) --------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "from_s1b", "from_s2"),
    [
        (FilteringPolicy.ENDPOINT_INDEPENDENT, True, True),
        (FilteringPolicy.ADDRESS_DEPENDENT, True, False),
        (FilteringPolicy.ADDRESS_AND_PORT_DEPENDENT, False, False),
    ],
)
def test_filtering(policy: FilteringPolicy, from_s1b: bool, from_s2: bool) -> None:
    network, _, inboxes = world(NatConfig(filtering=policy))
    mapped = out_and_back(network, inboxes, S1)
    for sender in (S1, S1B, S2):
        network.send(sender, mapped, sender.ip.encode())
    network.advance(network.now + 1)
    got = {p.src for p in inboxes[INTERNAL].packets}
    assert S1 in got
    assert (S1B in got, S2 in got) == (from_s1b, from_s2)
    assert network.drops[DropReason.FILTERED] == (not from_s1b) + (not from_s2)
    # replies reach the internal endpoint with the original source
    assert all(p.dst == INTERNAL for p in inboxes[INTERNAL].packets)


def test_unsolicited_traffic_has_no_binding() -> None:
    network, _, _ = world(NatConfig())
    network.send(S1, Endpoint(EXTERNAL_IP, 40000), b"x")
    network.advance(1.0)
    assert network.drops[DropReason.NO_BINDING] == 1


# --- port allocation (RFC 4787 §4.2.1) ----------------------------------------


def test_port_preserving() -> None:
    network, _, inboxes = world(NatConfig(ports=PortPolicy.PRESERVING))
    assert out_and_back(network, inboxes, S1) == Endpoint(EXTERNAL_IP, INTERNAL.port)


def test_port_preserving_falls_back_when_taken() -> None:
    network, nat, inboxes = world(
        NatConfig(mapping=MappingPolicy.ADDRESS_DEPENDENT, ports=PortPolicy.PRESERVING)
    )
    first = out_and_back(network, inboxes, S1)
    second = out_and_back(network, inboxes, S2)
    assert first.port == INTERNAL.port != second.port
    assert nat.external_ports_of(INTERNAL, network.now) == sorted(
        [first.port, second.port]
    )


def test_port_sequential() -> None:
    network, _, inboxes = world(
        NatConfig(
            mapping=MappingPolicy.ADDRESS_AND_PORT_DEPENDENT,
            ports=PortPolicy.SEQUENTIAL,
            step=2,
        )
    )
    ports = [out_and_back(network, inboxes, s).port for s in (S1, S1B, S2)]
    steps = {(b - a) % 64512 for a, b in zip(ports, ports[1:], strict=False)}
    assert steps == {2}


def test_port_random_within_range() -> None:
    network, _, inboxes = world(
        NatConfig(
            mapping=MappingPolicy.ADDRESS_AND_PORT_DEPENDENT,
            ports=PortPolicy.RANDOM,
            port_min=20000,
            port_max=20002,
        )
    )
    ports = {out_and_back(network, inboxes, s).port for s in (S1, S1B, S2)}
    assert ports == {20000, 20001, 20002}
    # the range is full: a fourth binding cannot be made
    network.send(INTERNAL, Endpoint("198.51.100.2", 5001), b"x")
    network.advance(network.now + 1)
    assert network.drops[DropReason.PORTS_EXHAUSTED] == 1


# --- binding lifetime (RFC 4787 §4.3) -----------------------------------------


def test_binding_expires_without_outbound_traffic() -> None:
    network, nat, inboxes = world(NatConfig(binding_timeout=30.0))
    mapped = out_and_back(network, inboxes, S1)  # binding made at t=0
    network.advance(29.0)
    network.send(S1, mapped, b"alive")
    network.advance(30.5)
    network.send(S1, mapped, b"late")
    network.advance(31.0)
    assert [p.data for p in inboxes[INTERNAL].packets] == [b"alive"]
    assert network.drops[DropReason.NO_BINDING] == 1
    assert nat.bindings(network.now) == 0


def test_outbound_refreshes_inbound_does_not_by_default() -> None:
    network, _, inboxes = world(NatConfig(binding_timeout=10.0))
    mapped = out_and_back(network, inboxes, S1)
    for t in (8.0, 16.0):
        network.advance(t)
        network.send(S1, mapped, b"in")  # inbound only: no refresh
    network.advance(17.0)
    assert len(inboxes[INTERNAL].packets) == 1

    network2, _, inboxes2 = world(NatConfig(binding_timeout=10.0))
    mapped2 = out_and_back(network2, inboxes2, S1)
    for t in (8.0, 16.0):
        network2.advance(t)
        network2.send(INTERNAL, S1, b"out")  # outbound refreshes
    network2.advance(24.0)
    network2.send(S1, mapped2, b"in")
    network2.advance(25.0)
    assert len(inboxes2[INTERNAL].packets) == 1


def test_inbound_refresh_when_configured() -> None:
    network, _, inboxes = world(NatConfig(binding_timeout=10.0, inbound_refresh=True))
    mapped = out_and_back(network, inboxes, S1)
    for t in (8.0, 16.0, 24.0):
        network.advance(t)
        network.send(S1, mapped, b"in")
    network.advance(25.0)
    assert len(inboxes[INTERNAL].packets) == 3


# --- hairpinning (RFC 4787 §6) and blocking -----------------------------------


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(hairpinning: bool) -> None:
    network, _, inboxes = world(NatConfig(hairpinning=hairpinning))
    mapped = out_and_back(network, inboxes, S1)
    other = Inbox()
    other_socket = network.bind(Endpoint(HOST, 41000), other)
    network.send(other_socket, mapped, b"hairpin")
    network.advance(network.now + 1)
    got = [p for p in inboxes[INTERNAL].packets if p.data == b"hairpin"]
    if hairpinning:
        # the source is translated like any outbound packet (RFC 4787 REQ-9)
        assert [p.src.ip for p in got] == [EXTERNAL_IP]
    else:
        assert got == []
        assert network.drops[DropReason.HAIRPIN_OFF] == 1


def test_block_udp() -> None:
    network, _, inboxes = world(NatConfig(block_udp=True))
    network.send(INTERNAL, S1, b"x")
    network.advance(1.0)
    assert inboxes[S1].packets == []
    assert network.drops[DropReason.BLOCKED] == 1


def test_hosts_behind_one_nat_talk_directly() -> None:
    network, _, inboxes = world(NatConfig())
    network.add_host("10.0.0.3", realm=network.internet.nats[EXTERNAL_IP].inside)
    neighbour = Inbox()
    network.bind(Endpoint("10.0.0.3", 1), neighbour)
    network.send(INTERNAL, Endpoint("10.0.0.3", 1), b"x")
    network.advance(1.0)
    assert neighbour.packets == [Packet(INTERNAL, Endpoint("10.0.0.3", 1), b"x")]


def test_nested_nat() -> None:
    """A home NAT behind a carrier-grade NAT: two translations."""
    network = Network(seed=2)
    cgn = network.add_nat(NatConfig(), external_ip="203.0.113.9")
    home = network.add_nat(NatConfig(), external_ip="100.64.0.5", outside=cgn.inside)
    network.add_host(HOST, realm=home.inside)
    network.add_host("198.51.100.1")
    inbox = Inbox()
    network.bind(S1, inbox)
    reply = Inbox()
    network.bind(INTERNAL, reply)
    network.send(INTERNAL, S1, b"x")
    network.advance(1.0)
    [packet] = inbox.packets
    assert packet.src.ip == "203.0.113.9"
    network.send(S1, packet.src, b"back")
    network.advance(2.0)
    assert [p.data for p in reply.packets] == [b"back"]


def test_runs_the_stun_binding_responder() -> None:
    """natkit's own sans-IO STUN server answers through the NAT."""
    network, _, _ = world(NatConfig())
    network.add_host("198.51.100.3")
    server = BindingServer(network, Endpoint("198.51.100.3", 3478))
    network.unbind(INTERNAL)
    inbox = Inbox()
    network.bind(INTERNAL, inbox)
    request = binding_request()
    network.send(INTERNAL, server.address, encode(request))
    network.advance(1.0)
    [packet] = inbox.packets
    response = decode(packet.data)
    assert response.cls is MessageClass.SUCCESS
    assert response.get(XorMappedAddress) == XorMappedAddress(
        EXTERNAL_IP, INTERNAL.port
    )
