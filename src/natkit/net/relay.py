"""Relay sockets and the relay fast path (RFC 8656 §10-§12).

Every relayed transport address is one non-blocking UDP socket, bound by
:class:`RelayPorts` (the :class:`~natkit.turn.server.RelayPortAllocator` of
the asyncio driver) and read with ``loop.add_reader``: a socket bound inside
the core's synchronous ``reserve`` call is readable at once. One readiness
callback reads up to a batch of datagrams that adapts to the load (1 up to
:data:`READ_BATCH`): a socket that had one datagram queued last time is
read once and not asked again until the loop reports it readable, so a
lightly loaded relay costs one ``recvfrom`` per datagram instead of two
(the second only to learn that the queue is empty); a busy one doubles its
batch each time it finds a full one.

The fast path
=============

ChannelData is the bulk of what a TURN server relays, in both directions
(RFC 8656 §12). Going through the sans-IO core costs a 5-tuple object, an
action list and a socket lookup per packet; this module skips all three for
a channel that is already known to work:

- client to peer: :func:`forward_channel_data` finds a :class:`ChannelRoute`
  on the client's :class:`ClientLink` by channel number and sends the
  payload from the relay socket;
- peer to client: :meth:`RelaySocket.drain` finds a :class:`PeerRoute` by the
  peer's address as ``recvfrom`` returns it and sends the ChannelData
  message (padded over TCP/TLS, RFC 8656 §12.5) on the client's link.

Routes are learnt by the driver after the core has relayed a first packet
of that channel, and they point at the core's own
:class:`~natkit.turn.allocation.ChannelBinding` and
:class:`~natkit.turn.allocation.Permission` objects. Before each packet the
fast path checks that both are alive and not past ``expires_at``, so a
channel or permission that expired (RFC 8656 §9, §11) stops the fast path
at the same instant it stops the core, even before the core's timer has
run; a refresh moves ``expires_at`` on the same objects, so routes survive
it. Anything unusual (unknown channel, a dead or expired route, a rate
limit that refuses the packet) falls back to the core, which decides and
counts. The fast path updates the allocation's own traffic counters, so
the totals in allocation events stay right.
"""

import errno
import logging
import random
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from natkit.stun.constants import AddressFamily
from natkit.stun.errors import UsageError
from natkit.turn.allocation import (
    Allocation,
    ChannelBinding,
    ClientAddress,
    Permission,
    RelayAddress,
)

logger = logging.getLogger(__name__)

#: the most datagrams read per readiness callback of one relay socket
READ_BATCH = 64
#: kernel receive and send buffer asked for on each relay socket (0: the
#: kernel default; the kernel caps it at net.core.rmem_max / wmem_max)
RELAY_BUFFER_BYTES = 1 << 20
#: the largest UDP payload (IPv4: 65535 - 20 - 8)
MAX_DATAGRAM = 65535
#: random ports tried before the allocator sweeps the whole range
RANDOM_TRIES = 16

_LINUX = sys.platform.startswith("linux")
# Linux <netinet/in.h> values; the socket module does not export all of them
_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_DONT = 0
_IP_PMTUDISC_DO = 2
_IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)

#: can the relay set DF per datagram (RFC 8656 §14)? Only on Linux here.
DONT_FRAGMENT_SUPPORTED = _LINUX

_HEADER = struct.Struct("!HH")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")

PeerAddr = tuple[Any, ...]
SendFn = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class RelayIp:
    """One address relay sockets bind to, and the one clients are told.

    ``advertised`` differs from ``bind`` behind a 1:1 NAT (``external_ip``):
    XOR-RELAYED-ADDRESS carries the public address (RFC 8656 §7.2).
    """

    bind: str
    advertised: str

    @property
    def family(self) -> AddressFamily:
        return AddressFamily.IPV6 if ":" in self.bind else AddressFamily.IPV4


class RelayCounters:
    """What the fast path did, for stats and tests (plain ints)."""

    __slots__ = ("fast_to_peer", "fast_to_client", "send_errors", "bind_failures")

    def __init__(self) -> None:
        self.fast_to_peer = 0
        self.fast_to_client = 0
        #: datagrams the kernel refused (buffer full, unreachable, ...)
        self.send_errors = 0
        #: relay ports that could not be bound (in use by another program)
        self.bind_failures = 0


class ClientLink:
    """One client 5-tuple as the driver reaches it.

    ``send`` writes one datagram (UDP) or frame (TCP/TLS) to the client.
    ``alloc`` is the allocation on this 5-tuple once there is one;
    ``routes`` are its channels known to the fast path, by number. A UDP
    link sits in its listener's ``registry`` under ``key`` (the peer
    address as the event loop reports it) while it has an allocation.
    """

    __slots__ = ("client", "send", "alloc", "routes", "registry", "key")

    def __init__(
        self,
        client: ClientAddress,
        send: SendFn,
        *,
        registry: "dict[PeerAddr, ClientLink] | None" = None,
        key: PeerAddr = (),
    ) -> None:
        self.client = client
        self.send = send
        self.alloc: Allocation | None = None
        self.routes: dict[int, ChannelRoute] = {}
        self.registry = registry
        self.key = key


class ChannelRoute:
    """Client to peer: channel ``binding`` leaves from ``relay`` to ``peer``."""

    __slots__ = ("binding", "perm", "alloc", "relay", "peer", "dont_fragment")

    def __init__(
        self,
        binding: ChannelBinding,
        perm: Permission,
        alloc: Allocation,
        relay: "RelaySocket",
    ) -> None:
        self.binding = binding
        self.perm = perm
        self.alloc = alloc
        self.relay = relay
        self.peer = (binding.peer_ip, binding.peer_port)
        #: RFC 8656 §14: DF as the Allocate asked, for every datagram
        self.dont_fragment = alloc.dont_fragment


class PeerRoute:
    """Peer to client: what arrives from the channel's peer goes to ``send``."""

    __slots__ = ("binding", "perm", "alloc", "send", "number", "pad")

    def __init__(
        self,
        binding: ChannelBinding,
        perm: Permission,
        alloc: Allocation,
        link: ClientLink,
    ) -> None:
        self.binding = binding
        self.perm = perm
        self.alloc = alloc
        self.send = link.send
        self.number = binding.number
        #: RFC 8656 §12.5: over TCP and TLS, ChannelData is padded to 4
        self.pad = alloc.stream


def forward_channel_data(link: ClientLink, data: bytes, now: float) -> bool:
    """RFC 8656 §12.4 fast path: ChannelData from ``link`` to its peer.

    True when the payload was handed to the relay socket; False when the
    core must decide (unknown channel, expired route, malformed, limited).
    """
    if len(data) < 4:
        return False
    route = link.routes.get(data[0] << 8 | data[1])
    if route is None:
        return False
    binding = route.binding
    perm = route.perm
    if not (
        binding.alive
        and perm.alive
        and binding.expires_at > now
        and perm.expires_at > now
    ):
        del link.routes[binding.number]
        return False
    length = data[2] << 8 | data[3]
    if len(data) < 4 + length:
        return False
    alloc = route.alloc
    bucket = alloc.bucket
    if bucket is not None and not bucket.consume(length, now):
        # the core refuses it again (the bucket has not refilled) and counts
        return False
    alloc.bytes_to_peer += length
    alloc.packets_to_peer += 1
    relay = route.relay
    counters = relay.counters
    counters.fast_to_peer += 1
    if route.dont_fragment != relay.dont_fragment:
        relay.set_dont_fragment(route.dont_fragment)
    try:
        relay.sock.sendto(data[4 : 4 + length], route.peer)
    except OSError:
        # UDP: a full buffer or an unreachable peer loses this datagram
        counters.send_errors += 1
    return True


def peer_key(ip: str, port: int) -> PeerAddr:
    """The address ``recvfrom`` reports for a peer (IPv6: a 4-tuple)."""
    return (ip, port, 0, 0) if ":" in ip else (ip, port)


class RelaySocket:
    """One relayed transport address: its UDP socket and peer routes.

    ``on_peer(relay_socket, data, addr)`` gets every datagram the fast path
    does not take.
    """

    __slots__ = (
        "relay",
        "bind_ip",
        "sock",
        "peers",
        "link",
        "counters",
        "closed",
        "dont_fragment",
        "_loop",
        "_on_peer",
        "_fd",
        "_batch",
    )

    def __init__(
        self,
        relay: RelayAddress,
        bind_ip: str,
        sock: socket.socket,
        *,
        loop: Any,
        on_peer: "Callable[[RelaySocket, bytes, PeerAddr], None]",
        counters: RelayCounters,
    ) -> None:
        self.relay = relay
        self.bind_ip = bind_ip
        self.sock = sock
        self.peers: dict[PeerAddr, PeerRoute] = {}
        #: the link of the allocation this address belongs to, once known
        self.link: ClientLink | None = None
        self.counters = counters
        self.closed = False
        #: whether DF is set on the socket now (RFC 8656 §14)
        self.dont_fragment = False
        self._loop = loop
        self._on_peer = on_peer
        self._fd = sock.fileno()
        #: datagrams to read on the next readiness callback (see the module doc)
        self._batch = 1
        loop.add_reader(self._fd, self.drain)

    def drain(self) -> None:
        """Read what is queued; the peer-to-client fast path (RFC 8656 §12.6)."""
        recvfrom = self.sock.recvfrom
        peers = self.peers
        counters = self.counters
        now = self._loop.time()
        batch = self._batch
        for count in range(batch):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                # the queue held ``count``: read that many, no more, next time
                self._batch = count or 1
                return
            except OSError:
                continue  # an ICMP error queued on the socket: next datagram
            route = peers.get(addr)
            if route is not None:
                binding = route.binding
                perm = route.perm
                if (
                    binding.alive
                    and perm.alive
                    and binding.expires_at > now
                    and perm.expires_at > now
                ):
                    alloc = route.alloc
                    size = len(data)
                    bucket = alloc.bucket
                    if bucket is None or bucket.consume(size, now):
                        alloc.bytes_to_client += size
                        alloc.packets_to_client += 1
                        counters.fast_to_client += 1
                        header = _HEADER.pack(route.number, size)
                        if route.pad:
                            route.send(header + data + _PADDING[size & 3])
                        else:
                            route.send(header + data)
                        continue
                else:
                    del peers[addr]
            self._on_peer(self, data, addr)
            if self.closed:
                return
        # a full batch: there may be more, read twice as many next time
        if batch < READ_BATCH:
            self._batch = batch * 2

    def send(self, data: bytes, peer: PeerAddr, dont_fragment: bool) -> None:
        """Send one datagram to ``peer``; DF as asked (RFC 8656 §14)."""
        if dont_fragment != self.dont_fragment:
            self.set_dont_fragment(dont_fragment)
        try:
            self.sock.sendto(data, peer)
        except OSError:
            # UDP: a full buffer or an unreachable peer loses this datagram
            self.counters.send_errors += 1

    def set_dont_fragment(self, on: bool) -> None:
        """RFC 8656 §14: DF on IPv4, no local fragmentation on IPv6 (Linux)."""
        self.dont_fragment = on
        if not _LINUX:
            return
        try:
            if ":" in self.bind_ip:
                self.sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, int(on))
            else:
                mode = _IP_PMTUDISC_DO if on else _IP_PMTUDISC_DONT
                self.sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, mode)
        except OSError:
            logger.debug("cannot set DF on relay %s", self.relay)

    def close(self) -> None:
        """Stop reading and close the socket (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.peers.clear()
        self.link = None
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, RuntimeError):
            pass  # the loop is already closed
        self.sock.close()


def set_buffers(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of kernel receive and send buffer on ``sock``.

    The kernel caps the request at net.core.rmem_max / wmem_max (and
    doubles what it grants, for its bookkeeping); a refusal leaves the
    default, which still works.
    """
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass


def receive_buffer(sock: socket.socket) -> int:
    """The receive buffer the kernel granted ``sock`` (as SO_RCVBUF reports)."""
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError:
        return 0


class RelayPorts:
    """The :class:`~natkit.turn.server.RelayPortAllocator` of the driver.

    Binds a UDP socket per relayed address on one of ``addresses`` with a
    port in ``low``-``high`` (RFC 8656 §7.2: SHOULD be 49152-65535). A port
    is picked at random; one that another program holds is skipped; after
    :data:`RANDOM_TRIES` misses the whole range is swept from a random
    start, so a free port is found if there is one, and None (508) only
    when there is none. EVEN-PORT asks for an even port and, with the R bit,
    for N+1 as well (RFC 8656 §7.2). :meth:`start` must be called on the
    running loop before the first :meth:`reserve`.
    """

    def __init__(
        self,
        addresses: Sequence[RelayIp],
        low: int,
        high: int,
        *,
        rng: random.Random | None = None,
        buffer_bytes: int = RELAY_BUFFER_BYTES,
    ) -> None:
        if not 1 <= low <= high <= 0xFFFF:
            raise UsageError(f"bad relay port range {low}-{high}")
        if not addresses:
            raise UsageError("at least one relay address is needed")
        self.addresses = tuple(addresses)
        self.low = low
        self.high = high
        #: SO_RCVBUF and SO_SNDBUF of every relay socket (0: kernel default)
        self.buffer_bytes = buffer_bytes
        self.counters = RelayCounters()
        #: every open relay socket, by the address the core knows it by
        self.sockets: dict[RelayAddress, RelaySocket] = {}
        self._rng = rng or random.Random()
        self._used: dict[str, set[int]] = {a.bind: set() for a in self.addresses}
        self._loop: Any = None
        self._on_peer: Callable[[RelaySocket, bytes, PeerAddr], None] | None = None
        self._on_release: Callable[[RelaySocket], None] | None = None

    @property
    def families(self) -> frozenset[AddressFamily]:
        return frozenset(a.family for a in self.addresses)

    def start(
        self,
        loop: Any,
        *,
        on_peer: Callable[[RelaySocket, bytes, PeerAddr], None],
        on_release: Callable[[RelaySocket], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_peer = on_peer
        self._on_release = on_release

    def reserve(
        self, family: AddressFamily, *, even: bool, reserve_next: bool
    ) -> RelayAddress | None:
        """Bind a relay socket of ``family``; None when no port is free."""
        if self._loop is None:
            raise UsageError("RelayPorts.start() was not called")
        candidates = [a for a in self.addresses if a.family is family]
        self._rng.shuffle(candidates)
        for address in candidates:
            relay = self._reserve_on(address, even=even, reserve_next=reserve_next)
            if relay is not None:
                return relay
        return None

    def release(self, addr: RelayAddress) -> None:
        """Close the socket of ``addr`` and free its port (idempotent)."""
        relay_socket = self.sockets.pop(addr, None)
        if relay_socket is None:
            return
        self._used[relay_socket.bind_ip].discard(addr.port)
        if self._on_release is not None:
            self._on_release(relay_socket)
        relay_socket.close()

    def close(self) -> None:
        """Close every relay socket."""
        for addr in list(self.sockets):
            self.release(addr)

    def __len__(self) -> int:
        return len(self.sockets)

    # --- port choice ------------------------------------------------------

    def _reserve_on(
        self, address: RelayIp, *, even: bool, reserve_next: bool
    ) -> RelayAddress | None:
        used = self._used[address.bind]
        first, step, count = self._slots(even=even, reserve_next=reserve_next)
        if count <= 0 or len(used) >= self.high - self.low + 1:
            return None
        for port in self._candidates(first, step, count, used, reserve_next):
            sock = self._bind(address.bind, port)
            if sock is None:
                continue
            if reserve_next:
                following = self._bind(address.bind, port + 1)
                if following is None:
                    sock.close()
                    continue
                self._register(address, port + 1, following)
            return self._register(address, port, sock)
        return None

    def _slots(self, *, even: bool, reserve_next: bool) -> tuple[int, int, int]:
        """First port, step and number of candidate ports."""
        last = self.high - 1 if reserve_next else self.high
        if even or reserve_next:
            first = self.low + (self.low & 1)
            return first, 2, (last - first) // 2 + 1 if last >= first else 0
        return self.low, 1, last - self.low + 1

    def _candidates(
        self, first: int, step: int, count: int, used: set[int], reserve_next: bool
    ) -> Iterator[int]:
        def free(port: int) -> bool:
            return port not in used and not (reserve_next and port + 1 in used)

        # a few random picks, then a sweep of the whole range
        rng = self._rng
        for _ in range(min(RANDOM_TRIES, count)):
            port = first + step * rng.randrange(count)
            if free(port):
                yield port
        start = rng.randrange(count)
        for index in range(count):
            port = first + step * ((start + index) % count)
            if free(port):
                yield port

    def _bind(self, ip: str, port: int) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            elif _LINUX:
                # DF off unless a client asks (RFC 8656 §14)
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            sock.setblocking(False)
            sock.bind((ip, port))
            if self.buffer_bytes:
                set_buffers(sock, self.buffer_bytes)
        except OSError as exc:
            sock.close()
            self.counters.bind_failures += 1
            if exc.errno != errno.EADDRINUSE:
                logger.debug("relay bind %s port %d: %s", ip, port, exc.strerror)
            return None
        return sock

    def _register(
        self, address: RelayIp, port: int, sock: socket.socket
    ) -> RelayAddress:
        if self._on_peer is None:
            raise UsageError("RelayPorts.start() was not called")
        relay = RelayAddress(address.advertised, port)
        self.sockets[relay] = RelaySocket(
            relay,
            address.bind,
            sock,
            loop=self._loop,
            on_peer=self._on_peer,
            counters=self.counters,
        )
        self._used[address.bind].add(port)
        return relay
