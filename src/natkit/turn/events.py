"""What the TURN server core reports: one frozen record per thing that happened.

The core hands every event to an :class:`EventSink`. The default,
:class:`LoggingEventSink`, writes one text line per event at INFO through
``logging``; the server wiring replaces it with the audit sink and metrics
(security events belong in structured records, not text logs). No event holds
a password, key or MESSAGE-INTEGRITY value.

Events come from control traffic (requests, timers), never from the relay data
path: per-packet drops are counted, not reported one by one.
"""

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

_logger = logging.getLogger(__name__)

_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class TrafficStats:
    """Relayed traffic of one allocation, each way (RFC 8656 §10, §12)."""

    #: client -> peer, after the checks passed
    bytes_to_peer: int = 0
    packets_to_peer: int = 0
    #: peer -> client
    bytes_to_client: int = 0
    packets_to_client: int = 0
    #: packets dropped: no permission, no channel, policy, rate limit
    dropped: int = 0


class EndReason(StrEnum):
    """Why an allocation ended."""

    #: RFC 8656 §7.3: Refresh with LIFETIME 0
    REFRESH = "refresh"
    #: RFC 8656 §6: time-to-expiry reached zero
    EXPIRED = "expired"
    #: the TCP/TLS connection carrying the 5-tuple closed
    CONNECTION_CLOSED = "connection-closed"
    #: the server is shutting down
    SHUTDOWN = "shutdown"
    #: an operator revoked it through the admin API
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class AllocationCreated:
    """RFC 8656 §7.2: an Allocate request succeeded."""

    allocation: str
    username: str
    client: str
    relays: tuple[str, ...]
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationRefreshed:
    """RFC 8656 §7.3: a Refresh request set a new time-to-expiry."""

    allocation: str
    username: str
    lifetime: int
    stats: TrafficStats


@dataclass(frozen=True, slots=True)
class AllocationExpired:
    """RFC 8656 §6: the allocation's time-to-expiry reached zero."""

    allocation: str
    username: str
    duration: float
    stats: TrafficStats


@dataclass(frozen=True, slots=True)
class AllocationDeleted:
    """The allocation ended before expiring (Refresh 0, closed connection...)."""

    allocation: str
    username: str
    reason: EndReason
    duration: float
    stats: TrafficStats


@dataclass(frozen=True, slots=True)
class PermissionCreated:
    """RFC 8656 §9: a permission for ``peer_ip`` was installed (not refreshed)."""

    allocation: str
    peer_ip: str


@dataclass(frozen=True, slots=True)
class PermissionExpired:
    """RFC 8656 §9: a permission was not refreshed within 300 s."""

    allocation: str
    peer_ip: str


@dataclass(frozen=True, slots=True)
class ChannelBound:
    """RFC 8656 §11.2: a channel was bound to a peer (not refreshed)."""

    allocation: str
    channel: int
    peer_ip: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class ChannelExpired:
    """RFC 8656 §11: a channel binding was not refreshed within 600 s."""

    allocation: str
    channel: int
    peer_ip: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class PeerDenied:
    """The peer policy refused a CreatePermission or ChannelBind peer (403)."""

    allocation: str
    username: str
    peer_ip: str
    peer_port: int
    reason: str


@dataclass(frozen=True, slots=True)
class QuotaRefused:
    """A request was refused because a quota was reached (486 or 508)."""

    username: str
    client: str
    quota: str
    limit: int


@dataclass(frozen=True, slots=True)
class AuthSucceeded:
    """A request passed the long-term credential checks (RFC 8489 §9.2.4)."""

    username: str
    client: str
    method: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """A request carrying credentials failed them (RFC 8489 §9.2.4).

    A request without MESSAGE-INTEGRITY that is answered with the 401
    challenge is the normal first step, not a failure, and is not reported.
    """

    username: str | None
    client: str
    method: str
    code: int
    reason: str


TurnEvent = (
    AllocationCreated
    | AllocationRefreshed
    | AllocationExpired
    | AllocationDeleted
    | PermissionCreated
    | PermissionExpired
    | ChannelBound
    | ChannelExpired
    | PeerDenied
    | QuotaRefused
    | AuthSucceeded
    | AuthFailed
)


class EventSink(Protocol):
    """Receives the core's events; must not raise and must not block."""

    def emit(self, event: TurnEvent) -> None: ...


class LoggingEventSink:
    """Writes each event as one text line at INFO (the default sink)."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _logger

    def emit(self, event: TurnEvent) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        self._logger.info("%s", format_event(event))


class CollectingEventSink:
    """Keeps every event in a list (tests, diagnostics)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[TurnEvent] = []

    def emit(self, event: TurnEvent) -> None:
        self.events.append(event)

    def of_type(self, kind: type[_E]) -> list[_E]:
        """The events of class ``kind``, in order."""
        return [e for e in self.events if isinstance(e, kind)]


def _stats_text(stats: TrafficStats) -> str:
    return (
        f"to_peer={stats.packets_to_peer}p/{stats.bytes_to_peer}B "
        f"to_client={stats.packets_to_client}p/{stats.bytes_to_client}B "
        f"dropped={stats.dropped}"
    )


def format_event(event: TurnEvent) -> str:
    """One line for ``event``, with the allocation id as prefix where it has one."""
    match event:
        case AllocationCreated():
            relays = ",".join(event.relays)
            return (
                f"[{event.allocation}] allocated user={event.username} "
                f"client={event.client} relay={relays} lifetime={event.lifetime}s"
            )
        case AllocationRefreshed():
            return (
                f"[{event.allocation}] refreshed lifetime={event.lifetime}s "
                f"{_stats_text(event.stats)}"
            )
        case AllocationExpired():
            return (
                f"[{event.allocation}] expired after {event.duration:.0f}s "
                f"{_stats_text(event.stats)}"
            )
        case AllocationDeleted():
            return (
                f"[{event.allocation}] deleted ({event.reason}) after "
                f"{event.duration:.0f}s {_stats_text(event.stats)}"
            )
        case PermissionCreated():
            return f"[{event.allocation}] permission {event.peer_ip}"
        case PermissionExpired():
            return f"[{event.allocation}] permission {event.peer_ip} expired"
        case ChannelBound():
            return (
                f"[{event.allocation}] channel 0x{event.channel:04x} -> "
                f"{_endpoint(event.peer_ip, event.peer_port)}"
            )
        case ChannelExpired():
            return f"[{event.allocation}] channel 0x{event.channel:04x} expired"
        case PeerDenied():
            return (
                f"[{event.allocation}] peer "
                f"{_endpoint(event.peer_ip, event.peer_port)} denied: {event.reason}"
            )
        case QuotaRefused():
            return (
                f"quota {event.quota} ({event.limit}) reached: user={event.username} "
                f"client={event.client}"
            )
        case AuthSucceeded():
            return f"auth ok user={event.username} client={event.client} {event.method}"
        case AuthFailed():
            return (
                f"auth failed {event.code} ({event.reason}) user={event.username} "
                f"client={event.client} {event.method}"
            )


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
