"""STUN Binding over loopback UDP, TCP and TLS, IPv4 and IPv6 (RFC 8489 §6.2).

The server runs on its own event loop in a thread (asyncio and uvloop); the
tests are plain blocking socket clients with timeouts.
"""

import asyncio
import os
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from natkit.net.address import ListenAddress, Transport
from natkit.net.listeners import ListenError, ServiceStats, StreamLimits, StunService
from natkit.security.certs import ensure_self_signed, server_context
from natkit.stun.attributes import (
    ErrorCodeAttr,
    MappedAddress,
    Software,
    UnknownAttribute,
    XorMappedAddress,
)
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.stun.server import BindingResponder

T = TypeVar("T")
TIMEOUT = 5.0


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _have_ipv6(), reason="no IPv6 loopback")


class ServerThread:
    """A StunService on its own loop in a background thread."""

    def __init__(
        self,
        loop_factory: Callable[[], asyncio.AbstractEventLoop],
        addresses: list[ListenAddress],
        *,
        software: str | None = None,
        limits: StreamLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        responder: BindingResponder | None = None,
    ) -> None:
        self.loop = loop_factory()
        responder = responder or BindingResponder(software)
        self.service = StunService(responder, limits=limits)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.bound = self.call(self.service.start(addresses, ssl_context=ssl_context))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def stats(self) -> ServiceStats:
        async def read() -> ServiceStats:
            return self.service.stats()

        return self.call(read())

    def address(self, transport: Transport, ipv6: bool = False) -> tuple[str, int]:
        for bound in self.bound:
            if bound.transport is transport and bound.is_ipv6 == ipv6:
                return bound.host, bound.port
        raise LookupError(transport)

    def close(self) -> None:
        self.call(self.service.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture(params=_loop_factories())
def loop_factory(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return server_context(ensure_self_signed(tmp_path_factory.mktemp("tls")))


LOCAL = [
    ListenAddress(Transport.UDP, "127.0.0.1", 0),
    ListenAddress(Transport.TCP, "127.0.0.1", 0),
]


@pytest.fixture
def server(loop_factory: Any, tls_context: ssl.SSLContext) -> Iterator[ServerThread]:
    addresses = [*LOCAL, ListenAddress(Transport.TLS, "127.0.0.1", 0)]
    srv = ServerThread(loop_factory, addresses, ssl_context=tls_context)
    yield srv
    srv.close()


def make_server(loop_factory: Any, **kwargs: Any) -> ServerThread:
    return ServerThread(loop_factory, list(LOCAL), **kwargs)


# --- clients -------------------------------------------------------------------


def binding_request(
    *, fingerprint: bool = False, attributes: tuple[Any, ...] = ()
) -> tuple[Message, bytes]:
    msg = Message(
        Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attributes
    )
    return msg, encode(msg, fingerprint=fingerprint)


def udp_exchange(addr: tuple[str, int], data: bytes) -> tuple[bytes, tuple[Any, ...]]:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((addr[0], 0))
        sock.sendto(data, addr)
        reply = sock.recv(65535)
        return reply, sock.getsockname()


def connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_message(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 20:
        chunk = sock.recv(20 - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    size = 20 + struct.unpack_from("!H", data, 2)[0]
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def wait_closed(sock: socket.socket, within: float = TIMEOUT) -> float:
    """Seconds until the peer closes ``sock``; fails if it does not."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def tls_client(*, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        with warnings.catch_warnings():
            # TLS 1.0/1.1 are deprecated: that is what the refusal test is about
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def assert_mapped(reply: bytes, request: Message, local: tuple[Any, ...]) -> None:
    response = decode(reply)
    assert response.cls is MessageClass.SUCCESS
    assert response.transaction_id == request.transaction_id
    assert response.get(XorMappedAddress) == XorMappedAddress(local[0], local[1])


# --- UDP ------------------------------------------------------------------------


def test_udp_binding(server: ServerThread) -> None:
    request, data = binding_request()
    reply, local = udp_exchange(server.address(Transport.UDP), data)
    assert_mapped(reply, request, local)
    assert server.stats().fast_answered == 1


def test_udp_binding_with_fingerprint_and_software(loop_factory: Any) -> None:
    srv = make_server(loop_factory, software="natkit-test")
    try:
        request, data = binding_request(fingerprint=True)
        reply, local = udp_exchange(srv.address(Transport.UDP), data)
        assert_mapped(reply, request, local)
        response = decode(reply)
        assert response.has_fingerprint
        assert response.get(Software) == Software("natkit-test")
    finally:
        srv.close()


def test_udp_rfc3489_request_gets_mapped_address(server: ServerThread) -> None:
    tid16 = os.urandom(16)
    reply, local = udp_exchange(
        server.address(Transport.UDP), struct.pack("!HH", 1, 0) + tid16
    )
    assert reply[4:20] == tid16
    response = decode(reply)
    assert response.get(MappedAddress) == MappedAddress(local[0], local[1])
    assert response.get(XorMappedAddress) is None


def test_udp_unknown_attribute_gets_420(server: ServerThread) -> None:
    _, data = binding_request(attributes=(UnknownAttribute(0x7ABC, b"zz"),))
    reply, _ = udp_exchange(server.address(Transport.UDP), data)
    error = decode(reply).get(ErrorCodeAttr)
    assert error is not None and error.code == 420


def test_malformed_datagrams_are_counted_and_server_still_answers(
    server: ServerThread,
) -> None:
    addr = server.address(Transport.UDP)
    _, good = binding_request(fingerprint=True)
    bad_fp = good[:-1] + bytes([good[-1] ^ 1])
    junk = [b"", b"\x00", b"\xff" * 40, good[:-4], bad_fp, os.urandom(300)]
    junk.append(b"\x00\x01\x00\x08" + good[4:20] + b"\x00\x20\x00\x40abcd")
    indication = b"\x00\x11" + binding_request()[1][2:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in [*junk, indication]:
            sock.sendto(data, addr)
    request, data = binding_request()
    reply, local = udp_exchange(addr, data)
    assert_mapped(reply, request, local)
    stats = server.stats()
    assert stats.responder.malformed == len(junk)
    assert stats.responder.ignored == 1
    assert stats.internal_errors == 0


@needs_ipv6
def test_udp_and_tcp_over_ipv6(loop_factory: Any) -> None:
    addresses = [
        ListenAddress(Transport.UDP, "::1", 0),
        ListenAddress(Transport.TCP, "::1", 0),
    ]
    srv = ServerThread(loop_factory, addresses)
    try:
        request, data = binding_request()
        reply, local = udp_exchange(srv.address(Transport.UDP, ipv6=True), data)
        assert_mapped(reply, request, local)

        with connect(srv.address(Transport.TCP, ipv6=True)) as sock:
            request, data = binding_request(fingerprint=True)
            sock.sendall(data)
            assert_mapped(recv_message(sock), request, sock.getsockname())
    finally:
        srv.close()


@needs_ipv6
def test_ipv6_wildcard_coexists_with_ipv4_wildcard_on_the_same_port(
    loop_factory: Any,
) -> None:
    """IPV6_V6ONLY on [::] so 0.0.0.0 can take the same port."""
    first = ServerThread(loop_factory, [ListenAddress(Transport.UDP, "0.0.0.0", 0)])
    try:
        port = first.bound[0].port
        second = ServerThread(
            loop_factory,
            [
                ListenAddress(Transport.UDP, "::", port),
                ListenAddress(Transport.TCP, "::", 0),
            ],
        )
        try:
            request, data = binding_request()
            reply, local = udp_exchange(("::1", port), data)
            assert_mapped(reply, request, local)
            assert second.stats().fast_answered == 1
            assert first.stats().fast_answered == 0
        finally:
            second.close()
    finally:
        first.close()


def test_address_in_use_is_a_listen_error(loop_factory: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        loop = loop_factory()
        try:
            service = StunService(BindingResponder())
            with pytest.raises(ListenError, match="cannot listen on udp:127.0.0.1"):
                loop.run_until_complete(
                    service.start([ListenAddress(Transport.UDP, "127.0.0.1", port)])
                )
        finally:
            loop.close()


def test_udp_listener_buffers_and_a_burst_of_requests(loop_factory: Any) -> None:
    # the listener socket asks for udp_buffer_bytes each way; a burst larger
    # than one read batch is answered whole (the reader adapts its batch)
    loop = loop_factory()
    service = StunService(BindingResponder(), udp_buffer_bytes=512 << 10)
    address = ListenAddress(Transport.UDP, "127.0.0.1", 0)
    try:
        (bound,) = loop.run_until_complete(service.start([address]))
        (transport,) = service._transports
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 512 << 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            client.setblocking(False)
            ids = [new_transaction_id() for _ in range(150)]
            for tid in ids:
                request = Message(Method.BINDING, MessageClass.REQUEST, tid)
                client.sendto(encode(request), ("127.0.0.1", bound.port))
            answered: set[bytes] = set()

            async def collect() -> None:
                while len(answered) < len(ids):
                    await asyncio.sleep(0.005)
                    try:
                        while True:
                            data = client.recv(2048)
                            answered.add(decode(data).transaction_id)
                    except BlockingIOError:
                        pass

            loop.run_until_complete(asyncio.wait_for(collect(), TIMEOUT))
        assert answered == set(ids)
    finally:
        loop.run_until_complete(service.close())
        loop.close()


# --- TCP ------------------------------------------------------------------------


def test_tcp_binding(server: ServerThread) -> None:
    with connect(server.address(Transport.TCP)) as sock:
        for _ in range(3):
            request, data = binding_request()
            sock.sendall(data)
            assert_mapped(recv_message(sock), request, sock.getsockname())


def test_tcp_two_messages_in_one_segment(server: ServerThread) -> None:
    first, a = binding_request()
    second, b = binding_request(fingerprint=True)
    with connect(server.address(Transport.TCP)) as sock:
        sock.sendall(a + b)
        assert_mapped(recv_message(sock), first, sock.getsockname())
        assert_mapped(recv_message(sock), second, sock.getsockname())


def test_tcp_one_message_over_several_segments(server: ServerThread) -> None:
    request, data = binding_request(
        fingerprint=True, attributes=(Software("split across segments"),)
    )
    with connect(server.address(Transport.TCP)) as sock:
        for i in range(0, len(data), 3):
            sock.sendall(data[i : i + 3])
            time.sleep(0.005)
        assert_mapped(recv_message(sock), request, sock.getsockname())


def test_tcp_desync_closes_the_connection(server: ServerThread) -> None:
    with connect(server.address(Transport.TCP)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: stun\r\n\r\n")
        wait_closed(sock)
    assert server.stats().stream_desync == 1


def test_tcp_malformed_but_framed_message_is_dropped_not_closed(
    server: ServerThread,
) -> None:
    _, good = binding_request(fingerprint=True)
    bad_fp = good[:-1] + bytes([good[-1] ^ 1])
    with connect(server.address(Transport.TCP)) as sock:
        request, data = binding_request()
        sock.sendall(bad_fp + data)
        assert_mapped(recv_message(sock), request, sock.getsockname())
    assert server.stats().responder.malformed == 1


def test_tcp_idle_and_stalled_clients_are_disconnected(loop_factory: Any) -> None:
    srv = make_server(loop_factory, limits=StreamLimits(idle_timeout=0.3))
    try:
        addr = srv.address(Transport.TCP)
        silent = connect(addr)
        stalled = connect(addr)
        stalled.sendall(binding_request()[1][:10])
        with silent, stalled:
            assert wait_closed(silent) < 3.0
            assert wait_closed(stalled) < 3.0
        assert srv.stats().idle_closed == 2
        assert srv.stats().active_connections == 0
    finally:
        srv.close()


def test_tcp_active_client_is_not_disconnected(loop_factory: Any) -> None:
    srv = make_server(loop_factory, limits=StreamLimits(idle_timeout=1.0))
    try:
        with connect(srv.address(Transport.TCP)) as sock:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                request, data = binding_request()
                sock.sendall(data)
                assert_mapped(recv_message(sock), request, sock.getsockname())
                time.sleep(0.1)
        assert srv.stats().idle_closed == 0
    finally:
        srv.close()


def test_tcp_connection_limit(loop_factory: Any) -> None:
    srv = make_server(loop_factory, limits=StreamLimits(max_connections=2))
    try:
        addr = srv.address(Transport.TCP)
        first, second = connect(addr), connect(addr)
        with first, second:
            for sock in (first, second):
                request, data = binding_request()
                sock.sendall(data)
                assert_mapped(recv_message(sock), request, sock.getsockname())
            with connect(addr) as third:
                wait_closed(third)
            assert srv.stats().rejected_connections == 1
            assert srv.stats().active_connections == 2
    finally:
        srv.close()


def test_tcp_message_over_the_size_bound_closes(loop_factory: Any) -> None:
    srv = make_server(loop_factory, limits=StreamLimits(max_message_size=1024))
    try:
        with connect(srv.address(Transport.TCP)) as sock:
            sock.sendall(b"\x00\x01\x08\x00" + bytes(16))  # announces 2068 bytes
            wait_closed(sock)
        assert srv.stats().stream_desync == 1
    finally:
        srv.close()


# --- TLS ------------------------------------------------------------------------


def test_tls_binding(server: ServerThread) -> None:
    raw = connect(server.address(Transport.TLS))
    with tls_client().wrap_socket(raw) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        request, data = binding_request(fingerprint=True)
        sock.sendall(data)
        assert_mapped(recv_message(sock), request, sock.getsockname())


def test_tls12_is_accepted(server: ServerThread) -> None:
    raw = connect(server.address(Transport.TLS))
    with tls_client(maximum=ssl.TLSVersion.TLSv1_2).wrap_socket(raw) as sock:
        assert sock.version() == "TLSv1.2"


def test_tls11_is_refused(server: ServerThread) -> None:
    raw = connect(server.address(Transport.TLS))
    with raw, pytest.raises((ssl.SSLError, ConnectionError)) as info:
        tls_client(maximum=ssl.TLSVersion.TLSv1_1).wrap_socket(raw)
    # refused by the server, not by our own client library
    assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)
    # the server is still fine afterwards
    request, data = binding_request()
    reply, local = udp_exchange(server.address(Transport.UDP), data)
    assert_mapped(reply, request, local)


def test_tls_silent_client_is_disconnected(
    loop_factory: Any, tls_context: ssl.SSLContext
) -> None:
    """No handshake at all: ssl_handshake_timeout is the idle timeout."""
    srv = ServerThread(
        loop_factory,
        [ListenAddress(Transport.TLS, "127.0.0.1", 0)],
        limits=StreamLimits(idle_timeout=0.3),
        ssl_context=tls_context,
    )
    try:
        with connect(srv.address(Transport.TLS)) as sock:
            assert wait_closed(sock) < 3.0
    finally:
        srv.close()


def test_tls_listener_needs_a_context(loop_factory: Any, tmp_path: Path) -> None:
    loop = loop_factory()
    try:
        service = StunService(BindingResponder())
        with pytest.raises(ListenError, match="no TLS context"):
            loop.run_until_complete(
                service.start([ListenAddress(Transport.TLS, "127.0.0.1", 0)])
            )
    finally:
        loop.close()


def test_close_drops_open_connections(loop_factory: Any) -> None:
    srv = make_server(loop_factory)
    sock = connect(srv.address(Transport.TCP))
    with sock:
        request, data = binding_request()
        sock.sendall(data)
        recv_message(sock)
        assert srv.stats().active_connections == 1
        srv.close()
        wait_closed(sock)


class _BrokenResponder(BindingResponder):
    """A responder with a bug: every full-path message raises."""

    def handle(self, data: bytes, source_ip: str, source_port: int) -> bytes | None:
        raise RuntimeError("bug")


def test_a_bug_in_the_responder_is_counted_not_fatal(
    loop_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_server(loop_factory, responder=_BrokenResponder())
    try:
        _, odd = binding_request(attributes=(UnknownAttribute(0x8F01, b"x"),))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(odd, srv.address(Transport.UDP))
            sock.sendto(odd, srv.address(Transport.UDP))
        with connect(srv.address(Transport.TCP)) as tcp:
            request, data = binding_request()
            tcp.sendall(odd + data)
            assert_mapped(recv_message(tcp), request, tcp.getsockname())
        request, data = binding_request()
        reply, local = udp_exchange(srv.address(Transport.UDP), data)
        assert_mapped(reply, request, local)
        assert srv.stats().internal_errors == 3
    finally:
        srv.close()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
