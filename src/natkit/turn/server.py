"""The TURN server core, sans-IO (RFC 8656).

:class:`TurnServer` holds every allocation of one server and answers what
arrives, returning what to send. It opens no socket and reads no clock: the
asyncio driver in ``natkit.net`` owns the sockets and passes ``now`` (float
seconds from one monotonic clock) into every call.

The boundary with the driver
============================

Input, three calls and a timer:

``handle_client_datagram(data, client, now) -> list[Action]``
    One datagram (UDP) or one frame (TCP/TLS, cut with
    :func:`natkit.turn.channeldata.next_frame`) from a client: a STUN message
    or a ChannelData message. ``client`` is the 5-tuple,
    :class:`~natkit.turn.allocation.ClientAddress`.
``handle_peer_datagram(relay, peer_ip, peer_port, data, now) -> list[Action]``
    A UDP datagram received on the relay socket bound to ``relay`` (the
    :class:`~natkit.turn.allocation.RelayAddress` object the allocator
    returned; keep it per socket so no new object is built per packet).
``handle_client_closed(client, now) -> list[Action]``
    A TCP/TLS connection ended; its allocation, if any, is deleted.
``next_deadline() -> float | None`` and ``handle_timeout(now) -> list[Action]``
    Call ``handle_timeout`` at (or after) the deadline; it expires
    allocations, permissions, channel bindings and port reservations.

Output, a list of frozen actions, to be carried out in order:

- :class:`SendToClient` ``(client, data)``: write ``data`` on that 5-tuple.
- :class:`SendToPeer` ``(relay, peer_ip, peer_port, data, dont_fragment)``:
  send from the relay socket ``relay``; set DF on this datagram if asked
  (RFC 8656 §14).
- :class:`CloseRelay` ``(relay)``: the relayed address is no longer used;
  stop reading its socket and close it.

Relay ports come from a :class:`RelayPortAllocator` that the driver
implements (it binds the sockets): ``reserve(family, even=, reserve_next=)``
returns a bound :class:`RelayAddress` or None (the core answers 508);
``release(addr)`` gives one back. With ``reserve_next`` the allocator holds
port N+1 of the returned even port N as well; the core later either hands
that address to a RESERVATION-TOKEN Allocate or releases it. Every address
the core stops using is released and then closed with :class:`CloseRelay`,
in the same call; a driver that closes the socket in ``release`` may ignore
:class:`CloseRelay`.

Events (:mod:`natkit.turn.events`) go to an
:class:`~natkit.turn.events.EventSink`, logging at INFO by default.

Binding requests on the TURN port are answered by a
:class:`~natkit.stun.server.BindingResponder` (every TURN server is a STUN
server, RFC 8656 §2). All other requests are authenticated with the
long-term credential mechanism (RFC 8656 §5, RFC 8489 §9.2) by an
:class:`Authenticator` (:class:`natkit.turn.auth.LongTermAuthenticator`).

The relay data path (ChannelData, Send and Data indications) costs a few
dict lookups and no logging; drops are counted in :meth:`TurnServer.stats`.
"""

import ipaddress
import logging
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from natkit.stun.attributes import (
    AdditionalAddressFamily,
    AddressErrorCode,
    Attribute,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCodeAttr,
    EvenPort,
    Lifetime,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from natkit.stun.constants import (
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    REASON_PHRASES,
    AddressFamily,
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
)
from natkit.stun.errors import DecodeError, StunProtocolError, UsageError
from natkit.stun.message import Message, decode, message_type
from natkit.stun.server import BindingResponder
from natkit.turn.allocation import (
    CHANNEL_LIFETIME,
    PERMISSION_LIFETIME,
    RESERVATION_LIFETIME,
    Allocation,
    ChannelBinding,
    ClientAddress,
    ExpiryHeap,
    Permission,
    RelayAddress,
    Reservation,
)
from natkit.turn.auth import AuthResult, encode_response
from natkit.turn.auth import ClientAddress as AuthClient
from natkit.turn.channeldata import CHANNEL_HEADER_LENGTH, is_valid_channel
from natkit.turn.credentials import parse_rest_username
from natkit.turn.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationExpired,
    AllocationRefreshed,
    AuthFailed,
    AuthSucceeded,
    ChannelBound,
    ChannelExpired,
    EndReason,
    EventSink,
    LoggingEventSink,
    PeerDenied,
    PermissionCreated,
    PermissionExpired,
    QuotaRefused,
)
from natkit.turn.quota import AllocationQuota, QuotaConfig, QuotaKind
from natkit.turn.throttle import AuthThrottle

logger = logging.getLogger(__name__)

#: RFC 8656 §7.2, §19: REQUESTED-TRANSPORT 17 is UDP, the only relay transport
PROTOCOL_UDP = 17
#: RFC 8656 §7.2: the default allocation lifetime (10 minutes)
DEFAULT_LIFETIME = 600
#: RFC 8656 §7.2: the recommended maximum lifetime (1 hour)
MAX_LIFETIME = 3600
#: RFC 8489 §6.3.1: remember UDP transactions for 40 s to answer retransmissions
RETRANSMIT_WINDOW = 40.0

_DATA_INDICATION = message_type(Method.DATA, MessageClass.INDICATION)
_STUN_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_ADDRESS_HEADER = struct.Struct("!HHBBH")
_CHANNEL_HEADER = struct.Struct("!HH")
#: the largest DATA that fits a Data indication (IPv6 XOR-PEER-ADDRESS, padding)
_MAX_DATA_INDICATION = 0xFFFF - 24 - 4 - 3
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_COOKIE_HIGH = MAGIC_COOKIE >> 16


# --- actions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send ``data`` to the client on the 5-tuple ``client``."""

    client: ClientAddress
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToPeer:
    """Send ``data`` from relay socket ``relay`` to ``peer_ip``:``peer_port``.

    ``dont_fragment``: set the DF bit (IPv4) or refuse fragmentation (IPv6)
    for this datagram (RFC 8656 §14.1).
    """

    relay: RelayAddress
    peer_ip: str
    peer_port: int
    data: bytes
    dont_fragment: bool = False


@dataclass(frozen=True, slots=True)
class CloseRelay:
    """The relayed address ``relay`` is no longer used: close its socket."""

    relay: RelayAddress


Action = SendToClient | SendToPeer | CloseRelay


# --- what the core needs from the outside ------------------------------------


class RelayPortAllocator(Protocol):
    """Hands out relayed transport addresses (implemented by the driver).

    RFC 8656 §7.2: ports SHOULD come from 49152-65535. ``even`` asks for an
    even port (EVEN-PORT); ``reserve_next`` (EVEN-PORT R bit) also holds the
    next port, N+1, which the core releases separately later. None means no
    address could be had (the core answers 508 Insufficient Capacity).
    """

    def reserve(
        self, family: AddressFamily, *, even: bool, reserve_next: bool
    ) -> RelayAddress | None: ...

    def release(self, addr: RelayAddress) -> None: ...


class PolicyDecisionLike(Protocol):
    """What :class:`natkit.turn.policy.PolicyDecision` offers."""

    @property
    def allowed(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class PeerPolicyLike(Protocol):
    """Which peers the relay may reach (:class:`natkit.turn.policy.PeerPolicy`)."""

    def check(self, ip: str, port: int) -> PolicyDecisionLike: ...


class Authenticator(Protocol):
    """RFC 8489 §9.2.4 checks (:class:`natkit.turn.auth.LongTermAuthenticator`)."""

    def verify_request(
        self, msg: Message, client: AuthClient, now: float
    ) -> AuthResult: ...


def rest_quota_user(username: str) -> str:
    """The user a REST username ("expiry:user") counts against, for quotas.

    Every minted REST credential has its own username, so quotas per
    username would not limit a user; the user part does.
    """
    parsed = parse_rest_username(username)
    if parsed is None or not parsed.user:
        return username
    return parsed.user


def _same_user(username: str) -> str:
    return username


# --- configuration and counters ------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Settings of the TURN core; the defaults are the RFC 8656 values.

    RFC 8656 §7.2: a requested lifetime is capped at ``max_lifetime``, and a
    value below ``default_lifetime`` gives ``default_lifetime`` (so the
    default is also the minimum). ``families`` are the relay address families
    this server offers (RFC 8656 §7.2 step 7: others get 440).
    ``dont_fragment``: the driver can set DF per datagram, so DONT-FRAGMENT
    is honoured; without it, the attribute is refused as unknown (420).
    ``quota_user`` maps a username to the name quotas count it under (see
    :func:`rest_quota_user`).
    """

    software: str | None = None
    default_lifetime: int = DEFAULT_LIFETIME
    max_lifetime: int = MAX_LIFETIME
    permission_lifetime: float = PERMISSION_LIFETIME
    channel_lifetime: float = CHANNEL_LIFETIME
    reservation_lifetime: float = RESERVATION_LIFETIME
    families: frozenset[AddressFamily] = frozenset(
        (AddressFamily.IPV4, AddressFamily.IPV6)
    )
    dont_fragment: bool = True
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    quota_user: Callable[[str], str] = _same_user
    retransmit_window: float = RETRANSMIT_WINDOW

    def __post_init__(self) -> None:
        if self.default_lifetime < 1:
            raise UsageError("default_lifetime must be at least 1 second")
        if self.max_lifetime < self.default_lifetime:
            raise UsageError("max_lifetime must not be below default_lifetime")
        if self.permission_lifetime <= 0 or self.channel_lifetime <= 0:
            raise UsageError("permission and channel lifetimes must be positive")
        # RFC 8656 §7.2: a reservation MUST be held for at least 30 seconds
        if self.reservation_lifetime < RESERVATION_LIFETIME:
            raise UsageError("reservation_lifetime must be at least 30 seconds")
        if not self.families:
            raise UsageError("at least one relay address family is needed")
        if self.retransmit_window < 0:
            raise UsageError("retransmit_window must not be negative")


@dataclass(frozen=True, slots=True)
class ServerStats:
    """Counters of a :class:`TurnServer`, at one moment."""

    allocations: int = 0
    permissions: int = 0
    channels: int = 0
    reservations: int = 0
    #: TURN requests and their answers (Binding: see the BindingResponder)
    requests: int = 0
    success: int = 0
    errors: int = 0
    #: messages that did not decode, or indications missing attributes
    malformed: int = 0
    #: responses, unknown indications
    ignored: int = 0
    #: requests dropped because the source is throttled
    throttled: int = 0
    #: Allocate retransmissions answered from the cache
    retransmits: int = 0
    #: client data with no allocation on its 5-tuple
    no_allocation: int = 0
    #: Send indications or peer datagrams without a permission
    no_permission: int = 0
    #: Send indications to a peer the policy refuses
    policy_denied: int = 0
    #: ChannelData on a channel that is not bound
    unknown_channel: int = 0
    #: relayed packets over the allocation's byte rate
    rate_limited: int = 0
    #: peer datagrams on a relayed address with no allocation
    unknown_relay: int = 0


class _Counters:
    """The mutable counters behind :class:`ServerStats`."""

    __slots__ = (
        "requests",
        "success",
        "errors",
        "malformed",
        "ignored",
        "throttled",
        "retransmits",
        "no_allocation",
        "no_permission",
        "policy_denied",
        "unknown_channel",
        "rate_limited",
        "unknown_relay",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    requests: int
    success: int
    errors: int
    malformed: int
    ignored: int
    throttled: int
    retransmits: int
    no_allocation: int
    no_permission: int
    policy_denied: int
    unknown_channel: int
    rate_limited: int
    unknown_relay: int


#: a TURN method handler for a request on an existing allocation
_Handler = Callable[
    ["TurnServer", Message, Allocation, AuthResult, float, list[Action]],
    tuple[Attribute, ...],
]


# --- the server ----------------------------------------------------------------


class TurnServer:
    """All allocations of one TURN server, and the RFC 8656 procedures.

    ``policy`` decides which peers may be reached; to let clients of this
    server reach each other's relayed addresses, build it with
    ``relay_addresses_allowed=server.is_relayed_address`` (a lambda works
    when the server is created after the policy). ``throttle``, when given,
    counts credential failures per source and drops requests from a
    blocked source.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        relays: RelayPortAllocator,
        policy: PeerPolicyLike,
        config: TurnConfig | None = None,
        events: EventSink | None = None,
        binding: BindingResponder | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.config = config or TurnConfig()
        self.authenticator = authenticator
        self.relays = relays
        self.policy = policy
        self.events: EventSink = events or LoggingEventSink()
        self.binding = binding or BindingResponder(self.config.software)
        self.throttle = throttle
        self._software: tuple[Attribute, ...] = (
            (Software(self.config.software),) if self.config.software else ()
        )
        self._by_client: dict[ClientAddress, Allocation] = {}
        self._by_relay: dict[RelayAddress, Allocation] = {}
        #: live channels whose peer is a relayed address on this server, by
        #: that address: allowed by the relayed-address exception, they are
        #: checked again when the address goes (see _drop_channels_to)
        self._channels_to_relay: dict[RelayAddress, set[ChannelBinding]] = {}
        self._reservations: dict[bytes, Reservation] = {}
        self._timers = ExpiryHeap()
        self._quota = AllocationQuota(self.config.quota)
        self._count = _Counters()

    # --- inspection --------------------------------------------------------

    def allocation_for(self, client: ClientAddress) -> Allocation | None:
        """The allocation on the 5-tuple ``client``, if any."""
        return self._by_client.get(client)

    def allocation_at(self, relay: RelayAddress) -> Allocation | None:
        """The allocation that owns the relayed address ``relay``, if any."""
        return self._by_relay.get(relay)

    def is_relayed_address(self, ip: str, port: int) -> bool:
        """Is ``ip``:``port`` the relayed address of a live allocation here?"""
        return RelayAddress(ip, port) in self._by_relay

    def allocations(self) -> tuple[Allocation, ...]:
        """Every live allocation, in creation order (for the admin API)."""
        return tuple(self._by_client.values())

    def __len__(self) -> int:
        return len(self._by_client)

    def stats(self) -> ServerStats:
        count = self._count
        return ServerStats(
            allocations=len(self._by_client),
            permissions=sum(len(a.permissions) for a in self._by_client.values()),
            channels=sum(len(a.channels) for a in self._by_client.values()),
            reservations=len(self._reservations),
            requests=count.requests,
            success=count.success,
            errors=count.errors,
            malformed=count.malformed,
            ignored=count.ignored,
            throttled=count.throttled,
            retransmits=count.retransmits,
            no_allocation=count.no_allocation,
            no_permission=count.no_permission,
            policy_denied=count.policy_denied,
            unknown_channel=count.unknown_channel,
            rate_limited=count.rate_limited,
            unknown_relay=count.unknown_relay,
        )

    # --- input from clients ------------------------------------------------

    def handle_client_datagram(
        self, data: bytes, client: ClientAddress, now: float
    ) -> list[Action]:
        """A STUN or ChannelData message from ``client`` (RFC 8656 §12.4, §5)."""
        if data and 0x40 <= data[0] <= 0x7F:
            return self._client_channel_data(data, client, now)
        try:
            msg = decode(data)
        except DecodeError:
            self._count.malformed += 1
            return []
        if msg.cls is MessageClass.REQUEST:
            return self._request(msg, client, now)
        if msg.cls is MessageClass.INDICATION and msg.method == Method.SEND:
            return self._send_indication(msg, client, now)
        # RFC 8489 §6.3: responses and other indications get no answer
        self._count.ignored += 1
        return []

    def handle_client_closed(self, client: ClientAddress, now: float) -> list[Action]:
        """A TCP/TLS connection closed: its 5-tuple can never be used again.

        The allocation on it, if any, is deleted at once rather than left to
        expire with nobody able to refresh it.
        """
        alloc = self._by_client.get(client)
        if alloc is None:
            return []
        actions: list[Action] = []
        self._end_allocation(alloc, now, EndReason.CONNECTION_CLOSED, actions)
        return actions

    def revoke(self, allocation_id: str, now: float) -> list[Action] | None:
        """Delete the allocation ``allocation_id`` at once (an operator's order).

        Its relays are released and closed as on expiry, so the client's
        next Refresh gets 437 (RFC 8656 §7.3: no allocation on its
        5-tuple). None when no live allocation has that id.
        """
        found = [a for a in self._by_client.values() if a.id == allocation_id]
        if not found:
            return None
        actions: list[Action] = []
        self._end_allocation(found[0], now, EndReason.REVOKED, actions)
        return actions

    def close(self, now: float) -> list[Action]:
        """Delete every allocation and reservation (server shutdown)."""
        actions: list[Action] = []
        for alloc in list(self._by_client.values()):
            self._end_allocation(alloc, now, EndReason.SHUTDOWN, actions)
        for reservation in list(self._reservations.values()):
            self._end_reservation(reservation, actions)
        return actions

    # --- input from peers --------------------------------------------------

    def handle_peer_datagram(
        self,
        relay: RelayAddress,
        peer_ip: str,
        peer_port: int,
        data: bytes,
        now: float,
    ) -> list[Action]:
        """RFC 8656 §10.3, §12.6: a datagram from a peer, relayed to the client.

        Without a permission for the peer's IP it is dropped (RFC 8656 §9).
        With a channel bound to the peer's address it goes as ChannelData
        (§12.6), otherwise as a Data indication (§10.3).
        """
        alloc = self._by_relay.get(relay)
        if alloc is None:
            self._count.unknown_relay += 1
            return []
        perm = alloc.permissions.get(peer_ip)
        if perm is None or perm.expires_at <= now:
            self._count.no_permission += 1
            alloc.dropped += 1
            return []
        bucket = alloc.bucket
        if bucket is not None and not bucket.consume(len(data), now):
            self._count.rate_limited += 1
            alloc.dropped += 1
            return []

        # RFC 8656 §12.6: a bound channel carries it as ChannelData
        size = len(data)
        binding = alloc.channel_by_peer.get((peer_ip, peer_port))
        if binding is not None and binding.expires_at > now:
            header = _CHANNEL_HEADER.pack(binding.number, size)
            if alloc.stream:
                frame = header + data + _PADDING[size & 3]
            else:
                frame = header + data
        elif size > _MAX_DATA_INDICATION:
            # the STUN length field cannot describe it
            self._count.malformed += 1
            alloc.dropped += 1
            return []
        else:
            # RFC 8656 §10.3: otherwise a Data indication
            frame = _data_indication(perm, peer_port, data)
        alloc.bytes_to_client += size
        alloc.packets_to_client += 1
        return [SendToClient(alloc.client, frame)]

    # --- timers ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` should next be called (None: no timer)."""
        return self._timers.next_deadline()

    def handle_timeout(self, now: float) -> list[Action]:
        """Expire what is due at ``now`` (RFC 8656 §6, §9, §11; §7.2 tokens)."""
        actions: list[Action] = []
        while (target := self._timers.pop_due(now)) is not None:
            if isinstance(target, Allocation):
                self._end_allocation(target, now, EndReason.EXPIRED, actions)
            elif isinstance(target, Permission):
                alloc = target.allocation
                alloc.remove_permission(target)
                self.events.emit(PermissionExpired(alloc.id, target.ip))
            elif isinstance(target, ChannelBinding):
                alloc = target.allocation
                alloc.remove_channel(target)
                self._untrack_channel(target)
                self.events.emit(
                    ChannelExpired(
                        alloc.id, target.number, target.peer_ip, target.peer_port
                    )
                )
            elif isinstance(target, Reservation):
                self._end_reservation(target, actions)
        return actions

    # --- the relay data path from the client -------------------------------

    def _client_channel_data(
        self, data: bytes, client: ClientAddress, now: float
    ) -> list[Action]:
        """RFC 8656 §12.4: ChannelData from the client, to the bound peer."""
        alloc = self._by_client.get(client)
        if alloc is None:
            self._count.no_allocation += 1
            return []
        size = len(data)
        if size < CHANNEL_HEADER_LENGTH:
            self._count.malformed += 1
            return []
        length = data[2] << 8 | data[3]
        # RFC 8656 §12.4: shorter than the length says: discard; more is padding
        if size < CHANNEL_HEADER_LENGTH + length:
            self._count.malformed += 1
            return []
        binding = alloc.channels.get(data[0] << 8 | data[1])
        if binding is None or binding.expires_at <= now:
            self._count.unknown_channel += 1
            alloc.dropped += 1
            return []
        perm = alloc.permissions.get(binding.peer_ip)
        if perm is None or perm.expires_at <= now:
            self._count.no_permission += 1
            alloc.dropped += 1
            return []
        bucket = alloc.bucket
        if bucket is not None and not bucket.consume(length, now):
            self._count.rate_limited += 1
            alloc.dropped += 1
            return []
        alloc.bytes_to_peer += length
        alloc.packets_to_peer += 1
        payload = data[CHANNEL_HEADER_LENGTH : CHANNEL_HEADER_LENGTH + length]
        return [
            SendToPeer(
                binding.relay,
                binding.peer_ip,
                binding.peer_port,
                payload,
                alloc.dont_fragment,
            )
        ]

    def _send_indication(
        self, msg: Message, client: ClientAddress, now: float
    ) -> list[Action]:
        """RFC 8656 §10.2: a Send indication; every failure is a silent drop."""
        alloc = self._by_client.get(client)
        if alloc is None:
            self._count.no_allocation += 1
            return []

        # both XOR-PEER-ADDRESS and DATA are needed; unknown required: discard
        peer = msg.get(XorPeerAddress)
        payload = msg.get(Data)
        if peer is None or payload is None or msg.unknown_required:
            self._count.malformed += 1
            alloc.dropped += 1
            return []
        dont_fragment = msg.get(DontFragment) is not None
        if dont_fragment and not self.config.dont_fragment:
            # RFC 8656 §10.2: DF we cannot set is an unknown required attribute
            self._count.malformed += 1
            alloc.dropped += 1
            return []

        # a permission for the peer IP; a Send never refreshes it
        perm = alloc.active_permission(peer.ip, now)
        if perm is None:
            self._count.no_permission += 1
            alloc.dropped += 1
            return []

        # RFC 8656 §10.2: the server MAY refuse peers; the port counts too
        # (and port 0, which only means "any port" in CreatePermission, is
        # no destination)
        if peer.port == 0 or not self.policy.check(peer.ip, peer.port).allowed:
            self._count.policy_denied += 1
            alloc.dropped += 1
            return []
        data = payload.value
        bucket = alloc.bucket
        if bucket is not None and not bucket.consume(len(data), now):
            self._count.rate_limited += 1
            alloc.dropped += 1
            return []
        alloc.bytes_to_peer += len(data)
        alloc.packets_to_peer += 1
        return [SendToPeer(perm.relay, peer.ip, peer.port, data, dont_fragment)]

    # --- requests ------------------------------------------------------------

    def _request(self, msg: Message, client: ClientAddress, now: float) -> list[Action]:
        """RFC 8656 §5: dispatch a request; errors become a response here."""

        # every TURN server is a STUN server: Binding needs no credentials
        if msg.method == Method.BINDING:
            response = self.binding.respond(msg, client.ip, client.port)
            return [SendToClient(client, response)]
        self._count.requests += 1

        # RFC 8489 §6.3.1: unknown methods get 400; TURN needs the magic cookie
        if msg.method not in _HANDLED_METHODS or msg.is_rfc3489:
            reason = "RFC 3489 Request" if msg.is_rfc3489 else "Unsupported Method"
            error = StunProtocolError(ErrorCode.BAD_REQUEST, reason)
            return [SendToClient(client, self._unsigned_error(msg, error))]

        # RFC 8489 §6.3.1: a retransmitted Allocate gets the same response
        if msg.method == Method.ALLOCATE:
            cached = self._cached_allocate(msg, client, now)
            if cached is not None:
                self._count.retransmits += 1
                return [SendToClient(client, cached)]

        # RFC 8656 §5, RFC 8489 §9.2.4: long-term credentials
        result = self._authenticate(msg, client, now)
        if result is None:
            return []
        if not result.ok:
            self._count.errors += 1
            response = encode_response(
                result.error_response(msg), result, fingerprint=msg.has_fingerprint
            )
            return [SendToClient(client, response)]

        # from here on, every response is signed with the request's key
        actions: list[Action] = []
        response_msg = self._dispatch(msg, client, result, now, actions)
        response = encode_response(
            response_msg, result, fingerprint=msg.has_fingerprint
        )
        if response_msg.cls is MessageClass.SUCCESS:
            self._count.success += 1
            if msg.method == Method.ALLOCATE:
                self._remember_allocate(msg, client, response, now)
        else:
            self._count.errors += 1
        actions.insert(0, SendToClient(client, response))
        return actions

    def _authenticate(
        self, msg: Message, client: ClientAddress, now: float
    ) -> AuthResult | None:
        """Run the authenticator, with throttling and events; None: drop."""
        throttle = self.throttle
        # the throttle parses the IP: ask it only when it holds something
        if (
            throttle is not None
            and throttle.blocked
            and throttle.is_blocked(client.ip, now)
        ):
            self._count.throttled += 1
            return None
        auth_client = AuthClient(client.ip, client.port, client.transport)
        result = self.authenticator.verify_request(msg, auth_client, now)
        method = _method_name(msg.method)
        if result.ok:
            if throttle is not None and len(throttle) > throttle.blocked:
                # failures are being counted somewhere: forget this source's
                throttle.record_success(client.ip)
            self.events.emit(AuthSucceeded(result.username or "", str(client), method))
            return result
        if throttle is not None and result.credential_failure:
            throttle.record_failure(client.ip, now)
        if msg.integrity_offset is not None or msg.integrity_sha256_offset is not None:
            # a request without integrity just gets the challenge: not a failure
            code = result.error_code or ErrorCode.UNAUTHENTICATED
            # an unknown user or a bad MAC leaves no verified name: record the
            # name the request claimed, so the audit trail says who was tried
            claimed = msg.get(Username)
            username = result.username or (claimed.value if claimed else None)
            self.events.emit(
                AuthFailed(username, str(client), method, code, result.detail or "")
            )
        return result

    def _dispatch(
        self,
        msg: Message,
        client: ClientAddress,
        auth: AuthResult,
        now: float,
        actions: list[Action],
    ) -> Message:
        """Run the method's procedure; a StunProtocolError is the response."""
        try:
            # RFC 8489 §6.3.1.1: unknown comprehension-required attributes: 420
            if msg.unknown_required:
                raise StunProtocolError(
                    ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=msg.unknown_required
                )
            if msg.method == Method.ALLOCATE:
                attributes = self._allocate(msg, client, auth, now)
            else:
                alloc = self._allocation_of(client, auth)
                handler = _HANDLERS[msg.method]
                attributes = handler(self, msg, alloc, auth, now, actions)
        except StunProtocolError as exc:
            return msg.reply(
                MessageClass.ERROR, _error_attributes(exc) + self._software
            )
        return msg.reply(MessageClass.SUCCESS, attributes + self._software)

    def _allocation_of(self, client: ClientAddress, auth: AuthResult) -> Allocation:
        """RFC 8656 §5: the 5-tuple's allocation, created by the same user."""
        alloc = self._by_client.get(client)
        if alloc is None:
            raise StunProtocolError(ErrorCode.ALLOCATION_MISMATCH)
        if alloc.username != (auth.username or ""):
            raise StunProtocolError(ErrorCode.WRONG_CREDENTIALS)
        return alloc

    def _unsigned_error(self, msg: Message, error: StunProtocolError) -> bytes:
        self._count.errors += 1
        response = msg.reply(MessageClass.ERROR, _error_attributes(error))
        return encode_response(
            response, AuthResult(ok=False), fingerprint=msg.has_fingerprint
        )

    # --- Allocate (RFC 8656 §7.2) -------------------------------------------

    def _cached_allocate(
        self, msg: Message, client: ClientAddress, now: float
    ) -> bytes | None:
        alloc = self._by_client.get(client)
        if (
            alloc is not None
            and alloc.transaction_id == msg.transaction_id
            and now <= alloc.response_until
        ):
            return alloc.response
        return None

    def _remember_allocate(
        self, msg: Message, client: ClientAddress, response: bytes, now: float
    ) -> None:
        alloc = self._by_client.get(client)
        if alloc is not None:
            alloc.transaction_id = msg.transaction_id
            alloc.response = response
            alloc.response_until = now + self.config.retransmit_window

    def _allocate(
        self, msg: Message, client: ClientAddress, auth: AuthResult, now: float
    ) -> tuple[Attribute, ...]:
        """RFC 8656 §7.2: check the request step by step, then allocate."""
        username = auth.username or ""

        # step 2: the 5-tuple must not already have an allocation
        if client in self._by_client:
            raise StunProtocolError(ErrorCode.ALLOCATION_MISMATCH)

        # step 3: REQUESTED-TRANSPORT present, and UDP (no RFC 6062 TCP relay)
        transport = msg.get(RequestedTransport)
        if transport is None:
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "Missing REQUESTED-TRANSPORT"
            )
        if transport.protocol != PROTOCOL_UDP:
            raise StunProtocolError(ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL)

        # step 4: DONT-FRAGMENT is honoured when the driver can set DF
        dont_fragment = msg.get(DontFragment) is not None
        if dont_fragment and not self.config.dont_fragment:
            raise StunProtocolError(
                ErrorCode.UNKNOWN_ATTRIBUTE,
                unknown_attributes=(AttrType.DONT_FRAGMENT,),
            )

        # steps 5-9: which relayed addresses are asked for
        request = self._relay_request(msg, now)

        # step 10: allocation quotas, per user and in total (486)
        quota_user = self.config.quota_user(username)
        refused = self._quota.refused(quota_user)
        if refused is not None:
            self._refuse_quota(username, client, refused)
            raise StunProtocolError(ErrorCode.ALLOCATION_QUOTA_REACHED)

        # the relayed addresses themselves, and the allocation
        grant = self._reserve_relays(request, now)
        lifetime = self._lifetime(msg.get(Lifetime))
        alloc = Allocation(
            allocation_id=secrets.token_hex(4),
            username=username,
            quota_user=quota_user,
            client=client,
            relays=grant.relays,
            now=now,
            lifetime=lifetime,
            dont_fragment=dont_fragment,
            bucket=self.config.quota.new_bucket(now),
        )
        self._by_client[client] = alloc
        for relay in alloc.relays:
            self._by_relay[relay] = alloc
        self._quota.add(quota_user)
        self._timers.push(alloc)
        self.events.emit(
            AllocationCreated(
                alloc.id,
                username,
                str(client),
                tuple(str(r) for r in alloc.relays),
                lifetime,
            )
        )
        logger.debug("[%s] none -> allocated for %s", alloc.id, client)

        # the success response of RFC 8656 §7.2
        attributes: list[Attribute] = [
            XorRelayedAddress(r.ip, r.port) for r in alloc.relays
        ]
        attributes.extend(grant.address_errors)
        attributes.append(Lifetime(lifetime))
        if grant.token is not None:
            attributes.append(ReservationToken(grant.token))
        attributes.append(XorMappedAddress(client.ip, client.port))
        return tuple(attributes)

    def _relay_request(self, msg: Message, now: float) -> "_RelayRequest":
        """RFC 8656 §7.2 steps 5-9: RESERVATION-TOKEN, families, EVEN-PORT."""
        token = msg.get(ReservationToken)
        even = msg.get(EvenPort)
        requested = msg.get(RequestedAddressFamily)
        additional = msg.get(AdditionalAddressFamily)

        # step 5: a token excludes EVEN-PORT and the family attributes (400);
        # a token that is unknown, expired or used up gets 508
        if token is not None:
            if even is not None or requested is not None or additional is not None:
                raise StunProtocolError(
                    ErrorCode.BAD_REQUEST, "RESERVATION-TOKEN With Other Attributes"
                )
            reservation = self._reservations.get(token.value)
            if reservation is None or reservation.expires_at <= now:
                raise StunProtocolError(
                    ErrorCode.INSUFFICIENT_CAPACITY, "Unknown Reservation Token"
                )
            return _RelayRequest(reservation=reservation)

        # step 6: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together: 400
        if requested is not None and additional is not None:
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "Both Address Family Attributes"
            )

        # step 7: the family asked for (IPv4 when absent) must be offered (440)
        family = AddressFamily.IPV4
        if requested is not None:
            if requested.family not in (AddressFamily.IPV4, AddressFamily.IPV6):
                raise StunProtocolError(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
            family = AddressFamily(requested.family)
        if family not in self.config.families:
            raise StunProtocolError(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)

        # step 8: EVEN-PORT with the R bit cannot go with a dual allocation
        reserve_next = even is not None and even.reserve
        if reserve_next and additional is not None:
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "EVEN-PORT Reservation With Dual Allocation"
            )

        # step 9: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6 (else 400)
        if additional is not None and additional.family != AddressFamily.IPV6:
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY Must Be IPv6"
            )
        return _RelayRequest(
            family=family,
            even=even is not None,
            reserve_next=reserve_next,
            dual=additional is not None,
        )

    def _reserve_relays(self, request: "_RelayRequest", now: float) -> "_Grant":
        """RFC 8656 §7.2: get the relayed address(es) from the allocator."""

        # a reserved address: it is now the allocation's, not released
        if request.reservation is not None:
            reservation = request.reservation
            reservation.alive = False
            del self._reservations[reservation.token]
            return _Grant(relays=(reservation.relay,))

        # EVEN-PORT: an even port; with the R bit, N+1 held behind a token
        primary = self.relays.reserve(
            request.family, even=request.even, reserve_next=request.reserve_next
        )
        if not request.dual:
            if primary is None:
                raise StunProtocolError(ErrorCode.INSUFFICIENT_CAPACITY)
            token = None
            if request.reserve_next:
                token = self._reserve_next_port(primary, now)
            return _Grant(relays=(primary,), token=token)
        return self._dual_grant(primary)

    def _dual_grant(self, primary: RelayAddress | None) -> "_Grant":
        """RFC 8656 §7.2 step 9: IPv4 and IPv6; a partial success says why."""
        errors: list[AddressErrorCode] = []
        if primary is None:
            errors.append(_address_error(AddressFamily.IPV4, 508))
        secondary = None
        if AddressFamily.IPV6 not in self.config.families:
            errors.append(_address_error(AddressFamily.IPV6, 440))
        else:
            secondary = self.relays.reserve(
                AddressFamily.IPV6, even=False, reserve_next=False
            )
            if secondary is None:
                errors.append(_address_error(AddressFamily.IPV6, 508))
        relays = tuple(r for r in (primary, secondary) if r is not None)
        if not relays:
            raise StunProtocolError(ErrorCode.INSUFFICIENT_CAPACITY)
        return _Grant(relays=relays, address_errors=tuple(errors))

    def _reserve_next_port(self, primary: RelayAddress, now: float) -> bytes:
        """RFC 8656 §7.2: hold port N+1 for at least 30 s behind a token."""
        token = secrets.token_bytes(8)
        while token in self._reservations:
            token = secrets.token_bytes(8)
        relay = RelayAddress(primary.ip, primary.port + 1)
        expires = now + self.config.reservation_lifetime
        reservation = Reservation(token, relay, expires)
        self._reservations[token] = reservation
        self._timers.push(reservation)
        return token

    def _lifetime(self, requested: Lifetime | None) -> int:
        """RFC 8656 §7.2, §7.3: min(requested, max), but never below the default."""
        config = self.config
        if requested is None:
            return config.default_lifetime
        return max(min(requested.value, config.max_lifetime), config.default_lifetime)

    def _refuse_quota(
        self, username: str, client: ClientAddress, kind: QuotaKind
    ) -> None:
        limit = self._quota.limit(kind)
        self.events.emit(QuotaRefused(username, str(client), kind, limit))

    # --- Refresh (RFC 8656 §7.3) --------------------------------------------

    def _refresh(
        self,
        msg: Message,
        alloc: Allocation,
        auth: AuthResult,
        now: float,
        actions: list[Action],
    ) -> tuple[Attribute, ...]:
        """RFC 8656 §7.3: set a new time-to-expiry, or delete with LIFETIME 0."""

        # a REQUESTED-ADDRESS-FAMILY the allocation does not have: 443
        requested = msg.get(RequestedAddressFamily)
        if requested is not None and not any(
            r.family == requested.family for r in alloc.relays
        ):
            raise StunProtocolError(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)

        # the "desired lifetime": zero deletes
        lifetime_attr = msg.get(Lifetime)
        if lifetime_attr is not None and lifetime_attr.value == 0:
            self._end_allocation(alloc, now, EndReason.REFRESH, actions)
            return (Lifetime(0),)
        lifetime = self._lifetime(lifetime_attr)
        alloc.expires_at = now + lifetime
        alloc.lifetime = lifetime
        self.events.emit(
            AllocationRefreshed(alloc.id, alloc.username, lifetime, alloc.stats())
        )
        return (Lifetime(lifetime),)

    # --- CreatePermission (RFC 8656 §9.2) -------------------------------------

    def _create_permission(
        self,
        msg: Message,
        alloc: Allocation,
        auth: AuthResult,
        now: float,
        actions: list[Action],
    ) -> tuple[Attribute, ...]:
        """RFC 8656 §9.2: install or refresh a permission per XOR-PEER-ADDRESS.

        All or nothing: every address is checked before any is installed.
        """
        peers = list(msg.get_all(XorPeerAddress))
        if not peers:
            raise StunProtocolError(ErrorCode.BAD_REQUEST, "Missing XOR-PEER-ADDRESS")

        # a peer of a family the allocation has no relay for: 443
        for peer in peers:
            alloc.check_peer_family(peer.ip)

        # the server MAY restrict peers; any refused address: 403
        self._check_policy(alloc, peers)

        # RFC 8656 §9.2: over the capacity of the allocation: 508
        new_ips = {p.ip for p in peers if p.ip not in alloc.permissions}
        self._check_permission_quota(alloc, len(new_ips))

        expires = now + self.config.permission_lifetime
        for peer in peers:
            self._install_permission(alloc, peer.ip, expires)
        return ()

    def _check_policy(self, alloc: Allocation, peers: list[XorPeerAddress]) -> None:
        denied = False
        for peer in peers:
            decision = self.policy.check(peer.ip, peer.port)
            if not decision.allowed:
                denied = True
                self.events.emit(
                    PeerDenied(
                        alloc.id, alloc.username, peer.ip, peer.port, decision.reason
                    )
                )
        if denied:
            raise StunProtocolError(ErrorCode.FORBIDDEN)

    def _check_permission_quota(self, alloc: Allocation, new: int) -> None:
        limit = self.config.quota.max_permissions_per_allocation
        if new and limit is not None and len(alloc.permissions) + new > limit:
            self._refuse_quota(alloc.username, alloc.client, QuotaKind.PERMISSIONS)
            raise StunProtocolError(ErrorCode.INSUFFICIENT_CAPACITY)

    def _install_permission(self, alloc: Allocation, ip: str, expires: float) -> None:
        created = alloc.install_permission(ip, expires)
        if created is not None:
            self._timers.push(created)
            self.events.emit(PermissionCreated(alloc.id, ip))

    # --- ChannelBind (RFC 8656 §11.2) -----------------------------------------

    def _channel_bind(
        self,
        msg: Message,
        alloc: Allocation,
        auth: AuthResult,
        now: float,
        actions: list[Action],
    ) -> tuple[Attribute, ...]:
        """RFC 8656 §11.2: bind or refresh a channel, and its permission."""
        channel = msg.get(ChannelNumber)
        peer = msg.get(XorPeerAddress)

        # CHANNEL-NUMBER and XOR-PEER-ADDRESS present; number 0x4000-0x4FFF
        # (or 0x5000-0x7FFF, which RFC 5766 clients still use)
        if channel is None or peer is None:
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "Missing CHANNEL-NUMBER Or XOR-PEER-ADDRESS"
            )
        if not is_valid_channel(channel.number):
            raise StunProtocolError(ErrorCode.BAD_REQUEST, "Invalid Channel Number")

        # number bound to another peer, or peer to another number: 400
        alloc.check_channel_bind(channel.number, peer.ip, peer.port)

        # a peer of a family the allocation has no relay for: 443
        alloc.check_peer_family(peer.ip)

        # the server MAY restrict peer addresses and ports: 403
        self._check_policy(alloc, [peer])

        # over the capacity of the allocation: 508
        limit = self.config.quota.max_channels_per_allocation
        is_new = channel.number not in alloc.channels
        if is_new and limit is not None and len(alloc.channels) >= limit:
            self._refuse_quota(alloc.username, alloc.client, QuotaKind.CHANNELS)
            raise StunProtocolError(ErrorCode.INSUFFICIENT_CAPACITY)
        self._check_permission_quota(alloc, int(peer.ip not in alloc.permissions))

        # create or refresh the binding, and install or refresh the permission
        binding = alloc.bind_channel(
            channel.number, peer.ip, peer.port, now + self.config.channel_lifetime
        )
        if binding is not None:
            self._timers.push(binding)
            self._track_channel(binding)
            self.events.emit(ChannelBound(alloc.id, channel.number, peer.ip, peer.port))
        self._install_permission(alloc, peer.ip, now + self.config.permission_lifetime)
        return ()

    # --- ending things --------------------------------------------------------

    def _end_allocation(
        self,
        alloc: Allocation,
        now: float,
        reason: EndReason,
        actions: list[Action],
    ) -> None:
        """Free everything the allocation holds, release and close its relays."""
        if not alloc.alive:
            return
        for binding in alloc.channels.values():
            self._untrack_channel(binding)
        alloc.end()
        if self._by_client.get(alloc.client) is alloc:
            del self._by_client[alloc.client]
        for relay in alloc.relays:
            if self._by_relay.get(relay) is alloc:
                del self._by_relay[relay]
            self.relays.release(relay)
            actions.append(CloseRelay(relay))
        for relay in alloc.relays:
            self._drop_channels_to(relay)
        self._quota.remove(alloc.quota_user)
        duration = now - alloc.created_at
        stats = alloc.stats()
        if reason is EndReason.EXPIRED:
            self.events.emit(
                AllocationExpired(alloc.id, alloc.username, duration, stats)
            )
        else:
            self.events.emit(
                AllocationDeleted(alloc.id, alloc.username, reason, duration, stats)
            )
        logger.debug("[%s] allocated -> %s", alloc.id, reason)

    def _track_channel(self, binding: ChannelBinding) -> None:
        """Remember a channel to another allocation's relayed address."""
        target = _relay_key(binding.peer_ip, binding.peer_port)
        if target in self._by_relay:
            self._channels_to_relay.setdefault(target, set()).add(binding)

    def _untrack_channel(self, binding: ChannelBinding) -> None:
        target = _relay_key(binding.peer_ip, binding.peer_port)
        bindings = self._channels_to_relay.get(target)
        if bindings is not None:
            bindings.discard(binding)
            if not bindings:
                del self._channels_to_relay[target]

    def _drop_channels_to(self, relay: RelayAddress) -> None:
        """RFC 8656 §21: ``relay`` is no longer a relayed address here.

        Channels to it were allowed because it was; unless the policy allows
        the address by itself now, they end at once, so that the port, once
        free, is not a way to reach whatever binds it next. (Send indications
        are checked per packet and need nothing here.)
        """
        for binding in self._channels_to_relay.pop(relay, ()):
            if not binding.alive:
                continue
            if self.policy.check(binding.peer_ip, binding.peer_port).allowed:
                continue
            alloc = binding.allocation
            alloc.remove_channel(binding)
            self.events.emit(
                ChannelExpired(
                    alloc.id, binding.number, binding.peer_ip, binding.peer_port
                )
            )

    def _end_reservation(self, reservation: Reservation, actions: list[Action]) -> None:
        """RFC 8656 §7.2: an unused reserved port goes back to the allocator."""
        reservation.alive = False
        if self._reservations.get(reservation.token) is reservation:
            del self._reservations[reservation.token]
        self.relays.release(reservation.relay)
        actions.append(CloseRelay(reservation.relay))


# --- helpers -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RelayRequest:
    """What RFC 8656 §7.2 steps 5-9 decided to ask the allocator for."""

    family: AddressFamily = AddressFamily.IPV4
    even: bool = False
    reserve_next: bool = False
    dual: bool = False
    reservation: Reservation | None = None


@dataclass(frozen=True, slots=True)
class _Grant:
    """The relayed addresses obtained, the token, and per-family failures."""

    relays: tuple[RelayAddress, ...]
    token: bytes | None = None
    address_errors: tuple[AddressErrorCode, ...] = ()


_HANDLERS: dict[int, _Handler] = {
    Method.REFRESH: TurnServer._refresh,
    Method.CREATE_PERMISSION: TurnServer._create_permission,
    Method.CHANNEL_BIND: TurnServer._channel_bind,
}
_HANDLED_METHODS = frozenset((Method.ALLOCATE, *_HANDLERS))


def _relay_key(ip: str, port: int) -> RelayAddress:
    """The relayed address a peer ``ip``:``port`` names: IPv4-mapped and
    IPv4-compatible IPv6 as the IPv4 address, as the peer policy reads them
    (RFC 4291 §2.5.5)."""
    if ":" not in ip:
        return RelayAddress(ip, port)
    value = int(ipaddress.IPv6Address(ip))
    if value >> 32 in (0, 0xFFFF) and value > 1:
        return RelayAddress(str(ipaddress.IPv4Address(value & 0xFFFFFFFF)), port)
    return RelayAddress(str(ipaddress.IPv6Address(value)), port)


def _method_name(method: int) -> str:
    """The name of a method the server handles (for events)."""
    name = _METHOD_NAMES.get(method)
    return Method(method).name if name is None else name


_METHOD_NAMES: dict[int, str] = {int(m): m.name for m in Method}


def _error_attributes(exc: StunProtocolError) -> tuple[Attribute, ...]:
    """RFC 8489 §6.3.1.1: ERROR-CODE, and UNKNOWN-ATTRIBUTES for 420."""
    attributes: tuple[Attribute, ...] = (ErrorCodeAttr(exc.code, exc.reason),)
    if exc.unknown_attributes:
        attributes += (UnknownAttributes(exc.unknown_attributes),)
    return attributes


def _address_error(family: AddressFamily, code: int) -> AddressErrorCode:
    """RFC 8656 §18.12 ADDRESS-ERROR-CODE for a family that was not allocated."""
    return AddressErrorCode(family, code, REASON_PHRASES.get(code, "Error"))


def _data_indication(perm: Permission, port: int, data: bytes) -> bytes:
    """RFC 8656 §10.3: a Data indication with XOR-PEER-ADDRESS and DATA.

    Built by hand on the data path; the result is what
    ``encode(Message(DATA, INDICATION, tid, (XorPeerAddress, Data)))`` gives
    (a test checks that).
    """
    transaction_id = os.urandom(12)
    packed = perm.packed
    if len(packed) == 4:
        family = AddressFamily.IPV4
        mask = MAGIC_COOKIE_BYTES
    else:
        family = AddressFamily.IPV6
        mask = MAGIC_COOKIE_BYTES + transaction_id
    xored = (int.from_bytes(packed) ^ int.from_bytes(mask)).to_bytes(len(packed))
    peer = (
        _ADDRESS_HEADER.pack(
            AttrType.XOR_PEER_ADDRESS, 4 + len(packed), 0, family, port ^ _COOKIE_HIGH
        )
        + xored
    )
    body_length = len(peer) + 4 + len(data) + (-len(data) & 3)
    return b"".join(
        (
            _STUN_HEADER.pack(
                _DATA_INDICATION, body_length, MAGIC_COOKIE, transaction_id
            ),
            peer,
            _ATTR_HEADER.pack(AttrType.DATA, len(data)),
            data,
            _PADDING[len(data) & 3],
        )
    )
