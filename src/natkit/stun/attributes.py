"""STUN attributes: one frozen dataclass and one symmetric codec each.

Every attribute class has a ``TYPE`` (its IANA number), ``encode_value``
(the value bytes, without the 4-byte type/length header or padding) and
``decode_value`` (the inverse). The XOR address attributes need the
transaction id, so both directions take it. ``decode_value`` raises only
:class:`DecodeError`, with the offset of the value inside the message.

RFC 8489 §14 (STUN), RFC 8656 §18 (TURN), RFC 5780 §7 (NAT behaviour
discovery), RFC 8445 §7.1.1 (ICE).
"""

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

from natkit.stun.constants import (
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    AddressFamily,
    AttrType,
)
from natkit.stun.errors import DecodeError, UsageError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Attribute:
    """Base of all STUN attributes."""

    __slots__ = ()

    TYPE: ClassVar[int]

    def encode_value(self, transaction_id: bytes) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        raise NotImplementedError


#: attribute type -> class; filled by ``@_register``
REGISTRY: dict[int, type[Attribute]] = {}


_A = TypeVar("_A", bound=type[Attribute])


def _register(cls: _A) -> _A:
    REGISTRY[cls.TYPE] = cls
    return cls


def _expect_length(value: bytes, length: int, name: str, offset: int) -> None:
    if len(value) != length:
        raise DecodeError(f"{name} must be {length} bytes, got {len(value)}", offset)


def _decode_utf8(value: bytes, name: str, offset: int, max_bytes: int) -> str:
    if len(value) > max_bytes:
        raise DecodeError(f"{name} longer than {max_bytes} bytes", offset)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{name} is not valid UTF-8", offset + exc.start) from None


def _encode_utf8(text: str, name: str, max_bytes: int) -> bytes:
    data = text.encode("utf-8")
    if len(data) > max_bytes:
        raise UsageError(f"{name} longer than {max_bytes} bytes")
    return data


# --- addresses ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AddressAttribute(Attribute):
    """RFC 8489 §14.1 (MAPPED-ADDRESS) and §14.2 (XOR-MAPPED-ADDRESS) layout.

    ``ip`` is the textual address (``"192.0.2.1"``, ``"2001:db8::1"``).
    """

    ip: str
    port: int

    XOR: ClassVar[bool] = False

    @property
    def family(self) -> AddressFamily:
        return AddressFamily.IPV6 if ":" in self.ip else AddressFamily.IPV4

    def encode_value(self, transaction_id: bytes) -> bytes:
        try:
            packed = ipaddress.ip_address(self.ip).packed
        except ValueError:
            raise UsageError(f"not an IP address: {self.ip!r}") from None
        if not 0 <= self.port <= 0xFFFF:
            raise UsageError(f"port out of range: {self.port}")
        family = AddressFamily.IPV4 if len(packed) == 4 else AddressFamily.IPV6
        port = self.port
        if self.XOR:
            port ^= MAGIC_COOKIE >> 16
            mask = MAGIC_COOKIE_BYTES + transaction_id
            packed = bytes(a ^ b for a, b in zip(packed, mask, strict=False))
        return struct.pack("!BBH", 0, family, port) + packed

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        if len(value) < 4:
            raise DecodeError(f"{cls.__name__} shorter than 4 bytes", offset)
        family, port = value[1], _U16.unpack_from(value, 2)[0]
        if family == AddressFamily.IPV4:
            _expect_length(value, 8, cls.__name__ + " (IPv4)", offset)
        elif family == AddressFamily.IPV6:
            _expect_length(value, 20, cls.__name__ + " (IPv6)", offset)
        else:
            raise DecodeError(f"{cls.__name__} has unknown family {family}", offset + 1)
        packed = value[4:]
        if cls.XOR:
            port ^= MAGIC_COOKIE >> 16
            mask = MAGIC_COOKIE_BYTES + transaction_id
            packed = bytes(a ^ b for a, b in zip(packed, mask, strict=False))
        return cls(str(ipaddress.ip_address(packed)), port)


@_register
@dataclass(frozen=True, slots=True)
class MappedAddress(_AddressAttribute):
    """RFC 8489 §14.1 MAPPED-ADDRESS (the RFC 3489 reflexive address)."""

    TYPE: ClassVar[int] = AttrType.MAPPED_ADDRESS


@_register
@dataclass(frozen=True, slots=True)
class XorMappedAddress(_AddressAttribute):
    """RFC 8489 §14.2 XOR-MAPPED-ADDRESS."""

    TYPE: ClassVar[int] = AttrType.XOR_MAPPED_ADDRESS
    XOR: ClassVar[bool] = True


@_register
@dataclass(frozen=True, slots=True)
class AlternateServer(_AddressAttribute):
    """RFC 8489 §14.15 ALTERNATE-SERVER (MAPPED-ADDRESS layout)."""

    TYPE: ClassVar[int] = AttrType.ALTERNATE_SERVER


@_register
@dataclass(frozen=True, slots=True)
class ResponseOrigin(_AddressAttribute):
    """RFC 5780 §7.3 RESPONSE-ORIGIN: where the response was sent from."""

    TYPE: ClassVar[int] = AttrType.RESPONSE_ORIGIN


@_register
@dataclass(frozen=True, slots=True)
class OtherAddress(_AddressAttribute):
    """RFC 5780 §7.4 OTHER-ADDRESS: the server's alternate ip:port."""

    TYPE: ClassVar[int] = AttrType.OTHER_ADDRESS


@_register
@dataclass(frozen=True, slots=True)
class XorPeerAddress(_AddressAttribute):
    """RFC 8656 §18.3 XOR-PEER-ADDRESS."""

    TYPE: ClassVar[int] = AttrType.XOR_PEER_ADDRESS
    XOR: ClassVar[bool] = True


@_register
@dataclass(frozen=True, slots=True)
class XorRelayedAddress(_AddressAttribute):
    """RFC 8656 §18.5 XOR-RELAYED-ADDRESS."""

    TYPE: ClassVar[int] = AttrType.XOR_RELAYED_ADDRESS
    XOR: ClassVar[bool] = True


# --- text --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TextAttribute(Attribute):
    """A UTF-8 string attribute with a byte limit (RFC 8489 §14)."""

    value: str

    MAX_BYTES: ClassVar[int] = 763

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _encode_utf8(self.value, type(self).__name__, self.MAX_BYTES)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        return cls(_decode_utf8(value, cls.__name__, offset, cls.MAX_BYTES))


@_register
@dataclass(frozen=True, slots=True)
class Username(_TextAttribute):
    """RFC 8489 §14.3 USERNAME: fewer than 509 bytes (SASLprep'd or OpaqueString)."""

    TYPE: ClassVar[int] = AttrType.USERNAME
    MAX_BYTES: ClassVar[int] = 508


@_register
@dataclass(frozen=True, slots=True)
class Realm(_TextAttribute):
    """RFC 8489 §14.9 REALM: fewer than 128 characters, at most 763 bytes."""

    TYPE: ClassVar[int] = AttrType.REALM


@_register
@dataclass(frozen=True, slots=True)
class Nonce(_TextAttribute):
    """RFC 8489 §14.10 NONCE: fewer than 128 characters, at most 763 bytes.

    A nonce that starts with :data:`NONCE_COOKIE` carries the server's
    security feature set (RFC 8489 §9.2); see :func:`nonce_security_features`.
    """

    TYPE: ClassVar[int] = AttrType.NONCE


@_register
@dataclass(frozen=True, slots=True)
class Software(_TextAttribute):
    """RFC 8489 §14.14 SOFTWARE: fewer than 128 characters, at most 763 bytes."""

    TYPE: ClassVar[int] = AttrType.SOFTWARE


@_register
@dataclass(frozen=True, slots=True)
class AlternateDomain(_TextAttribute):
    """RFC 8489 §14.16 ALTERNATE-DOMAIN: the TLS name of the ALTERNATE-SERVER."""

    TYPE: ClassVar[int] = AttrType.ALTERNATE_DOMAIN
    MAX_BYTES: ClassVar[int] = 255


#: RFC 8489 §9.2: nonces starting with this cookie carry a security feature set.
NONCE_COOKIE = "obMatJos2"

#: RFC 8489 §18.1: security feature bits. Bit 0 is the least significant bit
#: of the 24-bit set (RFC 8489 errata on §18.1; Appendix B.1's nonce "AAAC",
#: 0x000002, announces username anonymity, bit 1, for its USERHASH request).
FEATURE_PASSWORD_ALGORITHMS = 1 << 0
FEATURE_USERNAME_ANONYMITY = 1 << 1

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def nonce_cookie_prefix(features: int) -> str:
    """RFC 8489 §9.2: the 13-character nonce prefix that announces ``features``.

    The 24-bit feature set is written as four base64 characters after the
    cookie.
    """
    if not 0 <= features < 1 << 24:
        raise UsageError("security feature set is 24 bits")
    chars = [_B64[(features >> shift) & 0x3F] for shift in (18, 12, 6, 0)]
    return NONCE_COOKIE + "".join(chars)


def nonce_security_features(nonce: str) -> int | None:
    """The security feature set announced by ``nonce``, or None if it has none."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return None
    features = 0
    for char in nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4]:
        index = _B64.find(char)
        if index < 0:
            return None
        features = features << 6 | index
    return features


# --- opaque values -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FixedBytes(Attribute):
    """An attribute whose value is a fixed-length byte string."""

    value: bytes

    LENGTH: ClassVar[int]

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.value) != self.LENGTH:
            raise UsageError(f"{type(self).__name__} must be {self.LENGTH} bytes")
        return self.value

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, cls.LENGTH, cls.__name__, offset)
        return cls(value)


@_register
@dataclass(frozen=True, slots=True)
class MessageIntegrity(_FixedBytes):
    """RFC 8489 §14.5 MESSAGE-INTEGRITY: HMAC-SHA1, 20 bytes."""

    TYPE: ClassVar[int] = AttrType.MESSAGE_INTEGRITY
    LENGTH: ClassVar[int] = 20


@_register
@dataclass(frozen=True, slots=True)
class MessageIntegritySha256(Attribute):
    """RFC 8489 §14.6 MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, maybe truncated.

    The value is 16 to 32 bytes and a multiple of 4 (the leftmost bytes of the
    HMAC when truncated).
    """

    value: bytes

    TYPE: ClassVar[int] = AttrType.MESSAGE_INTEGRITY_SHA256

    def encode_value(self, transaction_id: bytes) -> bytes:
        _check_sha256_length(len(self.value), UsageError)
        return self.value

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        try:
            _check_sha256_length(len(value), ValueError)
        except ValueError as exc:
            raise DecodeError(str(exc), offset) from None
        return cls(value)


def _check_sha256_length(length: int, error: type[Exception]) -> None:
    if length < 16 or length > 32 or length % 4:
        raise error(
            f"MessageIntegritySha256 must be 16-32 bytes, a multiple of 4 ({length})"
        )


@_register
@dataclass(frozen=True, slots=True)
class Userhash(_FixedBytes):
    """RFC 8489 §14.4 USERHASH: SHA-256(username ":" realm), 32 bytes."""

    TYPE: ClassVar[int] = AttrType.USERHASH
    LENGTH: ClassVar[int] = 32


@_register
@dataclass(frozen=True, slots=True)
class ReservationToken(_FixedBytes):
    """RFC 8656 §18.9 RESERVATION-TOKEN: 8 opaque bytes."""

    TYPE: ClassVar[int] = AttrType.RESERVATION_TOKEN
    LENGTH: ClassVar[int] = 8


@dataclass(frozen=True, slots=True)
class _VariableBytes(Attribute):
    """An attribute whose value is any byte string."""

    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        return cls(value)


@_register
@dataclass(frozen=True, slots=True)
class Data(_VariableBytes):
    """RFC 8656 §18.4 DATA: the application data of Send/Data indications."""

    TYPE: ClassVar[int] = AttrType.DATA


@_register
@dataclass(frozen=True, slots=True)
class Padding(_VariableBytes):
    """RFC 5780 §7.6 PADDING: pads a Binding request or response."""

    TYPE: ClassVar[int] = AttrType.PADDING


# --- integers ----------------------------------------------------------------


@_register
@dataclass(frozen=True, slots=True)
class Fingerprint(Attribute):
    """RFC 8489 §14.7 FINGERPRINT: CRC-32 of the message XOR 0x5354554e."""

    value: int

    TYPE: ClassVar[int] = AttrType.FINGERPRINT

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _U32.pack(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        return cls(_U32.unpack(value)[0])


@dataclass(frozen=True, slots=True)
class _U32Attribute(Attribute):
    """A 32-bit unsigned value."""

    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.value <= 0xFFFFFFFF:
            raise UsageError(f"{type(self).__name__} out of range: {self.value}")
        return _U32.pack(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        return cls(_U32.unpack(value)[0])


@_register
@dataclass(frozen=True, slots=True)
class Lifetime(_U32Attribute):
    """RFC 8656 §18.2 LIFETIME: seconds until the allocation expires."""

    TYPE: ClassVar[int] = AttrType.LIFETIME


@_register
@dataclass(frozen=True, slots=True)
class Priority(_U32Attribute):
    """RFC 8445 §7.1.1 PRIORITY of the would-be peer-reflexive candidate."""

    TYPE: ClassVar[int] = AttrType.PRIORITY


@dataclass(frozen=True, slots=True)
class _U64Attribute(Attribute):
    """A 64-bit unsigned value."""

    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.value < 1 << 64:
            raise UsageError(f"{type(self).__name__} out of range")
        return _U64.pack(self.value)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 8, cls.__name__, offset)
        return cls(_U64.unpack(value)[0])


@_register
@dataclass(frozen=True, slots=True)
class IceControlled(_U64Attribute):
    """RFC 8445 §7.1.3 ICE-CONTROLLED: the agent's tie-breaker."""

    TYPE: ClassVar[int] = AttrType.ICE_CONTROLLED


@_register
@dataclass(frozen=True, slots=True)
class IceControlling(_U64Attribute):
    """RFC 8445 §7.1.3 ICE-CONTROLLING: the agent's tie-breaker."""

    TYPE: ClassVar[int] = AttrType.ICE_CONTROLLING


@dataclass(frozen=True, slots=True)
class _EmptyAttribute(Attribute):
    """An attribute with no value: its presence is the information."""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 0, cls.__name__, offset)
        return cls()


@_register
@dataclass(frozen=True, slots=True)
class UseCandidate(_EmptyAttribute):
    """RFC 8445 §7.1.2 USE-CANDIDATE: the controlling agent nominates."""

    TYPE: ClassVar[int] = AttrType.USE_CANDIDATE


@_register
@dataclass(frozen=True, slots=True)
class DontFragment(_EmptyAttribute):
    """RFC 8656 §18.8 DONT-FRAGMENT: set DF on packets to the peer."""

    TYPE: ClassVar[int] = AttrType.DONT_FRAGMENT


@_register
@dataclass(frozen=True, slots=True)
class ChannelNumber(Attribute):
    """RFC 8656 §18.1 CHANNEL-NUMBER: 16-bit number, then 16 bits RFFU."""

    number: int

    TYPE: ClassVar[int] = AttrType.CHANNEL_NUMBER

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.number <= 0xFFFF:
            raise UsageError(f"channel number out of range: {self.number}")
        return struct.pack("!HH", self.number, 0)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        return cls(_U16.unpack_from(value)[0])


@_register
@dataclass(frozen=True, slots=True)
class RequestedTransport(Attribute):
    """RFC 8656 §18.7 REQUESTED-TRANSPORT: IANA protocol number (17 = UDP)."""

    protocol: int

    TYPE: ClassVar[int] = AttrType.REQUESTED_TRANSPORT

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.protocol <= 0xFF:
            raise UsageError(f"protocol out of range: {self.protocol}")
        return bytes((self.protocol, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        return cls(value[0])


@_register
@dataclass(frozen=True, slots=True)
class EvenPort(Attribute):
    """RFC 8656 §18.6 EVEN-PORT: R bit asks to reserve the next port too."""

    reserve: bool

    TYPE: ClassVar[int] = AttrType.EVEN_PORT

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes((0x80 if self.reserve else 0,))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 1, cls.__name__, offset)
        return cls(bool(value[0] & 0x80))


@dataclass(frozen=True, slots=True)
class _FamilyAttribute(Attribute):
    """RFC 8656 §18.10/§18.11: a family byte, then three RFFU bytes."""

    family: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.family <= 0xFF:
            raise UsageError(f"family out of range: {self.family}")
        return bytes((self.family, 0, 0, 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        return cls(value[0])


@_register
@dataclass(frozen=True, slots=True)
class RequestedAddressFamily(_FamilyAttribute):
    """RFC 8656 §18.10 REQUESTED-ADDRESS-FAMILY (0x01 IPv4, 0x02 IPv6)."""

    TYPE: ClassVar[int] = AttrType.REQUESTED_ADDRESS_FAMILY


@_register
@dataclass(frozen=True, slots=True)
class AdditionalAddressFamily(_FamilyAttribute):
    """RFC 8656 §18.11 ADDITIONAL-ADDRESS-FAMILY (only 0x02 IPv6 is valid)."""

    TYPE: ClassVar[int] = AttrType.ADDITIONAL_ADDRESS_FAMILY


@dataclass(frozen=True, slots=True)
class _CodeAttribute(Attribute):
    """The class/number/reason layout shared by ERROR-CODE and friends."""

    code: int
    reason: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 300 <= self.code <= 699:
            raise UsageError(f"error code must be 300-699, got {self.code}")
        reason = _encode_utf8(self.reason, type(self).__name__, 763)
        return b"\x00\x00" + bytes((self.code // 100, self.code % 100)) + reason

    @classmethod
    def _parse(cls, value: bytes, offset: int) -> tuple[int, str]:
        if len(value) < 4:
            raise DecodeError(f"{cls.__name__} shorter than 4 bytes", offset)
        klass, number = value[2] & 0x07, value[3]
        if not 3 <= klass <= 6 or number > 99:
            raise DecodeError(
                f"{cls.__name__} has invalid code {klass}/{number}", offset + 2
            )
        reason = _decode_utf8(value[4:], cls.__name__, offset + 4, 763)
        return klass * 100 + number, reason


@_register
@dataclass(frozen=True, slots=True)
class ErrorCodeAttr(_CodeAttribute):
    """RFC 8489 §14.8 ERROR-CODE: class 3-6, number 0-99, reason phrase."""

    TYPE: ClassVar[int] = AttrType.ERROR_CODE

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        code, reason = cls._parse(value, offset)
        return cls(code, reason)


@_register
@dataclass(frozen=True, slots=True)
class AddressErrorCode(Attribute):
    """RFC 8656 §18.12 ADDRESS-ERROR-CODE: family, then an ERROR-CODE layout."""

    family: int
    code: int
    reason: str

    TYPE: ClassVar[int] = AttrType.ADDRESS_ERROR_CODE

    def encode_value(self, transaction_id: bytes) -> bytes:
        body = ErrorCodeAttr(self.code, self.reason).encode_value(transaction_id)
        return bytes((self.family & 0xFF,)) + body[1:]

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        code, reason = ErrorCodeAttr._parse(value, offset)
        return cls(value[0], code, reason)


@_register
@dataclass(frozen=True, slots=True)
class Icmp(Attribute):
    """RFC 8656 §18.13 ICMP: type, code and error data from the peer."""

    icmp_type: int
    icmp_code: int
    error_data: int

    TYPE: ClassVar[int] = AttrType.ICMP

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.error_data <= 0xFFFFFFFF:
            raise UsageError(f"ICMP error data out of range: {self.error_data}")
        return struct.pack(
            "!HBBI", 0, self.icmp_type & 0xFF, self.icmp_code & 0xFF, self.error_data
        )

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 8, cls.__name__, offset)
        _, icmp_type, icmp_code, data = struct.unpack("!HBBI", value)
        return cls(icmp_type, icmp_code, data)


@_register
@dataclass(frozen=True, slots=True)
class UnknownAttributes(Attribute):
    """RFC 8489 §14.13 UNKNOWN-ATTRIBUTES: a list of 16-bit attribute types."""

    types: tuple[int, ...]

    TYPE: ClassVar[int] = AttrType.UNKNOWN_ATTRIBUTES

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not all(0 <= t <= 0xFFFF for t in self.types):
            raise UsageError(f"attribute type out of range in {self.types}")
        return b"".join(_U16.pack(t) for t in self.types)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        if len(value) % 2:
            raise DecodeError("UnknownAttributes length is odd", offset)
        count = len(value) // 2
        return cls(struct.unpack(f"!{count}H", value))


@dataclass(frozen=True, slots=True)
class PasswordAlgorithmEntry:
    """One algorithm of RFC 8489 §14.11/§14.12 with its parameters."""

    algorithm: int
    parameters: bytes = b""

    def encode(self) -> bytes:
        params = self.parameters
        if not 0 <= self.algorithm <= 0xFFFF or len(params) > 0xFFFF:
            raise UsageError("password algorithm or parameters out of range")
        pad = b"\x00" * (-len(params) % 4)
        return struct.pack("!HH", self.algorithm, len(params)) + params + pad


def _decode_algorithms(
    value: bytes, offset: int, name: str
) -> list[PasswordAlgorithmEntry]:
    entries = []
    pos = 0
    while pos < len(value):
        if len(value) - pos < 4:
            raise DecodeError(f"{name} entry truncated", offset + pos)
        algorithm, length = struct.unpack_from("!HH", value, pos)
        end = pos + 4 + length
        if end > len(value):
            raise DecodeError(f"{name} parameters overrun the value", offset + pos)
        entries.append(PasswordAlgorithmEntry(algorithm, value[pos + 4 : end]))
        if end + (-length % 4) > len(value):
            raise DecodeError(f"{name} parameter padding missing", offset + pos)
        pos = end + (-length % 4)
    return entries


@_register
@dataclass(frozen=True, slots=True)
class PasswordAlgorithms(Attribute):
    """RFC 8489 §14.11 PASSWORD-ALGORITHMS: the algorithms a server supports."""

    algorithms: tuple[PasswordAlgorithmEntry, ...]

    TYPE: ClassVar[int] = AttrType.PASSWORD_ALGORITHMS

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(entry.encode() for entry in self.algorithms)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        return cls(tuple(_decode_algorithms(value, offset, cls.__name__)))


@_register
@dataclass(frozen=True, slots=True)
class PasswordAlgorithm(Attribute):
    """RFC 8489 §14.12 PASSWORD-ALGORITHM: the algorithm a client chose."""

    algorithm: int
    parameters: bytes = b""

    TYPE: ClassVar[int] = AttrType.PASSWORD_ALGORITHM

    def encode_value(self, transaction_id: bytes) -> bytes:
        return PasswordAlgorithmEntry(self.algorithm, self.parameters).encode()

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        entries = _decode_algorithms(value, offset, cls.__name__)
        if len(entries) != 1:
            raise DecodeError(f"{cls.__name__} must hold exactly one entry", offset)
        return cls(entries[0].algorithm, entries[0].parameters)


@_register
@dataclass(frozen=True, slots=True)
class ChangeRequest(Attribute):
    """RFC 5780 §7.2 CHANGE-REQUEST: flags A (change IP) and B (change port)."""

    change_ip: bool = False
    change_port: bool = False

    TYPE: ClassVar[int] = AttrType.CHANGE_REQUEST

    def encode_value(self, transaction_id: bytes) -> bytes:
        flags = (0x04 if self.change_ip else 0) | (0x02 if self.change_port else 0)
        return _U32.pack(flags)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        flags = _U32.unpack(value)[0]
        return cls(bool(flags & 0x04), bool(flags & 0x02))


@_register
@dataclass(frozen=True, slots=True)
class ResponsePort(Attribute):
    """RFC 5780 §7.5 RESPONSE-PORT: 16-bit port, then 16 bits of padding."""

    port: int

    TYPE: ClassVar[int] = AttrType.RESPONSE_PORT

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 0 <= self.port <= 0xFFFF:
            raise UsageError(f"port out of range: {self.port}")
        return struct.pack("!HH", self.port, 0)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes, offset: int) -> Self:
        _expect_length(value, 4, cls.__name__, offset)
        return cls(_U16.unpack_from(value)[0])


@dataclass(frozen=True, slots=True)
class UnknownAttribute(Attribute):
    """An attribute natkit does not know; kept so it can be reported (420)."""

    type: int
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value
