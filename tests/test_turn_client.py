"""The sans-IO TURN client core against the sans-IO TURN server, in memory.

Client output goes to ``TurnServer.handle_client_datagram``; the server's
actions go back to the client or to a fake peer. Nothing touches a socket,
and the clock is a number the test moves (RFC 8656 §7-§12, RFC 8489 §9.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from natkit.stun import integrity
from natkit.stun.attributes import (
    ErrorCodeAttr,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Realm,
    Username,
    XorPeerAddress,
    XorRelayedAddress,
)
from natkit.stun.constants import AddressFamily, ErrorCode, MessageClass, Method
from natkit.stun.constants import PasswordAlgorithm as Algorithm
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, decode, encode, verify_integrity
from natkit.stun.transaction import Transport
from natkit.turn.allocation import ClientAddress, RelayAddress
from natkit.turn.auth import (
    AuthResult,
    InMemoryKeyStore,
    LongTermAuthenticator,
    NonceManager,
    integrity_kind,
)
from natkit.turn.auth import ClientAddress as AuthClient
from natkit.turn.channeldata import decode_channel_data, encode_channel_data
from natkit.turn.client import (
    CHANNEL_REFRESH,
    PERMISSION_REFRESH,
    Address,
    Allocated,
    ChannelBound,
    ClientState,
    Closed,
    DataReceived,
    PermissionCreated,
    Refreshed,
    RequestFailed,
    TurnClientCore,
    TurnClientEvent,
    refresh_delay,
)
from natkit.turn.events import CollectingEventSink
from natkit.turn.policy import PeerPolicy
from natkit.turn.server import CloseRelay, SendToClient, SendToPeer, TurnServer

REALM = "natkit.test"
USER = "alice"
PASSWORD = "alice-secret"
SERVER_IP = "192.0.2.1"
CLIENT_UDP = ClientAddress(Transport.UDP, "192.0.2.50", 40000, SERVER_IP, 3478)
CLIENT_TCP = ClientAddress(Transport.TCP, "192.0.2.50", 40001, SERVER_IP, 3478)
PEER = Address("198.51.100.7", 5000)
PEER2 = Address("198.51.100.8", 6000)
START = 100_000.0

_E = TypeVar("_E")


# --- fakes ---------------------------------------------------------------------


class FakeAllocator:
    """Relay ports 49152-49161 on 192.0.2.1 (IPv4 only)."""

    def __init__(self, ports: int = 10) -> None:
        self.free = list(range(49152, 49152 + ports))

    def reserve(
        self, family: AddressFamily, *, even: bool, reserve_next: bool
    ) -> RelayAddress | None:
        if family is not AddressFamily.IPV4 or not self.free:
            return None
        return RelayAddress(SERVER_IP, self.free.pop(0))

    def release(self, addr: RelayAddress) -> None:
        self.free.append(addr.port)


class Rfc5389Auth:
    """A server of the RFC 5389 kind: plain nonce, MD5 only, no algorithms.

    ``stale_first`` answers that many signed requests with 438 first.
    """

    def __init__(self, *, stale_first: int = 0) -> None:
        self.key = integrity.long_term_key(USER, REALM, PASSWORD)
        self.stale_left = stale_first
        self.nonce_count = 0
        self.seen: list[Message] = []

    def verify_request(
        self, msg: Message, client: AuthClient, now: float
    ) -> AuthResult:
        self.seen.append(msg)
        self.nonce_count += 1
        challenge = (Realm(REALM), Nonce(f"plain-nonce-{self.nonce_count}"))
        kind = integrity_kind(msg)
        if kind is None:
            return AuthResult(ok=False, error_code=401, attributes=challenge)
        username = msg.get(Username)
        if username is None or username.value != USER:
            return AuthResult(ok=False, error_code=401, attributes=challenge)
        if not verify_integrity(msg, self.key):
            return AuthResult(ok=False, error_code=401, attributes=challenge)
        if self.stale_left:
            self.stale_left -= 1
            return AuthResult(
                ok=False,
                error_code=438,
                attributes=challenge,
                key=self.key,
                integrity=kind,
            )
        return AuthResult(ok=True, username=USER, key=self.key, integrity=kind)


# --- the harness ---------------------------------------------------------------


class Net:
    """One TurnServer, one client core, a fake peer side and a clock."""

    def __init__(
        self,
        *,
        algorithms: Sequence[Algorithm] | None = None,
        authenticator: Rfc5389Auth | None = None,
        password: str = PASSWORD,
        transport: Transport = Transport.UDP,
        nonce_lifetime: float = 3600,
        realm: str | None = None,
        ports: int = 10,
    ) -> None:
        self.now = START
        self.nonces = NonceManager(b"n" * 32, lifetime_s=nonce_lifetime)
        store = InMemoryKeyStore()
        store.add_user(USER, REALM, PASSWORD)
        auth: LongTermAuthenticator | Rfc5389Auth = authenticator or (
            LongTermAuthenticator(REALM, store, self.nonces, algorithms=algorithms)
        )
        self.server_events = CollectingEventSink()
        self.server = TurnServer(
            authenticator=auth,
            relays=FakeAllocator(ports),
            policy=PeerPolicy(allow=["198.51.100.0/24"]),
            events=self.server_events,
        )
        self.client_addr = CLIENT_TCP if transport.is_stream else CLIENT_UDP
        self.client = TurnClientCore(
            username=USER, password=password, transport=transport, realm=realm
        )
        self.events: list[TurnClientEvent] = []
        self.to_peers: list[SendToPeer] = []
        self.requests: list[Message] = []
        #: drop client->server datagrams while this says so
        self.drop: Callable[[bytes], bool] = lambda data: False

    # moving bytes

    def pump(self) -> None:
        """Deliver everything in flight until both sides are quiet."""
        for _ in range(100):
            out = self.client.datagrams_to_send()
            if not out:
                break
            for data in out:
                if data[0] < 0x40:
                    self.requests.append(decode(data))
                if self.drop(data):
                    continue
                actions = self.server.handle_client_datagram(
                    data, self.client_addr, self.now
                )
                self.apply(actions)
        self.collect()

    def apply(self, actions: Sequence[object]) -> None:
        for action in actions:
            if isinstance(action, SendToClient):
                assert action.client == self.client_addr
                self.client.handle_datagram(action.data, self.now)
            elif isinstance(action, SendToPeer):
                self.to_peers.append(action)
            else:
                assert isinstance(action, CloseRelay)

    def collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.events.append(event)

    def from_peer(self, peer: Address, data: bytes) -> None:
        relayed = self.client.relayed
        assert relayed is not None
        relay = RelayAddress(relayed.ip, relayed.port)
        self.apply(
            self.server.handle_peer_datagram(relay, peer.ip, peer.port, data, self.now)
        )
        self.collect()

    def advance(self, until: float) -> None:
        """Run both timers, deadline by deadline, until ``until``."""
        while True:
            deadlines = [
                d
                for d in (self.client.next_deadline(), self.server.next_deadline())
                if d is not None
            ]
            step = min(deadlines, default=until)
            if step > until:
                break
            self.now = max(self.now, step)
            self.client.handle_timeout(self.now)
            self.apply(self.server.handle_timeout(self.now))
            self.pump()
            if self.client.state is ClientState.CLOSED and not deadlines:
                break
        self.now = until

    # helpers

    def of(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]

    def allocate(self) -> Allocated:
        self.client.allocate(self.now)
        self.pump()
        allocated = [e for e in self.events if isinstance(e, Allocated)]
        assert allocated, self.events
        return allocated[-1]

    def ready(self) -> int:
        """Allocate, permit PEER and bind a channel to it; the channel."""
        self.allocate()
        self.client.bind_channel(PEER, self.now)
        self.pump()
        bound = [e for e in self.events if isinstance(e, ChannelBound)]
        assert bound, self.events
        return bound[-1].channel

    def failures(self) -> list[RequestFailed]:
        return [e for e in self.events if isinstance(e, RequestFailed)]


# --- Allocate and authentication (RFC 8656 §7, RFC 8489 §9.2) --------------------


def test_allocate_answers_401_then_uses_sha256_when_offered() -> None:
    net = Net()
    allocated = net.allocate()

    assert allocated.relayed == Address(SERVER_IP, 49152)
    assert allocated.mapped == Address(CLIENT_UDP.ip, CLIENT_UDP.port)
    assert allocated.lifetime == 600
    assert net.client.state is ClientState.ALLOCATED
    assert net.client.algorithm is Algorithm.SHA256

    # first unsigned, then signed with MESSAGE-INTEGRITY-SHA256 only
    first, second = net.requests
    assert first.get(MessageIntegrity) is None and first.get(Username) is None
    assert second.get(MessageIntegritySha256) is not None
    assert second.get(MessageIntegrity) is None
    chosen = second.get(PasswordAlgorithm)
    assert chosen is not None and chosen.algorithm == Algorithm.SHA256
    offered = second.get(PasswordAlgorithms)
    assert offered is not None and len(offered.algorithms) == 2
    assert net.server.allocation_for(CLIENT_UDP) is not None


def test_allocate_uses_md5_when_the_server_offers_only_md5() -> None:
    net = Net(algorithms=(Algorithm.MD5,))
    net.allocate()

    assert net.client.algorithm is Algorithm.MD5
    signed = net.requests[1]
    assert signed.get(MessageIntegrity) is not None
    assert signed.get(MessageIntegritySha256) is None
    chosen = signed.get(PasswordAlgorithm)
    assert chosen is not None and chosen.algorithm == Algorithm.MD5


def test_allocate_with_an_rfc5389_server_uses_plain_md5() -> None:
    auth = Rfc5389Auth()
    net = Net(authenticator=auth)
    net.allocate()

    signed = net.requests[1]
    assert signed.get(MessageIntegrity) is not None
    # no security feature in the nonce: no PASSWORD-ALGORITHM(S) at all
    assert signed.get(PasswordAlgorithm) is None
    assert signed.get(PasswordAlgorithms) is None
    realm = signed.get(Realm)
    assert realm is not None and realm.value == REALM


def test_wrong_password_fails_with_authentication_failed() -> None:
    net = Net(password="wrong")
    net.client.allocate(net.now)
    net.pump()

    (failure,) = net.failures()
    assert failure.method == Method.ALLOCATE
    assert failure.code == ErrorCode.UNAUTHENTICATED
    assert failure.reason == "401 Unauthenticated"
    assert isinstance(net.events[-1], Closed)
    assert net.client.state is ClientState.CLOSED
    # one challenge answered, no loop of retries
    assert len(net.requests) == 2


def test_realm_other_than_expected_is_refused() -> None:
    net = Net(realm="other.realm")
    net.client.allocate(net.now)
    net.pump()

    (failure,) = net.failures()
    assert failure.code == 401
    assert "'natkit.test' is not 'other.realm'" in failure.reason
    assert len(net.requests) == 1


def test_stale_nonce_is_retried_with_the_new_nonce() -> None:
    net = Net(nonce_lifetime=100)
    net.allocate()

    # later the nonce is stale: 438, then the same request with the new one
    net.now += 150
    net.client.create_permission([PEER.ip], net.now)
    net.pump()

    assert [e.peers for e in net.of(PermissionCreated)] == [(PEER.ip,)]
    tail = net.requests[-2:]
    assert [m.method for m in tail] == [Method.CREATE_PERMISSION] * 2
    nonces = [m.get(Nonce) for m in tail]
    assert nonces[0] != nonces[1]
    assert not net.failures()


def test_stale_nonce_on_allocate_with_an_rfc5389_server() -> None:
    auth = Rfc5389Auth(stale_first=2)
    net = Net(authenticator=auth)
    net.allocate()

    # 401, 438, 438, then success: four Allocate requests
    assert [m.method for m in net.requests] == [Method.ALLOCATE] * 4
    assert len({m.get(Nonce) for m in net.requests[1:]}) == 3


def test_stale_nonce_retries_are_bounded() -> None:
    net = Net(authenticator=Rfc5389Auth(stale_first=100))
    net.client.allocate(net.now)
    net.pump()

    (failure,) = net.failures()
    assert failure.code == ErrorCode.STALE_NONCE
    # 1 unsigned + 1 signed + 3 retries
    assert len(net.requests) == 5
    assert net.client.state is ClientState.CLOSED


def test_allocate_error_is_reported_with_code_and_reason() -> None:
    net = Net(ports=0)
    net.client.allocate(net.now)
    net.pump()

    (failure,) = net.failures()
    assert failure.code == ErrorCode.INSUFFICIENT_CAPACITY
    assert failure.reason == "508 Insufficient Capacity"
    closed = net.events[-1]
    assert isinstance(closed, Closed) and "508" in closed.reason


def test_unsigned_success_response_is_discarded_over_udp() -> None:
    net = Net()
    net.client.allocate(net.now)

    # deliver the unsigned request, take the challenge, then forge a reply
    (unsigned,) = net.client.datagrams_to_send()
    for action in net.server.handle_client_datagram(unsigned, CLIENT_UDP, net.now):
        assert isinstance(action, SendToClient)
        net.client.handle_datagram(action.data, net.now)
    (signed,) = net.client.datagrams_to_send()
    request = decode(signed)
    forged = request.reply(MessageClass.SUCCESS, (XorRelayedAddress("203.0.113.1", 1),))
    assert net.client.handle_datagram(encode(forged), net.now)
    net.collect()
    assert net.events == []
    assert net.client.state is ClientState.ALLOCATING

    # the real answer still counts
    for action in net.server.handle_client_datagram(signed, CLIENT_UDP, net.now):
        assert isinstance(action, SendToClient)
        net.client.handle_datagram(action.data, net.now)
    net.collect()
    (allocated,) = net.of(Allocated)
    assert allocated.relayed.ip == SERVER_IP


def test_unsigned_success_response_fails_the_request_over_tcp() -> None:
    net = Net(transport=Transport.TCP)
    net.client.allocate(net.now)
    (unsigned,) = net.client.datagrams_to_send()
    for action in net.server.handle_client_datagram(unsigned, CLIENT_TCP, net.now):
        assert isinstance(action, SendToClient)
        net.client.handle_datagram(action.data, net.now)
    (signed,) = net.client.datagrams_to_send()
    forged = decode(signed).reply(MessageClass.SUCCESS, ())
    net.client.handle_datagram(encode(forged), net.now)
    net.collect()

    (failure,) = net.failures()
    assert "integrity" in failure.reason


# --- timers: retransmission, timeouts, refreshes ---------------------------------


def test_udp_request_is_retransmitted_then_times_out() -> None:
    net = Net()
    net.drop = lambda data: True
    net.client.allocate(net.now)
    net.advance(START + 60)

    assert len(net.requests) == 7  # RFC 8489 §6.2.1: Rc = 7
    (failure,) = net.failures()
    assert failure.code is None and failure.reason.startswith("timeout")
    assert net.client.state is ClientState.CLOSED
    assert net.client.next_deadline() is None


def test_stream_request_is_sent_once_and_times_out_after_ti() -> None:
    net = Net(transport=Transport.TCP)
    net.drop = lambda data: True
    net.client.allocate(net.now)
    net.pump()
    assert net.client.next_deadline() == pytest.approx(START + 39.5)
    net.advance(START + 60)

    assert len(net.requests) == 1
    (failure,) = net.failures()
    assert failure.reason == "timeout: no response after 1 send"


def test_lost_response_is_recovered_by_retransmission() -> None:
    net = Net()
    dropped: list[bytes] = []

    def drop_first(data: bytes) -> bool:
        if not dropped:
            dropped.append(data)
            return True
        return False

    net.drop = drop_first
    net.client.allocate(net.now)
    net.advance(START + 2)
    assert net.of(Allocated)
    assert len(net.requests) == 3  # lost, retransmitted, signed


def test_allocation_is_refreshed_before_it_expires() -> None:
    assert refresh_delay(600) == 540
    assert refresh_delay(100) == 50
    net = Net()
    net.allocate()
    assert net.client.next_deadline() == pytest.approx(START + 540)

    net.advance(START + 2000)

    refreshed = net.of(Refreshed)
    assert len(refreshed) == 3  # at 540, 1080, 1620
    assert net.client.state is ClientState.ALLOCATED
    assert net.server.allocation_for(CLIENT_UDP) is not None
    assert not net.failures()


def test_permissions_and_channels_are_refreshed() -> None:
    net = Net()
    channel = net.ready()
    net.client.create_permission([PEER2.ip], net.now)
    net.pump()

    net.advance(START + 1300)

    alloc = net.server.allocation_for(CLIENT_UDP)
    assert alloc is not None
    assert set(alloc.permissions) == {PEER.ip, PEER2.ip}
    assert channel in alloc.channels
    binds = [m for m in net.requests if m.method == Method.CHANNEL_BIND]
    assert len(binds) == 1 + int(1300 // CHANNEL_REFRESH)
    permits = [m for m in net.requests if m.method == Method.CREATE_PERMISSION]
    # one explicit, then batched refreshes every 240 s (both peers in one)
    assert len(permits) >= 1 + int(1300 // PERMISSION_REFRESH) - 1
    batched = [len(list(m.get_all(XorPeerAddress))) for m in permits[1:]]
    assert 2 in batched
    assert not net.failures()

    # data still flows both ways after 20 minutes
    net.client.send(PEER, b"late")
    net.pump()
    assert net.to_peers[-1].data == b"late"
    net.from_peer(PEER, b"back")
    assert net.events[-1] == DataReceived(PEER, b"back", channel)


def test_refresh_answered_437_closes_the_client() -> None:
    net = Net()
    net.allocate()
    net.apply(net.server.close(net.now))  # the server forgot us

    net.client.refresh(net.now)
    net.pump()

    (failure,) = net.failures()
    assert failure.code == ErrorCode.ALLOCATION_MISMATCH
    assert isinstance(net.events[-1], Closed)


def test_close_deletes_the_allocation_with_refresh_zero() -> None:
    net = Net()
    net.allocate()
    net.client.close(net.now)
    net.pump()

    last = net.requests[-1]
    assert last.method == Method.REFRESH
    assert net.events[-1] == Closed("allocation deleted")
    assert net.server.allocation_for(CLIENT_UDP) is None
    assert net.client.next_deadline() is None


def test_close_before_allocation_just_closes() -> None:
    client = TurnClientCore(username=USER, password=PASSWORD)
    client.close(START)
    assert client.next_event() == Closed("closed before allocation")
    assert client.datagrams_to_send() == []


# --- data: Send/Data indications and ChannelData (RFC 8656 §10, §12) ---------------


def test_send_and_data_indications_without_a_channel() -> None:
    net = Net()
    net.allocate()
    net.client.create_permission([PEER.ip], net.now)
    net.pump()
    assert net.client.has_permission(PEER.ip)

    net.client.send(PEER, b"hello")
    sent = net.client.datagrams_to_send()
    assert decode(sent[0]).method == Method.SEND
    for data in sent:
        net.apply(net.server.handle_client_datagram(data, CLIENT_UDP, net.now))
    (out,) = net.to_peers
    assert (out.peer_ip, out.peer_port, out.data) == (PEER.ip, PEER.port, b"hello")

    net.from_peer(PEER, b"world")
    assert net.events[-1] == DataReceived(PEER, b"world", None)


def test_channel_data_both_ways() -> None:
    net = Net()
    channel = net.ready()
    assert channel == 0x4000
    assert net.client.channel_for(PEER) == 0x4000

    net.client.send(PEER, b"abc")
    (frame,) = net.client.datagrams_to_send()
    assert frame == encode_channel_data(0x4000, b"abc")
    net.apply(net.server.handle_client_datagram(frame, CLIENT_UDP, net.now))
    assert net.to_peers[-1].data == b"abc"

    net.from_peer(PEER, b"xyz")
    assert net.events[-1] == DataReceived(PEER, b"xyz", 0x4000)


def test_channel_data_is_padded_over_tcp() -> None:
    net = Net(transport=Transport.TCP)
    net.ready()

    net.client.send(PEER, b"12345")
    (frame,) = net.client.datagrams_to_send()
    assert len(frame) == 12 and decode_channel_data(frame).data == b"12345"
    net.apply(net.server.handle_client_datagram(frame, CLIENT_TCP, net.now))
    assert net.to_peers[-1].data == b"12345"

    # the server pads what it sends back; the client strips it
    net.from_peer(PEER, b"abcde")
    assert net.events[-1] == DataReceived(PEER, b"abcde", 0x4000)


def test_many_peers_get_their_own_channels() -> None:
    net = Net()
    net.ready()
    net.client.bind_channel(PEER2, net.now)
    net.pump()
    assert net.client.channel_for(PEER2) == 0x4001

    net.from_peer(PEER2, b"two")
    net.from_peer(PEER, b"one")
    assert net.events[-2:] == [
        DataReceived(PEER2, b"two", 0x4001),
        DataReceived(PEER, b"one", 0x4000),
    ]
    # rebinding the same peer keeps its number
    net.client.bind_channel(PEER2, net.now)
    net.pump()
    assert net.client.channel_for(PEER2) == 0x4001


def test_forbidden_peer_is_reported_and_the_allocation_stays() -> None:
    net = Net()
    net.allocate()
    net.client.create_permission(["127.0.0.1"], net.now)
    net.pump()

    (failure,) = net.failures()
    assert failure.method == Method.CREATE_PERMISSION
    assert failure.code == ErrorCode.FORBIDDEN
    assert net.client.state is ClientState.ALLOCATED
    assert not net.client.has_permission("127.0.0.1")


def test_channel_data_on_an_unknown_channel_is_dropped() -> None:
    net = Net()
    net.allocate()
    assert net.client.handle_datagram(encode_channel_data(0x4123, b"x"), net.now)
    net.collect()
    assert not net.of(DataReceived)


def test_foreign_datagrams_are_left_to_the_caller() -> None:
    client = TurnClientCore(username=USER, password=PASSWORD)
    assert not client.handle_datagram(b"\xff" * 30, START)
    assert not client.handle_datagram(b"\x00\x01", START)
    # a response to a request we never sent
    stray = Message(Method.BINDING, MessageClass.SUCCESS, b"x" * 12)
    assert not client.handle_datagram(encode(stray), START)


def test_api_misuse_raises_usage_error() -> None:
    client = TurnClientCore(username=USER, password=PASSWORD)
    with pytest.raises(UsageError):
        client.send(PEER, b"x")
    with pytest.raises(UsageError):
        client.create_permission(["1.2.3.4"], START)
    client.allocate(START)
    with pytest.raises(UsageError):
        client.allocate(START)
    with pytest.raises(UsageError):
        TurnClientCore(username="", password="x")
    with pytest.raises(UsageError):
        TurnClientCore(username=USER, password=PASSWORD, lifetime=0)


def test_bad_peer_addresses_are_refused() -> None:
    net = Net()
    net.allocate()
    with pytest.raises(UsageError):
        net.client.create_permission(["not-an-ip"], net.now)
    with pytest.raises(UsageError):
        net.client.bind_channel(Address("198.51.100.7", 0), net.now)
    with pytest.raises(UsageError):
        net.client.bind_channel(PEER, net.now, channel=0x3FFF)


def test_error_response_without_code_is_still_reported() -> None:
    net = Net()
    net.allocate()
    net.client.create_permission([PEER.ip], net.now)
    (request,) = net.client.datagrams_to_send()
    reply = decode(request).reply(MessageClass.ERROR, (ErrorCodeAttr(400, "Nope"),))
    key = integrity.long_term_key(USER, REALM, PASSWORD, Algorithm.SHA256)
    net.client.handle_datagram(encode(reply, key=key, sha256=True), net.now)
    net.collect()
    (failure,) = net.failures()
    assert (failure.code, failure.reason) == (400, "400 Nope")
