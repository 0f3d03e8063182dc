"""The STUN server's request handling, sans-IO.

:class:`BindingResponder` takes one received message and the address it came
from and returns the bytes to send back, or None. It answers Binding requests
(RFC 8489 §6.3), refuses what it does not support on the wire (420, 400) and
counts what it drops. Other methods are dispatched through a table so the TURN
server can add its handlers later; until then they get 400.
"""

from collections.abc import Callable
from dataclasses import dataclass

from natkit.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCodeAttr,
    MappedAddress,
    Padding,
    ResponsePort,
    Software,
    UnknownAttributes,
    XorMappedAddress,
)
from natkit.stun.constants import AttrType, ErrorCode, MessageClass, Method
from natkit.stun.errors import DecodeError, StunProtocolError, UsageError
from natkit.stun.message import Message, decode, encode

#: A method handler: (request, source ip, source port) -> success attributes.
#: It raises StunProtocolError to send an error response instead.
MethodHandler = Callable[[Message, str, int], tuple[Attribute, ...]]


@dataclass(frozen=True, slots=True)
class ResponderStats:
    """Counters of a :class:`BindingResponder`, at one moment."""

    #: requests that were answered, with success or error
    requests: int = 0
    #: success responses sent
    success: int = 0
    #: error responses sent (400, 420, ...)
    errors: int = 0
    #: messages dropped because they did not decode (RFC 8489 §6.3)
    malformed: int = 0
    #: indications and responses from clients, dropped
    ignored: int = 0


class BindingResponder:
    """Answers STUN Binding requests (RFC 8489 §6.3, §12.2 for RFC 3489).

    ``software``, when set, is sent as SOFTWARE in every response
    (RFC 8489 §14.14). A request with FINGERPRINT gets a response with
    FINGERPRINT (RFC 8489 §7.3).
    """

    __slots__ = (
        "software",
        "_software_attr",
        "_methods",
        "_success",
        "_errors",
        "_malformed",
        "_ignored",
    )

    def __init__(self, software: str | None = None) -> None:
        self.software = software
        self._software_attr: tuple[Attribute, ...] = (
            (Software(software),) if software is not None else ()
        )
        self._methods: dict[int, MethodHandler] = {Method.BINDING: self._binding}
        self._success = 0
        self._errors = 0
        self._malformed = 0
        self._ignored = 0

    def add_method(self, method: int, handler: MethodHandler) -> None:
        """Dispatch requests of ``method`` to ``handler`` (for TURN, RFC 8656)."""
        if method in self._methods:
            raise UsageError(f"method 0x{method:03x} already has a handler")
        self._methods[method] = handler

    def stats(self) -> ResponderStats:
        return ResponderStats(
            requests=self._success + self._errors,
            success=self._success,
            errors=self._errors,
            malformed=self._malformed,
            ignored=self._ignored,
        )

    def handle(self, data: bytes, source_ip: str, source_port: int) -> bytes | None:
        """The response to ``data`` from ``source_ip``:``source_port``, or None.

        RFC 8489 §6.3: a message that does not decode is dropped; so are
        indications and responses (a server sends no answer to them).
        """
        try:
            request = decode(data)
        except DecodeError:
            self._malformed += 1
            return None
        if request.cls is not MessageClass.REQUEST:
            self._ignored += 1
            return None
        return self.respond(request, source_ip, source_port)

    def respond(self, request: Message, source_ip: str, source_port: int) -> bytes:
        """Encode the response to a decoded request (RFC 8489 §6.3.1)."""
        try:
            # RFC 8489 §6.3.1.1: unknown comprehension-required attributes
            # get a 420 that lists them
            if request.unknown_required:
                raise StunProtocolError(
                    ErrorCode.UNKNOWN_ATTRIBUTE,
                    unknown_attributes=request.unknown_required,
                )
            handler = self._methods.get(request.method)
            if handler is None:
                raise StunProtocolError(ErrorCode.BAD_REQUEST, "Unsupported Method")
            attributes = handler(request, source_ip, source_port)
        except StunProtocolError as exc:
            self._errors += 1
            return self._error_response(request, exc)
        self._success += 1
        response = request.reply(MessageClass.SUCCESS, attributes + self._software_attr)
        return encode(response, fingerprint=request.has_fingerprint)

    def _error_response(self, request: Message, exc: StunProtocolError) -> bytes:
        """RFC 8489 §6.3.1.1: ERROR-CODE, and UNKNOWN-ATTRIBUTES for 420."""
        attributes: tuple[Attribute, ...] = (ErrorCodeAttr(exc.code, exc.reason),)
        if exc.unknown_attributes:
            attributes += (UnknownAttributes(exc.unknown_attributes),)
        response = request.reply(MessageClass.ERROR, attributes + self._software_attr)
        return encode(response, fingerprint=request.has_fingerprint)

    def _binding(
        self, request: Message, source_ip: str, source_port: int
    ) -> tuple[Attribute, ...]:
        """RFC 8489 §6.3.1 Binding: the reflexive transport address.

        RFC 8489 §12.2: a request without the magic cookie comes from an
        RFC 3489 client, which understands MAPPED-ADDRESS only.

        This server has no alternate address, so the RFC 5780 §6.1 requests it
        cannot honour (changing address or port, RESPONSE-PORT, PADDING) are
        refused with 420 rather than answered as if they had been followed.
        """
        unsupported = _unsupported_rfc5780(request)
        if unsupported:
            raise StunProtocolError(
                ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=unsupported
            )
        if request.is_rfc3489:
            return (MappedAddress(source_ip, source_port),)
        return (XorMappedAddress(source_ip, source_port),)


def _unsupported_rfc5780(request: Message) -> tuple[int, ...]:
    """RFC 5780 attributes in ``request`` that this server cannot act on."""
    found: list[int] = []
    for attr in request.attributes:
        if isinstance(attr, ChangeRequest):
            # a CHANGE-REQUEST with no flag set asks for nothing
            if attr.change_ip or attr.change_port:
                found.append(AttrType.CHANGE_REQUEST)
        elif isinstance(attr, ResponsePort):
            found.append(AttrType.RESPONSE_PORT)
        elif isinstance(attr, Padding):
            found.append(AttrType.PADDING)
    return tuple(dict.fromkeys(found))
