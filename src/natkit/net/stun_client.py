"""asyncio driver of a STUN Binding transaction over UDP, TCP or TLS.

RFC 8489 §6.2 (sending the request), §6.3 (processing the response), §7.2.2
(stream framing: a STUN message over TCP/TLS is delimited by its own header).
The timers and the matching of responses live in the sans-IO
:class:`natkit.stun.transaction.ClientTransaction`; this module only moves its
bytes and wakes it up at :meth:`~ClientTransaction.next_deadline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass

from natkit.stun.attributes import (
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    Software,
    XorMappedAddress,
)
from natkit.stun.constants import HEADER_LENGTH
from natkit.stun.errors import DecodeError, NatkitError
from natkit.stun.message import (
    Message,
    decode,
    encode,
    is_stun,
    message_length_from_header,
)
from natkit.stun.transaction import (
    ClientTransaction,
    RetransmitPolicy,
    TransactionState,
    Transport,
    binding_request,
)

logger = logging.getLogger(__name__)

#: RFC 8489 §18.5 (IANA): the "stun"/"turn" port and the "stuns"/"turns" port.
DEFAULT_PORT = 3478
DEFAULT_TLS_PORT = 5349


class StunClientError(NatkitError):
    """A STUN client operation failed; the message is one line for a user."""


class AddressError(StunClientError):
    """A ``HOST[:PORT]`` string that cannot be parsed."""


class ResolveError(StunClientError):
    """The server name does not resolve (for the requested family)."""


class StunTimeoutError(StunClientError):
    """No response arrived before the transaction gave up."""


class ConnectionFailedError(StunClientError):
    """The server refused or dropped the connection, or TLS failed."""


class ErrorResponseError(StunClientError):
    """The server answered with a STUN error response (RFC 8489 §6.3.4)."""

    def __init__(self, message: str, *, code: int | None, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class BadResponseError(StunClientError):
    """The response was not usable (undecodable, no mapped address...)."""


@dataclass(frozen=True, slots=True)
class TransportAddress:
    """An IP address and port, written ``ip:port`` or ``[ip]:port`` for IPv6."""

    ip: str
    port: int

    def __str__(self) -> str:
        if ":" in self.ip:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    @classmethod
    def from_sockaddr(cls, sockaddr: tuple[object, ...]) -> TransportAddress:
        """From the tuple a socket gives (IPv6 ones carry flow info and scope)."""
        return cls(str(sockaddr[0]), int(str(sockaddr[1])))


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server as the user wrote it: host name or IP literal, and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return str(TransportAddress(self.host, self.port))


@dataclass(frozen=True, slots=True)
class BindingResult:
    """The outcome of a successful Binding transaction (RFC 8489 §6.3.1).

    ``mapped`` is the server-reflexive address (XOR-MAPPED-ADDRESS, or
    MAPPED-ADDRESS from an RFC 3489 server); ``rtt`` is seconds from the
    latest transmission to the response.
    """

    mapped: TransportAddress
    local: TransportAddress
    server: TransportAddress
    rtt: float
    transport: Transport
    transmissions: int
    response: Message
    response_origin: TransportAddress | None = None
    other_address: TransportAddress | None = None
    software: str | None = None


def parse_server(text: str, *, default_port: int = DEFAULT_PORT) -> ServerSpec:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6."""
    text = text.strip()
    if not text:
        raise AddressError("empty server address")

    # bracketed IPv6 literal, with or without a port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AddressError(f"malformed address {text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        _check_ipv6(host, text)
        if not rest:
            return ServerSpec(host, default_port)
        if not rest.startswith(":"):
            raise AddressError(f"malformed address {text!r}: expected ':' after ']'")
        return ServerSpec(host, _parse_port(rest[1:], text))

    # a bare IPv6 literal has more than one colon and no port
    if text.count(":") > 1:
        _check_ipv6(text, text)
        return ServerSpec(text, default_port)

    host, sep, port_text = text.partition(":")
    if not host:
        raise AddressError(f"malformed address {text!r}: missing host")
    if any(c.isspace() or c in "/@[]" for c in host):
        raise AddressError(f"malformed address {text!r}: bad host name")
    return ServerSpec(host, _parse_port(port_text, text) if sep else default_port)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise AddressError(f"malformed address {text!r}: not an IPv6 address") from None


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise AddressError(f"malformed address {text!r}: bad port {port_text!r}")
    return int(port_text)


def address_family(name: str | None) -> socket.AddressFamily:
    """``"ipv4"``, ``"ipv6"`` or None (either) as a getaddrinfo family."""
    if name == "ipv4":
        return socket.AF_INET
    if name == "ipv6":
        return socket.AF_INET6
    if name is None:
        return socket.AF_UNSPEC
    raise StunClientError(f"unknown address family {name!r}")


def tls_context(*, insecure: bool = False, cafile: str | None = None) -> ssl.SSLContext:
    """A client TLS context: verifying by default, against ``cafile`` if given."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise StunClientError(f"cannot load CA file {cafile!r}: {exc}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def resolve(
    server: ServerSpec,
    *,
    transport: Transport,
    family: socket.AddressFamily = socket.AF_UNSPEC,
) -> TransportAddress:
    """Resolve the server with getaddrinfo; the first answer is used."""
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if transport is Transport.UDP else socket.SOCK_STREAM
    try:
        infos = await loop.getaddrinfo(
            server.host, server.port, family=family, type=kind
        )
    except (socket.gaierror, UnicodeError) as exc:
        detail = exc.args[1] if isinstance(exc, socket.gaierror) else str(exc)
        wanted = {socket.AF_INET: " (IPv4)", socket.AF_INET6: " (IPv6)"}.get(family, "")
        raise ResolveError(
            f"cannot resolve {server.host!r}{wanted}: {detail}"
        ) from None
    if not infos:
        raise ResolveError(f"cannot resolve {server.host!r}: no addresses")
    return TransportAddress.from_sockaddr(infos[0][4])


async def binding(
    host: str,
    port: int | None = None,
    *,
    transport: Transport = Transport.UDP,
    timeout: float | None = None,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    policy: RetransmitPolicy | None = None,
    ssl_context: ssl.SSLContext | None = None,
    software: str | None = None,
) -> BindingResult:
    """Ask a STUN server for our server-reflexive address (RFC 8489 §6).

    ``timeout`` caps the whole operation in seconds; by default it is what the
    transaction's own timers allow (39.5 s with RFC 8489's defaults). Raises a
    :class:`StunClientError` subclass with a one-line message on failure.
    """
    policy = policy or RetransmitPolicy()
    if port is None:
        port = DEFAULT_TLS_PORT if transport is Transport.TLS else DEFAULT_PORT
    server = ServerSpec(host, port)
    limit = policy.give_up_after(transport)
    if timeout is not None:
        limit = min(limit, timeout)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        async with asyncio.timeout_at(deadline):
            address = await resolve(server, transport=transport, family=family)
            request = encode(binding_request(software=software))
            if transport is Transport.UDP:
                return await _binding_udp(address, request, policy, limit)
            context = None
            if transport is Transport.TLS:
                context = ssl_context or tls_context()
            return await _binding_stream(address, server, request, policy, context)
    except TimeoutError:
        raise StunTimeoutError(
            f"no STUN response from {server} after {_seconds(limit)} s"
        ) from None


def _seconds(value: float) -> str:
    return f"{value:g}"


class _UdpProtocol(asyncio.DatagramProtocol):
    """Feeds datagrams from a connected UDP socket to one transaction."""

    def __init__(self, tx: ClientTransaction, done: asyncio.Future[None]) -> None:
        self._tx = tx
        self._done = done
        self._loop = done.get_loop()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not is_stun(data):
            return
        try:
            msg = decode(data)
        except DecodeError as exc:
            logger.debug("dropping undecodable datagram from %s: %s", addr, exc)
            return
        if self._tx.handle_response(msg, self._loop.time()) and not self._done.done():
            self._done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # an ICMP error on a connected socket (port unreachable -> refused)
        if not self._done.done():
            self._done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionResetError("socket closed"))


async def _binding_udp(
    server: TransportAddress, request: bytes, policy: RetransmitPolicy, limit: float
) -> BindingResult:
    """RFC 8489 §6.2.1: send over UDP and retransmit on the transaction's timer."""
    loop = asyncio.get_running_loop()
    tx = ClientTransaction(
        request, transport=Transport.UDP, now=loop.time(), policy=policy
    )
    done: asyncio.Future[None] = loop.create_future()
    family = socket.AF_INET6 if ":" in server.ip else socket.AF_INET
    try:
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(tx, done),
            remote_addr=(server.ip, server.port),
            family=family,
        )
    except OSError as exc:
        raise ConnectionFailedError(
            f"cannot send to {server}: {exc.strerror}"
        ) from None

    timer: asyncio.TimerHandle | None = None

    def fire() -> None:
        nonlocal timer
        for datagram in tx.handle_timeout(loop.time()):
            udp.sendto(datagram)
        next_deadline = tx.next_deadline()
        if next_deadline is None:
            if not done.done():
                done.set_result(None)
        else:
            timer = loop.call_at(next_deadline, fire)

    try:
        fire()
        try:
            await done
        except ConnectionRefusedError:
            raise ConnectionFailedError(
                f"connection refused by {server} (ICMP port unreachable)"
            ) from None
        except OSError as exc:
            raise ConnectionFailedError(f"UDP to {server} failed: {exc}") from None
        local = TransportAddress.from_sockaddr(udp.get_extra_info("sockname"))
    finally:
        if timer is not None:
            timer.cancel()
        udp.close()

    if tx.state is TransactionState.TIMED_OUT:
        raise StunTimeoutError(
            f"no STUN response from {server} after {_seconds(limit)} s"
        )
    return _result(tx, local, server)


async def _binding_stream(
    server: TransportAddress,
    spec: ServerSpec,
    request: bytes,
    policy: RetransmitPolicy,
    context: ssl.SSLContext | None,
) -> BindingResult:
    """RFC 8489 §6.2.2: send once over TCP/TLS, read framed messages back."""
    loop = asyncio.get_running_loop()
    transport = Transport.TLS if context is not None else Transport.TCP
    hostname = spec.host if context is not None else None
    try:
        reader, writer = await asyncio.open_connection(
            server.ip, server.port, ssl=context, server_hostname=hostname
        )
    except ConnectionRefusedError:
        raise ConnectionFailedError(f"connection refused by {server}") from None
    except ssl.SSLCertVerificationError as exc:
        raise ConnectionFailedError(
            f"TLS certificate of {server} not trusted: {exc.verify_message}"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConnectionFailedError(f"cannot connect to {server}: {exc}") from None

    try:
        tx = ClientTransaction(
            request, transport=transport, now=loop.time(), policy=policy
        )
        for data in tx.handle_timeout(loop.time()):
            writer.write(data)
        await writer.drain()
        local = TransportAddress.from_sockaddr(writer.get_extra_info("sockname"))
        while not tx.done:
            next_deadline = tx.next_deadline()
            if next_deadline is None:
                break
            try:
                async with asyncio.timeout_at(next_deadline):
                    msg = await _read_message(reader, server)
            except TimeoutError:
                tx.handle_timeout(loop.time())
                continue
            tx.handle_response(msg, loop.time())
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        raise ConnectionFailedError(f"connection to {server} failed: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await writer.wait_closed()

    if tx.state is TransactionState.TIMED_OUT:
        raise StunTimeoutError(
            f"no STUN response from {server} after {_seconds(policy.ti)} s"
        )
    return _result(tx, local, server)


async def _read_message(
    reader: asyncio.StreamReader, server: TransportAddress
) -> Message:
    """RFC 8489 §7.2.2: the 20-byte header gives the length of what follows."""
    try:
        header = await reader.readexactly(HEADER_LENGTH)
        length = message_length_from_header(header)
        body = await reader.readexactly(length - HEADER_LENGTH)
    except asyncio.IncompleteReadError:
        raise ConnectionFailedError(f"{server} closed the connection") from None
    except DecodeError as exc:
        raise BadResponseError(
            f"{server} sent something that is not STUN: {exc}"
        ) from None
    try:
        return decode(header + body)
    except DecodeError as exc:
        raise BadResponseError(f"undecodable response from {server}: {exc}") from None


def _result(
    tx: ClientTransaction, local: TransportAddress, server: TransportAddress
) -> BindingResult:
    """RFC 8489 §6.3.1 / §6.3.4: turn a finished transaction into a result."""
    msg = tx.response
    if msg is None:
        raise StunTimeoutError(f"no STUN response from {server}")
    if tx.state is TransactionState.FAILED:
        err = tx.error
        if err is not None:
            raise ErrorResponseError(
                f"{server} answered with error {err.code} {err.reason}".rstrip(),
                code=err.code,
                reason=err.reason,
            )
        raise BadResponseError(f"unusable response from {server}: {tx.failure_reason}")

    mapped = msg.get(XorMappedAddress) or msg.get(MappedAddress)
    if mapped is None:
        raise BadResponseError(f"response from {server} has no XOR-MAPPED-ADDRESS")
    origin = msg.get(ResponseOrigin)
    other = msg.get(OtherAddress)
    software = msg.get(Software)
    return BindingResult(
        mapped=TransportAddress(mapped.ip, mapped.port),
        local=local,
        server=server,
        rtt=tx.rtt or 0.0,
        transport=tx.transport,
        transmissions=tx.transmissions,
        response=msg,
        response_origin=TransportAddress(origin.ip, origin.port) if origin else None,
        other_address=TransportAddress(other.ip, other.port) if other else None,
        software=software.value if software else None,
    )
