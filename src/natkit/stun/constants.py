"""STUN wire constants, grouped by the RFC that defines them.

Values are those of the IANA "Session Traversal Utilities for NAT (STUN)
Parameters" registry; ``tests/test_stun_constants.py`` checks them.
"""

from enum import IntEnum

#: RFC 8489 §5: the fixed value in bytes 4-7 of every RFC 5389/8489 message.
MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")

#: RFC 8489 §5: the STUN header is 20 bytes.
HEADER_LENGTH = 20

#: RFC 8489 §14.7: FINGERPRINT is CRC-32 of the message XOR this value.
FINGERPRINT_XOR = 0x5354554E


class MessageClass(IntEnum):
    """RFC 8489 §5: the two class bits C1 C0."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(IntEnum):
    """STUN methods: RFC 8489 §18.2 (Binding) and RFC 8656 §17 (TURN)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class AttrType(IntEnum):
    """STUN attribute types.

    RFC 8489 §18.3 (STUN), RFC 8656 §18 (TURN), RFC 5780 §9.1 (NAT behaviour
    discovery), RFC 8445 §16.1 (ICE). Types below 0x8000 are
    comprehension-required, the rest comprehension-optional (RFC 8489 §14).
    """

    # RFC 8489 comprehension-required
    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020

    # RFC 8656 (TURN) comprehension-required
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    RESERVATION_TOKEN = 0x0022

    # RFC 5780 comprehension-required
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027

    # RFC 8445 (ICE) comprehension-required
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025

    # RFC 8489 comprehension-optional
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028

    # RFC 8656 comprehension-optional
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    ICMP = 0x8004

    # RFC 5780 comprehension-optional
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C

    # RFC 8445 comprehension-optional
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


def is_comprehension_required(attr_type: int) -> bool:
    """RFC 8489 §14: attribute types 0x0000-0x7FFF must be understood."""
    return attr_type < 0x8000


class ErrorCode(IntEnum):
    """STUN error codes: RFC 8489 §14.8 and RFC 8656 §18 (TURN)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    MOBILITY_FORBIDDEN = 405
    UNKNOWN_ATTRIBUTE = 420
    ALLOCATION_MISMATCH = 437
    STALE_NONCE = 438
    ADDRESS_FAMILY_NOT_SUPPORTED = 440
    WRONG_CREDENTIALS = 441
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442
    PEER_ADDRESS_FAMILY_MISMATCH = 443
    ALLOCATION_QUOTA_REACHED = 486
    ROLE_CONFLICT = 487
    SERVER_ERROR = 500
    INSUFFICIENT_CAPACITY = 508


#: Default reason phrases (RFC 8489 §14.8, RFC 8656 §18).
REASON_PHRASES: dict[int, str] = {
    ErrorCode.TRY_ALTERNATE: "Try Alternate",
    ErrorCode.BAD_REQUEST: "Bad Request",
    ErrorCode.UNAUTHENTICATED: "Unauthenticated",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.MOBILITY_FORBIDDEN: "Mobility Forbidden",
    ErrorCode.UNKNOWN_ATTRIBUTE: "Unknown Attribute",
    ErrorCode.ALLOCATION_MISMATCH: "Allocation Mismatch",
    ErrorCode.STALE_NONCE: "Stale Nonce",
    ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED: "Address Family not Supported",
    ErrorCode.WRONG_CREDENTIALS: "Wrong Credentials",
    ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL: "Unsupported Transport Protocol",
    ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH: "Peer Address Family Mismatch",
    ErrorCode.ALLOCATION_QUOTA_REACHED: "Allocation Quota Reached",
    ErrorCode.ROLE_CONFLICT: "Role Conflict",
    ErrorCode.SERVER_ERROR: "Server Error",
    ErrorCode.INSUFFICIENT_CAPACITY: "Insufficient Capacity",
}


class AddressFamily(IntEnum):
    """RFC 8489 §14.1: the family byte of (XOR-)MAPPED-ADDRESS."""

    IPV4 = 0x01
    IPV6 = 0x02


class PasswordAlgorithm(IntEnum):
    """RFC 8489 §18.5: STUN password algorithms."""

    MD5 = 0x0001
    SHA256 = 0x0002
