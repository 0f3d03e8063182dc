"""The asyncio STUN client against tiny in-test responders on loopback."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from natkit.net.stun_client import (
    AddressError,
    BadResponseError,
    ConnectionFailedError,
    ErrorResponseError,
    ResolveError,
    ServerSpec,
    StunTimeoutError,
    TransportAddress,
    binding,
    parse_server,
    tls_context,
)
from natkit.stun.attributes import ErrorCodeAttr, MappedAddress, XorMappedAddress
from natkit.stun.constants import MessageClass
from natkit.stun.message import Message, decode, encode
from natkit.stun.transaction import RetransmitPolicy, Transport

Reply = Callable[[Message, tuple[str, int]], Message | None]


def mapped_reply(request: Message, addr: tuple[str, int]) -> Message | None:
    return request.reply(MessageClass.SUCCESS, (XorMappedAddress(addr[0], addr[1]),))


@dataclass
class Responder:
    """Answers Binding requests; drops the first ``drop`` of them."""

    reply: Reply = mapped_reply
    drop: int = 0
    seen: list[Message] = field(default_factory=list)

    def answer(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        request = decode(data)
        self.seen.append(request)
        if len(self.seen) <= self.drop:
            return None
        response = self.reply(request, addr)
        return encode(response) if response is not None else None


class _UdpResponder(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.responder.answer(data, addr)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def udp_responder(
    responder: Responder, host: str = "127.0.0.1"
) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpResponder(responder), local_addr=(host, 0)
    )
    return transport, transport.get_extra_info("sockname")[1]


async def stream_responder(
    responder: Responder, context: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, int]:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                header = await reader.readexactly(20)
                body = await reader.readexactly(int.from_bytes(header[2:4], "big"))
                out = responder.answer(header + body, peer)
                if out is not None:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def udp_server() -> AsyncIterator[tuple[Responder, int]]:
    responder = Responder()
    transport, port = await udp_responder(responder)
    yield responder, port
    transport.close()


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A bound UDP port that never answers (no ICMP unreachable either)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def closed_port(kind: int = socket.SOCK_DGRAM) -> int:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# --- UDP ---------------------------------------------------------------------


async def test_udp_binding_returns_mapped_local_and_rtt(
    udp_server: tuple[Responder, int],
) -> None:
    responder, port = udp_server
    result = await binding("127.0.0.1", port, timeout=2)
    assert result.mapped == result.local
    assert result.local.ip == "127.0.0.1"
    assert result.server == TransportAddress("127.0.0.1", port)
    assert result.transport is Transport.UDP
    assert result.transmissions == 1
    assert 0 <= result.rtt < 1
    assert len(responder.seen) == 1


async def test_udp_retransmits_until_answered() -> None:
    responder = Responder(drop=2)
    transport, port = await udp_responder(responder)
    try:
        policy = RetransmitPolicy(rto=0.05)
        result = await binding("127.0.0.1", port, policy=policy, timeout=2)
    finally:
        transport.close()
    assert result.transmissions == 3
    assert len(responder.seen) == 3
    assert len({m.transaction_id for m in responder.seen}) == 1


async def test_udp_gives_up_after_rc_transmissions(silent_udp_port: int) -> None:
    policy = RetransmitPolicy(rto=0.01, rc=3, rm=2)
    with pytest.raises(StunTimeoutError, match=r"after 0\.05 s"):
        await binding("127.0.0.1", silent_udp_port, policy=policy)


async def test_udp_timeout_option_caps_the_wait(silent_udp_port: int) -> None:
    with pytest.raises(StunTimeoutError) as info:
        await binding("127.0.0.1", silent_udp_port, timeout=0.2)
    assert str(info.value) == (
        f"no STUN response from 127.0.0.1:{silent_udp_port} after 0.2 s"
    )


async def test_udp_port_unreachable_is_refused() -> None:
    with pytest.raises(ConnectionFailedError, match="refused"):
        await binding("127.0.0.1", closed_port(), timeout=2)


async def test_stray_and_foreign_datagrams_are_ignored() -> None:
    """Another transaction's response first, then ours (RFC 8489 §6.3)."""

    def reply_twice(request: Message, addr: tuple[str, int]) -> Message | None:
        other = Message(request.method, MessageClass.SUCCESS, b"\x01" * 12, ())
        transport.sendto(encode(other), addr)
        transport.sendto(b"not stun at all", addr)
        return mapped_reply(request, addr)

    transport, port = await udp_responder(Responder(reply=reply_twice))
    try:
        result = await binding("127.0.0.1", port, timeout=2)
    finally:
        transport.close()
    assert result.mapped == result.local


async def test_error_response_raises() -> None:
    def reject(request: Message, addr: tuple[str, int]) -> Message:
        return request.reply(MessageClass.ERROR, (ErrorCodeAttr(400, "Bad Request"),))

    transport, port = await udp_responder(Responder(reply=reject))
    try:
        with pytest.raises(ErrorResponseError, match="error 400 Bad Request") as info:
            await binding("127.0.0.1", port, timeout=2)
    finally:
        transport.close()
    assert info.value.code == 400


async def test_response_without_mapped_address_is_bad() -> None:
    def empty(request: Message, addr: tuple[str, int]) -> Message:
        return request.reply(MessageClass.SUCCESS)

    transport, port = await udp_responder(Responder(reply=empty))
    try:
        with pytest.raises(BadResponseError, match="XOR-MAPPED-ADDRESS"):
            await binding("127.0.0.1", port, timeout=2)
    finally:
        transport.close()


async def test_rfc3489_server_mapped_address_is_accepted() -> None:
    def classic(request: Message, addr: tuple[str, int]) -> Message:
        return request.reply(MessageClass.SUCCESS, (MappedAddress(addr[0], addr[1]),))

    transport, port = await udp_responder(Responder(reply=classic))
    try:
        result = await binding("127.0.0.1", port, timeout=2)
    finally:
        transport.close()
    assert result.mapped == result.local


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_udp_ipv6_loopback() -> None:
    transport, port = await udp_responder(Responder(), host="::1")
    try:
        result = await binding("::1", port, timeout=2, family=socket.AF_INET6)
    finally:
        transport.close()
    assert result.mapped.ip == "::1"
    assert str(result.server) == f"[::1]:{port}"


async def test_unresolvable_name() -> None:
    with pytest.raises(ResolveError, match="nonexistent.invalid"):
        await binding("nonexistent.invalid", 3478, timeout=5)


async def test_family_mismatch_does_not_resolve() -> None:
    with pytest.raises(ResolveError, match="IPv6"):
        await binding("127.0.0.1", 3478, family=socket.AF_INET6, timeout=2)


# --- TCP and TLS ---------------------------------------------------------------


async def test_tcp_binding() -> None:
    responder = Responder()
    server, port = await stream_responder(responder)
    try:
        result = await binding("127.0.0.1", port, transport=Transport.TCP, timeout=2)
    finally:
        server.close()
        await server.wait_closed()
    assert result.transport is Transport.TCP
    assert result.mapped == result.local
    assert result.transmissions == 1


async def test_tcp_connection_refused() -> None:
    port = closed_port(socket.SOCK_STREAM)
    with pytest.raises(ConnectionFailedError, match="refused"):
        await binding("127.0.0.1", port, transport=Transport.TCP, timeout=2)


async def test_tcp_silent_server_times_out() -> None:
    server, port = await stream_responder(Responder(drop=10))
    try:
        with pytest.raises(StunTimeoutError):
            await binding("127.0.0.1", port, transport=Transport.TCP, timeout=0.2)
        policy = RetransmitPolicy(ti=0.1)
        with pytest.raises(StunTimeoutError, match=r"after 0\.1 s"):
            await binding("127.0.0.1", port, transport=Transport.TCP, policy=policy)
    finally:
        server.close()
        await server.wait_closed()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_binding_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server, port = await stream_responder(Responder(), server_context)
    try:
        # trusted through --cafile
        result = await binding(
            "127.0.0.1",
            port,
            transport=Transport.TLS,
            timeout=5,
            ssl_context=tls_context(cafile=str(cert)),
        )
        assert result.transport is Transport.TLS
        assert result.mapped == result.local

        # the default context does not trust a self-signed certificate
        with pytest.raises(ConnectionFailedError, match="not trusted"):
            await binding("127.0.0.1", port, transport=Transport.TLS, timeout=5)

        # --insecure skips verification
        result = await binding(
            "127.0.0.1",
            port,
            transport=Transport.TLS,
            timeout=5,
            ssl_context=tls_context(insecure=True),
        )
        assert result.mapped == result.local
    finally:
        server.close()
        await server.wait_closed()


# --- HOST[:PORT] parsing -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun.example.org", ServerSpec("stun.example.org", 3478)),
        ("stun.example.org:19302", ServerSpec("stun.example.org", 19302)),
        ("127.0.0.1:3479", ServerSpec("127.0.0.1", 3479)),
        ("[::1]:3478", ServerSpec("::1", 3478)),
        ("[::1]", ServerSpec("::1", 3478)),
        ("::1", ServerSpec("::1", 3478)),
        ("2001:db8::1", ServerSpec("2001:db8::1", 3478)),
    ],
)
def test_parse_server(text: str, expected: ServerSpec) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":3478",
        "host:",
        "host:0",
        "host:65536",
        "host:abc",
        "[::1",
        "[::1]x",
        "[nothost]:1",
        "1:2:3",
        "a b:1",
        "[::1]:",
    ],
)
def test_parse_server_rejects(text: str) -> None:
    with pytest.raises(AddressError):
        parse_server(text)


def test_parse_server_default_tls_port() -> None:
    assert parse_server("example.org", default_port=5349).port == 5349
    assert str(ServerSpec("::1", 5349)) == "[::1]:5349"
