"""Sockets and candidate gathering for the ICE driver (RFC 8445 §5.1.1).

The pieces :mod:`natkit.net.ice_driver` gathers with:

* :func:`host_addresses`: the usable addresses of this host's interfaces
  (ifaddr), IPv4 and IPv6, loopback only when asked; IPv6 link-local
  addresses are left out (they need a scope id that a candidate line cannot
  carry).
* :class:`UdpSocket`: one UDP socket bound to one of them. Its host
  candidate, the server-reflexive candidates learned through it and (over
  UDP) a TURN allocation share it, as RFC 8445 §5.1.1.2 expects: the
  driver hands each datagram to whichever of them it belongs to.
* :class:`StunQueries`: STUN Binding transactions (RFC 8489 §6.2.1) sent
  from such a socket, for server-reflexive candidates.
* :class:`UdpRelay` and :class:`StreamRelay`: one TURN allocation (RFC 8656)
  each, the first on a :class:`UdpSocket` (its XOR-MAPPED-ADDRESS is then a
  server-reflexive candidate of that socket too), the second over its own
  TCP or TLS connection (:class:`natkit.net.turn_client.TurnClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from natkit.nat.endpoint import Endpoint
from natkit.net.stun_client import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    ServerSpec,
    StunClientError,
    parse_server,
)
from natkit.net.turn_client import TurnClient
from natkit.stun.attributes import MappedAddress, XorMappedAddress
from natkit.stun.constants import ErrorCode
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import decode, encode
from natkit.stun.transaction import (
    ClientTransaction,
    RetransmitPolicy,
    TransactionState,
    Transport,
    binding_request,
    transaction_key,
)
from natkit.turn.client import (
    Address,
    Allocated,
    ClientState,
    Closed,
    DataReceived,
    RequestFailed,
    TurnClientCore,
    TurnClientEvent,
)

logger = logging.getLogger(__name__)

#: Binding requests for server-reflexive candidates: RTO 250 ms, 4 sends,
#: given up 0.25 × 7 + 8 × 0.25 = 3.75 s after the first
GATHER_POLICY = RetransmitPolicy(rto=0.25, rc=4, rm=8)
#: how long close() waits for the server to confirm a deleted allocation
RELAY_CLOSE_TIMEOUT = 2.0

#: (socket id, source, data): a datagram that is not the gatherer's own
DatagramHandler = Callable[["UdpSocket", Endpoint, bytes], None]
#: (relay socket id, peer, data): what a TURN allocation unwrapped
RelayDataHandler = Callable[[str, Endpoint, bytes], None]


class GatherError(StunClientError):
    """A candidate could not be gathered (one line, for a user)."""


@dataclass(frozen=True, slots=True)
class TurnServerConfig:
    """A TURN server to get a relayed candidate from (RFC 8656).

    ``transport`` is how the client reaches the server (the relay itself is
    always UDP). TLS verifies the certificate against the system CAs, or
    against ``cafile``; ``insecure`` skips the check.
    """

    host: str
    port: int | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    transport: Transport = Transport.UDP
    realm: str | None = None
    cafile: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "transport", Transport(self.transport))
        if not self.username or not self.password:
            raise UsageError(f"TURN server {self.host}: username and password needed")
        if self.port is not None and not 0 < self.port <= 0xFFFF:
            raise UsageError(f"TURN server port must be 1-65535, not {self.port}")

    @property
    def spec(self) -> ServerSpec:
        default = DEFAULT_TLS_PORT if self.transport is Transport.TLS else DEFAULT_PORT
        return ServerSpec(self.host, self.port if self.port is not None else default)

    def __str__(self) -> str:
        return f"{self.spec} ({self.transport.value})"


def stun_server_spec(server: tuple[str, int] | ServerSpec | str) -> ServerSpec:
    """A STUN server given as ``(host, port)``, a ServerSpec or ``HOST[:PORT]``."""
    if isinstance(server, ServerSpec):
        return server
    if isinstance(server, str):
        return parse_server(server)
    host, port = server
    if not 0 < port <= 0xFFFF:
        raise UsageError(f"STUN server port must be 1-65535, not {port}")
    return ServerSpec(host, port)


# --- host addresses -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostAddress:
    """An address to bind a host candidate's socket to, and its interface.

    ``index`` ranks the interface (0 is preferred) for the local preference
    of RFC 8445 §5.1.2.2.
    """

    ip: str
    interface: str
    index: int


def host_addresses(
    *, use_ipv4: bool = True, use_ipv6: bool = True, use_loopback: bool = False
) -> list[HostAddress]:
    """Usable interface addresses, loopback interfaces last (RFC 8445 §5.1.1.1)."""
    import ifaddr

    found: list[tuple[bool, str, str]] = []
    seen: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            if isinstance(entry.ip, str):
                if not use_ipv4:
                    continue
                text = entry.ip
            else:
                ip6, _flow, scope = entry.ip
                if not use_ipv6 or scope != 0:
                    continue
                text = ip6
            address = ipaddress.ip_address(text)
            if address.is_unspecified or address.is_multicast:
                continue
            if address.is_loopback and not use_loopback:
                continue
            canonical = str(address)
            if canonical not in seen:
                seen.add(canonical)
                found.append((address.is_loopback, adapter.nice_name, canonical))

    # one index per interface, in the order ifaddr lists them, loopback last
    found.sort(key=lambda item: item[0])
    indexes: dict[str, int] = {}
    result = []
    for _loopback, interface, ip in found:
        index = indexes.setdefault(interface, len(indexes))
        result.append(HostAddress(ip, interface, min(index, 63)))
    return result


def route_source(ip: str) -> str | None:
    """The local address the kernel would send from to ``ip`` (no packet sent)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((ip, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


# --- UDP sockets -----------------------------------------------------------------


class UdpSocket(asyncio.DatagramProtocol):
    """One bound UDP socket of the driver; its id is its address (``ip:port``)."""

    def __init__(self, on_datagram: DatagramHandler) -> None:
        self._on_datagram = on_datagram
        self._udp: asyncio.DatagramTransport | None = None
        self.local = Endpoint("0.0.0.0", 0)
        self.socket_id = ""
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's UDP transport does not subclass DatagramTransport
        self._udp = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local = Endpoint(str(sockname[0]), int(sockname[1]))
        self.socket_id = str(self.local)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            source = Endpoint(str(addr[0]), int(addr[1]))
        except UsageError:
            return
        self._on_datagram(self, source, data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) fail checks by timeout, nothing more
        self.errors += 1
        logger.debug("%s: %s", self.socket_id, exc)

    def sendto(self, data: bytes, destination: Endpoint) -> None:
        udp = self._udp
        if udp is None or udp.is_closing():
            return
        try:
            udp.sendto(data, (destination.ip, destination.port))
        except OSError as exc:
            self.errors += 1
            logger.debug("%s: send to %s failed: %s", self.socket_id, destination, exc)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()

    @property
    def closed(self) -> bool:
        return self._udp is None or self._udp.is_closing()


async def open_udp_socket(ip: str, on_datagram: DatagramHandler) -> UdpSocket:
    """A UDP socket bound to ``ip`` on a free port."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        _, protocol = await loop.create_datagram_endpoint(
            lambda: UdpSocket(on_datagram), local_addr=(ip, 0), family=family
        )
    except OSError as exc:
        raise GatherError(f"cannot bind UDP to {ip}: {exc.strerror or exc}") from None
    return protocol


# --- server-reflexive candidates -------------------------------------------------


class _Query:
    def __init__(
        self, tx: ClientTransaction, sock: UdpSocket, server: Endpoint
    ) -> None:
        self.tx = tx
        self.sock = sock
        self.server = server
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None


class StunQueries:
    """Binding transactions (RFC 8489 §6.2.1) sent from the driver's sockets.

    The driver offers every datagram to :meth:`handle` first: responses to
    these transactions are taken, anything else is left for ICE or TURN.
    """

    def __init__(self, *, policy: RetransmitPolicy = GATHER_POLICY) -> None:
        self.policy = policy
        self._pending: dict[bytes, _Query] = {}

    async def binding(
        self, sock: UdpSocket, server: Endpoint, *, software: str | None = None
    ) -> Endpoint:
        """The mapped address ``server`` saw for ``sock`` (RFC 8489 §6.3.1)."""
        loop = asyncio.get_running_loop()
        request = encode(binding_request(software=software))
        tx = ClientTransaction(
            request, transport=Transport.UDP, now=loop.time(), policy=self.policy
        )
        query = _Query(tx, sock, server)
        self._pending[tx.key] = query
        try:
            self._fire(query)
            await query.done
        finally:
            self._pending.pop(tx.key, None)
            if query.timer is not None:
                query.timer.cancel()
        return _mapped(tx, server, self.policy)

    def _fire(self, query: _Query) -> None:
        loop = asyncio.get_running_loop()
        for datagram in query.tx.handle_timeout(loop.time()):
            query.sock.sendto(datagram, query.server)
        deadline = query.tx.next_deadline()
        if deadline is None:
            if not query.done.done():
                query.done.set_result(None)
            return
        query.timer = loop.call_at(deadline, self._fire, query)

    def handle(self, data: bytes, source: Endpoint, now: float) -> bool:
        """True if ``data`` answered one of our transactions (and was taken)."""
        if len(data) < 20 or data[0] > 1 or not self._pending:
            return False
        query = self._pending.get(transaction_key(data))
        if query is None or source != query.server:
            return False
        try:
            msg = decode(data)
        except DecodeError as exc:
            logger.debug("undecodable answer from %s: %s", source, exc)
            return True
        if query.tx.handle_response(msg, now) and not query.done.done():
            query.done.set_result(None)
        return True

    def close(self) -> None:
        for query in list(self._pending.values()):
            if query.timer is not None:
                query.timer.cancel()
            if not query.done.done():
                query.done.cancel()
        self._pending.clear()


def _mapped(
    tx: ClientTransaction, server: Endpoint, policy: RetransmitPolicy
) -> Endpoint:
    if tx.state is TransactionState.TIMED_OUT or tx.response is None:
        limit = policy.give_up_after(Transport.UDP)
        raise GatherError(f"no STUN response from {server} after {limit:g} s")
    if tx.state is TransactionState.FAILED:
        error = tx.error
        detail = f"error {error.code} {error.reason}" if error else tx.failure_reason
        raise GatherError(f"{server} answered the Binding request with {detail}")
    msg = tx.response
    mapped = msg.get(XorMappedAddress) or msg.get(MappedAddress)
    if mapped is None:
        raise GatherError(f"response from {server} has no XOR-MAPPED-ADDRESS")
    return Endpoint(mapped.ip, mapped.port)


# --- relayed candidates ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocation:
    """What a TURN server granted: RFC 8656 §7.3 XOR-RELAYED-ADDRESS and
    XOR-MAPPED-ADDRESS (the client's address as the server saw it)."""

    relayed: Endpoint
    mapped: Endpoint | None
    server: Endpoint


def _endpoint(address: Address) -> Endpoint:
    return Endpoint(address.ip, address.port)


def _address(endpoint: Endpoint) -> Address:
    return Address(endpoint.ip, endpoint.port)


class Relay:
    """One TURN allocation, a socket of the ICE agent (its id: ``socket_id``).

    Permissions: the agent asks for one per peer IP (:meth:`permit`,
    CreatePermission, RFC 8656 §9), and the first datagram to each peer
    address also binds a channel to it (RFC 8656 §12), which installs the
    permission as well. The channel carries the exact peer address, which a
    server that lets its own relayed addresses talk to each other (natkit
    serve with its default peer policy) needs; the permission alone only
    names an IP. Data then goes as ChannelData (4 bytes of overhead instead
    of 36).
    """

    #: channels a relay binds at most (the rest of the peers get Send)
    MAX_CHANNELS = 256

    socket_id: str
    config: TurnServerConfig
    allocation: Allocation | None = None

    def __init__(self) -> None:
        self._channels_asked: set[Endpoint] = set()

    async def allocate(self) -> Allocation:
        raise NotImplementedError

    @property
    def allocated(self) -> bool:
        raise NotImplementedError

    def send(self, peer: Endpoint, data: bytes) -> None:
        """Relay ``data`` to ``peer`` (ChannelData once a channel is bound)."""
        if not self.allocated:
            return
        asked = self._channels_asked
        if peer not in asked and len(asked) < self.MAX_CHANNELS:
            asked.add(peer)
            self._bind(peer)
        self._send(peer, data)

    def permit(self, ip: str) -> None:
        """RFC 8656 §9: let ``ip`` send to the relayed address (kept alive)."""
        raise NotImplementedError

    def _send(self, peer: Endpoint, data: bytes) -> None:
        raise NotImplementedError

    def _bind(self, peer: Endpoint) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class UdpRelay(Relay):
    """A TURN allocation over UDP, on one of the driver's :class:`UdpSocket`.

    The driver passes it every datagram from ``server`` on that socket
    (:meth:`handle_datagram`); it writes the core's datagrams to the server
    from the same socket.
    """

    def __init__(
        self,
        socket_id: str,
        sock: UdpSocket,
        server: Endpoint,
        config: TurnServerConfig,
        on_data: RelayDataHandler,
        *,
        owns_socket: bool,
        software: str | None = None,
        policy: RetransmitPolicy | None = None,
    ) -> None:
        super().__init__()
        self.socket_id = socket_id
        self.sock = sock
        self.server = server
        self.config = config
        self.owns_socket = owns_socket
        self.core = TurnClientCore(
            username=config.username,
            password=config.password,
            transport=Transport.UDP,
            realm=config.realm,
            software=software,
            policy=policy,
        )
        self._on_data = on_data
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: dict[int, asyncio.Future[TurnClientEvent]] = {}
        self._closed: asyncio.Future[str] = self._loop.create_future()

    def __repr__(self) -> str:
        return f"<UdpRelay {self.socket_id} {self.core.state.value}>"

    async def allocate(self) -> Allocation:
        op = self.core.allocate(self._loop.time())
        event = await self._wait(op)
        if not isinstance(event, Allocated):
            raise GatherError(f"unexpected answer to Allocate from {self.server}")
        mapped = _endpoint(event.mapped) if event.mapped is not None else None
        self.allocation = Allocation(_endpoint(event.relayed), mapped, self.server)
        return self.allocation

    async def _wait(self, op: int) -> TurnClientEvent:
        future: asyncio.Future[TurnClientEvent] = self._loop.create_future()
        self._waiters[op] = future
        self._service()
        try:
            return await future
        finally:
            self._waiters.pop(op, None)

    def handle_datagram(self, data: bytes) -> bool:
        taken = self.core.handle_datagram(data, self._loop.time())
        self._service()
        return taken

    @property
    def allocated(self) -> bool:
        return self.core.state is ClientState.ALLOCATED

    def _send(self, peer: Endpoint, data: bytes) -> None:
        self.core.send(_address(peer), data)
        self._flush()

    def permit(self, ip: str) -> None:
        if self.allocated:
            self.core.create_permission((ip,), self._loop.time())
            self._service()

    def _bind(self, peer: Endpoint) -> None:
        self.core.bind_channel(_address(peer), self._loop.time())
        self._service()

    async def close(self) -> None:
        if self.core.state in (ClientState.ALLOCATED, ClientState.ALLOCATING):
            self.core.close(self._loop.time())
            self._service()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._closed), RELAY_CLOSE_TIMEOUT
                )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        if self.owns_socket:
            self.sock.close()
        self._end("closed")

    # --- plumbing ---------------------------------------------------------

    def _flush(self) -> None:
        for datagram in self.core.datagrams_to_send():
            self.sock.sendto(datagram, self.server)

    def _service(self) -> None:
        self._flush()
        while (event := self.core.next_event()) is not None:
            self._dispatch(event)
        self._flush()
        self._arm()

    def _arm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self._closed.done():
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timeout(self._loop.time())
        self._service()

    def _dispatch(self, event: TurnClientEvent) -> None:
        if isinstance(event, DataReceived):
            self._on_data(self.socket_id, _endpoint(event.peer), event.data)
            return
        if isinstance(event, Closed):
            logger.debug("%s: allocation closed: %s", self.socket_id, event.reason)
            self._end(event.reason)
            return
        future = self._waiters.get(event.operation)
        if future is not None and not future.done():
            if isinstance(event, RequestFailed):
                future.set_exception(_request_error(self.config, event))
            else:
                future.set_result(event)
        elif isinstance(event, RequestFailed):
            logger.debug(
                "%s: TURN %s failed: %s",
                self.socket_id,
                event.method.name,
                event.reason,
            )

    def _end(self, reason: str) -> None:
        if not self._closed.done():
            self._closed.set_result(reason)
        error = GatherError(f"TURN allocation at {self.server} closed: {reason}")
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)


def _request_error(config: TurnServerConfig, event: RequestFailed) -> GatherError:
    what = event.method.name.replace("_", "").title()
    if event.code is None:
        return GatherError(f"TURN {what} to {config} failed: {event.reason}")
    if event.code == ErrorCode.UNAUTHENTICATED:
        return GatherError(
            f"TURN authentication failed for user {config.username!r} at "
            f"{config}: {event.reason}"
        )
    return GatherError(f"TURN server {config} refused {what}: {event.reason}")


class StreamRelay(Relay):
    """A TURN allocation over TCP or TLS (RFC 8656 §3.1), its own connection."""

    def __init__(
        self,
        socket_id: str,
        config: TurnServerConfig,
        on_data: RelayDataHandler,
        *,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        software: str | None = None,
    ) -> None:
        super().__init__()
        self.socket_id = socket_id
        self.config = config
        spec = config.spec
        self.client = TurnClient(
            spec.host,
            spec.port,
            username=config.username,
            password=config.password,
            transport=config.transport,
            realm=config.realm,
            insecure=config.insecure,
            cafile=config.cafile,
            software=software,
            family=family,
        )
        self._on_data = on_data
        self._tasks: set[asyncio.Task[None]] = set()
        self._binding: dict[Endpoint, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"<StreamRelay {self.socket_id} {self.client.core.state.value}>"

    async def allocate(self) -> Allocation:
        info = await self.client.allocate()
        server = Endpoint(info.server.ip, info.server.port)
        mapped = _endpoint(info.mapped) if info.mapped is not None else None
        self.allocation = Allocation(_endpoint(info.relayed), mapped, server)
        self._spawn(self._read())
        return self.allocation

    async def _read(self) -> None:
        while True:
            try:
                got = await self.client.recv()
            except StunClientError as exc:
                logger.debug("%s: %s", self.socket_id, exc)
                return
            self._on_data(self.socket_id, _endpoint(got.peer), got.data)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _quietly(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        try:
            await coro
        except StunClientError as exc:
            logger.debug("%s: %s failed: %s", self.socket_id, what, exc)

    @property
    def allocated(self) -> bool:
        return self.client.core.state is ClientState.ALLOCATED

    def _send(self, peer: Endpoint, data: bytes) -> None:
        binding = self._binding.get(peer)
        if binding is not None and not binding.done():
            # the ChannelBind (and its permission) is written when its task
            # first runs: send after it, or the server drops this datagram
            asyncio.get_running_loop().call_soon(self._send_now, peer, data)
            return
        self._send_now(peer, data)

    def _send_now(self, peer: Endpoint, data: bytes) -> None:
        if not self.allocated:
            return
        try:
            self.client.send(_address(peer), data)
        except StunClientError as exc:
            logger.debug("%s: send to %s failed: %s", self.socket_id, peer, exc)

    def permit(self, ip: str) -> None:
        if self.allocated:
            self._spawn(self._quietly(self.client.create_permission(ip), "permission"))

    def _bind(self, peer: Endpoint) -> None:
        bind = self.client.bind_channel(_address(peer))
        task = self._spawn(self._quietly(bind, "ChannelBind"))
        self._binding[peer] = task
        task.add_done_callback(lambda _: self._binding.pop(peer, None))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # bounded by the client's own wait for the Refresh(0) answer
        with contextlib.suppress(StunClientError, OSError):
            await self.client.close()
