"""A deterministic userspace network with NAT boxes, sans-IO.

Everything happens on a simulated clock: :meth:`Network.send` puts a packet
on a link, :meth:`Network.advance` (or :meth:`Network.run_until`) moves time
forward and delivers packets and timers in order to the handlers bound to
endpoints. Randomness (loss, jitter, port choice) comes from one seeded RNG,
so a scenario replays exactly.

Topology: the network has realms. The public "internet" realm exists from
the start; every NAT box joins an outside realm with one external IP and
opens an inside realm (private addresses) of its own, so NATs nest (a NAT
behind a CGNAT). Each realm has a :class:`LinkProfile` (one-way delay,
jitter, loss) that every packet crossing it experiences. IP addresses are
unique over the whole network.

NAT behaviour follows RFC 4787: mapping (§4.1) endpoint-independent,
address-dependent or address-and-port-dependent; filtering (§5) likewise;
port allocation (§4.2.1) preserving (falling back to a random free port),
sequential or random; a binding timer (§4.3) refreshed by outbound packets
and, optionally, inbound ones; hairpinning (§6) on or off. Simplifications:
one external IP per NAT; an external port belongs to one binding at a time;
hairpinned packets are not filtered; no ICMP.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import UsageError

logger = logging.getLogger(__name__)

#: The range the network picks hosts' ephemeral ports from (Linux default).
EPHEMERAL_PORTS = (32768, 60999)
#: A bound on the events one :meth:`Network.run_until` call processes.
MAX_EVENTS = 2_000_000


@dataclass(frozen=True, slots=True)
class Packet:
    """A UDP datagram: source, destination, payload."""

    src: Endpoint
    dst: Endpoint
    data: bytes


#: What a bound endpoint is handed: the packet and the current time.
Handler = Callable[[Packet, float], None]


class MappingPolicy(StrEnum):
    """RFC 4787 §4.1: what a new destination does to the mapping."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class FilteringPolicy(StrEnum):
    """RFC 4787 §5: which inbound packets a binding lets in."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class PortPolicy(StrEnum):
    """RFC 4787 §4.2.1: how external ports are chosen."""

    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


class DropReason(StrEnum):
    """Why the network did not deliver a packet (counted in ``drops``)."""

    LOSS = "loss"
    NO_ROUTE = "no route"
    NO_LISTENER = "no listener"
    BLOCKED = "blocked"
    NO_BINDING = "no binding"
    FILTERED = "filtered"
    HAIRPIN_OFF = "hairpinning off"
    PORTS_EXHAUSTED = "ports exhausted"


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """What crossing a realm does to a packet: delay, jitter, loss (0-1)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0:
            raise UsageError("delay and jitter must not be negative")
        if not 0.0 <= self.loss < 1.0:
            raise UsageError(f"loss must be in [0, 1), not {self.loss}")


@dataclass(frozen=True, slots=True)
class NatConfig:
    """One NAT box's behaviour (RFC 4787), keyword arguments.

    ``step`` is the increment of sequential allocation; external ports come
    from ``port_min``-``port_max``. ``block_udp`` makes the box drop every
    packet, like a firewall that blocks UDP.
    """

    mapping: MappingPolicy = MappingPolicy.ENDPOINT_INDEPENDENT
    filtering: FilteringPolicy = FilteringPolicy.ENDPOINT_INDEPENDENT
    ports: PortPolicy = PortPolicy.PRESERVING
    hairpinning: bool = False
    binding_timeout: float = 120.0
    inbound_refresh: bool = False
    step: int = 1
    port_min: int = 1024
    port_max: int = 65535
    block_udp: bool = False

    def __post_init__(self) -> None:
        if self.binding_timeout <= 0:
            raise UsageError(
                f"binding timeout must be positive: {self.binding_timeout}"
            )
        if not 1 <= self.port_min <= self.port_max <= 0xFFFF:
            raise UsageError(f"bad port range {self.port_min}-{self.port_max}")
        if not 1 <= self.step <= self.port_max - self.port_min + 1:
            raise UsageError(f"bad sequential step {self.step}")


class Realm:
    """An address space: the internet, or the inside of one NAT box."""

    def __init__(self, name: str, profile: LinkProfile, gateway: NatBox | None) -> None:
        self.name = name
        self.profile = profile
        #: the NAT whose inside this realm is (None for the internet)
        self.gateway = gateway
        self.hosts: set[str] = set()
        #: external IP -> NAT box, for NATs whose outside is this realm
        self.nats: dict[str, NatBox] = {}

    def __repr__(self) -> str:
        return f"<Realm {self.name}>"


@dataclass(frozen=True, slots=True)
class _BindingKey:
    """RFC 4787 §4.1: which bindings are "the same" depends on the policy."""

    internal: Endpoint
    remote_ip: str | None
    remote_port: int | None


class _Binding:
    """One NAT binding: internal endpoint <-> external port, and its filter."""

    __slots__ = ("key", "external_port", "contacted", "last_active")

    def __init__(self, key: _BindingKey, external_port: int, now: float) -> None:
        self.key = key
        self.external_port = external_port
        #: remote endpoints the internal endpoint sent to over this binding
        self.contacted: set[Endpoint] = set()
        self.last_active = now


class NatBox:
    """A NAT with RFC 4787 behaviours, between an outside and an inside realm.

    Translates in :meth:`outbound` (inside source to external), :meth:`inbound`
    (external destination to inside) and :meth:`hairpin` (inside to its own
    external address). Each returns the translated packet or a
    :class:`DropReason`.
    """

    def __init__(
        self,
        name: str,
        external_ip: str,
        config: NatConfig,
        *,
        rng: random.Random,
        outside: Realm,
        inside: LinkProfile,
    ) -> None:
        self.name = name
        self.external_ip = external_ip
        self.config = config
        #: the realm the external IP lives in, and the private realm behind
        self.outside = outside
        self.inside = Realm(f"inside {name}", inside, self)
        self._rng = rng
        self._by_key: dict[_BindingKey, _Binding] = {}
        self._by_port: dict[int, _Binding] = {}
        self._next_port = rng.randint(config.port_min, config.port_max)

    def __repr__(self) -> str:
        return f"<NatBox {self.name} {self.external_ip} bindings={len(self._by_port)}>"

    def bindings(self, now: float) -> int:
        """How many bindings are alive at ``now``."""
        return sum(1 for b in self._by_port.values() if self._alive(b, now))

    def external_ports_of(self, internal: Endpoint, now: float) -> list[int]:
        """The external ports of the live bindings of ``internal`` (for tests)."""
        return sorted(
            b.external_port
            for b in self._by_port.values()
            if b.key.internal == internal and self._alive(b, now)
        )

    def outbound(self, packet: Packet, now: float) -> Packet | DropReason:
        """RFC 4787 §4: find or create the binding, refresh it, translate."""
        if self.config.block_udp:
            return DropReason.BLOCKED
        binding = self._binding_for(packet, now)
        if binding is None:
            return DropReason.PORTS_EXHAUSTED
        binding.contacted.add(packet.dst)
        binding.last_active = now
        source = Endpoint(self.external_ip, binding.external_port)
        return Packet(source, packet.dst, packet.data)

    def inbound(self, packet: Packet, now: float) -> Packet | DropReason:
        """RFC 4787 §5: look up the binding by port, filter, translate."""
        if self.config.block_udp:
            return DropReason.BLOCKED
        binding = self._live_port(packet.dst.port, now)
        if binding is None:
            return DropReason.NO_BINDING
        if not self._permits(binding, packet.src):
            return DropReason.FILTERED
        if self.config.inbound_refresh:
            binding.last_active = now
        return Packet(packet.src, binding.key.internal, packet.data)

    def hairpin(self, packet: Packet, now: float) -> Packet | DropReason:
        """RFC 4787 §6: inside to our own external address and back inside.

        The source is translated as for any outbound packet (REQ-9 b); the
        destination binding is not filtered (a simplification).
        """
        if self.config.block_udp:
            return DropReason.BLOCKED
        if not self.config.hairpinning:
            return DropReason.HAIRPIN_OFF
        translated = self.outbound(packet, now)
        if isinstance(translated, DropReason):
            return translated
        target = self._live_port(packet.dst.port, now)
        if target is None:
            return DropReason.NO_BINDING
        return Packet(translated.src, target.key.internal, packet.data)

    # --- bindings -------------------------------------------------------------

    def _alive(self, binding: _Binding, now: float) -> bool:
        """RFC 4787 §4.3: a binding lives ``binding_timeout`` after activity."""
        return now < binding.last_active + self.config.binding_timeout

    def _key(self, packet: Packet) -> _BindingKey:
        policy = self.config.mapping
        if policy is MappingPolicy.ENDPOINT_INDEPENDENT:
            return _BindingKey(packet.src, None, None)
        if policy is MappingPolicy.ADDRESS_DEPENDENT:
            return _BindingKey(packet.src, packet.dst.ip, None)
        return _BindingKey(packet.src, packet.dst.ip, packet.dst.port)

    def _binding_for(self, packet: Packet, now: float) -> _Binding | None:
        key = self._key(packet)
        binding = self._by_key.get(key)
        if binding is not None and not self._alive(binding, now):
            self._remove(binding)
            binding = None
        if binding is None:
            port = self._allocate(packet.src.port, now)
            if port is None:
                return None
            binding = _Binding(key, port, now)
            self._by_key[key] = binding
            self._by_port[port] = binding
            logger.debug(
                "%s: new binding %s -> %s:%d", self.name, key, self.external_ip, port
            )
        return binding

    def _live_port(self, port: int, now: float) -> _Binding | None:
        binding = self._by_port.get(port)
        if binding is not None and not self._alive(binding, now):
            self._remove(binding)
            return None
        return binding

    def _remove(self, binding: _Binding) -> None:
        logger.debug("%s: binding %s expired", self.name, binding.key)
        self._by_key.pop(binding.key, None)
        self._by_port.pop(binding.external_port, None)

    def _permits(self, binding: _Binding, remote: Endpoint) -> bool:
        policy = self.config.filtering
        if policy is FilteringPolicy.ENDPOINT_INDEPENDENT:
            return True
        if policy is FilteringPolicy.ADDRESS_DEPENDENT:
            return any(c.ip == remote.ip for c in binding.contacted)
        return remote in binding.contacted

    def _free(self, port: int, now: float) -> bool:
        cfg = self.config
        return (
            cfg.port_min <= port <= cfg.port_max and self._live_port(port, now) is None
        )

    def _allocate(self, internal_port: int, now: float) -> int | None:
        """RFC 4787 §4.2.1: pick the external port of a new binding."""
        cfg = self.config
        size = cfg.port_max - cfg.port_min + 1
        if cfg.ports is PortPolicy.PRESERVING and self._free(internal_port, now):
            return internal_port
        if cfg.ports is PortPolicy.SEQUENTIAL:
            for _ in range(size):
                port = self._next_port
                self._next_port = cfg.port_min + (port - cfg.port_min + cfg.step) % size
                if self._free(port, now):
                    return port
            return None

        # random, and the fallback of preserving: random tries, then a scan
        for _ in range(64):
            port = self._rng.randint(cfg.port_min, cfg.port_max)
            if self._free(port, now):
                return port
        start = self._rng.randint(cfg.port_min, cfg.port_max)
        for offset in range(size):
            port = cfg.port_min + (start - cfg.port_min + offset) % size
            if self._free(port, now):
                return port
        return None


class Timer:
    """A scheduled callback; :meth:`cancel` stops it from running."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Network:
    """Hosts, NAT boxes and links on one simulated clock.

    ``profile`` is the internet's link (every packet crossing the public
    realm gets its delay, jitter and loss); NAT insides default to an ideal
    link. ``seed`` fixes every random choice.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        profile: LinkProfile | None = None,
        start: float = 0.0,
    ) -> None:
        self.now = start
        self.rng = random.Random(seed)
        self.internet = Realm("internet", profile or LinkProfile(), None)
        self.drops: Counter[DropReason] = Counter()
        self.delivered = 0
        self._realm_of: dict[str, Realm] = {}
        self._handlers: dict[Endpoint, Handler] = {}
        self._events: list[tuple[float, int, Timer]] = []
        self._seq = 0

    # --- building the topology -------------------------------------------------

    def has_host(self, ip: str) -> bool:
        realm = self._realm_of.get(Endpoint(ip, 0).ip)
        return realm is not None and Endpoint(ip, 0).ip in realm.hosts

    def add_host(self, ip: str, *, realm: Realm | None = None) -> str:
        """Give ``realm`` (default: the internet) a host with address ``ip``."""
        ip = Endpoint(ip, 0).ip
        self._claim(ip)
        target = realm or self.internet
        target.hosts.add(ip)
        self._realm_of[ip] = target
        return ip

    def add_nat(
        self,
        config: NatConfig,
        *,
        external_ip: str,
        outside: Realm | None = None,
        inside: LinkProfile | None = None,
        name: str | None = None,
    ) -> NatBox:
        """A NAT box with ``external_ip`` in ``outside`` (default: internet).

        Its private side is ``nat.inside``, a new realm for hosts.
        """
        external_ip = Endpoint(external_ip, 0).ip
        self._claim(external_ip)
        realm = outside or self.internet
        nat = NatBox(
            name or f"nat-{external_ip}",
            external_ip,
            config,
            rng=random.Random(self.rng.getrandbits(64)),
            outside=realm,
            inside=inside or LinkProfile(),
        )
        realm.nats[external_ip] = nat
        self._realm_of[external_ip] = realm
        return nat

    def _claim(self, ip: str) -> None:
        if ip in self._realm_of:
            raise UsageError(f"address {ip} is already in the network")

    # --- endpoints ---------------------------------------------------------------

    def bind(self, endpoint: Endpoint, handler: Handler) -> Endpoint:
        """Deliver packets for ``endpoint`` to ``handler``; port 0 picks one.

        The ephemeral port comes from the seeded RNG (like an OS picking a
        random source port), so NAT port preservation is visible.
        """
        realm = self._realm_of.get(endpoint.ip)
        if realm is None or endpoint.ip not in realm.hosts:
            raise UsageError(f"no host {endpoint.ip} in the network")
        if endpoint.port == 0:
            endpoint = self._ephemeral(endpoint.ip)
        if endpoint in self._handlers:
            raise UsageError(f"{endpoint} is already bound")
        self._handlers[endpoint] = handler
        return endpoint

    def unbind(self, endpoint: Endpoint) -> None:
        self._handlers.pop(endpoint, None)

    def _ephemeral(self, ip: str) -> Endpoint:
        low, high = EPHEMERAL_PORTS
        for _ in range(1000):
            candidate = Endpoint(ip, self.rng.randint(low, high))
            if candidate not in self._handlers:
                return candidate
        raise UsageError(f"no free ephemeral port on {ip}")

    # --- sending and time --------------------------------------------------------

    def send(self, source: Endpoint, destination: Endpoint, data: bytes) -> None:
        """Send a datagram from a host's ``source`` (bound or not) now."""
        realm = self._realm_of.get(source.ip)
        if realm is None or source.ip not in realm.hosts:
            raise UsageError(f"no host {source.ip} in the network")
        self._transmit(realm, Packet(source, destination, bytes(data)))

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at simulated time ``when`` (not before now)."""
        timer = Timer(max(when, self.now), callback)
        self._push(timer)
        return timer

    def advance(self, to_time: float) -> None:
        """Deliver everything due up to ``to_time``; the clock ends there."""
        self.run_until(lambda: False, limit=to_time)
        if any(not t.cancelled and when <= to_time for when, _, t in self._events):
            raise UsageError(f"more than {MAX_EVENTS} events before {to_time}")
        self.now = max(self.now, to_time)

    def run_until(
        self,
        predicate: Callable[[], bool],
        *,
        limit: float,
        max_events: int = MAX_EVENTS,
    ) -> bool:
        """Process events in time order until ``predicate()`` holds.

        Stops at simulated time ``limit``, when nothing is left to do, or
        after ``max_events`` events; returns ``predicate()``.
        """
        for _ in range(max_events):
            if predicate() or not self._events or self._events[0][0] > limit:
                return predicate()
            when, _, timer = heapq.heappop(self._events)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback()
        return predicate()

    @property
    def pending(self) -> int:
        """Events (packets in flight and timers) still to process."""
        return sum(1 for _, _, t in self._events if not t.cancelled)

    def _push(self, timer: Timer) -> None:
        self._seq += 1
        heapq.heappush(self._events, (timer.when, self._seq, timer))

    def _drop(self, reason: DropReason, packet: Packet) -> None:
        logger.debug("drop (%s): %s -> %s", reason.value, packet.src, packet.dst)
        self.drops[reason] += 1

    def _transmit(self, realm: Realm, packet: Packet) -> None:
        """Put ``packet`` on ``realm``'s link: loss, then delay and jitter."""
        profile = realm.profile
        if profile.loss and self.rng.random() < profile.loss:
            self._drop(DropReason.LOSS, packet)
            return
        delay = profile.delay
        if profile.jitter:
            delay += self.rng.uniform(0.0, profile.jitter)
        self._push(Timer(self.now + delay, lambda: self._arrive(realm, packet)))

    def _arrive(self, realm: Realm, packet: Packet) -> None:
        """Route a packet that crossed ``realm``'s link (RFC 4787 §4, §5, §6)."""
        dst_ip = packet.dst.ip

        # a host of this realm
        if dst_ip in realm.hosts:
            handler = self._handlers.get(packet.dst)
            if handler is None:
                self._drop(DropReason.NO_LISTENER, packet)
                return
            self.delivered += 1
            handler(packet, self.now)
            return

        # the external address of a NAT that sits in this realm: inbound
        nat = realm.nats.get(dst_ip)
        if nat is not None:
            self._forward(nat.inside, nat.inbound(packet, self.now), packet)
            return

        # otherwise out through this realm's gateway, or hairpinned by it
        gateway = realm.gateway
        if gateway is None:
            self._drop(DropReason.NO_ROUTE, packet)
        elif dst_ip == gateway.external_ip:
            self._forward(realm, gateway.hairpin(packet, self.now), packet)
        else:
            self._forward(gateway.outside, gateway.outbound(packet, self.now), packet)

    def _forward(
        self, realm: Realm, verdict: Packet | DropReason, original: Packet
    ) -> None:
        if isinstance(verdict, DropReason):
            self._drop(verdict, original)
        else:
            self._transmit(realm, verdict)
