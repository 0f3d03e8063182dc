"""ICE through the NAT simulator: every pair of classic NAT types connects.

Two peers, each on the open internet or behind its own NAT box (full cone,
restricted cone, port-restricted cone, symmetric; RFC 4787 terms in
:data:`NATS`), gather a host candidate, a server-reflexive one from an
in-memory STUN server (:class:`natkit.stun.server.BindingResponder`) and a
relayed one from an in-memory TURN server (:class:`natkit.turn.server.TurnServer`,
relay sockets bound in the simulator) through
:class:`natkit.turn.client.TurnClientCore`. Candidates trickle over a
signalling channel with a delay. Expected: a direct pair everywhere except
symmetric with symmetric or port-restricted cone, which go through the relay.

:class:`IceHost` is the reference driver of the sans-IO agent in the
simulator, as :class:`natkit.lab.sim.ProbeHost` is for the NAT prober.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from natkit.ice.agent import IceAgent
from natkit.ice.candidate import Candidate, CandidateType
from natkit.ice.events import DataReceived, IceEvent, IceState, PermissionNeeded
from natkit.lab.sim import BindingServer
from natkit.lab.simnet import (
    FilteringPolicy,
    LinkProfile,
    MappingPolicy,
    NatConfig,
    Network,
    Packet,
    Realm,
    Timer,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import XorMappedAddress
from natkit.stun.constants import AddressFamily, MessageClass
from natkit.stun.errors import DecodeError
from natkit.stun.message import decode, encode
from natkit.stun.transaction import ClientTransaction, Transport, binding_request
from natkit.turn.allocation import ClientAddress, RelayAddress
from natkit.turn.auth import InMemoryKeyStore, LongTermAuthenticator, NonceManager
from natkit.turn.client import Address, Allocated, RequestFailed, TurnClientCore
from natkit.turn.client import DataReceived as TurnData
from natkit.turn.events import CollectingEventSink
from natkit.turn.policy import PeerPolicy
from natkit.turn.server import Action, CloseRelay, SendToClient, SendToPeer, TurnServer

STUN_SERVER = Endpoint("198.51.100.10", 3478)
TURN_SERVER = Endpoint("198.51.100.30", 3478)
REALM = "natkit.test"
USER, PASSWORD = "alice", "alice-secret"
SIGNAL_DELAY = 0.05
TIME_LIMIT = 60.0

#: the classic NAT types in RFC 4787 mapping x filtering terms (None: no NAT)
NATS: dict[str, NatConfig | None] = {
    "open": None,
    "full-cone": NatConfig(
        mapping=MappingPolicy.ENDPOINT_INDEPENDENT,
        filtering=FilteringPolicy.ENDPOINT_INDEPENDENT,
    ),
    "restricted-cone": NatConfig(
        mapping=MappingPolicy.ENDPOINT_INDEPENDENT,
        filtering=FilteringPolicy.ADDRESS_DEPENDENT,
    ),
    "port-restricted-cone": NatConfig(
        mapping=MappingPolicy.ENDPOINT_INDEPENDENT,
        filtering=FilteringPolicy.ADDRESS_AND_PORT_DEPENDENT,
    ),
    "symmetric": NatConfig(
        mapping=MappingPolicy.ADDRESS_AND_PORT_DEPENDENT,
        filtering=FilteringPolicy.ADDRESS_AND_PORT_DEPENDENT,
    ),
}
RELAY_ONLY = {
    frozenset({"symmetric"}),
    frozenset({"symmetric", "port-restricted-cone"}),
}


# --- the TURN server inside the simulator ---------------------------------------------


class SimRelays:
    """A :class:`RelayPortAllocator` that binds relay ports in the simulator."""

    def __init__(self, network: Network, ip: str) -> None:
        self.network = network
        self.ip = ip
        self.server: TurnServer | None = None
        self._next = 49152

    def reserve(
        self, family: AddressFamily, *, even: bool, reserve_next: bool
    ) -> RelayAddress | None:
        if family is not AddressFamily.IPV4:
            return None
        port = self._next + (self._next % 2 if even else 0)
        self._next = port + (2 if reserve_next else 1)
        relay = RelayAddress(self.ip, port)

        def on_peer(packet: Packet, now: float) -> None:
            if self.server is not None:
                actions = self.server.handle_peer_datagram(
                    relay, packet.src.ip, packet.src.port, packet.data, now
                )
                apply(self.network, actions)

        self.network.bind(Endpoint(self.ip, port), on_peer)
        return relay

    def release(self, addr: RelayAddress) -> None:
        self.network.unbind(Endpoint(addr.ip, addr.port))


def apply(network: Network, actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, SendToClient):
            client = action.client
            destination = Endpoint(client.ip, client.port)
            source = Endpoint(client.server_ip, client.server_port)
            network.send(source, destination, action.data)
        elif isinstance(action, SendToPeer):
            relay = Endpoint(action.relay.ip, action.relay.port)
            network.send(relay, Endpoint(action.peer_ip, action.peer_port), action.data)
        elif isinstance(action, CloseRelay):
            network.unbind(Endpoint(action.relay.ip, action.relay.port))


class SimTurnServer:
    """:class:`TurnServer` on :data:`TURN_SERVER`, its relays on the same IP."""

    def __init__(self, network: Network) -> None:
        self.network = network
        network.add_host(TURN_SERVER.ip)
        store = InMemoryKeyStore()
        store.add_user(USER, REALM, PASSWORD)
        relays = SimRelays(network, TURN_SERVER.ip)
        self.server = TurnServer(
            authenticator=LongTermAuthenticator(
                REALM, store, NonceManager(b"s" * 32, lifetime_s=3600)
            ),
            relays=relays,
            policy=PeerPolicy(
                allow=["198.51.100.0/24", "203.0.113.0/24"],
                relay_addresses_allowed=lambda ip, port: self.server.is_relayed_address(
                    ip, port
                ),
            ),
            events=CollectingEventSink(),
        )
        relays.server = self.server
        network.bind(TURN_SERVER, self._on_client)
        self._timer: Timer | None = None

    def _on_client(self, packet: Packet, now: float) -> None:
        client = ClientAddress(
            Transport.UDP,
            packet.src.ip,
            packet.src.port,
            TURN_SERVER.ip,
            TURN_SERVER.port,
        )
        apply(
            self.network, self.server.handle_client_datagram(packet.data, client, now)
        )
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.server.next_deadline()
        self._timer = None
        if deadline is not None:
            self._timer = self.network.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        apply(self.network, self.server.handle_timeout(self.network.now))
        self._arm()


# --- the ICE driver inside the simulator ----------------------------------------------


class IceHost:
    """An :class:`IceAgent` on host ``ip``: a host socket (also used for STUN)
    and a TURN allocation; every agent output is carried out here.

    ``signal`` delivers a local candidate (None: end of candidates) to the
    other side.
    """

    HOST = "host"
    RELAY = "relay"

    def __init__(
        self,
        network: Network,
        ip: str,
        *,
        controlling: bool,
        name: str,
        turn: bool = True,
    ) -> None:
        self.network = network
        self.name = name
        self.agent = IceAgent(controlling, name=name, rng=random.Random(name))
        self.events: list[IceEvent] = []
        self.received: list[bytes] = []
        self.signal: Callable[[Candidate | None], None] = lambda candidate: None
        self.host = network.bind(Endpoint(ip, 0), self._on_host)
        self.host_candidate = Candidate.host(self.host)
        self.turn: TurnClientCore | None = None
        self.turn_socket: Endpoint | None = None
        if turn:
            self.turn = TurnClientCore(username=USER, password=PASSWORD)
            self.turn_socket = network.bind(Endpoint(ip, 0), self._on_turn)
        self._stun: ClientTransaction | None = None
        self._gathering = {"stun", "turn"} if turn else {"stun"}
        self._timer: Timer | None = None
        self._timer_at: float | None = None

    def start(self) -> None:
        now = self.network.now
        self._local(self.host_candidate)
        request = encode(binding_request(), fingerprint=True)
        self._stun = ClientTransaction(request, transport=Transport.UDP, now=now)
        if self.turn is not None:
            self.turn.allocate(now)
        self._pump()

    # --- gathering --------------------------------------------------------------

    def _local(self, candidate: Candidate, socket: str = HOST) -> None:
        if self.agent.add_local_candidate(candidate, socket=socket):
            self.signal(candidate)

    def _gathered(self, what: str) -> None:
        self._gathering.discard(what)
        if not self._gathering:
            self.agent.add_local_candidate(None)
            self.signal(None)

    def _stun_response(self, data: bytes, now: float) -> None:
        tx = self._stun
        try:
            msg = decode(data)
        except DecodeError:
            return
        if tx is None or not tx.handle_response(msg, now):
            return
        mapped = msg.get(XorMappedAddress)
        if msg.cls is MessageClass.SUCCESS and mapped is not None:
            srflx = Candidate.server_reflexive(
                Endpoint(mapped.ip, mapped.port),
                base=self.host_candidate,
                server=STUN_SERVER,
            )
            self._local(srflx)
        self._gathered("stun")

    def _turn_events(self) -> None:
        turn = self.turn
        if turn is None:
            return
        while (event := turn.next_event()) is not None:
            if isinstance(event, Allocated):
                relayed = Endpoint(event.relayed.ip, event.relayed.port)
                mapped = (
                    Endpoint(event.mapped.ip, event.mapped.port)
                    if event.mapped
                    else None
                )
                relay = Candidate.relayed(relayed, server=TURN_SERVER, mapped=mapped)
                self._local(relay, socket=self.RELAY)
                self._gathered("turn")
            elif isinstance(event, TurnData):
                source = Endpoint(event.peer.ip, event.peer.port)
                self.agent.handle_datagram(
                    self.RELAY, source, event.data, self.network.now
                )
            elif isinstance(event, RequestFailed) and "turn" in self._gathering:
                self._gathered("turn")

    # --- input ---------------------------------------------------------------------

    def _on_host(self, packet: Packet, now: float) -> None:
        if packet.src == STUN_SERVER:
            self._stun_response(packet.data, now)
        else:
            self.agent.handle_datagram(self.HOST, packet.src, packet.data, now)
        self._pump()

    def _on_turn(self, packet: Packet, now: float) -> None:
        if self.turn is not None and packet.src == TURN_SERVER:
            self.turn.handle_datagram(packet.data, now)
        self._pump()

    def remote(self, candidate: Candidate | None) -> None:
        self.agent.add_remote_candidate(candidate)
        self._pump()

    def send(self, data: bytes) -> None:
        for transmit in self.agent.send(data, now=self.network.now):
            self._transmit(transmit.socket, transmit.destination, transmit.data)
        self._pump()

    def _on_timer(self) -> None:
        now = self.network.now
        self._timer, self._timer_at = None, None
        self.agent.handle_timeout(now)
        if self.turn is not None:
            self.turn.handle_timeout(now)
        if self._stun is not None:
            for data in self._stun.handle_timeout(now):
                self.network.send(self.host, STUN_SERVER, data)
            if self._stun.done and "stun" in self._gathering:
                self._gathered("stun")
        self._pump()

    # --- output ----------------------------------------------------------------------

    def _transmit(self, socket: str, destination: Endpoint, data: bytes) -> None:
        if socket == self.HOST:
            self.network.send(self.host, destination, data)
        elif self.turn is not None:
            self.turn.send(Address(destination.ip, destination.port), data)

    def _pump(self) -> None:
        now = self.network.now
        for _ in range(100):
            self._turn_events()
            busy = False
            for transmit in self.agent.datagrams_to_send():
                busy = True
                self._transmit(transmit.socket, transmit.destination, transmit.data)
            while (event := self.agent.next_event()) is not None:
                busy = True
                self.events.append(event)
                if isinstance(event, PermissionNeeded) and self.turn is not None:
                    self.turn.create_permission([event.ip], now)
                elif isinstance(event, DataReceived):
                    self.received.append(event.data)
            if self.turn is not None and self.turn_socket is not None:
                for data in self.turn.datagrams_to_send():
                    busy = True
                    self.network.send(self.turn_socket, TURN_SERVER, data)
            if not busy:
                break
        self._arm()

    def _arm(self) -> None:
        times = [self.agent.next_deadline()]
        if self.turn is not None:
            times.append(self.turn.next_deadline())
        if self._stun is not None:
            times.append(self._stun.next_deadline())
        deadline = min((t for t in times if t is not None), default=None)
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = self.network.call_at(deadline, self._on_timer)


def wire(a: IceHost, b: IceHost) -> None:
    """Credentials at once; candidates trickle with :data:`SIGNAL_DELAY`."""
    network = a.network
    for one, other in ((a, b), (b, a)):
        creds = one.agent.local_credentials
        other.agent.set_remote_credentials(creds.ufrag, creds.pwd)

        def deliver(candidate: Candidate | None, target: IceHost = other) -> None:
            view = None
            if candidate is not None:
                view = Candidate(
                    candidate.type,
                    candidate.address,
                    candidate.priority,
                    candidate.foundation,
                    component=candidate.component,
                    related=candidate.related,
                )
            network.call_at(network.now + SIGNAL_DELAY, lambda: target.remote(view))

        one.signal = deliver


# --- scenarios ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    connected: bool
    relayed: bool
    local_type: str
    remote_type: str
    elapsed: float
    data_ok: bool


def place(network: Network, kind: str, index: int) -> str:
    """A host for peer ``index`` of NAT type ``kind``; its IP."""
    config = NATS[kind]
    if config is None:
        return network.add_host(f"203.0.113.{10 + index}")
    box = network.add_nat(config, external_ip=f"203.0.113.{index}")
    realm: Realm = box.inside
    return network.add_host(f"10.{index}.0.2", realm=realm)


def is_relayed(host: IceHost) -> bool:
    pair = host.agent.selected_pair
    assert pair is not None
    return TURN_SERVER.ip in (pair.local.address.ip, pair.remote.address.ip)


def connect(a: IceHost, b: IceHost, *, limit: float = TIME_LIMIT) -> float:
    network = a.network
    start = network.now
    wire(a, b)
    a.start()
    b.start()
    done = lambda: all(  # noqa: E731
        h.agent.state is IceState.COMPLETED for h in (a, b)
    )
    network.run_until(done, limit=start + limit)
    return network.now - start


def exchange_data(a: IceHost, b: IceHost) -> bool:
    a.send(b"ping from a")
    b.send(b"pong from b")
    a.network.advance(a.network.now + 1.0)
    return b"ping from a" in b.received and b"pong from b" in a.received


def scenario(
    left: str, right: str, *, seed: int = 1, profile: LinkProfile | None = None
) -> Outcome:
    network = Network(seed=seed, profile=profile or LinkProfile(delay=0.01))
    BindingServer(network, STUN_SERVER)
    SimTurnServer(network)
    a = IceHost(network, place(network, left, 1), controlling=True, name="L")
    b = IceHost(network, place(network, right, 2), controlling=False, name="R")
    elapsed = connect(a, b)
    pair = a.agent.selected_pair
    connected = a.agent.state is b.agent.state is IceState.COMPLETED
    if not connected or pair is None:
        return Outcome(False, False, "-", "-", elapsed, False)
    relayed = is_relayed(a)
    assert relayed == is_relayed(b)
    return Outcome(
        True,
        relayed,
        pair.local.type.value,
        pair.remote.type.value,
        elapsed,
        exchange_data(a, b),
    )


@pytest.mark.parametrize("right", list(NATS))
@pytest.mark.parametrize("left", list(NATS))
def test_matrix(left: str, right: str) -> None:
    outcome = scenario(left, right)
    assert outcome.connected, f"{left} <-> {right} did not connect"
    assert outcome.data_ok
    expect_relay = frozenset({left, right}) in RELAY_ONLY
    assert outcome.relayed == expect_relay, outcome


@pytest.mark.parametrize("right", list(NATS))
@pytest.mark.parametrize("left", list(NATS))
def test_matrix_with_loss_and_jitter(left: str, right: str) -> None:
    """The same with 30 ms delay, 20 ms jitter and 5 % loss on the internet:
    retransmissions and the longer wait before a relayed nomination keep the
    expected kind of path."""
    profile = LinkProfile(delay=0.03, jitter=0.02, loss=0.05)
    outcome = scenario(left, right, seed=3, profile=profile)
    assert outcome.connected, f"{left} <-> {right} did not connect"
    assert outcome.relayed == (frozenset({left, right}) in RELAY_ONLY), outcome


def test_same_lan_host_to_host() -> None:
    network = Network(seed=3, profile=LinkProfile(delay=0.01))
    BindingServer(network, STUN_SERVER)
    SimTurnServer(network)
    config = NATS["symmetric"]
    assert config is not None
    box = network.add_nat(config, external_ip="203.0.113.1")
    ip_a = network.add_host("10.1.0.2", realm=box.inside)
    ip_b = network.add_host("10.1.0.3", realm=box.inside)
    a = IceHost(network, ip_a, controlling=True, name="A")
    b = IceHost(network, ip_b, controlling=False, name="B")
    connect(a, b)
    for host in (a, b):
        pair = host.agent.selected_pair
        assert pair is not None
        assert pair.local.type is pair.remote.type is CandidateType.HOST
    assert exchange_data(a, b)


def test_keepalive_holds_short_nat_bindings() -> None:
    """A NAT that forgets a binding after 30 s idle keeps it: consent checks
    every ~5 s refresh it (RFC 8445 §11, RFC 7675)."""
    network = Network(seed=5, profile=LinkProfile(delay=0.01))
    BindingServer(network, STUN_SERVER)
    SimTurnServer(network)
    short = NatConfig(
        mapping=MappingPolicy.ENDPOINT_INDEPENDENT,
        filtering=FilteringPolicy.ADDRESS_AND_PORT_DEPENDENT,
        binding_timeout=30.0,
    )
    hosts = []
    for index, controlling in ((1, True), (2, False)):
        box = network.add_nat(short, external_ip=f"203.0.113.{index}")
        ip = network.add_host(f"10.{index}.0.2", realm=box.inside)
        hosts.append(
            IceHost(network, ip, controlling=controlling, name=str(index), turn=False)
        )
    a, b = hosts
    connect(a, b)
    assert a.agent.state is b.agent.state is IceState.COMPLETED
    network.advance(network.now + 120.0)
    assert a.agent.state is b.agent.state is IceState.COMPLETED
    assert exchange_data(a, b)


def test_without_turn_symmetric_pair_fails() -> None:
    """No relay, symmetric on both sides: no pair works and both agents fail
    once every check has timed out (after end-of-candidates)."""
    network = Network(seed=2, profile=LinkProfile(delay=0.01))
    BindingServer(network, STUN_SERVER)
    a = IceHost(
        network, place(network, "symmetric", 1), controlling=True, name="a", turn=False
    )
    b = IceHost(
        network, place(network, "symmetric", 2), controlling=False, name="b", turn=False
    )
    connect(a, b, limit=40.0)
    assert a.agent.state is b.agent.state is IceState.FAILED
