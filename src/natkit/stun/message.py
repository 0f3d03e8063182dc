"""STUN messages: header, attribute list, encoding and decoding.

RFC 8489 §5 (header), §14 (attribute layout), §14.5-14.7 (integrity and
fingerprint placement). RFC 3489 messages, which have no magic cookie and a
128-bit transaction id, decode too: ``Message.cookie`` then holds the first
four bytes of that id.
"""

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from natkit.stun import integrity
from natkit.stun.attributes import (
    REGISTRY,
    Attribute,
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySha256,
    UnknownAttribute,
)
from natkit.stun.constants import (
    HEADER_LENGTH,
    MAGIC_COOKIE,
    AttrType,
    MessageClass,
    Method,
    is_comprehension_required,
)
from natkit.stun.errors import DecodeError, UsageError

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")

#: RFC 8489 §6.1 caps nothing, but a STUN message never needs more than this.
MAX_MESSAGE_LENGTH = 0xFFFF + HEADER_LENGTH

_A = TypeVar("_A", bound=Attribute)


def new_transaction_id() -> bytes:
    """RFC 8489 §5: 96 bits, uniformly random."""
    return os.urandom(12)


def message_type(method: int, cls: MessageClass) -> int:
    """RFC 8489 §5: interleave the 12 method bits with the two class bits."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_message_type(value: int) -> tuple[int, MessageClass]:
    """The inverse of :func:`message_type`: (method, class)."""
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    cls = MessageClass(((value >> 4) & 0b01) | ((value >> 7) & 0b10))
    return method, cls


@dataclass(frozen=True, slots=True)
class Message:
    """A STUN message.

    ``attributes`` are in wire order. A decoded message includes its
    MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT attributes and keeps the raw
    bytes so integrity can be checked once the key is known. Attributes that
    RFC 8489 §14.5/§14.6 say to ignore (after an integrity attribute) are
    left out.
    """

    method: int
    cls: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    cookie: int = MAGIC_COOKIE
    unknown_required: tuple[int, ...] = field(default=(), compare=False)
    raw: bytes = field(default=b"", compare=False, repr=False)
    integrity_offset: int | None = field(default=None, compare=False, repr=False)
    integrity_sha256_offset: int | None = field(default=None, compare=False, repr=False)

    @property
    def is_rfc3489(self) -> bool:
        """RFC 8489 §5: a message without the magic cookie is RFC 3489 style."""
        return self.cookie != MAGIC_COOKIE

    @property
    def has_fingerprint(self) -> bool:
        return any(isinstance(a, Fingerprint) for a in self.attributes)

    def get(self, kind: type[_A]) -> _A | None:
        """The first attribute of class ``kind``, or None."""
        for attr in self.attributes:
            if isinstance(attr, kind):
                return attr
        return None

    def get_all(self, kind: type[_A]) -> Iterator[_A]:
        """Every attribute of class ``kind``, in wire order."""
        return (attr for attr in self.attributes if isinstance(attr, kind))

    def reply(
        self, cls: MessageClass, attributes: tuple[Attribute, ...] = ()
    ) -> "Message":
        """A response to this request: same method, transaction id and cookie."""
        return Message(
            method=self.method,
            cls=cls,
            transaction_id=self.transaction_id,
            attributes=attributes,
            cookie=self.cookie,
        )

    def __str__(self) -> str:
        try:
            method = Method(self.method).name
        except ValueError:
            method = f"0x{self.method:03x}"
        return f"{method} {self.cls.name} {self.transaction_id.hex()}"


# --- encoding ----------------------------------------------------------------


def _attribute_type(attr: Attribute) -> int:
    if isinstance(attr, UnknownAttribute):
        if not 0 <= attr.type <= 0xFFFF:
            raise UsageError(f"attribute type out of range: {attr.type}")
        return attr.type
    return attr.TYPE


def _encode_attribute(attr: Attribute, mask: bytes, padding: bytes) -> bytes:
    value = attr.encode_value(mask)
    if len(value) > 0xFFFF:
        raise UsageError(f"{type(attr).__name__} value too long")
    pad = padding * (-len(value) % 4)
    return _ATTR_HEADER.pack(_attribute_type(attr), len(value)) + value + pad


def encode(
    msg: Message,
    *,
    key: bytes | None = None,
    sha1: bool | None = None,
    sha256: bool = False,
    sha256_size: int = 32,
    fingerprint: bool = False,
    padding: bytes = b"\x00",
) -> bytes:
    """Encode ``msg``; with ``key``, append integrity; then FINGERPRINT.

    With a key, MESSAGE-INTEGRITY is added unless only ``sha256`` is asked
    for; with ``sha256``, MESSAGE-INTEGRITY-SHA256 (``sha256_size`` bytes)
    follows it (RFC 8489 §14.6). ``padding`` is the byte used to pad
    attribute values (RFC 8489 §14 lets it be anything; tests use it to
    reproduce published vectors).
    """
    if len(msg.transaction_id) != 12:
        raise UsageError("transaction id must be 12 bytes")
    if not 0 <= msg.method <= 0xFFF:
        raise UsageError(f"method must be 12 bits, got 0x{msg.method:x}")
    if sha256 and (sha256_size < 16 or sha256_size > 32 or sha256_size % 4):
        raise UsageError(f"sha256_size must be 16-32, a multiple of 4 ({sha256_size})")
    if len(padding) != 1:
        raise UsageError("padding is one byte")
    if (sha1 or sha256) and key is None:
        raise UsageError("integrity needs a key")
    if sha1 is None:
        sha1 = key is not None and not sha256

    # step 1: header with a placeholder length, then the attributes given
    mask = msg.transaction_id
    body = b"".join(_encode_attribute(a, mask, padding) for a in msg.attributes)
    trailer = 8 if fingerprint else 0
    if key is not None:
        trailer += (24 if sha1 else 0) + (4 + sha256_size if sha256 else 0)
    if len(body) + trailer > 0xFFFF:
        raise UsageError("message longer than 65535 bytes after the header")
    kind = message_type(msg.method, msg.cls)
    out = _HEADER.pack(kind, len(body), msg.cookie, msg.transaction_id) + body

    # step 2: integrity attributes, each over everything before it
    if key is not None and sha1:
        mac = integrity.hmac_sha1(key, out)
        out = _append(out, AttrType.MESSAGE_INTEGRITY, mac)
    if key is not None and sha256:
        mac = integrity.hmac_sha256(key, out, sha256_size)
        out = _append(out, AttrType.MESSAGE_INTEGRITY_SHA256, mac)

    # step 3: FINGERPRINT last
    if fingerprint:
        crc = integrity.fingerprint(out)
        out = _append(out, AttrType.FINGERPRINT, struct.pack("!I", crc))
    return out


def _append(message: bytes, attr_type: int, value: bytes) -> bytes:
    """Append one attribute (value already a multiple of 4) and fix the length."""
    out = message + _ATTR_HEADER.pack(attr_type, len(value)) + value
    return out[:2] + struct.pack("!H", len(out) - HEADER_LENGTH) + out[4:]


# --- decoding ----------------------------------------------------------------


def is_stun(data: bytes) -> bool:
    """Cheap check: could ``data`` be a STUN message? (RFC 8489 §5, RFC 7983)."""
    return (
        len(data) >= HEADER_LENGTH
        and data[0] < 0x40
        and (data[3] & 0x03) == 0
        and len(data) == HEADER_LENGTH + ((data[2] << 8) | data[3])
    )


def message_length_from_header(header: bytes) -> int:
    """RFC 8489 §6.2.2: total message size from the first 4 bytes (framing)."""
    if len(header) < 4:
        raise UsageError("need at least 4 header bytes")
    if header[0] & 0xC0:
        raise DecodeError("first two bits of a STUN message must be zero", 0)
    length = (header[2] << 8) | header[3]
    if length % 4:
        raise DecodeError(f"message length {length} is not a multiple of 4", 2)
    return HEADER_LENGTH + length


def _decode_header(data: bytes) -> tuple[int, MessageClass, int, bytes]:
    if len(data) < HEADER_LENGTH:
        raise DecodeError(f"message shorter than the 20-byte header ({len(data)})", 0)
    kind, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if kind & 0xC000:
        raise DecodeError("first two bits of a STUN message must be zero", 0)
    if length % 4:
        raise DecodeError(f"message length {length} is not a multiple of 4", 2)
    if HEADER_LENGTH + length != len(data):
        raise DecodeError(
            f"length field says {length} bytes follow the header, "
            f"but {len(data) - HEADER_LENGTH} do",
            2,
        )
    method, cls = split_message_type(kind)
    return method, cls, cookie, transaction_id


def decode(data: bytes) -> Message:
    """Decode one whole STUN message; raise only :class:`DecodeError`.

    Checks the header (RFC 8489 §5), each attribute's layout (§14), the
    placement rules of §14.5-§14.7 and the FINGERPRINT value. Attributes after
    MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are
    ignored, as are those after MESSAGE-INTEGRITY-SHA256 other than
    FINGERPRINT; anything after FINGERPRINT is an error. Unknown
    comprehension-required types are listed in ``unknown_required``.
    """
    data = bytes(data)
    method, cls, cookie, transaction_id = _decode_header(data)

    attributes: list[Attribute] = []
    unknown: list[int] = []
    mi_offset: int | None = None
    sha256_offset: int | None = None
    seen_fingerprint = False
    pos = HEADER_LENGTH
    end = len(data)
    while pos < end:
        # step 1: the attribute header and its value
        if end - pos < 4:
            raise DecodeError("truncated attribute header", pos)
        attr_type, length = _ATTR_HEADER.unpack_from(data, pos)
        value_start = pos + 4
        value_end = value_start + length
        if value_end > end:
            raise DecodeError(
                f"attribute 0x{attr_type:04x} length {length} overruns the message",
                pos + 2,
            )
        value = data[value_start:value_end]
        attr_pos = pos
        pos = value_end + (-length % 4)
        if pos > end:
            raise DecodeError("attribute padding overruns the message", value_end)

        # step 2: placement rules of RFC 8489 §14.5-§14.7
        if seen_fingerprint:
            raise DecodeError("attribute after FINGERPRINT", attr_pos)
        if attr_type == AttrType.FINGERPRINT:
            seen_fingerprint = True
        elif sha256_offset is not None:
            continue
        elif mi_offset is not None and attr_type != AttrType.MESSAGE_INTEGRITY_SHA256:
            continue

        # step 3: the value itself
        codec = REGISTRY.get(attr_type)
        if codec is None:
            if is_comprehension_required(attr_type):
                unknown.append(attr_type)
            attributes.append(UnknownAttribute(attr_type, value))
            continue
        attr = codec.decode_value(value, transaction_id, value_start)
        attributes.append(attr)
        if isinstance(attr, MessageIntegrity):
            mi_offset = attr_pos
        elif isinstance(attr, MessageIntegritySha256):
            sha256_offset = attr_pos
        elif isinstance(attr, Fingerprint):
            expected = integrity.fingerprint(data[:attr_pos])
            if attr.value != expected:
                raise DecodeError("FINGERPRINT does not match", attr_pos)

    return Message(
        method=method,
        cls=cls,
        transaction_id=transaction_id,
        attributes=tuple(attributes),
        cookie=cookie,
        unknown_required=tuple(unknown),
        raw=data,
        integrity_offset=mi_offset,
        integrity_sha256_offset=sha256_offset,
    )


def verify_integrity(msg: Message, key: bytes) -> bool:
    """Check the strongest integrity attribute of a decoded ``msg`` with ``key``.

    RFC 8489 §9.2.4: MESSAGE-INTEGRITY-SHA256 is checked when present, else
    MESSAGE-INTEGRITY. Returns False when the message carries neither. The
    MAC is compared in constant time.
    """
    if msg.integrity_sha256_offset is not None:
        attr = msg.get(MessageIntegritySha256)
        if attr is None:
            return False
        prefix = msg.raw[: msg.integrity_sha256_offset]
        expected = integrity.hmac_sha256(key, prefix, len(attr.value))
        return integrity.macs_equal(expected, attr.value)
    if msg.integrity_offset is not None:
        mi = msg.get(MessageIntegrity)
        if mi is None:
            return False
        expected = integrity.hmac_sha1(key, msg.raw[: msg.integrity_offset])
        return integrity.macs_equal(expected, mi.value)
    return False
