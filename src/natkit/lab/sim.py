"""natkit's sans-IO pieces running inside the userspace NAT simulator.

:mod:`natkit.lab.simnet` is the network (hosts, NAT boxes, links, clock);
this module puts applications on it: a plain STUN server
(:class:`natkit.stun.server.BindingResponder`), an RFC 5780 server on two
IPs and two ports (:class:`natkit.nat.server.Rfc5780Responder`) and the
RFC 5780 prober (:class:`natkit.nat.discovery.NatProber`) on a host behind
NATs. :func:`build_lab` wires the usual topology in one call::

    lab = build_lab(NatConfig(mapping=MappingPolicy.ENDPOINT_INDEPENDENT,
                              filtering=FilteringPolicy.ADDRESS_DEPENDENT))
    result = lab.probe()          # instant: simulated time
    assert result.nat_type is NatType.RESTRICTED_CONE

Addresses are documentation ranges (RFC 5737): the "internet" is
198.51.100.0/24 (servers) and 203.0.113.0/24 (NAT external addresses and
public hosts); hosts behind a NAT use 10.0.0.0/8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from natkit.lab.simnet import (
    DropReason,
    FilteringPolicy,
    Handler,
    LinkProfile,
    MappingPolicy,
    NatBox,
    NatConfig,
    Network,
    Packet,
    PortPolicy,
    Realm,
    Timer,
)
from natkit.nat.discovery import NatProber, ProbeConfig, ProbeResult
from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder
from natkit.stun.errors import UsageError
from natkit.stun.server import BindingResponder

__all__ = [
    "BindingServer",
    "DropReason",
    "FilteringPolicy",
    "Lab",
    "LinkProfile",
    "MappingPolicy",
    "NatBox",
    "NatConfig",
    "Network",
    "Packet",
    "PortPolicy",
    "ProbeHost",
    "Realm",
    "Rfc5780Server",
    "build_lab",
]

#: where :func:`build_lab` puts things
SERVER_PRIMARY = Endpoint("198.51.100.10", 3478)
SERVER_ALTERNATE = Endpoint("198.51.100.11", 3479)
SECOND_SERVER = Endpoint("198.51.100.20", 3478)
NAT_EXTERNAL_IP = "203.0.113.1"
PUBLIC_HOST_IP = "203.0.113.50"
PRIVATE_HOST_IP = "10.0.0.2"

#: simulated seconds a probe may take before :meth:`ProbeHost.run` gives up
PROBE_TIME_LIMIT = 7200.0


def _ensure_host(network: Network, ip: str, realm: Realm | None = None) -> None:
    if not network.has_host(ip):
        network.add_host(ip, realm=realm)


class BindingServer:
    """A plain STUN server (RFC 8489, no RFC 5780) on one endpoint."""

    def __init__(
        self,
        network: Network,
        address: Endpoint,
        *,
        responder: BindingResponder | None = None,
    ) -> None:
        self.network = network
        self.responder = responder or BindingResponder()
        _ensure_host(network, address.ip)
        self.address = network.bind(address, self._on_packet)

    def _on_packet(self, packet: Packet, now: float) -> None:
        reply = self.responder.handle(packet.data, packet.src.ip, packet.src.port)
        if reply is not None:
            self.network.send(packet.dst, packet.src, reply)


class Rfc5780Server:
    """An RFC 5780 §6 server: listens on A1:P1, A1:P2, A2:P1 and A2:P2."""

    def __init__(
        self,
        network: Network,
        primary: Endpoint = SERVER_PRIMARY,
        alternate: Endpoint = SERVER_ALTERNATE,
        *,
        software: str | None = None,
    ) -> None:
        self.network = network
        self.responder = Rfc5780Responder(primary, alternate, software=software)
        for ip in (primary.ip, alternate.ip):
            _ensure_host(network, ip)
        for address in self.responder.addresses:
            network.bind(address, self._on_packet)

    @property
    def primary(self) -> Endpoint:
        return self.responder.primary

    def _on_packet(self, packet: Packet, now: float) -> None:
        reply = self.responder.handle(packet.data, local=packet.dst, source=packet.src)
        if reply is not None:
            self.network.send(reply.source, reply.destination, reply.data)


class ProbeHost:
    """A :class:`NatProber` on host ``host_ip``, driven by the network clock.

    This is the reference driver: it opens one socket per id of
    ``config.socket_ids``, passes every datagram they receive to the prober,
    sends what the prober queues and keeps one timer at its deadline.
    """

    def __init__(
        self,
        network: Network,
        host_ip: str,
        server: Endpoint,
        *,
        extra_servers: Sequence[Endpoint] = (),
        config: ProbeConfig | None = None,
    ) -> None:
        self.network = network
        config = config or ProbeConfig()
        self.sockets: dict[str, Endpoint] = {}
        for socket_id in config.socket_ids:
            handler = self._handler(socket_id)
            self.sockets[socket_id] = network.bind(Endpoint(host_ip, 0), handler)
        self.prober = NatProber(
            server, local=self.sockets, extra_servers=extra_servers, config=config
        )
        self._timer: Timer | None = None
        self._timer_at: float | None = None

    def run(self, *, time_limit: float = PROBE_TIME_LIMIT) -> ProbeResult:
        """Start the probe and run the network until it has a result."""
        self.prober.start(self.network.now)
        self._pump()
        limit = self.network.now + time_limit
        self.network.run_until(lambda: self.prober.done, limit=limit)
        result = self.prober.result
        if result is None:
            raise UsageError(f"probe unfinished after {time_limit:g} simulated s")
        return result

    def _handler(self, socket_id: str) -> Handler:
        def deliver(packet: Packet, now: float) -> None:
            self._deliver(socket_id, packet, now)

        return deliver

    def _deliver(self, socket_id: str, packet: Packet, now: float) -> None:
        self.prober.handle_response(socket_id, packet.src, packet.data, now)
        self._pump()

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self.prober.handle_timeout(self.network.now)
        self._pump()

    def _pump(self) -> None:
        """Send what is queued and keep the timer at the prober's deadline."""
        for datagram in self.prober.datagrams_to_send():
            source = self.sockets[datagram.socket]
            self.network.send(source, datagram.destination, datagram.data)
        deadline = self.prober.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = self.network.call_at(deadline, self._on_timer)


@dataclass(frozen=True, slots=True)
class Lab:
    """A ready topology: an RFC 5780 server, maybe a NAT, a client host."""

    network: Network
    server: Rfc5780Server
    client_ip: str
    nat: NatBox | None

    def probe(
        self,
        *,
        config: ProbeConfig | None = None,
        server: Endpoint | None = None,
        extra_servers: Sequence[Endpoint] = (),
    ) -> ProbeResult:
        """Run a probe from the client host (against the RFC 5780 server)."""
        host = ProbeHost(
            self.network,
            self.client_ip,
            server or self.server.primary,
            extra_servers=extra_servers,
            config=config,
        )
        return host.run()


def build_lab(
    nat: NatConfig | None,
    *,
    seed: int = 0,
    profile: LinkProfile | None = None,
) -> Lab:
    """Client behind one NAT (or, with ``nat=None``, on the internet) and an
    RFC 5780 server at :data:`SERVER_PRIMARY` / :data:`SERVER_ALTERNATE`."""
    network = Network(seed=seed, profile=profile)
    server = Rfc5780Server(network)
    if nat is None:
        network.add_host(PUBLIC_HOST_IP)
        return Lab(network, server, PUBLIC_HOST_IP, None)
    box = network.add_nat(nat, external_ip=NAT_EXTERNAL_IP)
    network.add_host(PRIVATE_HOST_IP, realm=box.inside)
    return Lab(network, server, PRIVATE_HOST_IP, box)
