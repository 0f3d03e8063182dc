"""The RFC 5780 server side, sans-IO: answering from the right address.

A server for NAT behaviour discovery listens on two IPs (A1, A2) and two ports
(P1, P2), four transport addresses in all (RFC 5780 §6). For each Binding
request :class:`Rfc5780Responder` decides which of the four addresses the
response leaves from (CHANGE-REQUEST, RFC 5780 §6.1 Table 1) and where it
goes (RESPONSE-PORT, RFC 5780 §7.5), adds RESPONSE-ORIGIN and OTHER-ADDRESS,
and pads the response when asked (PADDING, RFC 5780 §7.6) without letting
it grow beyond the request. It returns a :class:`ServerReply`; the driver
sends ``reply.data`` from its socket bound to ``reply.source`` to
``reply.destination``.
"""

import logging
from dataclasses import dataclass

from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCodeAttr,
    MappedAddress,
    OtherAddress,
    Padding,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    XorMappedAddress,
)
from natkit.stun.constants import ErrorCode, MessageClass, Method
from natkit.stun.errors import DecodeError, StunProtocolError, UsageError
from natkit.stun.message import Message, decode, encode
from natkit.stun.server import ResponderStats

logger = logging.getLogger(__name__)

#: RFC 8489 §14: every attribute has a 4-byte type/length header.
_ATTR_HEADER = 4


@dataclass(frozen=True, slots=True)
class ServerReply:
    """What to send: from which of the server's addresses, to where, what."""

    source: Endpoint
    destination: Endpoint
    data: bytes


class Rfc5780Responder:
    """Answers Binding requests for NAT behaviour discovery (RFC 5780 §6).

    ``primary`` is (A1, P1), ``alternate`` (A2, P2): two different IPs of
    one family and two different ports. The driver listens on all four of
    :attr:`addresses` and passes the address a request arrived on as
    ``local``.

    PADDING (RFC 5780 §7.6) asks for a large response to test
    fragmentation. RFC 5780 §6.1 says to pad to the MTU; to keep the server
    from amplifying traffic towards a spoofed source, the padded response is
    sized to the request instead: it is never longer than the request plus
    ``padding_margin`` bytes, or, when the unpadded response is already
    longer than that, it carries an empty PADDING.
    """

    def __init__(
        self,
        primary: Endpoint,
        alternate: Endpoint,
        *,
        software: str | None = None,
        padding_margin: int = 0,
    ) -> None:
        if primary.ip == alternate.ip:
            raise UsageError(
                "RFC 5780 §6: the alternate IP must differ from the primary"
            )
        if primary.port == alternate.port:
            raise UsageError(
                "RFC 5780 §6: the alternate port must differ from the primary"
            )
        if primary.is_ipv6 != alternate.is_ipv6:
            raise UsageError("the primary and alternate IPs must be of one family")
        if padding_margin < 0:
            raise UsageError(f"padding margin must be >= 0, not {padding_margin}")
        self.primary = primary
        self.alternate = alternate
        self.padding_margin = padding_margin
        self._software: tuple[Attribute, ...] = (
            (Software(software),) if software is not None else ()
        )
        a1, a2 = primary.ip, alternate.ip
        p1, p2 = primary.port, alternate.port
        self._addresses = (
            Endpoint(a1, p1),
            Endpoint(a1, p2),
            Endpoint(a2, p1),
            Endpoint(a2, p2),
        )
        self._success = 0
        self._errors = 0
        self._malformed = 0
        self._ignored = 0

    @property
    def addresses(self) -> tuple[Endpoint, ...]:
        """The four transport addresses to listen on: A1:P1, A1:P2, A2:P1, A2:P2."""
        return self._addresses

    def stats(self) -> ResponderStats:
        return ResponderStats(
            requests=self._success + self._errors,
            success=self._success,
            errors=self._errors,
            malformed=self._malformed,
            ignored=self._ignored,
        )

    def other_address(self, local: Endpoint) -> Endpoint:
        """RFC 5780 §6.1: Ca:Cp, the other IP and the other port than ``local``."""
        self._check_local(local)
        return Endpoint(self._other_ip(local.ip), self._other_port(local.port))

    def handle(
        self,
        data: bytes,
        *,
        local: Endpoint,
        source: Endpoint,
        stream: bool = False,
    ) -> ServerReply | None:
        """The reply to ``data`` received on ``local`` from ``source``, or None.

        RFC 8489 §6.3: what does not decode is dropped, and so are
        indications and responses. ``stream`` is True for TCP and TLS, where
        the reply goes back on the same connection (see :meth:`respond`).
        """
        self._check_local(local)
        try:
            request = decode(data)
        except DecodeError:
            self._malformed += 1
            return None
        if request.cls is not MessageClass.REQUEST:
            self._ignored += 1
            return None
        return self.respond(request, local=local, source=source, stream=stream)

    def respond(
        self,
        request: Message,
        *,
        local: Endpoint,
        source: Endpoint,
        stream: bool = False,
    ) -> ServerReply:
        """Build the reply to a decoded request (RFC 5780 §6.1).

        Over TCP and TLS (``stream``) a response can only go back on the
        connection it came in on, so RFC 5780 §3 limits CHANGE-REQUEST and
        RESPONSE-PORT to UDP: a stream request asking for either is refused
        with 400 rather than answered as if it had been honoured.
        """
        self._check_local(local)
        try:
            if stream:
                _refuse_on_stream(request)
            reply = self._binding(request, local, source)
        except StunProtocolError as exc:
            self._errors += 1
            logger.debug("%s from %s: error %s", request, source, exc)
            return self._error(request, exc, local, source)
        self._success += 1
        return reply

    def _binding(
        self, request: Message, local: Endpoint, source: Endpoint
    ) -> ServerReply:
        """RFC 5780 §6.1, step by step."""
        # RFC 8489 §6.3.1.1: unknown comprehension-required attributes
        if request.unknown_required:
            raise StunProtocolError(
                ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=request.unknown_required
            )
        if request.method != Method.BINDING:
            raise StunProtocolError(ErrorCode.BAD_REQUEST, "Unsupported Method")

        # RFC 5780 §6.1 and §7.5: PADDING together with RESPONSE-PORT is a 400
        padding = request.get(Padding)
        response_port = request.get(ResponsePort)
        if padding is not None and response_port is not None:
            raise StunProtocolError(ErrorCode.BAD_REQUEST, "PADDING with RESPONSE-PORT")
        if response_port is not None and response_port.port == 0:
            raise StunProtocolError(ErrorCode.BAD_REQUEST, "RESPONSE-PORT 0")

        # RFC 5780 §6.1 Table 1: where the response leaves from
        change = request.get(ChangeRequest) or ChangeRequest()
        origin = Endpoint(
            self._other_ip(local.ip) if change.change_ip else local.ip,
            self._other_port(local.port) if change.change_port else local.port,
        )

        # RFC 5780 §6.1: MAPPED-ADDRESS and XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN,
        # OTHER-ADDRESS (Ca:Cp whatever the flags)
        attributes: tuple[Attribute, ...] = (MappedAddress(source.ip, source.port),)
        if not request.is_rfc3489:
            attributes = (XorMappedAddress(source.ip, source.port), *attributes)
        other = self.other_address(local)
        attributes += (
            ResponseOrigin(origin.ip, origin.port),
            OtherAddress(other.ip, other.port),
            *self._software,
        )

        # RFC 5780 §7.5: RESPONSE-PORT redirects to the source IP, that port
        destination = source
        if response_port is not None:
            destination = source.with_port(response_port.port)
        data = self._encode(request, attributes, padded=padding is not None)
        return ServerReply(origin, destination, data)

    def _encode(
        self, request: Message, attributes: tuple[Attribute, ...], *, padded: bool
    ) -> bytes:
        """Encode the success response, padded to the request's size if asked."""
        fingerprint = request.has_fingerprint
        response = request.reply(MessageClass.SUCCESS, attributes)
        if not padded:
            return encode(response, fingerprint=fingerprint)

        # RFC 5780 §7.6: PADDING must be present; size it so that the
        # response is no longer than the request plus the margin
        base = len(encode(response, fingerprint=fingerprint))
        request_length = len(request.raw) or len(encode(request))
        budget = request_length + self.padding_margin - base - _ATTR_HEADER
        length = max(0, budget - budget % 4)
        padded_response = request.reply(
            MessageClass.SUCCESS, (*attributes, Padding(bytes(length)))
        )
        return encode(padded_response, fingerprint=fingerprint)

    def _error(
        self,
        request: Message,
        exc: StunProtocolError,
        local: Endpoint,
        source: Endpoint,
    ) -> ServerReply:
        """RFC 8489 §6.3.1.1: an error response, from ``local`` to the source.

        The error goes back where the request came from, not to a
        RESPONSE-PORT or from a changed address: the request was not honoured.
        """
        attributes: tuple[Attribute, ...] = (ErrorCodeAttr(exc.code, exc.reason),)
        if exc.unknown_attributes:
            attributes += (UnknownAttributes(exc.unknown_attributes),)
        response = request.reply(MessageClass.ERROR, attributes + self._software)
        data = encode(response, fingerprint=request.has_fingerprint)
        return ServerReply(local, source, data)

    def _check_local(self, local: Endpoint) -> None:
        if local not in self._addresses:
            raise UsageError(f"{local} is not one of this server's addresses")

    def _other_ip(self, ip: str) -> str:
        return self.alternate.ip if ip == self.primary.ip else self.primary.ip

    def _other_port(self, port: int) -> int:
        return self.alternate.port if port == self.primary.port else self.primary.port


def _refuse_on_stream(request: Message) -> None:
    """RFC 5780 §3: changed addresses and RESPONSE-PORT are UDP only."""
    change = request.get(ChangeRequest)
    if change is not None and (change.change_ip or change.change_port):
        raise StunProtocolError(ErrorCode.BAD_REQUEST, "CHANGE-REQUEST over TCP")
    if request.get(ResponsePort) is not None:
        raise StunProtocolError(ErrorCode.BAD_REQUEST, "RESPONSE-PORT over TCP")
