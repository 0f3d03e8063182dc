"""asyncio driver of the sans-IO ICE agent (RFC 8445, RFC 7675, RFC 8838).

:class:`Agent` owns what :class:`natkit.ice.agent.IceAgent` must not: the
UDP sockets of the host candidates, the STUN transactions for
server-reflexive candidates, the TURN allocations for relayed ones, and the
clock. It moves bytes between them and the agent, arms one timer at the
agent's :meth:`~natkit.ice.agent.IceAgent.next_deadline`, and turns the
agent's events into awaitables::

    agent = Agent(controlling=True, stun_servers=[("stun.example.org", 3478)])
    await agent.gather()                     # host, srflx, relay
    offer = (agent.local_credentials, agent.local_candidates)
    ...                                      # signal it, get the answer
    agent.set_remote_credentials(ufrag, pwd)
    for line in remote_lines:
        agent.add_remote_candidate(line)
    agent.add_remote_candidate(None)         # end-of-candidates
    pair = await agent.connect(timeout=10)   # the selected pair
    agent.send(b"hello")
    data = await agent.recv()
    await agent.close()

Socket ids (the agent's opaque :data:`~natkit.ice.candidate.SocketId`):
``ip:port`` of a host socket, ``turn-N`` of a TURN allocation. Every
datagram that arrives on a host socket goes first to the pending STUN
Binding transactions, then to a TURN allocation made over that socket (if it
came from that server), and otherwise to the ICE agent.

Trickle ICE (RFC 8838): local candidates are published as they are gathered,
to ``on_candidate`` and to :meth:`Agent.candidates` (an async iterator
ending at end-of-candidates); remote ones may be added at any time.

Application data: RFC 7983 §7 sorts a datagram whose first byte is 0-3 as
STUN, so :meth:`Agent.send` refuses such data (the peer would not pass it
on); QUIC, DTLS, RTP and text all start higher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

from natkit.ice.agent import IceAgent
from natkit.ice.candidate import Candidate, SocketId
from natkit.ice.config import DEFAULT_TA, IceConfig
from natkit.ice.credentials import Credentials
from natkit.ice.events import (
    ConsentLost,
    DataReceived,
    IceEvent,
    IceState,
    PairSelected,
    PermissionNeeded,
    SelectedPair,
    StateChanged,
    Transmit,
)
from natkit.ice.sdp import format_candidate, is_end_of_candidates, parse_candidate
from natkit.nat.endpoint import Endpoint
from natkit.net.ice_gather import (
    GATHER_POLICY,
    GatherError,
    HostAddress,
    Relay,
    StreamRelay,
    StunQueries,
    TurnServerConfig,
    UdpRelay,
    UdpSocket,
    host_addresses,
    open_udp_socket,
    route_source,
    stun_server_spec,
)
from natkit.net.stun_client import ServerSpec, StunClientError, resolve
from natkit.stun.errors import NatkitError, UsageError
from natkit.stun.transaction import RetransmitPolicy, Transport

__all__ = [
    "Agent",
    "ConsentLostError",
    "IceClosedError",
    "IceError",
    "IceFailedError",
    "IceTimeoutError",
    "TurnServerConfig",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: how long gather() waits for STUN and TURN servers before giving up on them
DEFAULT_GATHER_TIMEOUT = 5.0
#: received data not yet taken with recv() beyond this is dropped
DEFAULT_QUEUE = 4096
#: events not yet taken from Agent.events beyond this push out the oldest
EVENT_QUEUE = 1024
#: requests remembered for round-trip times (the oldest are forgotten)
_RTT_MEMORY = 512

_BINDING_REQUEST = b"\x00\x01"
_BINDING_SUCCESS = b"\x01\x01"


class IceError(NatkitError):
    """An ICE operation failed; the message is one line for a user."""


class IceFailedError(IceError):
    """Every candidate pair failed (RFC 8445 §8.1.2, after end-of-candidates)."""


class IceTimeoutError(IceError):
    """No pair was selected in the time allowed."""


class ConsentLostError(IceError):
    """RFC 7675 §5.1: the peer stopped answering consent checks."""


class IceClosedError(IceError):
    """The agent is closed."""


class _Signal:
    """Wake every coroutine waiting for "something changed"."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)

    def fire(self) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_result(None)


class _RttMeter:
    """Round-trip times of Binding requests the agent sent (checks, consent).

    The time is taken from the latest transmission of a request to its
    success response, as :attr:`ClientTransaction.rtt` does.
    """

    def __init__(self) -> None:
        self._sent: dict[bytes, tuple[float, SocketId, Endpoint]] = {}
        self.last: float | None = None
        self._by_path: dict[tuple[SocketId, Endpoint], float] = {}

    def sent(self, transmit: Transmit, now: float) -> None:
        data = transmit.data
        if len(data) >= 20 and data[:2] == _BINDING_REQUEST:
            if len(self._sent) >= _RTT_MEMORY:
                del self._sent[next(iter(self._sent))]
            self._sent[data[4:20]] = (now, transmit.socket, transmit.destination)

    def received(self, data: bytes, now: float) -> None:
        if len(data) < 20 or data[:2] != _BINDING_SUCCESS:
            return
        entry = self._sent.pop(data[4:20], None)
        if entry is None:
            return
        sent_at, sock, destination = entry
        self.last = now - sent_at
        self._by_path[(sock, destination)] = self.last

    def on_path(self, sock: SocketId, destination: Endpoint) -> float | None:
        return self._by_path.get((sock, destination))


class Agent:
    """One ICE agent with its sockets, for one data stream (RFC 8445).

    ``stun_servers`` are ``(host, port)`` pairs (or ``HOST:PORT`` text) for
    server-reflexive candidates, ``turn_servers`` :class:`TurnServerConfig`
    records for relayed ones. Host candidates come from every interface
    address (IPv4 and IPv6 as allowed, loopback only with ``use_loopback``),
    or exactly from ``host_ips`` when given. ``relay_only`` gathers relayed
    candidates alone (no host or server-reflexive ones). ``config`` holds the
    agent's timers (consent, nomination; :class:`natkit.ice.IceConfig`).

    Events: every non-data event of the agent (:class:`StateChanged`,
    :class:`PairSelected`, :class:`ConsentLost`, ...) is put on
    :attr:`events` (an :class:`asyncio.Queue`) and passed to the callbacks
    ``on_state_change`` and ``on_selected_pair``; ``on_candidate`` gets each
    local candidate line as it is gathered, then None (end-of-candidates).
    """

    def __init__(
        self,
        controlling: bool,
        *,
        stun_servers: Iterable[tuple[str, int] | ServerSpec | str] = (),
        turn_servers: Iterable[TurnServerConfig] = (),
        use_loopback: bool = False,
        use_ipv4: bool = True,
        use_ipv6: bool = True,
        host_ips: Sequence[str] | None = None,
        relay_only: bool = False,
        config: IceConfig | None = None,
        ta: float = DEFAULT_TA,
        gather_timeout: float = DEFAULT_GATHER_TIMEOUT,
        stun_policy: RetransmitPolicy = GATHER_POLICY,
        software: str | None = None,
        name: str | None = None,
        queue_size: int = DEFAULT_QUEUE,
        on_candidate: Callable[[str | None], None] | None = None,
        on_state_change: Callable[[StateChanged], None] | None = None,
        on_selected_pair: Callable[[SelectedPair], None] | None = None,
    ) -> None:
        if not use_ipv4 and not use_ipv6:
            raise UsageError("use_ipv4 and use_ipv6 cannot both be off")
        if gather_timeout <= 0:
            raise UsageError(f"gather_timeout must be positive, not {gather_timeout}")
        self.stun_servers = [stun_server_spec(server) for server in stun_servers]
        self.turn_servers = list(turn_servers)
        if relay_only and not self.turn_servers:
            raise UsageError("relay_only needs at least one TURN server")
        self.use_loopback = use_loopback
        self.use_ipv4 = use_ipv4
        self.use_ipv6 = use_ipv6
        self.host_ips = list(host_ips) if host_ips is not None else None
        self.relay_only = relay_only
        self.gather_timeout = gather_timeout
        self.software = software
        self.on_candidate = on_candidate
        self.on_state_change = on_state_change
        self.on_selected_pair = on_selected_pair
        self.ice = IceAgent(
            controlling, ta=ta, config=config or IceConfig(software=software), name=name
        )
        self.name = self.ice.name
        #: what could not be gathered (one line each: server and reason)
        self.gather_errors: list[str] = []
        #: data that arrived while the receive queue was full
        self.dropped = 0
        self._queries = StunQueries(policy=stun_policy)
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: dict[SocketId, UdpSocket] = {}
        self._hosts: dict[SocketId, Candidate] = {}
        self._relays: dict[SocketId, Relay] = {}
        self._udp_relays: dict[tuple[SocketId, Endpoint], UdpRelay] = {}
        self._lines: list[str] = []
        self._gathering: asyncio.Task[None] | None = None
        self._gathered = False
        self._events: asyncio.Queue[IceEvent] = asyncio.Queue(EVENT_QUEUE)
        self._inbox: deque[bytes] = deque()
        self._changed = _Signal()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rtt = _RttMeter()
        self._remote_at: float | None = None
        self._selected_at: float | None = None
        self._consent_lost: ConsentLost | None = None
        self._closed = False
        self._relay_ids = 0

    def __repr__(self) -> str:
        return f"<Agent {self.name} {self.state.value}>"

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- inspection -----------------------------------------------------------

    @property
    def controlling(self) -> bool:
        return self.ice.controlling

    @property
    def state(self) -> IceState:
        return self.ice.state

    @property
    def local_credentials(self) -> Credentials:
        """Our ice-ufrag and ice-pwd (RFC 8445 §5.3), for the peer."""
        return self.ice.local_credentials

    @property
    def local_candidates(self) -> list[str]:
        """Our candidates so far, as RFC 8839 ``candidate:`` lines."""
        return list(self._lines)

    @property
    def gathering_done(self) -> bool:
        return self._gathered

    @property
    def events(self) -> asyncio.Queue[IceEvent]:
        """Every event but data, oldest first (the oldest go when it is full)."""
        return self._events

    @property
    def selected_pair(self) -> SelectedPair | None:
        """The pair data goes over (its candidates' ``type`` and ``address``)."""
        return self.ice.selected_pair

    @property
    def rtt(self) -> float | None:
        """Seconds: the latest check on the selected pair, else any check."""
        pair = self.selected_pair
        if pair is not None:
            on_pair = self._rtt.on_path(pair.socket, pair.remote.address)
            if on_pair is not None:
                return on_pair
        return self._rtt.last

    @property
    def time_to_connected(self) -> float | None:
        """Seconds from the remote credentials being set to the pair selected."""
        if self._remote_at is None or self._selected_at is None:
            return None
        return max(0.0, self._selected_at - self._remote_at)

    # --- gathering --------------------------------------------------------------

    async def gather(self) -> list[str]:
        """Gather every local candidate, then signal end-of-candidates.

        Host candidates first (at once), then server-reflexive and relayed
        ones as the servers answer, each bounded by ``gather_timeout``;
        failures are logged and listed in :attr:`gather_errors`. Returns
        :attr:`local_candidates`. Raises :class:`IceError` if nothing at all
        could be gathered.
        """
        if self._closed:
            raise IceClosedError(f"{self.name} is closed")
        if self._gathering is None:
            self._loop = asyncio.get_running_loop()
            self._gathering = asyncio.ensure_future(self._gather())
        try:
            await asyncio.shield(self._gathering)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise IceClosedError(f"{self.name} closed while gathering") from None
            raise
        if not self._lines:
            detail = "; ".join(self.gather_errors) or "no usable interface address"
            raise IceError(f"no local candidates: {detail}")
        return self.local_candidates

    async def candidates(self) -> AsyncIterator[str]:
        """Local candidate lines as they are gathered, until end-of-candidates."""
        index = 0
        while True:
            while index < len(self._lines):
                yield self._lines[index]
                index += 1
            if self._gathered or self._closed:
                return
            await self._changed.wait()

    async def _gather(self) -> None:
        try:
            # step 1: host candidates, one socket per address
            if not self.relay_only:
                for address in self._addresses():
                    await self._open_host(address)

            # step 2: server-reflexive and relayed candidates, in parallel
            jobs = {
                asyncio.ensure_future(self._gather_srflx(spec)): f"STUN {spec}"
                for spec in self.stun_servers
            }
            for cfg in self.turn_servers:
                jobs[asyncio.ensure_future(self._gather_relay(cfg))] = f"TURN {cfg}"
            if jobs:
                _, pending = await asyncio.wait(jobs, timeout=self.gather_timeout)
                for task in pending:
                    task.cancel()
                    self._gather_failed(
                        f"{jobs[task]}: no answer within {self.gather_timeout:g} s"
                    )
                await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            # step 3: RFC 8838 §8.2: end-of-candidates
            self._gathered = True
            if not self._closed:
                self.ice.add_local_candidate(None)
                self._service()
            self._publish(None)

    def _addresses(self) -> list[HostAddress]:
        if self.host_ips is not None:
            return [HostAddress(ip, "given", 0) for ip in self.host_ips]
        return host_addresses(
            use_ipv4=self.use_ipv4,
            use_ipv6=self.use_ipv6,
            use_loopback=self.use_loopback,
        )

    async def _open_host(self, address: HostAddress) -> None:
        try:
            sock = await open_udp_socket(address.ip, self._on_datagram)
        except GatherError as exc:
            self._gather_failed(str(exc))
            return
        self._sockets[sock.socket_id] = sock
        candidate = Candidate.host(sock.local, interface_index=address.index)
        self._hosts[sock.socket_id] = candidate
        self._add_local(candidate, sock.socket_id)

    def _family(self) -> socket.AddressFamily:
        if not self.use_ipv6:
            return socket.AF_INET
        if not self.use_ipv4:
            return socket.AF_INET6
        return socket.AF_UNSPEC

    async def _gather_srflx(self, spec: ServerSpec) -> None:
        """RFC 8445 §5.1.1.2: a Binding request from each host socket."""
        try:
            server = await resolve(spec, transport=Transport.UDP, family=self._family())
        except StunClientError as exc:
            self._gather_failed(f"STUN {spec}: {exc}")
            return
        target = Endpoint(server.ip, server.port)
        jobs = [
            self._srflx_from(sock, target, spec)
            for sock in list(self._sockets.values())
            if sock.socket_id in self._hosts and sock.local.is_ipv6 == target.is_ipv6
        ]
        await asyncio.gather(*jobs)

    async def _srflx_from(
        self, sock: UdpSocket, server: Endpoint, spec: ServerSpec
    ) -> None:
        try:
            mapped = await self._queries.binding(sock, server, software=self.software)
        except GatherError as exc:
            self._gather_failed(f"STUN {spec} from {sock.local}: {exc}")
            return
        self._add_srflx(sock.socket_id, mapped, server)

    def _add_srflx(
        self, socket_id: SocketId, mapped: Endpoint, server: Endpoint
    ) -> None:
        base = self._hosts.get(socket_id)
        if base is None or self._closed:
            return
        candidate = Candidate.server_reflexive(mapped, base=base, server=server)
        self._add_local(candidate, socket_id)

    async def _gather_relay(self, config: TurnServerConfig) -> None:
        """RFC 8445 §5.1.1.2: a TURN allocation; its relayed address (and, over
        UDP from a host socket, its mapped address) become candidates."""
        self._relay_ids += 1
        socket_id = f"turn-{self._relay_ids}"
        relay: Relay | None = None
        try:
            relay = await self._make_relay(socket_id, config)
            self._relays[socket_id] = relay
            allocation = await relay.allocate()
        except (StunClientError, UsageError) as exc:
            self._gather_failed(f"TURN {config}: {exc}")
            await self._drop_relay(relay)
            return
        except asyncio.CancelledError:
            # too late (gather_timeout) or closing: no allocation left behind
            await self._drop_relay(relay)
            raise
        if self._closed:
            return
        candidate = Candidate.relayed(
            allocation.relayed, server=allocation.server, mapped=allocation.mapped
        )
        self._add_local(candidate, socket_id)
        if isinstance(relay, UdpRelay) and allocation.mapped is not None:
            self._add_srflx(relay.sock.socket_id, allocation.mapped, allocation.server)

    async def _drop_relay(self, relay: Relay | None) -> None:
        if relay is None:
            return
        self._relays.pop(relay.socket_id, None)
        if isinstance(relay, UdpRelay):
            self._udp_relays.pop((relay.sock.socket_id, relay.server), None)
            if relay.owns_socket:
                self._sockets.pop(relay.sock.socket_id, None)
        await relay.close()

    async def _make_relay(self, socket_id: SocketId, config: TurnServerConfig) -> Relay:
        if config.transport.is_stream:
            return StreamRelay(
                socket_id,
                config,
                self._on_relay_data,
                family=self._family(),
                software=self.software,
            )
        found = await resolve(
            config.spec, transport=Transport.UDP, family=self._family()
        )
        server = Endpoint(found.ip, found.port)

        # share the host socket the kernel would send from, else open one
        source = route_source(server.ip)
        sock = next(
            (
                s
                for s in self._sockets.values()
                if s.local.ip == source and s.socket_id in self._hosts
            ),
            None,
        )
        owns = sock is None
        if sock is None:
            wildcard = "::" if server.is_ipv6 else "0.0.0.0"
            sock = await open_udp_socket(source or wildcard, self._on_datagram)
            self._sockets[sock.socket_id] = sock
        relay = UdpRelay(
            socket_id,
            sock,
            server,
            config,
            self._on_relay_data,
            owns_socket=owns,
            software=self.software,
        )
        self._udp_relays[(sock.socket_id, server)] = relay
        return relay

    def _gather_failed(self, message: str) -> None:
        logger.info("%s: %s", self.name, message)
        self.gather_errors.append(message)

    def _add_local(self, candidate: Candidate, socket_id: SocketId) -> None:
        if self._closed or self._gathered:
            return
        if not self.ice.add_local_candidate(candidate, socket=socket_id):
            return
        line = format_candidate(candidate)
        logger.debug("%s: local %s", self.name, line)
        self._lines.append(line)
        self._publish(line)
        self._service()

    def _publish(self, line: str | None) -> None:
        self._changed.fire()
        if self.on_candidate is not None:
            try:
                self.on_candidate(line)
            except Exception:
                logger.exception("%s: on_candidate callback failed", self.name)

    # --- the peer -----------------------------------------------------------------

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """The peer's ice-ufrag and ice-pwd; checks start once they are known."""
        self._require_open()
        self.ice.set_remote_credentials(ufrag, pwd)
        if self._remote_at is None:
            self._remote_at = self._now()
        self._service()

    def add_remote_candidate(self, line: str | None) -> bool:
        """A peer's ``candidate:`` line (RFC 8839), or None for end-of-candidates.

        ``a=end-of-candidates`` counts as None. Raises
        :class:`~natkit.ice.sdp.CandidateSyntaxError` for a bad line; returns
        False for a candidate the agent cannot use (not UDP, a duplicate).
        """
        self._require_open()
        if line is None or is_end_of_candidates(line):
            self.ice.add_remote_candidate(None)
            self._service()
            return True
        added = self.ice.add_remote_candidate(parse_candidate(line))
        self._service()
        return added

    # --- connecting and data ----------------------------------------------------

    async def connect(self, timeout: float | None = None) -> SelectedPair:
        """Wait until a pair is selected (RFC 8445 §8.1.1) and return it.

        Raises :class:`IceFailedError` when every pair failed (only after
        both ends of candidates), :class:`IceTimeoutError` after ``timeout``
        seconds, :class:`IceClosedError` if the agent is closed meanwhile.
        """
        if self._gathering is None:
            raise UsageError("call gather() before connect()")
        if self.ice.remote_credentials is None:
            raise UsageError("set_remote_credentials() before connect()")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    pair = self.selected_pair
                    if pair is not None:
                        return pair
                    self._raise_if_down()
                    await self._changed.wait()
        except TimeoutError:
            pairs = len(list(self.ice.checklist))
            raise IceTimeoutError(
                f"no ICE connection after {timeout:g} s "
                f"({len(self._lines)} local candidates, {pairs} pairs)"
            ) from None

    def _raise_if_down(self) -> None:
        state = self.state
        if state is IceState.CLOSED or self._closed:
            raise IceClosedError(f"{self.name} is closed")
        if state is IceState.FAILED:
            lost = self._consent_lost
            if lost is not None:
                raise ConsentLostError(
                    f"consent lost: no answer from {lost.pair.remote.address} "
                    f"for {lost.silent_for:.1f} s"
                )
            pairs = len(list(self.ice.checklist))
            raise IceFailedError(
                f"ICE failed: all {pairs} candidate pairs failed "
                f"({len(self._lines)} local candidates)"
            )

    def send(self, data: bytes) -> None:
        """Send ``data`` (one datagram) on the selected pair.

        Raises :class:`IceError` when no pair may carry data (not connected,
        or consent lost) and UsageError for data RFC 7983 would take for
        STUN (empty, or a first byte of 0-3).
        """
        if not data or data[0] <= 3:
            raise UsageError("ICE data must not be empty or start with a byte 0-3")
        self._raise_if_down()
        transmits = self.ice.send(data, now=self._now())
        if not transmits:
            raise IceError(f"{self.name}: no connected pair to send on yet")
        for transmit in transmits:
            self._transmit(transmit, record=False)
        self._arm()

    async def recv(self) -> bytes:
        """The next datagram from the peer.

        Raises :class:`ConsentLostError`, :class:`IceFailedError` or
        :class:`IceClosedError` once nothing more can come.
        """
        while not self._inbox:
            self._raise_if_down()
            await self._changed.wait()
        return self._inbox.popleft()

    async def close(self) -> None:
        """Stop ICE, delete the TURN allocations and close every socket."""
        if self._closed:
            return
        self._closed = True
        self.ice.close()
        self._drain_events()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gathering = self._gathering
        if gathering is not None and not gathering.done():
            gathering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gathering
        self._queries.close()
        relays = list(self._relays.values())
        await asyncio.gather(*(r.close() for r in relays), return_exceptions=True)
        for sock in self._sockets.values():
            sock.close()
        self._changed.fire()

    # --- plumbing -------------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def _require_open(self) -> None:
        if self._closed:
            raise IceClosedError(f"{self.name} is closed")

    def _on_datagram(self, sock: UdpSocket, source: Endpoint, data: bytes) -> None:
        now = self._now()
        if self._queries.handle(data, source, now):
            return
        relay = self._udp_relays.get((sock.socket_id, source))
        if relay is not None and relay.handle_datagram(data):
            return
        if self._closed or sock.socket_id not in self._hosts:
            return
        self._rtt.received(data, now)
        self.ice.handle_datagram(sock.socket_id, source, data, now)
        self._service()

    def _on_relay_data(self, socket_id: SocketId, peer: Endpoint, data: bytes) -> None:
        if self._closed:
            return
        now = self._now()
        self._rtt.received(data, now)
        self.ice.handle_datagram(socket_id, peer, data, now)
        self._service()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        self.ice.handle_timeout(self._now())
        self._service()

    def _service(self) -> None:
        """Send what the agent queued, handle its events, re-arm the timer."""
        if self._closed:
            return
        for transmit in self.ice.datagrams_to_send():
            self._transmit(transmit)
        self._drain_events()
        for transmit in self.ice.datagrams_to_send():
            self._transmit(transmit)
        self._arm()

    def _transmit(self, transmit: Transmit, *, record: bool = True) -> None:
        if record:
            self._rtt.sent(transmit, self._now())
        sock = self._sockets.get(transmit.socket)
        if sock is not None:
            sock.sendto(transmit.data, transmit.destination)
            return
        relay = self._relays.get(transmit.socket)
        if relay is not None:
            relay.send(transmit.destination, transmit.data)
            return
        logger.debug("%s: no socket %s", self.name, transmit.socket)

    def _arm(self) -> None:
        deadline = self.ice.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and self._loop is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _drain_events(self) -> None:
        changed = False
        while (event := self.ice.next_event()) is not None:
            changed = True
            if isinstance(event, DataReceived):
                if len(self._inbox) >= self._queue_size:
                    self.dropped += 1
                else:
                    self._inbox.append(event.data)
                continue
            self._handle_event(event)
            if self._events.full():
                self._events.get_nowait()
            self._events.put_nowait(event)
        if changed:
            self._changed.fire()

    def _handle_event(self, event: IceEvent) -> None:
        if isinstance(event, PermissionNeeded):
            relay = self._relays.get(event.socket)
            if relay is not None:
                relay.permit(event.ip)
        elif isinstance(event, PairSelected):
            self._selected_at = self._now()
            pair = event.pair
            logger.info("%s: selected %s", self.name, pair)
            self._callback(self.on_selected_pair, pair)
        elif isinstance(event, StateChanged):
            self._callback(self.on_state_change, event)
        elif isinstance(event, ConsentLost):
            logger.info("%s: consent lost on %s", self.name, event.pair)
            self._consent_lost = event

    def _callback(self, callback: Callable[[_T], None] | None, value: _T) -> None:
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            logger.exception("%s: event callback failed", self.name)
