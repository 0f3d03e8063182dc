"""asyncio driver of the TURN client core over UDP, TCP or TLS (RFC 8656).

:class:`TurnClient` owns one socket to the server and moves the bytes of a
sans-IO :class:`natkit.turn.client.TurnClientCore`: what the core wants sent
is written, what arrives is handed to it (over TCP/TLS cut into frames with
:func:`natkit.turn.channeldata.next_frame`, RFC 8656 §12.5), and one timer is
armed at the core's :meth:`~TurnClientCore.next_deadline`. The allocation is
refreshed, and its permissions and channels kept alive, by the core's timers
for as long as the client is open.

    async with TurnClient("turn.example.org", username="u", password="p") as c:
        info = await c.allocate()
        await c.create_permission("198.51.100.7")
        await c.bind_channel(Address("198.51.100.7", 5000))
        c.send(Address("198.51.100.7", 5000), b"hello")
        got = await c.recv()          # DataReceived(peer, data, channel)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from natkit.net.stun_client import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    ConnectionFailedError,
    ErrorResponseError,
    ServerSpec,
    StunClientError,
    StunTimeoutError,
    TransportAddress,
    resolve,
    tls_context,
)
from natkit.stun.constants import ErrorCode, Method
from natkit.stun.errors import DecodeError
from natkit.stun.transaction import RetransmitPolicy, Transport
from natkit.turn.channeldata import next_frame
from natkit.turn.client import (
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
)

logger = logging.getLogger(__name__)

#: how long to wait for a TCP/TLS connection to the server
CONNECT_TIMEOUT = 10.0
#: how long close() waits for the answer to Refresh(0)
CLOSE_TIMEOUT = 5.0
#: how long close() waits for a TCP/TLS connection to finish closing (the
#: TLS close_notify exchange) before it aborts the connection
STREAM_CLOSE_TIMEOUT = 2.0
#: data received and not yet taken with recv() beyond this is dropped
DEFAULT_QUEUE = 4096
#: the largest stream buffer accepted before the framing is declared broken
_MAX_STREAM_BUFFER = 1 << 20

_METHOD_NAMES = {
    Method.ALLOCATE: "Allocate",
    Method.REFRESH: "Refresh",
    Method.CREATE_PERMISSION: "CreatePermission",
    Method.CHANNEL_BIND: "ChannelBind",
}


class TurnClientError(StunClientError):
    """A TURN client operation failed; the message is one line for a user."""


class TurnRequestError(ErrorResponseError):
    """The server answered a TURN request with an error (RFC 8656 §7.3 etc.)."""

    def __init__(
        self, message: str, *, method: Method, code: int | None, reason: str
    ) -> None:
        super().__init__(message, code=code, reason=reason)
        self.method = method


class AuthenticationError(TurnRequestError):
    """401 to credentials: wrong user, password or realm (RFC 8489 §9.2.5)."""


class TurnClosedError(TurnClientError):
    """The allocation is gone (deleted, expired, lost, or never made)."""


@dataclass(frozen=True, slots=True)
class AllocationInfo:
    """A granted allocation: RFC 8656 §7.3 XOR-RELAYED-ADDRESS, XOR-MAPPED-
    ADDRESS and LIFETIME, and the sockets' ends."""

    relayed: Address
    mapped: Address | None
    lifetime: int
    server: TransportAddress
    local: TransportAddress
    transport: Transport


# --- the socket under the core ------------------------------------------------


class _Link:
    """One connected socket to the server: write bytes, report what arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def local(self) -> TransportAddress:
        if self.transport is None:
            return TransportAddress("", 0)
        return TransportAddress.from_sockaddr(self.transport.get_extra_info("sockname"))


class _UdpLink(_Link, asyncio.DatagramProtocol):
    def __init__(
        self, on_data: Callable[[bytes], None], on_error: Callable[[Exception], None]
    ) -> None:
        super().__init__()
        self._on_data = on_data
        self._on_error = on_error
        self._udp: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # the selector loop's UDP transport does not subclass DatagramTransport
        self._udp = cast(asyncio.DatagramTransport, transport)

    def write(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._on_data(data)

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._on_error(exc)


class _StreamLink(_Link, asyncio.Protocol):
    """RFC 8656 §12.5: STUN and ChannelData frames back to back on a stream."""

    def __init__(
        self, on_data: Callable[[bytes], None], on_error: Callable[[Exception], None]
    ) -> None:
        super().__init__()
        self._on_data = on_data
        self._on_error = on_error
        self._buffer = bytearray()
        self._stream: asyncio.Transport | None = None
        self.closing = False
        #: set once the connection is gone (its socket closed)
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._stream = cast(asyncio.Transport, transport)

    async def wait_closed(self, timeout: float) -> None:
        """Wait until the closed connection's socket is gone; abort after
        ``timeout``.

        Over TLS, close() sends close_notify and keeps the socket open until
        the server answers; a caller that returns (or ends its event loop)
        before then would leave the socket open.
        """
        stream = self._stream
        if stream is None:
            return
        try:
            await asyncio.wait_for(self.lost.wait(), timeout)
        except TimeoutError:
            stream.abort()
            # abort() closes the socket on the loop's next iteration
            await asyncio.sleep(0)

    def write(self, data: bytes) -> None:
        if self._stream is not None and not self._stream.is_closing():
            self._stream.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        try:
            while (frame := next_frame(buffer, offset)) is not None:
                if len(buffer) - offset < frame.size:
                    break
                self._on_data(bytes(buffer[offset : offset + frame.size]))
                offset += frame.size
        except DecodeError as exc:
            self._on_error(ConnectionError(f"stream out of step: {exc}"))
            self.close()
            return
        del buffer[:offset]
        if len(buffer) > _MAX_STREAM_BUFFER:
            self._on_error(ConnectionError("oversized frame on the stream"))
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        if not self.closing:
            self._on_error(exc or ConnectionResetError("server closed the connection"))


# --- the client ---------------------------------------------------------------


class TurnClient:
    """A TURN client for one allocation over UDP, TCP or TLS (RFC 8656).

    TLS verifies the server's certificate against the system CAs by default;
    ``cafile`` trusts the CAs in a PEM file instead, ``insecure`` skips the
    check, and ``ssl_context`` replaces all of that. ``timeout`` caps every
    request (by default the RFC 8489 timers give up after 39.5 s).

    Fast path for load generators: with ``on_channel_data``, every
    ChannelData frame from the server is handed to that callable as it
    arrived (header included, RFC 8656 §12.4) instead of to :meth:`recv`, and
    :meth:`send_frame` writes bytes the caller encoded itself.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        username: str,
        password: str,
        transport: Transport = Transport.UDP,
        realm: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        insecure: bool = False,
        cafile: str | None = None,
        software: str | None = None,
        lifetime: int | None = None,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        policy: RetransmitPolicy | None = None,
        timeout: float | None = None,
        queue_size: int = DEFAULT_QUEUE,
        on_channel_data: Callable[[bytes], None] | None = None,
    ) -> None:
        transport = Transport(transport)
        if port is None:
            port = DEFAULT_TLS_PORT if transport is Transport.TLS else DEFAULT_PORT
        self.spec = ServerSpec(host, port)
        self.transport = transport
        self.core = TurnClientCore(
            username=username,
            password=password,
            transport=transport,
            realm=realm,
            software=software,
            lifetime=lifetime,
            policy=policy,
        )
        self.username = username
        self.family = family
        self.timeout = timeout
        self.server: TransportAddress | None = None
        self.local: TransportAddress | None = None
        self.info: AllocationInfo | None = None
        #: data that arrived while the receive queue was full
        self.dropped = 0
        self._ssl = ssl_context
        if transport is Transport.TLS and ssl_context is None:
            self._ssl = tls_context(insecure=insecure, cafile=cafile)
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: dict[int, asyncio.Future[TurnClientEvent]] = {}
        self._queue_size = queue_size
        self._inbox: deque[DataReceived] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[str] | None = None
        self._failure: StunClientError | None = None
        self._on_channel_data = on_channel_data

    async def __aenter__(self) -> TurnClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- connecting ----------------------------------------------------------

    async def connect(self) -> None:
        """Resolve the server and open the socket (done by allocate() too)."""
        if self._link is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed = loop.create_future()
        server = await resolve(self.spec, transport=self.transport, family=self.family)
        self.server = server
        if self.transport is Transport.UDP:
            self._link = await self._open_udp(server)
        else:
            self._link = await self._open_stream(server)
        self.local = self._link.local()

    async def _open_udp(self, server: TransportAddress) -> _Link:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in server.ip else socket.AF_INET
        try:
            _, link = await loop.create_datagram_endpoint(
                lambda: _UdpLink(self._on_data, self._on_error),
                remote_addr=(server.ip, server.port),
                family=family,
            )
        except OSError as exc:
            raise ConnectionFailedError(
                f"cannot send to {server}: {exc.strerror or exc}"
            ) from None
        return link

    async def _open_stream(self, server: TransportAddress) -> _Link:
        loop = asyncio.get_running_loop()
        hostname = self.spec.host if self._ssl is not None else None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, link = await loop.create_connection(
                    lambda: _StreamLink(self._on_data, self._on_error),
                    server.ip,
                    server.port,
                    ssl=self._ssl,
                    server_hostname=hostname,
                )
        except TimeoutError:
            raise StunTimeoutError(
                f"no connection to {server} after {CONNECT_TIMEOUT:g} s"
            ) from None
        except ConnectionRefusedError:
            raise ConnectionFailedError(f"connection refused by {server}") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionFailedError(
                f"TLS certificate of {server} not trusted: {exc.verify_message}"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionFailedError(f"cannot connect to {server}: {exc}") from None
        return link

    # --- requests ------------------------------------------------------------

    async def allocate(self) -> AllocationInfo:
        """RFC 8656 §7: create the allocation (answering the 401 challenge)."""
        await self.connect()
        op = self.core.allocate(self._now())
        event = await self._wait(op)
        if not isinstance(event, Allocated):
            raise TurnClientError(f"unexpected answer to Allocate: {event}")
        self.info = AllocationInfo(
            relayed=event.relayed,
            mapped=event.mapped,
            lifetime=event.lifetime,
            server=self._server(),
            local=self.local or TransportAddress("", 0),
            transport=self.transport,
        )
        return self.info

    async def refresh(self, lifetime: int | None = None) -> int:
        """RFC 8656 §8: refresh now; returns the lifetime granted."""
        self._check_open()
        event = await self._wait(self.core.refresh(self._now(), lifetime))
        if not isinstance(event, Refreshed):
            raise TurnClientError(f"unexpected answer to Refresh: {event}")
        return event.lifetime

    async def create_permission(self, *ips: str) -> None:
        """RFC 8656 §9: let ``ips`` send to the relayed address (kept alive)."""
        self._check_open()
        event = await self._wait(self.core.create_permission(ips, self._now()))
        if not isinstance(event, PermissionCreated):
            raise TurnClientError(f"unexpected answer to CreatePermission: {event}")

    async def bind_channel(self, peer: Address, channel: int | None = None) -> int:
        """RFC 8656 §12: bind a channel to ``peer``; returns its number."""
        self._check_open()
        op = self.core.bind_channel(peer, self._now(), channel=channel)
        event = await self._wait(op)
        if not isinstance(event, ChannelBound):
            raise TurnClientError(f"unexpected answer to ChannelBind: {event}")
        return event.channel

    def send(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer``: ChannelData if bound, else Send indication."""
        self._check_open()
        self.core.send(peer, data)
        self._flush()

    def extra_info(self, name: str) -> object:
        """``get_extra_info(name)`` of the socket's transport (e.g. "socket")."""
        link = self._link
        if link is None or link.transport is None:
            return None
        value: object = link.transport.get_extra_info(name)
        return value

    def send_frame(self, frame: bytes) -> None:
        """Write one frame encoded by the caller (e.g. ChannelData) as it is."""
        link = self._link
        if link is None:
            raise TurnClosedError("the TURN client is not connected")
        link.write(frame)

    async def recv(self) -> DataReceived:
        """The next data from a peer (``peer``, ``data``, ``channel``).

        Raises :class:`TurnClosedError` once the allocation is gone.
        """
        while not self._inbox:
            if self._failure is not None:
                raise self._failure
            closed = self._closed
            if closed is None or closed.done():
                reason = closed.result() if closed is not None else "not allocated"
                raise TurnClosedError(f"TURN allocation closed: {reason}")
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        return self._inbox.popleft()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def close(self) -> None:
        """RFC 8656 §8.1: delete the allocation (Refresh 0), close the socket."""
        if self._link is None:
            return
        closed = self._closed
        if self.core.state in (ClientState.ALLOCATED, ClientState.ALLOCATING):
            self.core.close(self._now())
            self._service()
            if closed is not None and self._failure is None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(closed), CLOSE_TIMEOUT)
        link = self._link
        self._shutdown()
        if isinstance(link, _StreamLink):
            await link.wait_closed(STREAM_CLOSE_TIMEOUT)

    def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        link, self._link = self._link, None
        if link is not None:
            if isinstance(link, _StreamLink):
                link.closing = True
            link.close()
        self._end("client closed")

    # --- plumbing --------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def _server(self) -> TransportAddress:
        return self.server or TransportAddress(self.spec.host, self.spec.port)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self.core.state is not ClientState.ALLOCATED:
            raise TurnClosedError(
                f"no TURN allocation (state {self.core.state.value}); allocate() first"
            )

    async def _wait(self, op: int) -> TurnClientEvent:
        """Send what the core queued and wait for the event of ``op``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TurnClientEvent] = loop.create_future()
        self._waiters[op] = future
        self._service()
        try:
            if self.timeout is None:
                return await future
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise StunTimeoutError(
                f"no TURN response from {self._server()} after {self.timeout:g} s"
            ) from None
        finally:
            self._waiters.pop(op, None)

    def _on_data(self, data: bytes) -> None:
        fast = self._on_channel_data
        if fast is not None and data and 0x40 <= data[0] <= 0x4F:
            fast(data)
            return
        if not self.core.handle_datagram(data, self._now()):
            logger.debug("ignoring a %d-byte datagram that is not TURN", len(data))
        self._service()

    def _on_error(self, exc: Exception) -> None:
        server = self._server()
        udp = self.transport is Transport.UDP
        if udp and not isinstance(exc, ConnectionRefusedError):
            # other ICMP errors on a UDP socket do not end the allocation
            logger.debug("UDP error from %s: %s", server, exc)
            return
        if isinstance(exc, ConnectionRefusedError):
            if self.transport is Transport.UDP:
                detail = f"connection refused by {server} (ICMP port unreachable)"
            else:
                detail = f"connection refused by {server}"
        elif isinstance(exc, ssl.SSLError):
            detail = f"TLS with {server} failed: {exc}"
        else:
            detail = f"connection to {server} failed: {exc}"
        self._fail_all(ConnectionFailedError(detail))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timeout(self._now())
        self._service()

    def _flush(self) -> None:
        link = self._link
        datagrams = self.core.datagrams_to_send()
        if link is None:
            return
        for data in datagrams:
            link.write(data)

    def _service(self) -> None:
        """Write what the core wants sent, deliver its events, re-arm the timer."""
        self._flush()
        while (event := self.core.next_event()) is not None:
            self._dispatch(event)
        self._flush()
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        usable = self._link is not None and self._failure is None
        if deadline is not None and self._loop is not None and usable:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _dispatch(self, event: TurnClientEvent) -> None:
        if isinstance(event, DataReceived):
            if len(self._inbox) >= self._queue_size:
                self.dropped += 1
                return
            self._inbox.append(event)
            self._wake_reader()
            return
        if isinstance(event, Closed):
            self._end(event.reason)
            return
        future = self._waiters.get(event.operation)
        if future is None or future.done():
            if isinstance(event, RequestFailed):
                logger.info("TURN %s failed: %s", _name(event.method), event.reason)
            return
        if isinstance(event, RequestFailed):
            future.set_exception(self._request_error(event))
        else:
            future.set_result(event)

    def _request_error(self, event: RequestFailed) -> StunClientError:
        """One line for a user: what was refused, by whom, and why."""
        server = self._server()
        what = _name(event.method)
        if event.code is None:
            return StunTimeoutError(f"{what} to {server} failed: {event.reason}")
        if event.code == ErrorCode.UNAUTHENTICATED:
            return AuthenticationError(
                f"authentication failed for user {self.username!r} at {server}: "
                f"{event.reason}",
                method=event.method,
                code=event.code,
                reason=event.reason,
            )
        return TurnRequestError(
            f"{server} refused {what}: {event.reason}",
            method=event.method,
            code=event.code,
            reason=event.reason,
        )

    def _fail_all(self, error: StunClientError) -> None:
        """The socket failed: every waiter fails, and the timers stop."""
        if self._failure is None:
            self._failure = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        self._end(str(error))

    def _end(self, reason: str) -> None:
        closed = self._closed
        if closed is not None and not closed.done():
            closed.set_result(reason)
        self._wake_reader()
        error = self._failure or TurnClosedError(f"TURN allocation closed: {reason}")
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)


def _name(method: Method) -> str:
    return _METHOD_NAMES.get(method, method.name)


# --- an end-to-end test of one relay (``natkit turn``) ---------------------------

#: sequence number and send time at the start of every probe payload
_PROBE = struct.Struct("!Qd")
#: the smallest probe payload (it must hold :data:`_PROBE`)
MIN_PROBE_SIZE = _PROBE.size


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What ``natkit turn`` measured; RTTs in seconds, through the relay."""

    info: AllocationInfo
    peer: Address | None
    channel: int | None
    algorithm: str | None
    realm: str | None
    sent: int
    received: int
    rtts: tuple[float, ...]

    @property
    def loss_pct(self) -> float | None:
        if not self.sent:
            return None
        return round(100.0 * (self.sent - self.received) / self.sent, 3)

    def rtt(self, fraction: float) -> float | None:
        """Nearest-rank percentile of the RTTs (0.0 min, 1.0 max)."""
        if not self.rtts:
            return None
        ordered = sorted(self.rtts)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1]


class _Echo(asyncio.DatagramProtocol):
    """A UDP echo peer: every datagram goes back to where it came from."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


async def start_echo_peer(
    ip: str = "127.0.0.1",
) -> tuple[asyncio.BaseTransport, Address]:
    """A UDP echo peer on ``ip`` (a random port); close the transport to stop it."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(ip, 0))
    return transport, Address.from_sockname(transport.get_extra_info("sockname"))


async def probe(
    client: TurnClient,
    peer: Address | None,
    *,
    count: int = 10,
    interval: float = 0.1,
    size: int = 64,
    wait: float = 2.0,
    channel: bool = True,
) -> ProbeReport:
    """Allocate, then (with a peer) permit it, bind a channel and ping it.

    RFC 8656 §7 (Allocate), §9 (CreatePermission), §12 (ChannelBind). The
    peer is expected to echo: ``count`` payloads of ``size`` bytes go out
    ``interval`` seconds apart (as ChannelData, or as Send indications when
    ``channel`` is False), and echoes are awaited up to ``wait`` seconds after
    the last one.
    """
    if size < MIN_PROBE_SIZE:
        raise TurnClientError(f"probe payloads are at least {MIN_PROBE_SIZE} bytes")
    info = await client.allocate()
    core = client.core
    algorithm = core.algorithm.name if core.algorithm is not None else None
    if peer is None:
        return ProbeReport(info, None, None, algorithm, core.realm, 0, 0, ())

    # the permission first, so a refusal names CreatePermission
    await client.create_permission(peer.ip)
    number = await client.bind_channel(peer) if channel else None

    # send, and collect echoes in the background
    loop = asyncio.get_running_loop()
    rtts: dict[int, float] = {}
    reader = asyncio.create_task(_collect(client, peer, rtts, count))
    padding = b"\x00" * (size - _PROBE.size)
    try:
        for seq in range(count):
            client.send(peer, _PROBE.pack(seq, loop.time()) + padding)
            if seq + 1 < count:
                await asyncio.sleep(interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), wait)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, StunClientError):
            await reader
    return ProbeReport(
        info=info,
        peer=peer,
        channel=number,
        algorithm=algorithm,
        realm=core.realm,
        sent=count,
        received=len(rtts),
        rtts=tuple(rtts.values()),
    )


async def _collect(
    client: TurnClient, peer: Address, rtts: dict[int, float], count: int
) -> None:
    loop = asyncio.get_running_loop()
    while len(rtts) < count:
        got = await client.recv()
        if got.peer != peer or len(got.data) < _PROBE.size:
            continue
        seq, sent_at = _PROBE.unpack_from(got.data)
        if 0 <= seq < count and seq not in rtts:
            rtts[seq] = loop.time() - sent_at
