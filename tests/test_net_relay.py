"""Relay sockets, the relay port allocator and the relay fast path.

Real loopback sockets on an asyncio loop; the TURN core's allocation objects
are built by hand so expiry can be set directly (RFC 8656 §9, §11). Relay
ports come from a random free block in 40000-48999.
"""

import asyncio
import random
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from natkit.net.relay import (
    ChannelRoute,
    ClientLink,
    PeerAddr,
    PeerRoute,
    RelayIp,
    RelayPorts,
    RelaySocket,
    forward_channel_data,
    peer_key,
)
from natkit.stun.constants import AddressFamily
from natkit.stun.errors import UsageError
from natkit.stun.transaction import Transport
from natkit.turn.allocation import (
    Allocation,
    ClientAddress,
    RelayAddress,
)
from natkit.turn.channeldata import encode_channel_data
from natkit.turn.quota import TokenBucket

LOOPBACK = RelayIp("127.0.0.1", "127.0.0.1")
TIMEOUT = 5.0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(count: int) -> int:
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(40000, 49000 - count)
        base += base & 1  # even, for the EVEN-PORT tests
        if all(_free(p) for p in range(base, base + count)):
            return base
    pytest.skip("no free block of loopback ports in 40000-48999")


class PeerLog:
    """Collects what the slow path (the driver) would get."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, PeerAddr]] = []

    def __call__(self, relay: RelaySocket, data: bytes, addr: PeerAddr) -> None:
        self.datagrams.append((data, addr))


@pytest.fixture
async def ports() -> AsyncIterator[RelayPorts]:
    base = free_block(8)
    allocator = RelayPorts([LOOPBACK], base, base + 7)
    allocator.start(asyncio.get_running_loop(), on_peer=PeerLog())
    yield allocator
    allocator.close()


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def _bound(relay: RelayAddress) -> bool:
    return not _free(relay.port)


# --- the allocator (RFC 8656 §7.2) ---------------------------------------------


async def test_reserve_binds_a_port_in_range_and_release_frees_it(
    ports: RelayPorts,
) -> None:
    relay = ports.reserve(AddressFamily.IPV4, even=False, reserve_next=False)
    assert relay is not None and relay.ip == "127.0.0.1"
    assert ports.low <= relay.port <= ports.high
    assert _bound(relay) and len(ports) == 1
    ports.release(relay)
    ports.release(relay)  # idempotent
    assert not _bound(relay) and len(ports) == 0


async def test_even_port_and_reserve_next(ports: RelayPorts) -> None:
    for _ in range(3):
        relay = ports.reserve(AddressFamily.IPV4, even=True, reserve_next=True)
        assert relay is not None and relay.port % 2 == 0
        following = RelayAddress(relay.ip, relay.port + 1)
        assert following in ports.sockets and _bound(following)
    assert len(ports) == 6


async def test_exhaustion_gives_none_and_taken_ports_are_skipped(
    ports: RelayPorts,
) -> None:
    # another program holds the first port of the range
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", ports.low))
        got = [
            ports.reserve(AddressFamily.IPV4, even=False, reserve_next=False)
            for _ in range(8)
        ]
    relays = [r for r in got if r is not None]
    assert len(relays) == 7 and got[-1] is None
    assert ports.low not in {r.port for r in relays}
    assert ports.counters.bind_failures >= 1
    assert ports.reserve(AddressFamily.IPV4, even=True, reserve_next=False) in (
        None,
        RelayAddress("127.0.0.1", ports.low),
    )


async def test_no_address_of_a_family_gives_none(ports: RelayPorts) -> None:
    assert ports.families == frozenset({AddressFamily.IPV4})
    assert ports.reserve(AddressFamily.IPV6, even=False, reserve_next=False) is None


async def test_advertised_address_is_what_the_core_sees() -> None:
    base = free_block(2)
    allocator = RelayPorts([RelayIp("127.0.0.1", "203.0.113.5")], base, base + 1)
    allocator.start(asyncio.get_running_loop(), on_peer=PeerLog())
    try:
        relay = allocator.reserve(AddressFamily.IPV4, even=False, reserve_next=False)
        assert relay is not None and relay.ip == "203.0.113.5"
        assert allocator.sockets[relay].bind_ip == "127.0.0.1"
        assert _bound(RelayAddress("127.0.0.1", relay.port))
    finally:
        allocator.close()


def test_allocator_needs_start_and_a_sane_range() -> None:
    with pytest.raises(UsageError):
        RelayPorts([LOOPBACK], 10, 5)
    with pytest.raises(UsageError):
        RelayPorts([], 1000, 1001)
    with pytest.raises(UsageError):
        RelayPorts([LOOPBACK], 40000, 40001).reserve(
            AddressFamily.IPV4, even=False, reserve_next=False
        )


# --- the fast path ---------------------------------------------------------------


class Fixture:
    """An allocation with one channel to ``peer`` on a real relay socket."""

    def __init__(self, ports: RelayPorts, peer: socket.socket, *, stream: bool):
        relay = ports.reserve(AddressFamily.IPV4, even=False, reserve_next=False)
        assert relay is not None
        self.relay = ports.sockets[relay]
        transport = Transport.TCP if stream else Transport.UDP
        client = ClientAddress(transport, "127.0.0.1", 50000, "127.0.0.1", 3478)
        self.alloc = Allocation(
            allocation_id="t1",
            username="alice",
            quota_user="alice",
            client=client,
            relays=(relay,),
            now=0.0,
            lifetime=600,
        )
        peer_ip, peer_port = peer.getsockname()
        self.now = asyncio.get_running_loop().time()
        perm = self.alloc.install_permission(peer_ip, self.now + 300)
        binding = self.alloc.bind_channel(0x4001, peer_ip, peer_port, self.now + 600)
        assert perm is not None and binding is not None
        self.perm, self.binding = perm, binding
        self.sent: list[bytes] = []
        self.link = ClientLink(client, self.sent.append)
        self.link.alloc = self.alloc
        self.link.routes[0x4001] = ChannelRoute(binding, perm, self.alloc, self.relay)
        self.relay.peers[peer_key(peer_ip, peer_port)] = PeerRoute(
            binding, perm, self.alloc, self.link
        )


async def test_channel_data_to_the_peer_counts_like_the_core(
    ports: RelayPorts, peer: socket.socket
) -> None:
    f = Fixture(ports, peer, stream=False)
    message = encode_channel_data(0x4001, b"hello")
    assert forward_channel_data(f.link, message, f.now)
    assert peer.recvfrom(100) == (b"hello", ("127.0.0.1", f.relay.relay.port))
    # over TCP the frame carries padding after the data: not relayed
    assert forward_channel_data(f.link, message + b"\x00\x00\x00", f.now)
    assert peer.recvfrom(100)[0] == b"hello"
    assert (f.alloc.bytes_to_peer, f.alloc.packets_to_peer) == (10, 2)
    assert ports.counters.fast_to_peer == 2


async def test_expired_permission_or_channel_stops_the_fast_path(
    ports: RelayPorts, peer: socket.socket
) -> None:
    f = Fixture(ports, peer, stream=False)
    message = encode_channel_data(0x4001, b"x")

    # RFC 8656 §9: past expires_at, even before the core's timer has run
    assert not forward_channel_data(f.link, message, f.now + 300)
    assert 0x4001 not in f.link.routes  # the route is forgotten
    f.link.routes[0x4001] = ChannelRoute(f.binding, f.perm, f.alloc, f.relay)

    # a refresh moves expires_at on the same object: the route lives on
    f.perm.expires_at = f.now + 900
    assert forward_channel_data(f.link, message, f.now + 300)

    # RFC 8656 §11: a channel the core removed
    f.alloc.remove_channel(f.binding)
    assert not forward_channel_data(f.link, message, f.now)
    assert f.alloc.packets_to_peer == 1


async def test_unknown_short_or_rate_limited_channel_data_goes_to_the_core(
    ports: RelayPorts, peer: socket.socket
) -> None:
    f = Fixture(ports, peer, stream=False)
    assert not forward_channel_data(f.link, encode_channel_data(0x4002, b"x"), f.now)
    assert not forward_channel_data(f.link, b"\x40\x01\x00", f.now)
    assert not forward_channel_data(f.link, b"\x40\x01\x00\x09abc", f.now)
    f.alloc.bucket = TokenBucket(10.0, 10.0, f.now)
    assert not forward_channel_data(
        f.link, encode_channel_data(0x4001, b"x" * 11), f.now
    )
    assert forward_channel_data(f.link, encode_channel_data(0x4001, b"x" * 10), f.now)
    assert f.alloc.packets_to_peer == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_peer_datagrams_reach_the_client_as_channel_data(
    ports: RelayPorts, peer: socket.socket, stream: bool
) -> None:
    f = Fixture(ports, peer, stream=stream)
    peer.sendto(b"abcde", ("127.0.0.1", f.relay.relay.port))
    for _ in range(100):
        if f.sent:
            break
        await asyncio.sleep(0.01)
    # RFC 8656 §12.5: padded to a multiple of 4 over TCP/TLS only
    expected = encode_channel_data(0x4001, b"abcde", pad=stream)
    assert f.sent == [expected]
    assert (f.alloc.bytes_to_client, f.alloc.packets_to_client) == (5, 1)
    assert ports.counters.fast_to_client == 1


async def test_peer_datagrams_without_a_live_route_go_to_the_driver(
    peer: socket.socket,
) -> None:
    base = free_block(2)
    log = PeerLog()
    allocator = RelayPorts([LOOPBACK], base, base + 1)
    allocator.start(asyncio.get_running_loop(), on_peer=log)
    try:
        f = Fixture(allocator, peer, stream=False)
        f.perm.expires_at = f.now  # expired: the core decides (and drops)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with other:
            other.bind(("127.0.0.1", 0))
            other.sendto(b"stranger", ("127.0.0.1", f.relay.relay.port))
            peer.sendto(b"expired", ("127.0.0.1", f.relay.relay.port))
            for _ in range(100):
                if len(log.datagrams) == 2:
                    break
                await asyncio.sleep(0.01)
        assert sorted(d for d, _ in log.datagrams) == [b"expired", b"stranger"]
        assert f.sent == [] and not f.relay.peers
    finally:
        allocator.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux DF option")
async def test_dont_fragment_is_set_per_socket_on_change(
    ports: RelayPorts, peer: socket.socket
) -> None:
    # Linux IP_MTU_DISCOVER (10): IP_PMTUDISC_DO (2) sets DF, DONT (0) not
    f = Fixture(ports, peer, stream=False)
    assert f.relay.sock.getsockopt(socket.IPPROTO_IP, 10) == 0
    f.relay.send(b"df", peer.getsockname(), True)
    assert peer.recvfrom(10)[0] == b"df"
    assert f.relay.sock.getsockopt(socket.IPPROTO_IP, 10) == 2
    f.relay.send(b"frag ok", peer.getsockname(), False)
    assert f.relay.sock.getsockopt(socket.IPPROTO_IP, 10) == 0


async def test_closing_a_relay_socket_stops_reading(
    ports: RelayPorts, peer: socket.socket
) -> None:
    f = Fixture(ports, peer, stream=False)
    ports.release(f.relay.relay)
    assert f.relay.closed and f.relay.sock.fileno() == -1
    f.relay.close()  # idempotent


# --- reading in adaptive batches, buffers -------------------------------------------


async def test_a_burst_is_read_whole_across_readiness_callbacks(
    peer: socket.socket,
) -> None:
    # one datagram per callback at first, then twice as many after a full
    # batch: nothing queued is left behind, and the batch falls back to
    # what the queue held once it runs dry
    base = free_block(1)
    log = PeerLog()
    allocator = RelayPorts([LOOPBACK], base, base)
    allocator.start(asyncio.get_running_loop(), on_peer=log)
    try:
        relay = allocator.reserve(AddressFamily.IPV4, even=False, reserve_next=False)
        assert relay is not None
        for n in range(200):
            peer.sendto(n.to_bytes(2, "big"), ("127.0.0.1", relay.port))
        for _ in range(200):
            if len(log.datagrams) == 200:
                break
            await asyncio.sleep(0.01)
        assert [int.from_bytes(d, "big") for d, _ in log.datagrams] == list(range(200))
        peer.sendto(b"one more", ("127.0.0.1", relay.port))
        for _ in range(100):
            if len(log.datagrams) == 201:
                break
            await asyncio.sleep(0.01)
        assert log.datagrams[-1][0] == b"one more"
    finally:
        allocator.close()


async def test_relay_sockets_ask_for_the_configured_buffers() -> None:
    base = free_block(2)
    sizes = {}
    for index, size in enumerate((256 << 10, 0)):
        allocator = RelayPorts(
            [LOOPBACK], base + index, base + index, buffer_bytes=size
        )
        allocator.start(asyncio.get_running_loop(), on_peer=PeerLog())
        try:
            relay = allocator.reserve(
                AddressFamily.IPV4, even=False, reserve_next=False
            )
            assert relay is not None
            sock = allocator.sockets[relay].sock
            sizes[size] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            allocator.close()
    # Linux reports twice what was granted; 0 leaves the kernel default
    assert sizes[256 << 10] >= 2 * (256 << 10) or sizes[256 << 10] > sizes[0]


async def test_channel_data_keeps_dont_fragment_as_allocated(
    ports: RelayPorts, peer: socket.socket
) -> None:
    f = Fixture(ports, peer, stream=False)
    f.alloc.dont_fragment = True
    f.link.routes[0x4001] = ChannelRoute(f.binding, f.perm, f.alloc, f.relay)
    assert forward_channel_data(f.link, encode_channel_data(0x4001, b"df"), f.now)
    assert peer.recvfrom(10)[0] == b"df"
    assert f.relay.dont_fragment
