"""Prometheus metrics of ``natkit serve``, read from existing counters.

Nothing here runs per packet. :class:`ServerCollector` is a custom
``prometheus_client`` collector: each scrape takes one
:meth:`~natkit.net.listeners.StunService.stats` snapshot and walks the live
allocations once. The only counters kept here are fed by control-plane
events (:class:`TurnEventCounters` wraps the TURN core's event sink: auth
failures, denied peers, quota refusals, and the traffic of allocations that
ended) and by the admin API itself (:class:`AdminCounters`).

Labels are bounded: ``transport`` (udp, tcp, tls), ``direction`` (to_peer,
to_client), ``result``, ``reason``, ``quota`` and ``request`` take a few fixed
values each. There is no per-user, per-allocation or per-address label.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from natkit import __version__
from natkit.net.listeners import ServiceStats
from natkit.turn.allocation import Allocation
from natkit.turn.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationExpired,
    AuthFailed,
    EventSink,
    PeerDenied,
    QuotaRefused,
    TrafficStats,
    TurnEvent,
)
from natkit.turn.quota import QuotaKind

TRANSPORTS = ("udp", "tcp", "tls")
DIRECTIONS = ("to_peer", "to_client")


class _Traffic:
    """Bytes and packets each way (mutable, slotted)."""

    __slots__ = (
        "bytes_to_peer",
        "packets_to_peer",
        "bytes_to_client",
        "packets_to_client",
    )

    def __init__(self) -> None:
        self.bytes_to_peer = 0
        self.packets_to_peer = 0
        self.bytes_to_client = 0
        self.packets_to_client = 0

    def add(self, stats: TrafficStats | Allocation) -> None:
        self.bytes_to_peer += stats.bytes_to_peer
        self.packets_to_peer += stats.packets_to_peer
        self.bytes_to_client += stats.bytes_to_client
        self.packets_to_client += stats.packets_to_client

    def copy(self) -> "_Traffic":
        other = _Traffic()
        other.add_traffic(self)
        return other

    def add_traffic(self, other: "_Traffic") -> None:
        self.bytes_to_peer += other.bytes_to_peer
        self.packets_to_peer += other.packets_to_peer
        self.bytes_to_client += other.bytes_to_client
        self.packets_to_client += other.packets_to_client


class TurnEventCounters:
    """An :class:`~natkit.turn.events.EventSink` that counts, then passes on.

    Wrap the core's sink with it (:func:`install_event_counters`). Events
    come from control traffic only (requests, timers), so the counting costs
    nothing on the relay path. The traffic of an allocation is added to
    :attr:`ended` when it expires or is deleted; the live ones are read at
    scrape time.
    """

    __slots__ = (
        "inner",
        "auth_failures",
        "peers_denied",
        "quota_refused",
        "ended",
        "_transport_of",
    )

    def __init__(self, inner: EventSink) -> None:
        self.inner = inner
        self.auth_failures = 0
        #: CreatePermission / ChannelBind peers the policy refused (403)
        self.peers_denied = 0
        self.quota_refused: dict[str, int] = {str(k): 0 for k in QuotaKind}
        self.ended: dict[str, _Traffic] = {t: _Traffic() for t in TRANSPORTS}
        self._transport_of: dict[str, str] = {}

    def emit(self, event: TurnEvent) -> None:
        kind = type(event)
        if kind is AuthFailed:
            self.auth_failures += 1
        elif kind is PeerDenied:
            self.peers_denied += 1
        elif isinstance(event, QuotaRefused):
            quota = str(event.quota)
            self.quota_refused[quota] = self.quota_refused.get(quota, 0) + 1
        elif isinstance(event, AllocationCreated):
            transport = event.client.partition(":")[0]
            self._transport_of[event.allocation] = (
                transport if transport in self.ended else "udp"
            )
        elif isinstance(event, AllocationExpired | AllocationDeleted):
            transport = self._transport_of.pop(event.allocation, "udp")
            self.ended[transport].add(event.stats)
        self.inner.emit(event)


class HasEventSink(Protocol):
    """A TURN core: :class:`~natkit.turn.server.TurnServer` has ``events``."""

    events: EventSink


def install_event_counters(server: HasEventSink) -> TurnEventCounters:
    """Wrap ``server.events`` (a TurnServer's sink) with the counters, once."""
    current = server.events
    if isinstance(current, TurnEventCounters):
        return current
    counters = TurnEventCounters(current)
    server.events = counters
    return counters


class AdminCounters:
    """What the admin API counts about its own requests (mutable, slotted)."""

    __slots__ = ("auth_failures", "throttled", "forbidden")

    def __init__(self) -> None:
        #: requests with no token, or a token that is not valid
        self.auth_failures = 0
        #: requests refused with 429 because their source is throttled
        self.throttled = 0
        #: valid tokens whose role does not allow the request (403)
        self.forbidden = 0


@dataclass(frozen=True, slots=True)
class MetricSources:
    """Where a scrape reads from; everything but ``stats`` is optional."""

    stats: Callable[[], ServiceStats]
    allocations: Callable[[], Iterable[Allocation]] | None = None
    events: TurnEventCounters | None = None
    admin: AdminCounters | None = None


class ServerCollector(Collector):
    """Every natkit metric family, computed at scrape time."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        stats = self.sources.stats()
        info = GaugeMetricFamily(
            "natkit_info", "The natkit version serving (always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield from _stun_metrics(stats)
        if stats.turn is not None:
            yield from self._turn_metrics(stats)
        if self.sources.admin is not None:
            yield from _admin_metrics(self.sources.admin)

    def _turn_metrics(self, stats: ServiceStats) -> Iterator[Metric]:
        turn = stats.turn
        if turn is None:
            return
        core = turn.core

        # step 1: what is live now, by transport
        live = {t: _Traffic() for t in TRANSPORTS}
        active = dict.fromkeys(TRANSPORTS, 0)
        for alloc in self.sources.allocations() if self.sources.allocations else ():
            transport = str(alloc.client.transport)
            if transport in live:
                live[transport].add(alloc)
                active[transport] += 1
        allocations = GaugeMetricFamily(
            "natkit_turn_allocations", "TURN allocations now.", labels=["transport"]
        )
        for transport, count in active.items():
            allocations.add_metric([transport], count)
        yield allocations
        yield _gauge("natkit_turn_permissions", "Permissions now.", core.permissions)
        yield _gauge("natkit_turn_channels", "Channel bindings now.", core.channels)
        yield _gauge(
            "natkit_turn_reservations", "Reserved relay ports now.", core.reservations
        )
        yield _gauge(
            "natkit_turn_relay_sockets", "Relay sockets open now.", turn.relay_sockets
        )

        # step 2: relayed traffic, ended allocations plus live ones
        events = self.sources.events
        relayed_bytes = CounterMetricFamily(
            "natkit_turn_relayed_bytes",
            "Application bytes relayed (RFC 8656 §10, §12).",
            labels=["transport", "direction"],
        )
        relayed_packets = CounterMetricFamily(
            "natkit_turn_relayed_packets",
            "Packets relayed (RFC 8656 §10, §12).",
            labels=["transport", "direction"],
        )
        for transport in TRANSPORTS:
            total = live[transport].copy()
            if events is not None:
                total.add_traffic(events.ended[transport])
            relayed_bytes.add_metric([transport, "to_peer"], total.bytes_to_peer)
            relayed_bytes.add_metric([transport, "to_client"], total.bytes_to_client)
            relayed_packets.add_metric([transport, "to_peer"], total.packets_to_peer)
            relayed_packets.add_metric(
                [transport, "to_client"], total.packets_to_client
            )
        yield relayed_bytes
        yield relayed_packets
        fast = CounterMetricFamily(
            "natkit_turn_fast_path_packets",
            "ChannelData relayed by the fast path (included in relayed packets).",
            labels=["direction"],
        )
        fast.add_metric(["to_peer"], turn.fast_to_peer)
        fast.add_metric(["to_client"], turn.fast_to_client)
        yield fast

        # step 3: requests, refusals and drops
        yield _counter("natkit_turn_requests", "TURN requests.", core.requests)
        responses = CounterMetricFamily(
            "natkit_turn_responses", "TURN responses sent.", labels=["result"]
        )
        responses.add_metric(["success"], core.success)
        responses.add_metric(["error"], core.errors)
        yield responses
        yield _counter(
            "natkit_turn_auth_failures",
            "TURN requests whose credentials failed (RFC 8489 §9.2.4).",
            events.auth_failures if events is not None else 0,
        )
        yield _counter(
            "natkit_turn_throttled",
            "TURN requests dropped: their source failed authentication too often.",
            core.throttled,
        )
        denied = CounterMetricFamily(
            "natkit_turn_peers_denied",
            "Peers the relay policy refused (RFC 8656 §21).",
            labels=["request"],
        )
        denied.add_metric(
            ["permission"], events.peers_denied if events is not None else 0
        )
        denied.add_metric(["send"], core.policy_denied)
        yield denied
        quota = CounterMetricFamily(
            "natkit_turn_quota_refusals",
            "Requests refused by a quota (486, 508).",
            labels=["quota"],
        )
        for kind in QuotaKind:
            count = events.quota_refused.get(str(kind), 0) if events else 0
            quota.add_metric([str(kind)], count)
        yield quota
        dropped = CounterMetricFamily(
            "natkit_turn_dropped",
            "Relayed or client messages dropped, by reason.",
            labels=["reason"],
        )
        for reason, count in (
            ("no_allocation", core.no_allocation),
            ("no_permission", core.no_permission),
            ("unknown_channel", core.unknown_channel),
            ("rate_limited", core.rate_limited),
            ("unknown_relay", core.unknown_relay),
            ("client_buffer_full", stats.client_drops),
            ("send_error", turn.send_errors),
        ):
            dropped.add_metric([reason], count)
        yield dropped
        yield _counter(
            "natkit_turn_malformed",
            "TURN messages that did not decode.",
            core.malformed,
        )
        yield _counter(
            "natkit_turn_relay_bind_failures",
            "Relay ports skipped because another program held them.",
            turn.bind_failures,
        )
        yield _counter(
            "natkit_turn_internal_errors",
            "Messages that hit a bug in the TURN driver.",
            turn.internal_errors,
        )


def _stun_metrics(stats: ServiceStats) -> Iterator[Metric]:
    responder = stats.responder
    binding = CounterMetricFamily(
        "natkit_stun_binding_responses",
        "STUN Binding responses sent (RFC 8489 §6.3).",
        labels=["result"],
    )
    binding.add_metric(["success"], stats.success)
    binding.add_metric(["error"], responder.errors)
    yield binding
    yield _counter(
        "natkit_stun_binding_fast_path",
        "Binding success responses built by the fast path (included above).",
        stats.fast_answered,
    )
    yield _counter(
        "natkit_stun_malformed",
        "STUN messages dropped because they did not decode (RFC 8489 §6.3).",
        responder.malformed,
    )
    yield _counter(
        "natkit_stun_ignored",
        "Indications and responses from clients.",
        responder.ignored,
    )
    yield _gauge(
        "natkit_stream_connections",
        "TCP and TLS connections open now.",
        stats.active_connections,
    )
    closed = CounterMetricFamily(
        "natkit_stream_connections_closed",
        "TCP and TLS connections the server closed, by reason.",
        labels=["reason"],
    )
    closed.add_metric(["idle"], stats.idle_closed)
    closed.add_metric(["framing"], stats.stream_desync)
    closed.add_metric(["limit"], stats.rejected_connections)
    yield closed
    yield _counter(
        "natkit_internal_errors",
        "Messages that hit a bug in natkit's listeners.",
        stats.internal_errors,
    )


def _admin_metrics(admin: AdminCounters) -> Iterator[Metric]:
    yield _counter(
        "natkit_admin_auth_failures",
        "Admin API requests without a valid token (401).",
        admin.auth_failures,
    )
    yield _counter(
        "natkit_admin_throttled",
        "Admin API requests refused because their source failed too often (429).",
        admin.throttled,
    )
    yield _counter(
        "natkit_admin_forbidden",
        "Admin API requests a token's role does not allow (403).",
        admin.forbidden,
    )


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def build_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry of its own (not the process-wide one) holding the collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(sources))
    return registry
