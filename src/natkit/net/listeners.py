"""STUN over UDP, TCP and TLS listeners (RFC 8489 §6.2), IPv4 and IPv6.

One :class:`StunService` owns every listening socket. Each received message
goes to the Binding fast path first and to the sans-IO
:class:`~natkit.stun.server.BindingResponder` when the fast path declines.
Nothing here logs per packet; what is dropped is counted in
:class:`ServiceStats`.

A UDP listener is a non-blocking socket read with ``loop.add_reader``
(:class:`_UdpSocketTransport`), not the event loop's datagram transport:
the read loop relays ChannelData itself and reads an adaptive batch per
readiness callback, and a datagram the kernel will not take (send buffer
full) is dropped and counted instead of queued in memory. The socket
buffers are ``udp_buffer_bytes`` large (:data:`UDP_BUFFER_BYTES` unless
configured), so a server that loses its CPU for a while (another program
on the same core) keeps what arrives meanwhile.

Streams (RFC 8489 §6.2.2) are cut by :class:`~natkit.net.framing.StreamFramer`.
A connection is closed when the stream is out of step, when it has not
completed a message for ``idle_timeout`` seconds (so a silent client, or one
that stalls mid-message, does not hold a slot), and refused outright when
``max_connections`` are already open.

With a :class:`~natkit.net.turn_driver.TurnDriver` the same listeners serve
TURN (RFC 8656): Binding still goes to the fast path and the responder;
ChannelData (first byte 0x40-0x7F, RFC 8656 §12 and RFC 5766 §11) goes to
the relay fast path (:func:`natkit.net.relay.forward_channel_data`) and,
when that declines, to the driver with every other STUN method. Streams are then cut by
:class:`~natkit.net.framing.TurnStreamFramer` (STUN and padded ChannelData,
RFC 8656 §12.5), and a connection that holds an allocation is not closed
for idleness: the allocation's lifetime governs it.

With :class:`~natkit.net.rfc5780.Rfc5780Sockets` (RFC 5780 NAT behaviour
discovery) the listeners on its four addresses give Binding requests to it
instead of the fast path and the responder; TURN goes to the driver first.
"""

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from natkit.net.address import ListenAddress, Transport
from natkit.net.fastpath import BindingFastPath
from natkit.net.framing import FramingError, StreamFramer, TurnStreamFramer
from natkit.net.relay import (
    MAX_DATAGRAM,
    READ_BATCH,
    ClientLink,
    PeerAddr,
    forward_channel_data,
    receive_buffer,
    set_buffers,
)
from natkit.net.rfc5780 import Rfc5780Sockets, StreamHandler, UdpHandler
from natkit.net.turn_driver import TurnDriver, TurnStats
from natkit.stun.errors import NatkitError
from natkit.stun.server import BindingResponder, ResponderStats
from natkit.stun.transaction import Transport as ClientTransport
from natkit.turn.allocation import ClientAddress

logger = logging.getLogger(__name__)

#: kernel receive and send buffer asked for on UDP listeners by default (the
#: kernel caps it at net.core.rmem_max / wmem_max and doubles what it grants)
UDP_BUFFER_BYTES = 4 << 20
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
    #: the TURN side, when the service relays
    turn: TurnStats | None = None
    #: relayed data dropped because a client's send buffer was full
    client_drops: int = 0

    @property
    def success(self) -> int:
        """All Binding success responses, fast path and full path."""
        return self.fast_answered + self.responder.success

    @property
    def malformed(self) -> int:
        """Messages dropped as malformed plus streams closed out of step."""
        return self.responder.malformed + self.stream_desync


class _Counters:
    __slots__ = (
        "stream_desync",
        "idle_closed",
        "rejected",
        "internal_errors",
        "client_drops",
    )

    def __init__(self) -> None:
        self.stream_desync = 0
        self.idle_closed = 0
        self.rejected = 0
        self.internal_errors = 0
        #: relayed data dropped because a client's send buffer was full
        self.client_drops = 0


class StunService:
    """Every listener of one server, sharing one responder.

    ``start`` opens the listeners; ``close`` closes them and every open
    connection, then, with ``turn``, every allocation and relay socket.
    """

    def __init__(
        self,
        responder: BindingResponder,
        *,
        limits: StreamLimits | None = None,
        turn: TurnDriver | None = None,
        rfc5780: Rfc5780Sockets | None = None,
        udp_buffer_bytes: int = UDP_BUFFER_BYTES,
    ) -> None:
        self.responder = responder
        #: SO_RCVBUF and SO_SNDBUF of UDP listeners (0: the kernel default)
        self.udp_buffer_bytes = udp_buffer_bytes
        self.turn = turn
        self.rfc5780 = rfc5780
        self.fast = BindingFastPath(responder.software)
        self.limits = limits or StreamLimits()
        self.counters = _Counters()
        self.connections: set[_StreamProtocol] = set()
        #: the TLS listeners' context; reloading its certificate (SIGHUP)
        #: changes what new connections see and leaves open ones alone
        self.ssl_context: ssl.SSLContext | None = None
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
            turn=self.turn.stats() if self.turn is not None else None,
            client_drops=c.client_drops,
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
        self.ssl_context = ssl_context
        if self.turn is not None:
            self.turn.start(asyncio.get_running_loop())
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
        sock = bind_socket(address, buffer_bytes=self.udp_buffer_bytes)
        host, port = sock.getsockname()[:2]
        try:
            if address.transport is Transport.UDP:
                protocol = _UdpProtocol(self)
                self._transports.append(_UdpSocketTransport(sock, protocol, self))
            else:
                server = await loop.create_server(
                    lambda: _StreamProtocol(self, tls=tls),
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
        if self.turn is not None:
            self.turn.close()

    def internal_error(self) -> None:
        """A bug in handling one message: log the first, count all."""
        self.counters.internal_errors += 1
        level = logging.ERROR if self.counters.internal_errors == 1 else logging.DEBUG
        logger.log(level, "internal error handling a message", exc_info=True)


def bind_socket(
    address: ListenAddress, *, buffer_bytes: int = UDP_BUFFER_BYTES
) -> socket.socket:
    """A bound, non-blocking socket for ``address``.

    IPv6 sockets get IPV6_V6ONLY, so ``[::]`` and ``0.0.0.0`` listeners on the
    same port can coexist. A UDP socket asks for ``buffer_bytes`` of kernel
    buffer each way (0: the kernel default). Raises :class:`ListenError`.
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
        elif buffer_bytes:
            set_buffers(sock, buffer_bytes)
            # Linux reports twice the size it was asked for (its bookkeeping)
            granted = receive_buffer(sock) // 2
            if granted < buffer_bytes:
                logger.info(
                    "%s: UDP receive buffer %d KiB of the %d KiB asked for "
                    "(raise net.core.rmem_max for more)",
                    address,
                    granted // 1024,
                    buffer_bytes // 1024,
                )
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(info[0][4])
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {address}: {_reason(exc)}") from None
    return sock


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _UdpProtocol(asyncio.DatagramProtocol):
    """RFC 8489 §6.2.1: one request per datagram, the response to its source.

    With TURN, ChannelData from a client with an allocation is relayed by
    the fast path; other TURN messages go to the driver (RFC 8656 §5).
    """

    def __init__(self, service: StunService) -> None:
        self._service = service
        self._fast = service.fast.respond
        self._full = service.responder.handle
        self._turn = service.turn
        self._transport: asyncio.DatagramTransport | None = None
        #: clients with an allocation, by address as the loop reports it
        self.links: dict[PeerAddr, ClientLink] = {}
        self._server_ip = ""
        self._server_port = 0
        self._time = _no_time
        #: the kernel buffer is full and the transport queues: drop relayed data
        self.paused = False
        #: RFC 5780: Binding handler when this is one of the four addresses
        self._rfc5780: UdpHandler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # neither asyncio's nor uvloop's UDP transport subclasses DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname") or ("", 0)
        self._server_ip = _plain_ip(sockname[0])
        self._server_port = sockname[1]
        self._time = asyncio.get_running_loop().time
        if self._service.rfc5780 is not None:
            self._rfc5780 = self._service.rfc5780.udp_handler(transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            turn = self._turn
            if turn is not None and data and 0x40 <= data[0] <= 0x7F:
                # RFC 8656 §12.4: ChannelData, the relay fast path first
                link = self.links.get(addr)
                if link is None or not forward_channel_data(link, data, self._time()):
                    turn.client_message(link or self._new_link(addr), data)
                return
            rfc5780 = self._rfc5780
            if rfc5780 is not None and (turn is None or not is_turn_message(data)):
                # RFC 5780 §6.1: the reply may leave from another address
                rfc5780(data, addr)
                return
            response = self._fast(data, addr)
            if response is None:
                if turn is not None and is_turn_message(data):
                    turn.client_message(
                        self.links.get(addr) or self._new_link(addr), data
                    )
                    return
                response = self._full(data, _plain_ip(addr[0]), addr[1])
                if response is None:
                    return
            if self._transport is not None:
                self._transport.sendto(response, addr)
        except Exception:
            self._service.internal_error()

    def _new_link(self, addr: tuple[Any, ...]) -> ClientLink:
        """A link for a client without an allocation (kept once it has one)."""
        client = ClientAddress(
            ClientTransport.UDP,
            _plain_ip(addr[0]),
            addr[1],
            self._server_ip,
            self._server_port,
        )
        transport = self._transport
        counters = self._service.counters
        sendto = getattr(transport, "socket_sendto", None)
        if sendto is not None:
            raw: _SendTo = sendto

            def send(frame: bytes) -> None:
                try:
                    raw(frame, addr)
                except OSError:
                    # the send buffer is full (or the client unreachable): UDP
                    counters.client_drops += 1

            return ClientLink(client, send, registry=self.links, key=addr)

        def queue(frame: bytes) -> None:
            if transport is None or self.paused:
                counters.client_drops += 1
                return
            transport.sendto(frame, addr)

        return ClientLink(client, queue, registry=self.links, key=addr)

    def pause_writing(self) -> None:
        # the transport queues in memory what the kernel did not take
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier responses (port unreachable, ...): nothing to do
        pass


_SendTo = Callable[[bytes, tuple[Any, ...]], int]


class _UdpSocketTransport(asyncio.DatagramTransport):
    """A UDP listener socket read with ``loop.add_reader``, for a :class:`_UdpProtocol`.

    It stands in for the event loop's datagram transport (see the module
    doc). ChannelData (RFC 8656 §12.4) from a client whose channel the fast
    path knows is relayed inside the read loop; every other datagram goes
    to ``protocol.datagram_received``. ``sendto`` sends at once; what the
    kernel does not take is dropped and counted (``client_drops``).
    """

    def __init__(
        self, sock: socket.socket, protocol: _UdpProtocol, service: StunService
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._sock = sock
        self._protocol = protocol
        self._service = service
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._closing = False
        #: datagrams to read on the next readiness callback (1..READ_BATCH)
        self._batch = 1
        #: the socket's own sendto, for the relay fast path's ClientLinks
        self.socket_sendto: _SendTo = sock.sendto
        protocol.connection_made(self)
        self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        """Read an adaptive batch: as many as were queued last time, at most
        :data:`~natkit.net.relay.READ_BATCH`; twice as many after a full one."""
        recvfrom = self._sock.recvfrom
        protocol = self._protocol
        links = protocol.links
        turn = self._service.turn
        now = self._loop.time()
        batch = self._batch
        for count in range(batch):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                self._batch = count or 1
                return
            except OSError:
                continue  # an ICMP error for an earlier datagram: next one
            if turn is not None and data and 0x40 <= data[0] <= 0x7F:
                # RFC 8656 §12.4: ChannelData on a known channel, relayed here
                link = links.get(addr)
                if link is not None:
                    try:
                        if not forward_channel_data(link, data, now):
                            turn.client_message(link, data)
                    except Exception:
                        self._service.internal_error()
                    continue
            protocol.datagram_received(data, addr)
            if self._closing:
                return
        if batch < READ_BATCH:
            self._batch = batch * 2

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError:
            # UDP: a full send buffer or an unreachable client loses it
            self._service.counters.client_drops += 1

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._loop.remove_reader(self._fd)
        except (ValueError, RuntimeError):
            pass  # the loop is already closed
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0


class _StreamProtocol(asyncio.Protocol):
    """RFC 8489 §6.2.2 and §6.2.3: STUN over one TCP or TLS connection."""

    def __init__(self, service: StunService, *, tls: bool = False) -> None:
        self._service = service
        self._tls = tls
        self._fast = service.fast.respond
        self._full = service.responder.handle
        self._turn = service.turn
        size = service.limits.max_message_size
        self._framer: StreamFramer | TurnStreamFramer = (
            StreamFramer(size) if self._turn is None else TurnStreamFramer(size)
        )
        self._timeout = service.limits.idle_timeout
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[Any, ...] = ("", 0)
        self._ip = ""
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._link: ClientLink | None = None
        self._paused = False
        self._rfc5780: StreamHandler | None = None

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
        if self._turn is not None:
            self._link = self._new_link(stream)
        if service.rfc5780 is not None:
            self._rfc5780 = service.rfc5780.stream_handler(stream)
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_at(self._last + self._timeout, self._check_idle)

    def _new_link(self, stream: asyncio.Transport) -> ClientLink:
        sockname = stream.get_extra_info("sockname") or ("", 0)
        client = ClientAddress(
            ClientTransport.TLS if self._tls else ClientTransport.TCP,
            self._ip,
            self._peer[1],
            _plain_ip(sockname[0]),
            sockname[1],
        )
        return ClientLink(client, self.send_frame)

    def send_frame(self, frame: bytes) -> None:
        """Write one frame to the client; dropped while it does not read."""
        transport = self._transport
        if transport is None or self._paused:
            self._service.counters.client_drops += 1
            return
        transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._service.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        link = self._link
        if link is not None and self._turn is not None:
            self._link = None
            self._turn.client_closed(link)

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
        now = self._last = asyncio.get_running_loop().time()
        turn = self._turn
        link = self._link
        for message in messages:
            try:
                if turn is not None and link is not None:
                    if 0x40 <= message[0] <= 0x7F:
                        # RFC 8656 §12.4: ChannelData, the relay fast path first
                        if not forward_channel_data(link, message, now):
                            turn.client_message(link, message)
                        continue
                    if is_turn_message(message):
                        turn.client_message(link, message)
                        continue
                if self._rfc5780 is not None:
                    response = self._rfc5780(message, self._peer)
                else:
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
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
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
        link = self._link
        if link is not None and link.alloc is not None:
            # RFC 8656 §3.1: the allocation's lifetime governs this connection
            deadline = loop.time() + self._timeout
        # call_at may run a little early: allow for the clock's resolution
        elif loop.time() >= deadline - 0.01:
            self._service.counters.idle_closed += 1
            self._transport.abort()
            return
        self._timer = loop.call_at(deadline, self._check_idle)


def _plain_ip(host: str) -> str:
    """The IP without an IPv6 zone (``fe80::1%eth0`` -> ``fe80::1``)."""
    return host.partition("%")[0]


def _no_time() -> float:
    return 0.0


def is_turn_message(data: bytes) -> bool:
    """A STUN message whose method is not Binding (RFC 8489 §5 type bits).

    Those are the TURN server's (RFC 8656 §5); Binding stays with the STUN
    responder and its fast path.
    """
    if len(data) < 20 or data[0] & 0xC0:
        return False
    kind = data[0] << 8 | data[1]
    method = (kind & 0x000F) | (kind & 0x00E0) >> 1 | (kind & 0x3E00) >> 2
    return method != 0x001
