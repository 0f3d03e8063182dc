"""STUN over UDP, TCP and TLS listeners (RFC 8489 §6.2), IPv4 and IPv6.

One :class:`StunService` owns every listening socket. Each received message
goes to the Binding fast path first and to the sans-IO
:class:`~natkit.stun.server.BindingResponder` when the fast path declines.
Nothing here logs per packet; what is dropped is counted in
:class:`ServiceStats`.

Streams (RFC 8489 §6.2.2) are cut by :class:`~natkit.net.framing.StreamFramer`.
A connection is closed when the stream is out of step, when it has not
completed a message for ``idle_timeout`` seconds (so a silent client, or one
that stalls mid-message, does not hold a slot), and refused outright when
``max_connections`` are already open.
"""

import asyncio
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from natkit.net.address import ListenAddress, Transport
from natkit.net.fastpath import BindingFastPath
from natkit.net.framing import FramingError, StreamFramer
from natkit.stun.errors import NatkitError
from natkit.stun.server import BindingResponder, ResponderStats

logger = logging.getLogger(__name__)

#: kernel socket buffer asked for on UDP sockets (the kernel may cap it)
UDP_BUFFER_BYTES = 1 << 20
#: listen(2) backlog of stream listeners
STREAM_BACKLOG = 512


class ListenError(NatkitError):
    """A listener could not be opened (address in use, not available, ...)."""


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds for TCP and TLS connections."""

    idle_timeout: float = 30.0
    max_connections: int = 1024
    max_message_size: int = 20 + 0xFFFC


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """Counters of a :class:`StunService` at one moment."""

    #: what the full responder answered, refused and dropped
    responder: ResponderStats
    #: Binding success responses built by the fast path
    fast_answered: int
    #: stream connections closed because the framing was out of step
    stream_desync: int
    #: stream connections closed for idleness
    idle_closed: int
    #: stream connections refused because max_connections were open
    rejected_connections: int
    #: stream connections open now
    active_connections: int
    #: messages that hit a bug in natkit (logged once, then counted)
    internal_errors: int

    @property
    def success(self) -> int:
        """All Binding success responses, fast path and full path."""
        return self.fast_answered + self.responder.success

    @property
    def malformed(self) -> int:
        """Messages dropped as malformed plus streams closed out of step."""
        return self.responder.malformed + self.stream_desync


class _Counters:
    __slots__ = ("stream_desync", "idle_closed", "rejected", "internal_errors")

    def __init__(self) -> None:
        self.stream_desync = 0
        self.idle_closed = 0
        self.rejected = 0
        self.internal_errors = 0


class StunService:
    """Every listener of one server, sharing one responder.

    ``start`` opens the listeners; ``close`` closes them and every open
    connection.
    """

    def __init__(
        self,
        responder: BindingResponder,
        *,
        limits: StreamLimits | None = None,
    ) -> None:
        self.responder = responder
        self.fast = BindingFastPath(responder.software)
        self.limits = limits or StreamLimits()
        self.counters = _Counters()
        self.connections: set[_StreamProtocol] = set()
        #: the open listeners, with their bound ports (after ``start``)
        self.bound: tuple[ListenAddress, ...] = ()
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []

    def stats(self) -> ServiceStats:
        c = self.counters
        return ServiceStats(
            responder=self.responder.stats(),
            fast_answered=self.fast.answered,
            stream_desync=c.stream_desync,
            idle_closed=c.idle_closed,
            rejected_connections=c.rejected,
            active_connections=len(self.connections),
            internal_errors=c.internal_errors,
        )

    async def start(
        self,
        addresses: Sequence[ListenAddress],
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> tuple[ListenAddress, ...]:
        """Open a listener for each address; return them with the bound ports.

        Raises :class:`ListenError` (after closing what was opened) if any
        cannot be opened.
        """
        bound: list[ListenAddress] = []
        try:
            for address in addresses:
                bound.append(await self._open(address, ssl_context))
        except BaseException:
            await self.close()
            raise
        self.bound += tuple(bound)
        return tuple(bound)

    async def _open(
        self, address: ListenAddress, ssl_context: ssl.SSLContext | None
    ) -> ListenAddress:
        loop = asyncio.get_running_loop()
        tls = address.transport is Transport.TLS
        if tls and ssl_context is None:
            raise ListenError(f"cannot listen on {address}: no TLS context")
        sock = bind_socket(address)
        host, port = sock.getsockname()[:2]
        try:
            if address.transport is Transport.UDP:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), sock=sock
                )
                self._transports.append(transport)
            else:
                server = await loop.create_server(
                    lambda: _StreamProtocol(self),
                    sock=sock,
                    ssl=ssl_context if tls else None,
                    ssl_handshake_timeout=self.limits.idle_timeout if tls else None,
                    backlog=STREAM_BACKLOG,
                )
                self._servers.append(server)
        except OSError as exc:
            sock.close()
            raise ListenError(f"cannot listen on {address}: {_reason(exc)}") from None
        return ListenAddress(address.transport, host, port)

    async def close(self) -> None:
        """Stop listening, drop open connections and wait until done."""
        for server in self._servers:
            server.close()
        for protocol in list(self.connections):
            protocol.abort()
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._transports.clear()
        self.bound = ()
        # let the transports run their connection_lost callbacks
        await asyncio.sleep(0)

    def internal_error(self) -> None:
        """A bug in handling one message: log the first, count all."""
        self.counters.internal_errors += 1
        level = logging.ERROR if self.counters.internal_errors == 1 else logging.DEBUG
        logger.log(level, "internal error handling a message", exc_info=True)


def bind_socket(address: ListenAddress) -> socket.socket:
    """A bound, non-blocking socket for ``address``.

    IPv6 sockets get IPV6_V6ONLY, so ``[::]`` and ``0.0.0.0`` listeners on the
    same port can coexist. Raises :class:`ListenError`.
    """
    stream = address.transport.is_stream
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
    try:
        info = socket.getaddrinfo(
            address.host,
            address.port,
            family,
            kind,
            0,
            socket.AI_NUMERICHOST | socket.AI_PASSIVE,
        )
        sock = socket.socket(family, kind)
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {_reason(exc)}") from None
    try:
        if stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            _grow_buffers(sock)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(info[0][4])
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {address}: {_reason(exc)}") from None
    return sock


def _grow_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
        except OSError:
            pass  # the kernel default is still usable


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _UdpProtocol(asyncio.DatagramProtocol):
    """RFC 8489 §6.2.1: one request per datagram, the response to its source."""

    def __init__(self, service: StunService) -> None:
        self._service = service
        self._fast = service.fast.respond
        self._full = service.responder.handle
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # neither asyncio's nor uvloop's UDP transport subclasses DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            response = self._fast(data, addr)
            if response is None:
                response = self._full(data, _plain_ip(addr[0]), addr[1])
                if response is None:
                    return
            if self._transport is not None:
                self._transport.sendto(response, addr)
        except Exception:
            self._service.internal_error()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier responses (port unreachable, ...): nothing to do
        pass


class _StreamProtocol(asyncio.Protocol):
    """RFC 8489 §6.2.2 and §6.2.3: STUN over one TCP or TLS connection."""

    def __init__(self, service: StunService) -> None:
        self._service = service
        self._fast = service.fast.respond
        self._full = service.responder.handle
        self._framer = StreamFramer(service.limits.max_message_size)
        self._timeout = service.limits.idle_timeout
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[Any, ...] = ("", 0)
        self._ip = ""
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        service = self._service
        if len(service.connections) >= service.limits.max_connections:
            service.counters.rejected += 1
            stream.abort()
            return
        self._transport = stream
        service.connections.add(self)
        self._peer = tuple(stream.get_extra_info("peername") or ("", 0))
        self._ip = _plain_ip(self._peer[0])
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_at(self._last + self._timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._service.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            messages = self._framer.feed(data)
        except FramingError:
            # RFC 8489 §6.2.2: no way to find the next message: close
            self._service.counters.stream_desync += 1
            transport.close()
            self._transport = None
            return
        if not messages:
            return
        self._last = asyncio.get_running_loop().time()
        for message in messages:
            try:
                response = self._fast(message, self._peer)
                if response is None:
                    response = self._full(message, self._ip, self._peer[1])
            except Exception:
                self._service.internal_error()
                continue
            if response is not None:
                transport.write(response)

    def pause_writing(self) -> None:
        # the client does not read its responses: stop reading its requests
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _check_idle(self) -> None:
        """Close the connection if no message completed for ``idle_timeout``."""
        self._timer = None
        if self._transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._last + self._timeout
        # call_at may run a little early: allow for the clock's resolution
        if loop.time() >= deadline - 0.01:
            self._service.counters.idle_closed += 1
            self._transport.abort()
            return
        self._timer = loop.call_at(deadline, self._check_idle)


def _plain_ip(host: str) -> str:
    """The IP without an IPv6 zone (``fe80::1%eth0`` -> ``fe80::1``)."""
    return host.partition("%")[0]
