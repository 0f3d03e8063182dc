"""The asyncio driver of the sans-IO TURN core (RFC 8656).

:class:`TurnDriver` sits between the listeners of
:class:`~natkit.net.listeners.StunService`, the relay sockets of
:class:`~natkit.net.relay.RelayPorts` and one
:class:`~natkit.turn.server.TurnServer`:

- a client message the fast path does not take (every TURN request, Send
  indications, ChannelData on a channel not yet known) goes to
  ``handle_client_datagram``; a peer datagram the fast path does not take
  goes to ``handle_peer_datagram``; a closed TCP/TLS connection to
  ``handle_client_closed``;
- the actions that come back are carried out in order: SendToClient on the
  client's :class:`~natkit.net.relay.ClientLink`, SendToPeer on the relay
  socket, CloseRelay by closing the socket (``RelayPorts.release`` has
  already done so: the core releases before it asks to close);
- one ``loop.call_at`` timer follows ``next_deadline`` and calls
  ``handle_timeout``;
- after the core relayed ChannelData, the driver learns the fast-path
  routes of that channel from the core's state (``allocation_for``, the
  allocation's ``channels`` and ``permissions``), see :mod:`natkit.net.relay`.

Times are ``loop.time()``, one monotonic clock for the core and the fast path.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natkit.net.relay import (
    ChannelRoute,
    ClientLink,
    PeerAddr,
    PeerRoute,
    RelayCounters,
    RelayPorts,
    RelaySocket,
    peer_key,
)
from natkit.turn.allocation import Allocation
from natkit.turn.server import (
    Action,
    CloseRelay,
    SendToClient,
    SendToPeer,
    ServerStats,
    TurnServer,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnStats:
    """Counters of the TURN side of a server, at one moment."""

    #: what the core counted
    core: ServerStats
    #: relay sockets open now (allocations and reserved ports)
    relay_sockets: int
    #: ChannelData relayed by the fast path, each way
    fast_to_peer: int
    fast_to_client: int
    #: datagrams the kernel refused to send to a peer
    send_errors: int
    #: relay ports skipped because another program held them
    bind_failures: int
    #: messages that hit a bug in natkit (logged once, then counted)
    internal_errors: int


class TurnDriver:
    """Runs one :class:`TurnServer` on the event loop; see the module doc."""

    def __init__(self, server: TurnServer, ports: RelayPorts) -> None:
        if server.relays is not ports:
            raise ValueError("the TurnServer must allocate from these RelayPorts")
        self.server = server
        self.ports = ports
        #: links of clients with an allocation, by 5-tuple
        self.links: dict[Any, ClientLink] = {}
        self.counters: RelayCounters = ports.counters
        self.internal_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False
        self._closers: list[Callable[[], None]] = []

    # --- lifecycle ---------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop; relay sockets can be opened from now on."""
        self._loop = loop
        self.ports.start(loop, on_peer=self.peer_datagram, on_release=self._released)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call ``closer`` when the driver closes (e.g. to close a user store)."""
        self._closers.append(closer)

    def revoke(self, allocation_id: str) -> bool:
        """Delete an allocation now and close its relays (the admin API's order).

        False when there is no live allocation ``allocation_id``.
        """
        if self._closed or self._loop is None:
            return False
        actions = self.server.revoke(allocation_id, self._loop.time())
        if actions is None:
            return False
        self._carry_out(actions, None)
        self._reschedule()
        return True

    def close(self) -> None:
        """Delete every allocation (server shutdown) and close every relay."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            if self._loop is not None:
                self._carry_out(self.server.close(self._loop.time()), None)
        finally:
            self.ports.close()
            self.links.clear()
            for closer in self._closers:
                closer()

    def stats(self) -> TurnStats:
        c = self.counters
        return TurnStats(
            core=self.server.stats(),
            relay_sockets=len(self.ports),
            fast_to_peer=c.fast_to_peer,
            fast_to_client=c.fast_to_client,
            send_errors=c.send_errors,
            bind_failures=c.bind_failures,
            internal_errors=self.internal_errors,
        )

    def time(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else 0.0

    # --- input -------------------------------------------------------------

    def client_message(self, link: ClientLink, data: bytes) -> None:
        """A STUN or ChannelData message from ``link`` for the core."""
        if self._closed or self._loop is None:
            return
        try:
            actions = self.server.handle_client_datagram(
                data, link.client, self._loop.time()
            )
            self._carry_out(actions, link)
            self._sync_link(link)
            if data and data[0] & 0xF0 == 0x40 and link.alloc is not None:
                if any(type(a) is SendToPeer for a in actions):
                    self._learn_channel(link, data[0] << 8 | data[1])
            self._reschedule()
        except Exception:
            self._internal_error()

    def peer_datagram(self, relay: RelaySocket, data: bytes, addr: PeerAddr) -> None:
        """A datagram on a relay socket the fast path did not take."""
        if self._closed or self._loop is None:
            return
        try:
            ip = addr[0].partition("%")[0]
            actions = self.server.handle_peer_datagram(
                relay.relay, ip, addr[1], data, self._loop.time()
            )
            if not actions:
                return
            self._carry_out(actions, relay.link)
            first = actions[0]
            if type(first) is SendToClient and first.data[0] & 0xF0 == 0x40:
                self._learn_peer(relay, ip, addr)
        except Exception:
            self._internal_error()

    def client_closed(self, link: ClientLink) -> None:
        """A TCP/TLS connection ended: its allocation goes (RFC 8656 §3.1)."""
        if self._closed or self._loop is None:
            return
        try:
            if link.alloc is not None:
                actions = self.server.handle_client_closed(
                    link.client, self._loop.time()
                )
                self._carry_out(actions, None)
            self._unlink(link)
        except Exception:
            self._internal_error()

    # --- output ------------------------------------------------------------

    def _carry_out(self, actions: list[Action], link: ClientLink | None) -> None:
        for action in actions:
            if type(action) is SendToClient:
                target = link
                if target is None or (
                    action.client is not target.client
                    and action.client != target.client
                ):
                    target = self.links.get(action.client)
                if target is not None:
                    target.send(action.data)
            elif type(action) is SendToPeer:
                relay = self.ports.sockets.get(action.relay)
                if relay is not None:
                    relay.send(
                        action.data,
                        (action.peer_ip, action.peer_port),
                        action.dont_fragment,
                    )
            elif type(action) is CloseRelay:
                self.ports.release(action.relay)

    # --- links and routes ----------------------------------------------------

    def _sync_link(self, link: ClientLink) -> None:
        """Follow the core: does this 5-tuple have an allocation now?"""
        alloc = self.server.allocation_for(link.client)
        if alloc is link.alloc:
            return
        if link.alloc is not None:
            self._unlink(link)
        if alloc is not None:
            self._link(link, alloc)

    def _link(self, link: ClientLink, alloc: Allocation) -> None:
        link.alloc = alloc
        self.links[link.client] = link
        if link.registry is not None:
            link.registry[link.key] = link
        for relay in alloc.relays:
            relay_socket = self.ports.sockets.get(relay)
            if relay_socket is not None:
                relay_socket.link = link

    def _unlink(self, link: ClientLink) -> None:
        link.alloc = None
        link.routes.clear()
        if self.links.get(link.client) is link:
            del self.links[link.client]
        registry = link.registry
        if registry is not None and registry.get(link.key) is link:
            del registry[link.key]

    def _released(self, relay: RelaySocket) -> None:
        """A relay socket is about to close: drop its allocation's link."""
        link = relay.link
        if link is not None and link.alloc is not None and not link.alloc.alive:
            self._unlink(link)

    def _learn_channel(self, link: ClientLink, number: int) -> None:
        """The core relayed ChannelData on ``number``: remember the route."""
        alloc = link.alloc
        if alloc is None:
            return
        binding = alloc.channels.get(number)
        if binding is None:
            return
        perm = alloc.permissions.get(binding.peer_ip)
        relay = self.ports.sockets.get(binding.relay)
        if perm is None or relay is None:
            return
        link.routes[number] = ChannelRoute(binding, perm, alloc, relay)
        key = peer_key(binding.peer_ip, binding.peer_port)
        relay.peers[key] = PeerRoute(binding, perm, alloc, link)

    def _learn_peer(self, relay: RelaySocket, ip: str, addr: PeerAddr) -> None:
        """The core sent a peer's datagram as ChannelData: remember the route."""
        link = relay.link
        alloc = self.server.allocation_at(relay.relay)
        if link is None or alloc is None or link.alloc is not alloc:
            return
        binding = alloc.channel_by_peer.get((ip, addr[1]))
        perm = alloc.permissions.get(ip)
        if binding is not None and perm is not None:
            relay.peers[addr] = PeerRoute(binding, perm, alloc, link)

    # --- the timer -----------------------------------------------------------

    def _reschedule(self) -> None:
        """One call_at, at the core's next deadline."""
        loop = self._loop
        if loop is None or self._closed:
            return
        deadline = self.server.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it runs first, and reschedules
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            self._carry_out(self.server.handle_timeout(loop.time()), None)
        except Exception:
            self._internal_error()
        self._reschedule()

    def _internal_error(self) -> None:
        """A bug in handling one message: log the first, count all."""
        self.internal_errors += 1
        level = logging.ERROR if self.internal_errors == 1 else logging.DEBUG
        logger.log(level, "internal error in the TURN driver", exc_info=True)
