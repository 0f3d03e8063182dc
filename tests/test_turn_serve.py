"""``natkit serve`` as a TURN server (RFC 8656) over loopback UDP, TCP and TLS.

The server runs in a thread on its own event loop (asyncio and uvloop); the
client is natkit's codec over blocking sockets, signing requests with the
long-term credential mechanism (RFC 8489 §9.2: 401 challenge, then an
authenticated request). Peers are loopback UDP sockets the test holds.
Listener and relay ports come from a random free block in 40000-48999.
"""

import asyncio
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

import natkit
from natkit.net.address import ListenAddress
from natkit.net.listeners import ServiceStats
from natkit.net.relay import RelayIp
from natkit.server.config import load_config
from natkit.server.daemon import relay_addresses
from natkit.stun import integrity
from natkit.stun.attributes import (
    Attribute,
    ChannelNumber,
    Data,
    ErrorCodeAttr,
    EvenPort,
    Lifetime,
    MessageIntegrity,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
)
from natkit.stun.constants import AddressFamily, ErrorCode, MessageClass, Method
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.turn.channeldata import (
    FrameKind,
    decode_channel_data,
    encode_channel_data,
    next_frame,
)
from ports import pick_block
from serve_thread import ServeThread

TIMEOUT = 5.0
QUIET = 0.5
REALM = "natkit.test"
USER, PASSWORD = "alice", "alice-secret"
RELAY_PORTS = 10
SRC = str(Path(natkit.__file__).resolve().parent.parent)


# --- ports -------------------------------------------------------------------


@pytest.fixture
def block() -> int:
    return pick_block(2 + RELAY_PORTS)


def relay_range(base: int, count: int = RELAY_PORTS) -> tuple[int, int]:
    return base + 2, base + 1 + count


# --- the server in a thread --------------------------------------------------


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


class Server:
    """``natkit.server.daemon.serve`` on its own loop in a thread."""

    def __init__(
        self,
        base: int,
        data_dir: Path,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        relay_ports: int = RELAY_PORTS,
        **overrides: Any,
    ) -> None:
        self.udp = self.tcp = base
        self.tls = base + 1
        self.relay_low, self.relay_high = relay_range(base, relay_ports)
        settings: dict[str, Any] = {
            "listen": [
                f"udp:127.0.0.1:{self.udp}",
                f"tcp:127.0.0.1:{self.tcp}",
                f"tls:127.0.0.1:{self.tls}",
            ],
            "data_dir": str(data_dir),
            "realm": REALM,
            "users": [f"{USER}:{PASSWORD}"],
            "relay_ip": ["127.0.0.1"],
            "relay_ports": f"{self.relay_low}-{self.relay_high}",
        }
        settings.update(overrides)
        self.config = load_config(environ={}, overrides=settings)
        self._server = ServeThread(
            self.config, loop_factory=loop_factory, timeout=TIMEOUT
        )
        self.loop = self._server.loop

    @property
    def running(self) -> bool:
        return self._server.running

    def stop(self) -> ServiceStats:
        return self._server.stop()


@pytest.fixture
def server_factory(
    tmp_path: Path,
) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(base: int, **overrides: Any) -> Server:
        server = Server(base, tmp_path / f"data{len(started)}", **overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.running:
            server.stop()


# --- a blocking TURN client --------------------------------------------------


class TurnError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code


class Endpoints(Protocol):
    udp: int
    tcp: int
    tls: int


@dataclass
class Ports:
    udp: int
    tcp: int
    tls: int


class Client:
    """A TURN client over one transport: natkit's codec, blocking sockets."""

    def __init__(
        self,
        transport: str,
        server: Endpoints,
        *,
        user: str = USER,
        password: str = PASSWORD,
    ) -> None:
        self.transport = transport
        self.user = user
        self.password = password
        self.realm = ""
        self.nonce = ""
        self.other: list[bytes] = []
        self._buffer = b""
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.connect(("127.0.0.1", server.udp))
        elif transport == "tcp":
            self.sock = socket.create_connection(("127.0.0.1", server.tcp), TIMEOUT)
        else:
            raw = socket.create_connection(("127.0.0.1", server.tls), TIMEOUT)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.sock = context.wrap_socket(raw)
        self.sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    # the wire

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.send(data)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = TIMEOUT) -> bytes:
        """One datagram or one stream frame (padding included)."""
        self.sock.settimeout(timeout)
        if self.transport == "udp":
            return self.sock.recv(65535)
        while True:
            frame = next_frame(self._buffer)
            if frame is not None and len(self._buffer) >= frame.size:
                data, self._buffer = (
                    self._buffer[: frame.size],
                    self._buffer[frame.size :],
                )
                return data
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk

    def next_other(self, timeout: float = TIMEOUT) -> bytes:
        """The next frame that is not a response to our requests."""
        if self.other:
            return self.other.pop(0)
        return self.recv(timeout)

    def nothing_arrives(self) -> bool:
        try:
            self.next_other(QUIET)
        except TimeoutError:
            return True
        return False

    # requests

    def request(self, method: int, *attributes: Attribute) -> Message:
        """An authenticated request (401 first when no nonce yet)."""
        if not self.nonce:
            challenge = self._transact(
                Message(method, MessageClass.REQUEST, new_transaction_id(), attributes),
                None,
            )
            self._take_challenge(challenge)
        for _ in range(2):
            msg = Message(
                method,
                MessageClass.REQUEST,
                new_transaction_id(),
                attributes
                + (Username(self.user), Realm(self.realm), Nonce(self.nonce)),
            )
            key = integrity.long_term_key(self.user, self.realm, self.password)
            response = self._transact(msg, key)
            error = response.get(ErrorCodeAttr)
            if (
                response.cls is MessageClass.ERROR
                and error is not None
                and error.code == ErrorCode.STALE_NONCE
            ):
                self._take_challenge(response)
                continue
            if response.cls is MessageClass.SUCCESS:
                assert response.get(MessageIntegrity) is not None
            return response
        raise AssertionError("stale nonce twice")

    def _take_challenge(self, response: Message) -> None:
        error = response.get(ErrorCodeAttr)
        assert error is not None and error.code == ErrorCode.UNAUTHENTICATED
        realm, nonce = response.get(Realm), response.get(Nonce)
        assert realm is not None and nonce is not None
        self.realm, self.nonce = realm.value, nonce.value

    def _transact(self, msg: Message, key: bytes | None) -> Message:
        self.send(encode(msg, key=key, fingerprint=True))
        deadline = time.monotonic() + TIMEOUT
        while True:
            frame = self.recv(max(deadline - time.monotonic(), 0.01))
            if frame[0] < 0x40:
                response = decode(frame)
                if response.transaction_id == msg.transaction_id:
                    return response
            self.other.append(frame)

    def ok(self, method: int, *attributes: Attribute) -> Message:
        response = self.request(method, *attributes)
        if response.cls is not MessageClass.SUCCESS:
            error = response.get(ErrorCodeAttr)
            assert error is not None
            raise TurnError(error.code, error.reason)
        return response

    def allocate(self, *extra: Attribute) -> tuple[str, int]:
        response = self.ok(Method.ALLOCATE, RequestedTransport(17), *extra)
        relayed = response.get(XorRelayedAddress)
        mapped = response.get(XorMappedAddress)
        assert relayed is not None and mapped is not None
        assert (mapped.ip, mapped.port) == self.local
        return relayed.ip, relayed.port

    def permit(self, ip: str, port: int = 9) -> None:
        self.ok(Method.CREATE_PERMISSION, XorPeerAddress(ip, port))

    def bind(self, channel: int, ip: str, port: int) -> None:
        self.ok(Method.CHANNEL_BIND, ChannelNumber(channel), XorPeerAddress(ip, port))

    def send_indication(self, ip: str, port: int, data: bytes) -> None:
        msg = Message(
            Method.SEND,
            MessageClass.INDICATION,
            new_transaction_id(),
            (XorPeerAddress(ip, port), Data(data)),
        )
        self.send(encode(msg))

    def data_indication(self) -> tuple[tuple[str, int], bytes]:
        msg = decode(self.next_other())
        assert (msg.method, msg.cls) == (Method.DATA, MessageClass.INDICATION)
        peer, data = msg.get(XorPeerAddress), msg.get(Data)
        assert peer is not None and data is not None
        return (peer.ip, peer.port), data.value

    def channel_data(self, channel: int, data: bytes) -> None:
        self.send(encode_channel_data(channel, data, pad=self.transport != "udp"))


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def peer_address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()
    return host, port


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- RFC 8656 end to end ---------------------------------------------------------


@pytest.mark.parametrize("loop_factory", _loop_factories())
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_allocate_send_data_and_channels_both_ways(
    server_factory: Callable[..., Server],
    block: int,
    peer: socket.socket,
    transport: str,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    server = server_factory(
        block, loop_factory=loop_factory, allow_peer=["127.0.0.1/32"]
    )
    client = Client(transport, server)
    peer_ip, peer_port = peer_address(peer)
    try:
        # RFC 8656 §7.2: 401, then the authenticated Allocate
        relay = client.allocate()
        assert relay[0] == "127.0.0.1"
        assert server.relay_low <= relay[1] <= server.relay_high

        # RFC 8656 §9, §10: a permission, a Send indication, a Data indication
        client.permit(peer_ip)
        client.send_indication(peer_ip, peer_port, b"hello peer")
        data, source = peer.recvfrom(2048)
        assert (data, source) == (b"hello peer", relay)
        peer.sendto(b"hello client", relay)
        assert client.data_indication() == ((peer_ip, peer_port), b"hello client")

        # RFC 8656 §11, §12: ChannelData both ways; odd sizes test the padding
        client.bind(0x4001, peer_ip, peer_port)
        for size in (1, 5, 7, 8, 1200):
            payload = os.urandom(size)
            client.channel_data(0x4001, payload)
            assert peer.recvfrom(2048) == (payload, relay)
            peer.sendto(payload[::-1], relay)
            frame = client.next_other()
            if transport != "udp":
                assert len(frame) % 4 == 0  # RFC 8656 §12.5
            message = decode_channel_data(frame)
            assert (message.channel, message.data) == (0x4001, payload[::-1])
    finally:
        client.close()
    stats = server.stop()
    turn = stats.turn
    assert turn is not None
    # the first packet each way goes through the core, the rest the fast path
    assert turn.fast_to_peer >= 4
    assert turn.fast_to_client >= 4
    assert turn.relay_sockets == 0
    assert turn.internal_errors == 0 and stats.internal_errors == 0


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _have_ipv6(), reason="no IPv6 loopback")
def test_ipv6_relay_channel_data_takes_the_fast_path(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(
        block, relay_ip=["127.0.0.1", "::1"], allow_peer=["::1/128"]
    )
    client = Client("udp", server)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as peer6:
        peer6.bind(("::1", 0))
        peer6.settimeout(TIMEOUT)
        peer_port = peer6.getsockname()[1]
        try:
            # RFC 8656 §7.2: REQUESTED-ADDRESS-FAMILY 0x02 asks for IPv6
            relay = client.allocate(RequestedAddressFamily(AddressFamily.IPV6))
            assert relay[0] == "::1"
            client.bind(0x4123, "::1", peer_port)
            for index in range(5):
                client.channel_data(0x4123, b"six %d" % index)
                data, source = peer6.recvfrom(100)
                assert (data, source[:2]) == (b"six %d" % index, relay)
                peer6.sendto(b"back %d" % index, relay)
                message = decode_channel_data(client.next_other())
                assert message.data == b"back %d" % index
        finally:
            client.close()
    stats = server.stop()
    assert stats.turn is not None
    assert stats.turn.fast_to_peer >= 3 and stats.turn.fast_to_client >= 3


def test_denied_peer_gets_403_and_send_delivers_nothing(
    server_factory: Callable[..., Server], block: int, peer: socket.socket
) -> None:
    # no allow_peer: loopback is denied by default (RFC 8656 §21)
    server = server_factory(block)
    client = Client("udp", server)
    peer_ip, peer_port = peer_address(peer)
    try:
        relay = client.allocate()
        with pytest.raises(TurnError) as excinfo:
            client.permit(peer_ip)
        assert excinfo.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(TurnError) as excinfo:
            client.bind(0x4000, peer_ip, peer_port)
        assert excinfo.value.code == ErrorCode.FORBIDDEN
        client.send_indication(peer_ip, peer_port, b"let me out")
        client.channel_data(0x4000, b"me too")
        peer.settimeout(QUIET)
        with pytest.raises(TimeoutError):
            peer.recvfrom(2048)
        # and what the peer sends to the relay is not let in either (RFC 8656 §9)
        peer.sendto(b"knock knock", relay)
        assert client.nothing_arrives()
    finally:
        client.close()
    stats = server.stop()
    assert stats.turn is not None
    assert stats.turn.core.no_permission + stats.turn.core.unknown_channel >= 2


def test_clients_of_one_server_reach_each_other_through_their_relays(
    server_factory: Callable[..., Server], block: int
) -> None:
    # the relayed addresses are loopback, yet allowed: PeerPolicy's exception
    server = server_factory(block)
    alice, bob = Client("udp", server), Client("tcp", server)
    try:
        relay_a, relay_b = alice.allocate(), bob.allocate()
        alice.permit(*relay_b)
        bob.permit(*relay_a)
        alice.bind(0x4000, *relay_b)
        bob.bind(0x4ABC, *relay_a)
        for round_ in range(3):
            alice.channel_data(0x4000, b"ping %d" % round_)
            message = decode_channel_data(bob.next_other())
            assert (message.channel, message.data) == (0x4ABC, b"ping %d" % round_)
            bob.channel_data(0x4ABC, b"pong")
            message = decode_channel_data(alice.next_other())
            assert (message.channel, message.data) == (0x4000, b"pong")
    finally:
        alice.close()
        bob.close()
    server.stop()


def test_relay_port_exhaustion_is_508_and_a_freed_port_is_reused(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block, relay_ports=4)
    clients = [Client("udp", server) for _ in range(5)]
    try:
        relays = {c.allocate() for c in clients[:4]}
        assert {port for _, port in relays} == set(range(block + 2, block + 6))
        with pytest.raises(TurnError) as excinfo:
            clients[4].allocate()
        assert excinfo.value.code == ErrorCode.INSUFFICIENT_CAPACITY

        # RFC 8656 §7.3: LIFETIME 0 deletes; the port can be handed out again
        clients[0].ok(Method.REFRESH, Lifetime(0))
        assert clients[4].allocate()[1] in {port for _, port in relays}
    finally:
        for client in clients:
            client.close()
    server.stop()


def test_even_port_reservation_token_gets_the_next_port(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block)
    first, second = Client("udp", server), Client("tcp", server)
    try:
        # RFC 8656 §7.2: EVEN-PORT with R: an even port, N+1 held behind a token
        response = first.ok(Method.ALLOCATE, RequestedTransport(17), EvenPort(True))
        relayed, token = response.get(XorRelayedAddress), response.get(ReservationToken)
        assert relayed is not None and token is not None
        assert relayed.port % 2 == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", relayed.port + 1))
        relay = second.allocate(token)
        assert relay == ("127.0.0.1", relayed.port + 1)
    finally:
        first.close()
        second.close()
    stats = server.stop()
    assert stats.turn is not None and stats.turn.relay_sockets == 0


def test_lifetime_zero_closes_the_relay_socket(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block)
    client = Client("udp", server)
    try:
        relay = client.allocate()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            with pytest.raises(OSError):
                probe.bind(relay)
        response = client.ok(Method.REFRESH, Lifetime(0))
        assert response.get(Lifetime) == Lifetime(0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(relay)  # the server's socket is gone
        # RFC 8656 §7.3: the allocation is gone too
        with pytest.raises(TurnError) as excinfo:
            client.ok(Method.REFRESH)
        assert excinfo.value.code == ErrorCode.ALLOCATION_MISMATCH
    finally:
        client.close()
    server.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_many_allocations_leak_no_file_descriptors(
    server_factory: Callable[..., Server], transport: str
) -> None:
    base = pick_block(2 + 40)
    server = server_factory(base, relay_ports=40)
    baseline = open_fds()
    for _ in range(3):
        clients = [Client(transport, server) for _ in range(30)]
        for client in clients:
            client.allocate(Lifetime(600))
        for index, client in enumerate(clients):
            if transport == "udp" or index % 2:
                client.ok(Method.REFRESH, Lifetime(0))
            client.close()  # over TCP, closing the connection deletes the rest
        deadline = time.monotonic() + TIMEOUT
        while open_fds() > baseline and time.monotonic() < deadline:
            time.sleep(0.02)
        assert open_fds() == baseline
    stats = server.stop()
    assert stats.turn is not None and stats.turn.relay_sockets == 0


def test_shutdown_releases_allocations_and_relay_sockets(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block)
    clients = [Client(t, server) for t in ("udp", "tcp", "tls")]
    relays = [c.allocate() for c in clients]
    stats = server.stop()
    for client in clients:
        client.close()
    assert stats.turn is not None
    assert stats.turn.relay_sockets == 0 and stats.turn.core.allocations == 0
    for relay in relays:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(relay)


def test_tcp_connection_close_deletes_its_allocation(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block)
    client = Client("tcp", server)
    relay = client.allocate()
    client.close()
    deadline = time.monotonic() + TIMEOUT
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(relay)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    server.stop()


def test_tcp_client_with_an_allocation_outlives_the_idle_timeout(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block, stream_idle_timeout=0.3)
    idle, busy = Client("tcp", server), Client("tcp", server)
    try:
        busy.allocate()
        time.sleep(0.8)
        # the connection without an allocation was closed, the other was not
        with pytest.raises((ConnectionError, OSError)):
            idle.recv(TIMEOUT)
        busy.ok(Method.REFRESH)
    finally:
        idle.close()
        busy.close()
    server.stop()


def test_no_turn_is_a_stun_only_server(
    server_factory: Callable[..., Server], block: int
) -> None:
    server = server_factory(block, turn=False)
    client = Client("udp", server)
    try:
        request = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
        client.send(encode(request))
        assert decode(client.recv()).cls is MessageClass.SUCCESS
        allocate = Message(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            new_transaction_id(),
            (RequestedTransport(17),),
        )
        client.send(encode(allocate))
        response = decode(client.recv())
        error = response.get(ErrorCodeAttr)
        assert error is not None and error.code == ErrorCode.BAD_REQUEST
    finally:
        client.close()
    stats = server.stop()
    assert stats.turn is None


def test_rest_credentials_from_the_generated_secret(
    server_factory: Callable[..., Server], block: int, tmp_path: Path
) -> None:
    from natkit.security.secrets import load_or_create_rest_secret
    from natkit.turn.credentials import mint

    server = server_factory(block)
    secret = load_or_create_rest_secret(tmp_path / "data0")[0]
    credential = mint("carol", 600, secret, time.time())
    client = Client(
        "udp", server, user=credential.username, password=credential.password
    )
    wrong = Client("udp", server, user=credential.username, password="nope")
    try:
        client.allocate()
        with pytest.raises(TurnError) as excinfo:
            wrong.allocate()
        assert excinfo.value.code == ErrorCode.UNAUTHENTICATED
    finally:
        client.close()
        wrong.close()
    server.stop()


# --- natkit serve as a subprocess --------------------------------------------------


def test_natkit_serve_user_subprocess_end_to_end(
    tmp_path: Path, peer: socket.socket
) -> None:
    base = pick_block(2 + RELAY_PORTS)
    low, high = relay_range(base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    args = [
        "serve",
        "--user",
        f"{USER}:{PASSWORD}",
        "--realm",
        REALM,
        "--allow-peer",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        f"{low}-{high}",
        "--listen",
        f"udp:127.0.0.1:{base}",
        "--listen",
        f"tcp:127.0.0.1:{base}",
        "--listen",
        f"tls:127.0.0.1:{base + 1}",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from natkit.cli import main; main()", *args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not any("TURN relay on" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"natkit serve exited: {lines}"
            lines.append(line)
        assert any("TURN relay on 127.0.0.1" in line for line in lines)

        spec = Ports(udp=base, tcp=base, tls=base + 1)
        peer_ip, peer_port = peer_address(peer)
        for transport in ("udp", "tcp", "tls"):
            client = Client(transport, spec)
            try:
                relay = client.allocate()
                client.bind(0x4000, peer_ip, peer_port)
                client.channel_data(0x4000, transport.encode())
                assert peer.recvfrom(2048) == (transport.encode(), relay)
                peer.sendto(b"back", relay)
                message = decode_channel_data(client.next_other())
                assert message.data == b"back"
            finally:
                client.close()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0
        lines.extend(rest.splitlines())
        assert any("TURN stopped" in line for line in lines), lines
        assert not any("Traceback" in line for line in lines), lines
        assert not any(PASSWORD in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


def test_frame_kinds_sanity() -> None:
    # the client's stream framing relies on next_frame: STUN vs ChannelData
    frame = next_frame(encode_channel_data(0x4000, b"abc", pad=True))
    assert frame is not None and frame.kind is FrameKind.CHANNEL_DATA
    assert frame.size == 8
    assert struct.unpack("!HH", encode_channel_data(0x4000, b"abc")[:4]) == (
        0x4000,
        3,
    )


# --- relay addresses from the configuration ----------------------------------------


def _listeners(*texts: str) -> list[ListenAddress]:
    return [ListenAddress.parse(t) for t in texts]


def test_relay_ip_follows_a_concrete_listener() -> None:
    config = load_config(environ={}, overrides={})
    relays = relay_addresses(config, _listeners("udp:192.0.2.7:3478", "tcp:[::1]"))
    assert relays == (RelayIp("192.0.2.7", "192.0.2.7"), RelayIp("::1", "::1"))


def test_wildcard_listener_takes_the_first_usable_interface_address() -> None:
    config = load_config(environ={}, overrides={})
    interfaces = ["127.0.0.1", "::1", "fe80::1", "169.254.0.9", "10.1.2.3", "::"]
    relays = relay_addresses(
        config, _listeners("udp:0.0.0.0", "udp:[::]"), lambda: interfaces
    )
    # no usable IPv6 address: IPv4 only
    assert relays == (RelayIp("10.1.2.3", "10.1.2.3"),)
    only_loopback = relay_addresses(
        config, _listeners("udp:0.0.0.0"), lambda: ["127.0.0.1"]
    )
    assert only_loopback == (RelayIp("127.0.0.1", "127.0.0.1"),)


def test_external_ip_maps_relay_addresses() -> None:
    overrides: dict[str, Any] = {
        "relay_ip": ["10.0.0.5", "10.0.0.6", "fd00::5"],
        "external_ip": ["203.0.113.6/10.0.0.6", "203.0.113.99", "2001:db8::5"],
    }
    config = load_config(environ={}, overrides=overrides)
    assert relay_addresses(config, _listeners("udp:0.0.0.0")) == (
        RelayIp("10.0.0.5", "203.0.113.99"),
        RelayIp("10.0.0.6", "203.0.113.6"),
        RelayIp("fd00::5", "2001:db8::5"),
    )
    # without relay_ip, PRIVATE is the relay address
    config = load_config(
        environ={}, overrides={"external_ip": ["203.0.113.6/127.0.0.1"]}
    )
    assert relay_addresses(config, _listeners("udp:192.0.2.7")) == (
        RelayIp("127.0.0.1", "203.0.113.6"),
    )


def test_an_unbindable_relay_ip_is_a_startup_error(tmp_path: Path) -> None:
    from natkit.server.daemon import StartupError, build_turn
    from natkit.stun.server import BindingResponder

    config = load_config(
        environ={},
        overrides={"relay_ip": ["192.0.2.200"], "data_dir": str(tmp_path)},
    )
    with pytest.raises(StartupError, match="relay_ip 192.0.2.200: cannot bind"):
        build_turn(config, _listeners("udp:127.0.0.1"), BindingResponder())
