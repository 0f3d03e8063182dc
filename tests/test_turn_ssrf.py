"""SSRF regression tests: a TURN relay must not become a way into the server's
networks (RFC 8656 §21; natkit's peer policy, docs/configuration.md "Peers").

A real ``natkit serve`` (:func:`natkit.server.daemon.serve` on its own event
loop in a thread) listens on loopback with the default peer policy and no
allow rules. An authenticated client (natkit's codec over a blocking UDP
socket, long-term credentials after the 401 challenge, RFC 8489 §9.2) asks
for permissions and channels towards loopback, "this network", private,
link-local (cloud metadata), CGNAT, multicast and reserved addresses, their
IPv6 and transition forms, and the server's own addresses.

Only permissions and channels are *requested* towards non-loopback
addresses. Data (Send indications, ChannelData) goes only to UDP sockets on
127.0.0.1 that the test itself holds.

What the server answers, decided here: the family check of RFC 8656 §9.2 and
§11.2 comes before the policy, so an IPv6 peer on an IPv4-only allocation
gets 443 (Peer Address Family Mismatch) and an IPv4 peer on an IPv6-only one
too; on an allocation with a relay of the peer's family (a dual allocation,
RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY) every one of them gets 403.
"""

import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.net.listeners import ServiceStats
from natkit.server.config import load_config
from natkit.stun import integrity
from natkit.stun.attributes import (
    AdditionalAddressFamily,
    Attribute,
    ChannelNumber,
    Data,
    ErrorCodeAttr,
    Lifetime,
    Nonce,
    Realm,
    RequestedTransport,
    Username,
    XorPeerAddress,
    XorRelayedAddress,
)
from natkit.stun.constants import AddressFamily, ErrorCode, MessageClass, Method
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.turn.channeldata import decode_channel_data, encode_channel_data
from serve_thread import ServeThread

TIMEOUT = 5.0
#: how long "nothing arrives" is waited for
QUIET = 0.5
REALM = "ssrf.test"
USER, PASSWORD = "mallory", "mallory-secret"
RELAY_PORTS = 12
#: RFC 8656 §18.7: REQUESTED-TRANSPORT UDP
UDP = 17

#: Peers a default-policy relay must refuse: (address, what it is).
IPV4_PEERS = (
    ("127.0.0.1", "loopback"),
    ("0.0.0.0", "this network"),
    ("10.0.0.1", "RFC 1918 private"),
    ("172.16.0.1", "RFC 1918 private"),
    ("192.168.1.1", "RFC 1918 private"),
    ("169.254.169.254", "link-local: cloud metadata"),
    ("100.64.0.1", "CGNAT shared space"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
)
IPV6_PEERS = (
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
    ("2002:7f00:1::", "6to4 of 127.0.0.1"),
    ("fe80::1", "link-local"),
    ("fc00::1", "unique local"),
)
ALL_PEERS = IPV4_PEERS + IPV6_PEERS


def _is_v6(ip: str) -> bool:
    return ":" in ip


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- ports ---------------------------------------------------------------------


def _free(port: int, addresses: tuple[str, ...]) -> bool:
    for ip in addresses:
        family = socket.AF_INET6 if _is_v6(ip) else socket.AF_INET
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(family, kind) as sock:
                try:
                    sock.bind((ip, port))
                except OSError:
                    return False
    return True


def _pick_block(count: int, addresses: tuple[str, ...]) -> int:
    """The first of ``count`` consecutive ports in 40000-48999 free on every
    one of ``addresses``."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(40000, 49000 - count)
        if all(_free(p, addresses) for p in range(base, base + count)):
            return base
    pytest.skip("no free block of loopback ports in 40000-48999")


# --- the server ----------------------------------------------------------------


class Server:
    """``natkit serve`` on 127.0.0.1 (UDP and TCP), in a thread; relays on
    127.0.0.1 and, where the machine has it, ::1."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.ipv6 = _has_ipv6_loopback()
        relay_ips = ("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",)
        base = _pick_block(1 + RELAY_PORTS, relay_ips)
        self.port = base
        self.relay_low, self.relay_high = base + 1, base + RELAY_PORTS
        settings: dict[str, Any] = {
            "listen": [f"udp:127.0.0.1:{self.port}", f"tcp:127.0.0.1:{self.port}"],
            "data_dir": str(data_dir),
            "realm": REALM,
            "users": [f"{USER}:{PASSWORD}"],
            "relay_ip": list(relay_ips),
            "relay_ports": f"{self.relay_low}-{self.relay_high}",
            "user_quota": 0,
        }
        settings.update(overrides)
        self.config = load_config(environ={}, overrides=settings)
        self._server = ServeThread(self.config, timeout=TIMEOUT)
        self.loop = self._server.loop

    @property
    def running(self) -> bool:
        return self._server.running

    def stop(self) -> ServiceStats:
        return self._server.stop()


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[Server] = []

    def start(**overrides: Any) -> Server:
        server = Server(tmp_path / f"data{len(started)}", **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.running:
            server.stop()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One default-policy server for the table-driven tests of this module."""
    server = Server(tmp_path_factory.mktemp("ssrf"))
    yield server
    server.stop()


# --- a blocking TURN client over UDP ---------------------------------------------


class Client:
    """A TURN client: natkit's codec over a UDP socket on 127.0.0.1."""

    def __init__(self, server: Server) -> None:
        self.realm = ""
        self.nonce = ""
        self.key = b""
        self.pending: list[bytes] = []
        self.allocated = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", server.port))

    def close(self) -> None:
        """Delete the allocation (frees its relay port at once), then close."""
        try:
            if self.allocated:
                self.request(Method.REFRESH, Lifetime(0))
        except OSError:
            pass
        finally:
            self.sock.close()

    def request(self, method: int, *attributes: Attribute) -> Message:
        """An authenticated request: the 401 challenge first, once."""
        if not self.nonce:
            challenge = self._transact(
                Message(method, MessageClass.REQUEST, new_transaction_id(), attributes),
                None,
            )
            error = challenge.get(ErrorCodeAttr)
            realm, nonce = challenge.get(Realm), challenge.get(Nonce)
            assert error is not None and error.code == ErrorCode.UNAUTHENTICATED
            assert realm is not None and nonce is not None
            self.realm, self.nonce = realm.value, nonce.value
            self.key = integrity.long_term_key(USER, self.realm, PASSWORD)
        credentials = (Username(USER), Realm(self.realm), Nonce(self.nonce))
        msg = Message(
            method, MessageClass.REQUEST, new_transaction_id(), attributes + credentials
        )
        return self._transact(msg, self.key)

    def _transact(self, msg: Message, key: bytes | None) -> Message:
        self.sock.send(encode(msg, key=key, fingerprint=True))
        deadline = time.monotonic() + TIMEOUT
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self.sock.recv(65535)
            if data[0] < 0x40:
                response = decode(data)
                if response.transaction_id == msg.transaction_id:
                    return response
            self.pending.append(data)

    def error_code(self, method: int, *attributes: Attribute) -> int | None:
        """The ERROR-CODE of the answer, None for a success response."""
        response = self.request(method, *attributes)
        if response.cls is MessageClass.SUCCESS:
            return None
        error = response.get(ErrorCodeAttr)
        assert error is not None, response
        return error.code

    def allocate(self, *extra: Attribute) -> list[tuple[str, int]]:
        response = self.request(Method.ALLOCATE, RequestedTransport(UDP), *extra)
        assert response.cls is MessageClass.SUCCESS, response.get(ErrorCodeAttr)
        self.allocated = True
        return [(a.ip, a.port) for a in response.get_all(XorRelayedAddress)]

    def permit(self, ip: str, port: int = 0) -> int | None:
        return self.error_code(Method.CREATE_PERMISSION, XorPeerAddress(ip, port))

    def bind(self, channel: int, ip: str, port: int) -> int | None:
        return self.error_code(
            Method.CHANNEL_BIND, ChannelNumber(channel), XorPeerAddress(ip, port)
        )

    def delete(self) -> None:
        response = self.request(Method.REFRESH, Lifetime(0))
        assert response.cls is MessageClass.SUCCESS, response.get(ErrorCodeAttr)
        self.allocated = False

    def send_indication(self, ip: str, port: int, data: bytes) -> None:
        attributes = (XorPeerAddress(ip, port), Data(data))
        msg = Message(
            Method.SEND, MessageClass.INDICATION, new_transaction_id(), attributes
        )
        self.sock.send(encode(msg))

    def channel_data(self, channel: int, data: bytes) -> None:
        self.sock.send(encode_channel_data(channel, data))

    def receive(self) -> bytes:
        """The payload of the next ChannelData or Data indication."""
        if self.pending:
            data = self.pending.pop(0)
        else:
            self.sock.settimeout(TIMEOUT)
            data = self.sock.recv(65535)
        if data[0] >= 0x40:
            return decode_channel_data(data).data
        msg = decode(data)
        payload = msg.get(Data)
        assert (msg.method, msg.cls) == (Method.DATA, MessageClass.INDICATION), msg
        assert payload is not None
        return payload.value


@pytest.fixture
def client(default_server: Server) -> Iterator[Client]:
    turn = Client(default_server)
    yield turn
    turn.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 standing for a service on the server's host."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def _address(sock: socket.socket) -> tuple[str, int]:
    ip, port = sock.getsockname()[:2]
    return ip, port


def _nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(QUIET)
    try:
        sock.recvfrom(65535)
    except TimeoutError:
        return True
    return False


def _peer_denied_lines(caplog: pytest.LogCaptureFixture, ip: str) -> list[str]:
    """The server's "peer IP:PORT denied: REASON" lines for ``ip``."""
    text = str(ipaddress.ip_address(ip))
    shown = f"peer [{text}]:" if _is_v6(text) else f"peer {text}:"
    lines = [r.getMessage() for r in caplog.records]
    return [line for line in lines if shown in line and " denied: " in line]


# --- the table: CreatePermission and ChannelBind ----------------------------------


@pytest.mark.parametrize(("ip", "what"), ALL_PEERS, ids=[ip for ip, _ in ALL_PEERS])
def test_ipv4_allocation_refuses_special_peers(
    client: Client, ip: str, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 8656 §9.2, §11.2, §21: 403 for a special-purpose IPv4 peer; an IPv6
    peer (whatever IPv4 address it embeds) is 443 on an IPv4 allocation."""
    caplog.set_level(logging.INFO, logger="natkit.turn.events")
    client.allocate()
    expected = (
        ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH if _is_v6(ip) else ErrorCode.FORBIDDEN
    )

    assert client.permit(ip) == expected, what
    assert client.permit(ip, 80) == expected, what
    assert client.bind(0x4000, ip, 80) == expected, what
    # an RFC 5766 channel number takes the same path
    assert client.bind(0x6000, ip, 53) == expected, what

    # the refusal comes from the policy, logged with the reason
    if not _is_v6(ip):
        assert _peer_denied_lines(caplog, ip), caplog.text


@pytest.mark.parametrize(("ip", "what"), ALL_PEERS, ids=[ip for ip, _ in ALL_PEERS])
def test_dual_allocation_refuses_special_peers_of_both_families(
    client: Client,
    default_server: Server,
    ip: str,
    what: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 8656 §7.2 dual allocation: with a relay of each family the family
    check passes and the policy answers 403, also for IPv4-mapped, NAT64 and
    6to4 forms of denied IPv4 addresses."""
    if not default_server.ipv6:
        pytest.skip("no IPv6 loopback (::1) on this machine")
    caplog.set_level(logging.INFO, logger="natkit.turn.events")
    relays = client.allocate(AdditionalAddressFamily(AddressFamily.IPV6))
    assert {_is_v6(r[0]) for r in relays} == {False, True}, relays

    assert client.permit(ip) == ErrorCode.FORBIDDEN, what
    assert client.permit(ip, 443) == ErrorCode.FORBIDDEN, what
    assert client.bind(0x4001, ip, 443) == ErrorCode.FORBIDDEN, what
    assert _peer_denied_lines(caplog, ip), caplog.text


def test_one_denied_peer_fails_the_whole_create_permission(
    server_factory: ServerFactory, listener: socket.socket
) -> None:
    """RFC 8656 §9.2: several XOR-PEER-ADDRESS in one request are all or
    nothing. With loopback allowed, 127.0.0.1 next to the metadata address
    gets 403 and no permission: a Send to the test's socket stays dropped."""
    server = server_factory(allow_peer=["127.0.0.1/32"])
    client = Client(server)
    try:
        client.allocate()
        ip, port = _address(listener)
        code = client.error_code(
            Method.CREATE_PERMISSION,
            XorPeerAddress(ip, port),
            XorPeerAddress("169.254.169.254", 80),
        )
        assert code == ErrorCode.FORBIDDEN
        client.send_indication(ip, port, b"half a permission")
        assert _nothing_arrives(listener)
    finally:
        client.close()


def test_server_own_addresses_are_refused(
    client: Client, default_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener (UDP and TCP on one port) and the relay addresses: 403.
    The relayed-address exception needs the exact ip and port of a live
    allocation, so neither the listen port nor port 0 qualifies."""
    caplog.set_level(logging.INFO, logger="natkit.turn.events")
    (relay_ip, relay_port), *_ = client.allocate()
    port = default_server.port

    assert client.permit("127.0.0.1", port) == ErrorCode.FORBIDDEN
    assert client.bind(0x4002, "127.0.0.1", port) == ErrorCode.FORBIDDEN
    unused_port = default_server.relay_high + 1
    assert client.bind(0x4003, relay_ip, unused_port) == ErrorCode.FORBIDDEN
    # CreatePermission ignores the port (RFC 8656 §9.2): the IP alone is judged
    assert client.permit(relay_ip, 0) == ErrorCode.FORBIDDEN
    assert _peer_denied_lines(caplog, "127.0.0.1"), caplog.text


# --- data: Send indications and ChannelData ----------------------------------------


def test_send_to_a_denied_loopback_service_delivers_nothing(
    client: Client, listener: socket.socket
) -> None:
    """A Send indication to a loopback port the test listens on is dropped."""
    client.allocate()
    ip, port = _address(listener)
    assert client.permit(ip, port) == ErrorCode.FORBIDDEN
    client.send_indication(ip, port, b"GET /latest/meta-data/ HTTP/1.0\r\n\r\n")
    client.channel_data(0x4000, b"no channel either")
    assert _nothing_arrives(listener)


def test_relayed_address_exception_opens_only_that_port(
    server_factory: ServerFactory, listener: socket.socket
) -> None:
    """Two clients of one server talk through their relays (the exception), but
    the permission that installs for the IP 127.0.0.1 does not let Send reach
    any other loopback port: the Send path checks ip and port (RFC 8656 §10.2
    lets the server refuse a peer)."""
    server = server_factory()
    alice, bob = Client(server), Client(server)
    try:
        (relay_a, *_), (relay_b, *_) = alice.allocate(), bob.allocate()
        assert alice.bind(0x4000, *relay_b) is None
        assert bob.bind(0x4000, *relay_a) is None
        alice.channel_data(0x4000, b"hello bob")
        assert bob.receive() == b"hello bob"

        # alice now holds a permission for 127.0.0.1, yet...
        ip, port = _address(listener)
        alice.send_indication(ip, port, b"to a loopback service")
        assert alice.bind(0x4001, ip, port) == ErrorCode.FORBIDDEN
        assert _nothing_arrives(listener)
    finally:
        alice.close()
        bob.close()
    stats = server.stop()
    assert stats.turn is not None
    assert stats.turn.core.policy_denied >= 1


def test_send_to_an_explicitly_allowed_loopback_peer_is_delivered(
    server_factory: ServerFactory, listener: socket.socket
) -> None:
    """``--allow-peer 127.0.0.1/32`` wins over the built-in loopback rule and
    the server-address rule: the same Send now arrives."""
    server = server_factory(allow_peer=["127.0.0.1/32"])
    client = Client(server)
    try:
        (relay, *_) = client.allocate()
        ip, port = _address(listener)
        assert client.permit(ip, port) is None
        client.send_indication(ip, port, b"allowed")
        listener.settimeout(TIMEOUT)
        data, source = listener.recvfrom(65535)
        assert (data, source) == (b"allowed", relay)
        # other ranges stay denied
        assert client.permit("10.0.0.1") == ErrorCode.FORBIDDEN
        assert client.permit("169.254.169.254") == ErrorCode.FORBIDDEN
    finally:
        client.close()


def test_deny_peer_beats_the_relayed_address_exception(
    server_factory: ServerFactory,
) -> None:
    """``--deny-peer 127.0.0.1/32``: even another allocation's relayed address
    is refused (the documented precedence: allow > deny > relayed address)."""
    server = server_factory(deny_peer=["127.0.0.1/32"])
    alice, bob = Client(server), Client(server)
    try:
        alice.allocate()
        (relay_b, *_) = bob.allocate()
        assert alice.bind(0x4000, *relay_b) == ErrorCode.FORBIDDEN
    finally:
        alice.close()
        bob.close()


def test_channel_to_an_ended_allocation_no_longer_reaches_its_port(
    server_factory: ServerFactory,
) -> None:
    """A channel bound to bob's relayed address (allowed by the exception)
    must not outlive bob's allocation as a path to 127.0.0.1:that-port: once
    the port is freed, whatever binds it next is a plain loopback service."""
    server = server_factory()
    alice, bob = Client(server), Client(server)
    try:
        (relay_a, *_), (relay_b, *_) = alice.allocate(), bob.allocate()
        assert alice.bind(0x4000, *relay_b) is None
        assert bob.permit(*relay_a) is None
        # used once while bob is there: the relay's fast path learns the route
        alice.channel_data(0x4000, b"hello bob")
        assert bob.receive() == b"hello bob"
        bob.delete()

        # a local service takes the freed relay port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as service:
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    service.bind(relay_b)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            alice.channel_data(0x4000, b"via a stale channel")
            alice.send_indication(*relay_b, b"via a stale permission")
            assert _nothing_arrives(service)
    finally:
        alice.close()
        bob.close()
