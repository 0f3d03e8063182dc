"""Connectivity-check messages (RFC 8445 §7.1, §7.3), sans state.

Requests carry USERNAME (``remote_ufrag:local_ufrag``), PRIORITY (the
priority the sender's candidate would have as a peer-reflexive one),
ICE-CONTROLLING or ICE-CONTROLLED with the 64-bit tie-breaker, USE-CANDIDATE
when the controlling agent nominates, then MESSAGE-INTEGRITY keyed with the
receiver's password (RFC 8489 §9.1 short-term credentials) and FINGERPRINT
(RFC 8445 §7.1). Responses are signed with the password of the agent that
answers and carry XOR-MAPPED-ADDRESS (RFC 8445 §7.3.1.3).

:func:`authenticate` does the server-side checks of RFC 8489 §9.1.3 and
RFC 8445 §7.3 and raises :class:`StunProtocolError` with the code to send;
:func:`resolve_role` is the tie-breaker rule of RFC 8445 §7.3.1.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from natkit.ice.credentials import Credentials
from natkit.nat.endpoint import Endpoint
from natkit.stun.attributes import (
    Attribute,
    ErrorCodeAttr,
    IceControlled,
    IceControlling,
    MessageIntegrity,
    Priority,
    Software,
    UnknownAttributes,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from natkit.stun.constants import REASON_PHRASES, ErrorCode, MessageClass, Method
from natkit.stun.errors import StunProtocolError
from natkit.stun.integrity import short_term_key
from natkit.stun.message import Message, encode, new_transaction_id, verify_integrity


@dataclass(frozen=True, slots=True)
class CheckRequest:
    """What an authenticated Binding request asked (RFC 8445 §7.3).

    ``credentials`` are the local credentials it was signed with (the current
    ones, or the previous generation's during an ICE restart).
    ``controlling``/``controlled`` hold the peer's tie-breaker for the role
    attribute it sent (at most one of them is set).
    """

    message: Message
    credentials: Credentials
    remote_ufrag: str
    priority: int
    use_candidate: bool
    controlling: int | None
    controlled: int | None


class RoleDecision(Enum):
    """RFC 8445 §7.3.1.1: what a request's role attribute makes us do."""

    KEEP = "keep"
    SWITCH = "switch"
    CONFLICT = "487"


def request_attributes(
    *,
    local: Credentials,
    remote: Credentials,
    priority: int,
    controlling: bool,
    tie_breaker: int,
    use_candidate: bool = False,
    software: str | None = None,
) -> tuple[Attribute, ...]:
    """RFC 8445 §7.1.1-§7.1.3: the attributes of one connectivity check."""
    role: Attribute = (
        IceControlling(tie_breaker) if controlling else IceControlled(tie_breaker)
    )
    attributes: list[Attribute] = [
        Username(f"{remote.ufrag}:{local.ufrag}"),
        Priority(priority),
        role,
    ]
    if use_candidate:
        attributes.append(UseCandidate())
    if software:
        attributes.append(Software(software))
    return tuple(attributes)


def build_request(
    attributes: tuple[Attribute, ...], remote: Credentials
) -> tuple[bytes, Message]:
    """Encode a Binding request signed with the peer's password (RFC 8445 §7.1)."""
    msg = Message(
        Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attributes
    )
    data = encode(msg, key=short_term_key(remote.pwd), fingerprint=True)
    return data, msg


def build_success(
    request: Message, source: Endpoint, credentials: Credentials
) -> bytes:
    """RFC 8445 §7.3.1.3: XOR-MAPPED-ADDRESS of the source, signed, FINGERPRINT."""
    response = request.reply(
        MessageClass.SUCCESS, (XorMappedAddress(source.ip, source.port),)
    )
    return encode(response, key=short_term_key(credentials.pwd), fingerprint=True)


def build_error(
    request: Message, error: StunProtocolError, credentials: Credentials | None
) -> bytes:
    """An error response; signed when the request authenticated (RFC 8489 §9.1.3)."""
    attributes: list[Attribute] = [ErrorCodeAttr(error.code, error.reason)]
    if error.unknown_attributes:
        attributes.append(UnknownAttributes(error.unknown_attributes))
    response = request.reply(MessageClass.ERROR, tuple(attributes))
    key = short_term_key(credentials.pwd) if credentials is not None else None
    return encode(response, key=key, fingerprint=True)


def build_keepalive() -> bytes:
    """RFC 8445 §11: a Binding indication with FINGERPRINT, needing no answer."""
    msg = Message(Method.BINDING, MessageClass.INDICATION, new_transaction_id())
    return encode(msg, fingerprint=True)


def _error(code: ErrorCode, reason: str | None = None) -> StunProtocolError:
    return StunProtocolError(code, reason or REASON_PHRASES.get(code))


def authenticate(msg: Message, accepted: Sequence[Credentials]) -> CheckRequest:
    """The server-side checks of a Binding request (RFC 8489 §9.1.3, RFC 8445 §7.3).

    ``accepted`` are the local credentials a request may be signed with.
    Raises :class:`StunProtocolError`: 400 without USERNAME or
    MESSAGE-INTEGRITY, 401 when the username is not ours or the integrity
    check fails (these two are sent unsigned); after that 420 for unknown
    comprehension-required attributes, 400 without PRIORITY or with both
    role attributes, as a :class:`SignedError` that names the credentials
    to sign the error response with.
    """
    username = msg.get(Username)
    if username is None or msg.get(MessageIntegrity) is None:
        raise _error(ErrorCode.BAD_REQUEST, "USERNAME and MESSAGE-INTEGRITY needed")
    ours, sep, theirs = username.value.partition(":")
    credentials = next((c for c in accepted if c.ufrag == ours), None)
    if not sep or credentials is None:
        raise _error(ErrorCode.UNAUTHENTICATED, "unknown username")
    if not verify_integrity(msg, short_term_key(credentials.pwd)):
        raise _error(ErrorCode.UNAUTHENTICATED, "integrity check failed")
    return _parse_authenticated(msg, credentials, theirs)


class SignedError(StunProtocolError):
    """An error found after authentication: the response is signed."""

    def __init__(self, error: StunProtocolError, credentials: Credentials) -> None:
        super().__init__(
            error.code, error.reason, unknown_attributes=error.unknown_attributes
        )
        self.credentials = credentials


def _parse_authenticated(
    msg: Message, credentials: Credentials, remote_ufrag: str
) -> CheckRequest:
    if msg.unknown_required:
        raise SignedError(
            StunProtocolError(
                ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=msg.unknown_required
            ),
            credentials,
        )
    priority = msg.get(Priority)
    if priority is None:
        raise SignedError(_error(ErrorCode.BAD_REQUEST, "PRIORITY needed"), credentials)
    controlling = msg.get(IceControlling)
    controlled = msg.get(IceControlled)
    if controlling is not None and controlled is not None:
        raise SignedError(
            _error(ErrorCode.BAD_REQUEST, "both ICE-CONTROLLING and ICE-CONTROLLED"),
            credentials,
        )
    return CheckRequest(
        message=msg,
        credentials=credentials,
        remote_ufrag=remote_ufrag,
        priority=priority.value,
        use_candidate=msg.get(UseCandidate) is not None,
        controlling=controlling.value if controlling is not None else None,
        controlled=controlled.value if controlled is not None else None,
    )


def resolve_role(
    *, controlling: bool, tie_breaker: int, request: CheckRequest
) -> RoleDecision:
    """RFC 8445 §7.3.1.1: settle a role conflict by the tie-breakers.

    Both controlling: the larger tie-breaker keeps the role; we answer 487
    if ours is at least theirs, else we switch to controlled. Both
    controlled: we switch to controlling if ours is at least theirs, else 487.
    """
    if controlling and request.controlling is not None:
        if tie_breaker >= request.controlling:
            return RoleDecision.CONFLICT
        return RoleDecision.SWITCH
    if not controlling and request.controlled is not None:
        if tie_breaker >= request.controlled:
            return RoleDecision.SWITCH
        return RoleDecision.CONFLICT
    return RoleDecision.KEEP


def response_error(msg: Message) -> ErrorCodeAttr | None:
    return msg.get(ErrorCodeAttr) if msg.cls is MessageClass.ERROR else None
