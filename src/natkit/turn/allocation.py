"""The state of a TURN server: allocations, permissions, channels, timers.

RFC 8656 §6 (allocations), §9 (permissions), §11 (channels). An
:class:`Allocation` is identified by the 5-tuple it was created on
(:class:`ClientAddress`) and owns one or two relayed transport addresses
(:class:`RelayAddress`), its permissions (by peer IP) and its channel
bindings (by number and by peer address). These are plain mutable objects
read on the relay data path, so they use ``__slots__`` and dict lookups only.

Lifetimes are absolute times in the caller's clock (``now`` is passed in);
:class:`ExpiryHeap` orders them without growing on refresh: a refreshed
object keeps its single heap entry, which is pushed back with the new time
when it comes up early.

Addresses are textual IPs in :mod:`ipaddress` canonical form (what the
``socket`` module returns): ``"192.0.2.1"``, ``"2001:db8::1"``.
"""

import heapq
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from natkit.stun.constants import AddressFamily, ErrorCode
from natkit.stun.errors import StunProtocolError
from natkit.stun.transaction import Transport as Transport
from natkit.turn.events import TrafficStats
from natkit.turn.quota import TokenBucket

#: RFC 8656 §9: a permission lasts 300 s unless refreshed.
PERMISSION_LIFETIME = 300.0
#: RFC 8656 §11: a channel binding lasts 600 s unless refreshed.
CHANNEL_LIFETIME = 600.0
#: RFC 8656 §7.2: a reserved port (EVEN-PORT R bit) is held at least 30 s.
RESERVATION_LIFETIME = 30.0


def family_of(ip: str) -> AddressFamily:
    """The address family of a textual IP address."""
    return AddressFamily.IPV6 if ":" in ip else AddressFamily.IPV4


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The 5-tuple of client traffic (RFC 8656 §2.3).

    Transport, the client's address as the server sees it, and the server
    address it was sent to. For TCP and TLS each connection has its own
    5-tuple.
    """

    transport: Transport
    ip: str
    port: int
    server_ip: str
    server_port: int

    def __str__(self) -> str:
        return (
            f"{self.transport}:{_endpoint(self.ip, self.port)}->"
            f"{_endpoint(self.server_ip, self.server_port)}"
        )


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """A relayed transport address on the server (RFC 8656 §2)."""

    ip: str
    port: int

    @property
    def family(self) -> AddressFamily:
        return family_of(self.ip)

    def __str__(self) -> str:
        return _endpoint(self.ip, self.port)


class Expiring(Protocol):
    """Something the :class:`ExpiryHeap` can time out."""

    expires_at: float
    alive: bool


class Permission:
    """RFC 8656 §9: lets datagrams from ``ip`` (any port) reach the client."""

    __slots__ = ("allocation", "ip", "packed", "relay", "expires_at", "alive")

    def __init__(
        self,
        allocation: "Allocation",
        ip: str,
        relay: RelayAddress,
        expires_at: float,
    ) -> None:
        self.allocation = allocation
        self.ip = ip
        #: the relayed address of the peer's family: where data to it leaves
        self.relay = relay
        #: the address in network byte order, for fast Data indications
        self.packed = ipaddress.ip_address(ip).packed
        self.expires_at = expires_at
        self.alive = True


class ChannelBinding:
    """RFC 8656 §11: channel ``number`` stands for peer ``peer_ip``:``peer_port``."""

    __slots__ = (
        "allocation",
        "number",
        "peer_ip",
        "peer_port",
        "relay",
        "expires_at",
        "alive",
    )

    def __init__(
        self,
        allocation: "Allocation",
        number: int,
        peer_ip: str,
        peer_port: int,
        relay: RelayAddress,
        expires_at: float,
    ) -> None:
        self.allocation = allocation
        self.number = number
        #: the relayed address of the peer's family: where data to it leaves
        self.relay = relay
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.expires_at = expires_at
        self.alive = True


class Reservation:
    """RFC 8656 §7.2: a relayed address held for a later Allocate's token."""

    __slots__ = ("token", "relay", "expires_at", "alive")

    def __init__(self, token: bytes, relay: RelayAddress, expires_at: float) -> None:
        self.token = token
        self.relay = relay
        self.expires_at = expires_at
        self.alive = True


class Allocation:
    """RFC 8656 §6: one client's relay, its permissions and its channels.

    Counters are plain ints updated on the data path; :meth:`stats` takes a
    snapshot for events.
    """

    __slots__ = (
        "id",
        "username",
        "quota_user",
        "client",
        "stream",
        "relays",
        "created_at",
        "expires_at",
        "lifetime",
        "dont_fragment",
        "alive",
        "permissions",
        "channels",
        "channel_by_peer",
        "bucket",
        "transaction_id",
        "response",
        "response_until",
        "bytes_to_peer",
        "packets_to_peer",
        "bytes_to_client",
        "packets_to_client",
        "dropped",
    )

    def __init__(
        self,
        *,
        allocation_id: str,
        username: str,
        quota_user: str,
        client: ClientAddress,
        relays: tuple[RelayAddress, ...],
        now: float,
        lifetime: int,
        dont_fragment: bool = False,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.id = allocation_id
        self.username = username
        self.quota_user = quota_user
        self.client = client
        #: RFC 8656 §12.5: over TCP/TLS, ChannelData to the client is padded
        self.stream = client.transport is not Transport.UDP
        self.relays = relays
        self.created_at = now
        self.expires_at = now + lifetime
        self.lifetime = lifetime
        #: RFC 8656 §7.2: DONT-FRAGMENT in the Allocate; applies to ChannelData
        self.dont_fragment = dont_fragment
        self.alive = True
        self.permissions: dict[str, Permission] = {}
        self.channels: dict[int, ChannelBinding] = {}
        self.channel_by_peer: dict[tuple[str, int], ChannelBinding] = {}
        self.bucket = bucket
        #: RFC 8489 §6.3.1: the Allocate transaction, to answer retransmissions
        self.transaction_id = b""
        self.response = b""
        self.response_until = 0.0
        self.bytes_to_peer = 0
        self.packets_to_peer = 0
        self.bytes_to_client = 0
        self.packets_to_client = 0
        self.dropped = 0

    def __repr__(self) -> str:
        relays = ",".join(str(r) for r in self.relays)
        return f"<Allocation {self.id} {self.client} relay={relays}>"

    def stats(self) -> TrafficStats:
        return TrafficStats(
            bytes_to_peer=self.bytes_to_peer,
            packets_to_peer=self.packets_to_peer,
            bytes_to_client=self.bytes_to_client,
            packets_to_client=self.packets_to_client,
            dropped=self.dropped,
        )

    def relay_for(self, family: AddressFamily) -> RelayAddress | None:
        """The relayed address of ``family``, if this allocation has one."""
        for relay in self.relays:
            if relay.family is family:
                return relay
        return None

    def check_peer_family(self, ip: str) -> None:
        """RFC 8656 §9.2, §11.2: a peer of a family with no relay gets 443."""
        if self.relay_for(family_of(ip)) is None:
            raise StunProtocolError(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)

    # --- permissions (RFC 8656 §9) ----------------------------------------

    def active_permission(self, ip: str, now: float) -> Permission | None:
        perm = self.permissions.get(ip)
        if perm is None or perm.expires_at <= now:
            return None
        return perm

    def install_permission(self, ip: str, expires_at: float) -> Permission | None:
        """Install or refresh the permission for ``ip``; the new one, if created."""
        perm = self.permissions.get(ip)
        if perm is not None:
            perm.expires_at = max(perm.expires_at, expires_at)
            return None
        relay = self.relay_for(family_of(ip))
        if relay is None:
            raise StunProtocolError(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        perm = Permission(self, ip, relay, expires_at)
        self.permissions[ip] = perm
        return perm

    def remove_permission(self, perm: Permission) -> None:
        perm.alive = False
        if self.permissions.get(perm.ip) is perm:
            del self.permissions[perm.ip]

    # --- channels (RFC 8656 §11) ------------------------------------------

    def check_channel_bind(self, number: int, ip: str, port: int) -> None:
        """RFC 8656 §11.2: the rebinding rules; a violation is 400.

        The number must not be bound to another peer address, and the peer
        address must not be bound to another number. Binding the same pair
        again is a refresh.
        """
        bound = self.channels.get(number)
        if bound is not None and (bound.peer_ip, bound.peer_port) != (ip, port):
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "Channel Bound To Another Peer"
            )
        other = self.channel_by_peer.get((ip, port))
        if other is not None and other.number != number:
            raise StunProtocolError(
                ErrorCode.BAD_REQUEST, "Peer Bound To Another Channel"
            )

    def bind_channel(
        self, number: int, ip: str, port: int, expires_at: float
    ) -> ChannelBinding | None:
        """Create or refresh a binding (checked first); the new one, if created."""
        bound = self.channels.get(number)
        if bound is not None:
            bound.expires_at = max(bound.expires_at, expires_at)
            return None
        relay = self.relay_for(family_of(ip))
        if relay is None:
            raise StunProtocolError(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        binding = ChannelBinding(self, number, ip, port, relay, expires_at)
        self.channels[number] = binding
        self.channel_by_peer[(ip, port)] = binding
        return binding

    def remove_channel(self, binding: ChannelBinding) -> None:
        binding.alive = False
        if self.channels.get(binding.number) is binding:
            del self.channels[binding.number]
        key = (binding.peer_ip, binding.peer_port)
        if self.channel_by_peer.get(key) is binding:
            del self.channel_by_peer[key]

    def end(self) -> None:
        """Mark this allocation and everything it holds as gone."""
        self.alive = False
        for perm in self.permissions.values():
            perm.alive = False
        for binding in self.channels.values():
            binding.alive = False
        self.permissions.clear()
        self.channels.clear()
        self.channel_by_peer.clear()


class ExpiryHeap:
    """Deadlines of allocations, permissions, channels and reservations.

    Each object is pushed once. Refreshing only moves its ``expires_at``
    later; when its entry comes up, it is pushed back with the new time.
    Objects marked dead are dropped when they come up.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expiring]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, target: Expiring) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (target.expires_at, self._seq, target))

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live object (possibly early, never late)."""
        heap = self._heap
        while heap and not heap[0][2].alive:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> Expiring | None:
        """One live object whose ``expires_at`` has passed at ``now``, or None."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, target = heapq.heappop(heap)
            if not target.alive:
                continue
            if target.expires_at > now:
                self.push(target)
                continue
            return target
        return None
