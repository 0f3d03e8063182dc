"""RFC 5780 §6 over sockets: four server addresses, one responder.

An RFC 5780 server listens on two IPs (A1, A2) and two ports (P1, P2). The
sans-IO :class:`~natkit.nat.server.Rfc5780Responder` decides, for each
Binding request, which of the four transport addresses the response leaves
from (CHANGE-REQUEST, RFC 5780 §6.1 Table 1) and where it goes
(RESPONSE-PORT, RFC 5780 §7.5). :class:`Rfc5780Sockets` carries that out:

- :meth:`Rfc5780Sockets.extra_listeners` names the listeners to open next to
  the configured primary one (A1:P1): A1:P2, A2:P1 and A2:P2, for UDP, and
  for TCP when the primary address also has a TCP listener;
- every listener of :class:`~natkit.net.listeners.StunService` on one of
  the four addresses asks :meth:`Rfc5780Sockets.udp_handler` (or
  :meth:`~Rfc5780Sockets.stream_handler`) for its Binding handler when it
  opens; the UDP handler registers the socket, so that a reply can be sent
  from whichever of the four the responder picked;
- over TCP and TLS a reply goes back on the connection the request came in
  on (``stream=True``: CHANGE-REQUEST and RESPONSE-PORT are refused with
  400, RFC 5780 §3).

TURN requests and ChannelData never get here: the listeners give those to
the TURN driver first, so TURN keeps working on every one of the addresses.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder
from natkit.net.address import ListenAddress, Transport
from natkit.stun.server import ResponderStats

logger = logging.getLogger(__name__)

#: takes a datagram and the peer address as the loop reports it; sends the reply
UdpHandler = Callable[[bytes, tuple[Any, ...]], None]
#: takes a stream message and the peer address; returns the reply to write
StreamHandler = Callable[[bytes, tuple[Any, ...]], bytes | None]


@dataclass(frozen=True, slots=True)
class Rfc5780Stats:
    """Counters of :class:`Rfc5780Sockets` at one moment."""

    #: what the responder answered, refused and dropped
    responder: ResponderStats
    #: replies dropped because the socket to send them from was not open
    no_socket: int


class Rfc5780Sockets:
    """Sends the replies of an :class:`Rfc5780Responder` from the right socket.

    One instance is shared by every listener of a
    :class:`~natkit.net.listeners.StunService`; listeners on other
    addresses (another port, another family, TLS elsewhere) get no handler
    and keep answering plain Binding requests.
    """

    __slots__ = ("responder", "_udp", "_no_socket")

    def __init__(self, responder: Rfc5780Responder) -> None:
        self.responder = responder
        #: the UDP transport bound to each of the four addresses
        self._udp: dict[Endpoint, asyncio.DatagramTransport] = {}
        self._no_socket = 0

    @property
    def primary(self) -> Endpoint:
        return self.responder.primary

    @property
    def alternate(self) -> Endpoint:
        return self.responder.alternate

    def stats(self) -> Rfc5780Stats:
        return Rfc5780Stats(self.responder.stats(), self._no_socket)

    def extra_listeners(
        self, configured: Sequence[ListenAddress]
    ) -> tuple[ListenAddress, ...]:
        """The listeners to open besides ``configured`` (RFC 5780 §6).

        For UDP always, for TCP when the primary address has a TCP listener:
        the three other addresses of :attr:`Rfc5780Responder.addresses`,
        less those already configured.
        """
        have = {(a.transport, _endpoint(a.host, a.port)) for a in configured}
        transports = [Transport.UDP]
        if (Transport.TCP, self.primary) in have:
            transports.append(Transport.TCP)
        extra: list[ListenAddress] = []
        for transport in transports:
            for address in self.responder.addresses:
                if (transport, address) not in have:
                    extra.append(ListenAddress(transport, address.ip, address.port))
        return tuple(extra)

    def udp_handler(self, transport: asyncio.BaseTransport) -> UdpHandler | None:
        """The Binding handler of a UDP listener, or None if not one of the four.

        The transport is remembered as the socket of its address, to send
        replies from.
        """
        local = _local_endpoint(transport)
        if local is None or local not in self.responder.addresses:
            return None
        # neither asyncio's nor uvloop's UDP transport subclasses DatagramTransport
        self._udp[local] = cast(asyncio.DatagramTransport, transport)
        handle = self.responder.handle
        sockets = self._udp

        def on_datagram(data: bytes, addr: tuple[Any, ...]) -> None:
            source = _endpoint(str(addr[0]), int(addr[1]))
            reply = handle(data, local=local, source=source)
            if reply is None:
                return
            sender = sockets.get(reply.source)
            if sender is None or sender.is_closing():
                # RFC 5780 §6.1: never answer from another address than asked
                self._no_socket += 1
                return
            sender.sendto(reply.data, (reply.destination.ip, reply.destination.port))

        return on_datagram

    def stream_handler(self, transport: asyncio.BaseTransport) -> StreamHandler | None:
        """The Binding handler of a TCP/TLS connection, or None if not ours.

        RFC 5780 §3: over a stream the reply goes back on the connection;
        the responder refuses what would need another address.
        """
        local = _local_endpoint(transport)
        if local is None or local not in self.responder.addresses:
            return None
        handle = self.responder.handle

        def on_message(data: bytes, peer: tuple[Any, ...]) -> bytes | None:
            source = _endpoint(str(peer[0]), int(peer[1]))
            reply = handle(data, local=local, source=source, stream=True)
            return reply.data if reply is not None else None

        return on_message

    def describe(self) -> str:
        """One line for the log: the four addresses."""
        addresses = ", ".join(str(a) for a in self.responder.addresses)
        return f"RFC 5780 on {addresses}"


def _endpoint(host: str, port: int) -> Endpoint:
    """An :class:`Endpoint` from a socket address (IPv6 zone dropped)."""
    return Endpoint(host.partition("%")[0], port)


def _local_endpoint(transport: asyncio.BaseTransport) -> Endpoint | None:
    sockname = transport.get_extra_info("sockname")
    if not sockname:
        return None
    return _endpoint(str(sockname[0]), int(sockname[1]))
