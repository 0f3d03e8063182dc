"""STUN message framing and decoding rules (RFC 8489 §5, §6.2.2, §14, §14.5-§14.7)."""

import hashlib
import hmac
import struct
import zlib

import pytest

from natkit.stun import integrity
from natkit.stun.attributes import (
    Attribute,
    Data,
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    Realm,
    Software,
    UnknownAttribute,
    Username,
    XorMappedAddress,
)
from natkit.stun.constants import (
    HEADER_LENGTH,
    MAGIC_COOKIE,
    AttrType,
    MessageClass,
    Method,
)
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import (
    Message,
    decode,
    encode,
    is_stun,
    message_length_from_header,
    message_type,
    new_transaction_id,
    split_message_type,
    verify_integrity,
)

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
KEY = b"VOkJxbRl1RmTxUk/WvJxBt"


def _request(*attributes: Attribute) -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, TID, attributes)


def _raw(
    items: list[tuple[int, bytes]],
    *,
    kind: int = 0x0001,
    cookie: int = MAGIC_COOKIE,
    fingerprint_last: bool = False,
) -> bytes:
    """Build a message by hand: (type, value) attributes, zero padding.

    With ``fingerprint_last`` a correct FINGERPRINT is appended.
    """
    body = b""
    for attr_type, value in items:
        pad = b"\x00" * (-len(value) % 4)
        body += struct.pack("!HH", attr_type, len(value)) + value + pad
    out = struct.pack("!HHI12s", kind, len(body), cookie, TID) + body
    if fingerprint_last:
        crc = integrity.fingerprint(out)
        out += struct.pack("!HHI", AttrType.FINGERPRINT, 4, crc)
        out = out[:2] + struct.pack("!H", len(out) - HEADER_LENGTH) + out[4:]
    return out


def _with_mac(prefix: bytes, attr_type: int, mac_size: int, key: bytes) -> bytes:
    """Append a MESSAGE-INTEGRITY(-SHA256) computed by hand (RFC 8489 §14.5)."""
    length = len(prefix) - HEADER_LENGTH + 4 + mac_size
    data = prefix[:2] + struct.pack("!H", length) + prefix[4:]
    algo = hashlib.sha1 if attr_type == AttrType.MESSAGE_INTEGRITY else hashlib.sha256
    mac = hmac.new(key, data, algo).digest()[:mac_size]
    out = data + struct.pack("!HH", attr_type, mac_size) + mac
    return out


# --- header (RFC 8489 §5) -----------------------------------------------------


@pytest.mark.parametrize("first", [0x40, 0x80, 0xC0, 0xFF])
def test_top_two_bits_must_be_zero(first: int) -> None:
    data = bytes((first,)) + encode(_request())[1:]
    with pytest.raises(DecodeError, match="first two bits") as info:
        decode(data)
    assert info.value.offset == 0
    assert not is_stun(data)


@pytest.mark.parametrize("size", [0, 1, 19])
def test_shorter_than_header(size: int) -> None:
    with pytest.raises(DecodeError, match="20-byte header") as info:
        decode(encode(_request())[:size])
    assert info.value.offset == 0


@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 7])
def test_length_must_be_multiple_of_4(length: int) -> None:
    data = struct.pack("!HHI12s", 0x0001, length, MAGIC_COOKIE, TID) + bytes(length)
    with pytest.raises(DecodeError, match="multiple of 4") as info:
        decode(data)
    assert info.value.offset == 2
    assert not is_stun(data)


@pytest.mark.parametrize("delta", [-8, -4, 4, 8])
def test_length_must_match_datagram(delta: int) -> None:
    data = encode(_request(Software("natkit")))
    length = len(data) - HEADER_LENGTH + delta
    bad = data[:2] + struct.pack("!H", length) + data[4:]
    with pytest.raises(DecodeError, match="length field says") as info:
        decode(bad)
    assert info.value.offset == 2
    assert not is_stun(bad)


def test_magic_cookie_and_rfc3489() -> None:
    """RFC 8489 §5: without the cookie the message is RFC 3489 style."""
    msg = decode(encode(_request(Software("x"))))
    assert msg.cookie == MAGIC_COOKIE and not msg.is_rfc3489

    old = Message(Method.BINDING, MessageClass.REQUEST, TID, (), cookie=0x01020304)
    data = encode(old)
    assert data[4:8] == b"\x01\x02\x03\x04"
    decoded = decode(data)
    assert decoded.is_rfc3489
    assert decoded.cookie == 0x01020304 and decoded.transaction_id == TID
    assert decoded == old
    reply = decoded.reply(MessageClass.SUCCESS)
    assert reply.cookie == 0x01020304 and reply.is_rfc3489


def test_encode_usage_errors() -> None:
    with pytest.raises(UsageError):
        encode(Message(Method.BINDING, MessageClass.REQUEST, TID[:11]))
    with pytest.raises(UsageError):
        encode(_request(), padding=b"  ")
    with pytest.raises(UsageError):
        encode(_request(), padding=b"")
    with pytest.raises(UsageError):
        encode(_request(), sha1=True)
    with pytest.raises(UsageError):
        encode(_request(), sha256=True)
    with pytest.raises(UsageError):
        encode(Message(0x1000, MessageClass.REQUEST, TID))
    with pytest.raises(UsageError):
        encode(_request(UnknownAttribute(0x10000, b"")))
    with pytest.raises(UsageError):
        encode(_request(Data(bytes(0x10000))))
    # fits without FINGERPRINT, not with it
    near = _request(Data(bytes(0xFFFC - 4)))
    assert len(encode(near)) == HEADER_LENGTH + 0xFFFC
    with pytest.raises(UsageError, match="longer"):
        encode(near, fingerprint=True)


def test_encode_pads_and_sets_length() -> None:
    data = encode(_request(Username("abcde")))
    assert data[2:4] == b"\x00\x0c"
    assert data[20:] == bytes.fromhex("00060005") + b"abcde" + b"\x00\x00\x00"
    assert encode(_request(Username("abcde")), padding=b"\xff").endswith(b"\xff" * 3)
    assert is_stun(data)


def test_new_transaction_id() -> None:
    ids = {new_transaction_id() for _ in range(32)}
    assert len(ids) == 32
    assert all(len(t) == 12 for t in ids)


# --- message type (RFC 8489 §5, Figure 3) -------------------------------------


@pytest.mark.parametrize(
    ("method", "cls", "value"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (Method.ALLOCATE, MessageClass.SUCCESS, 0x0103),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.REFRESH, MessageClass.REQUEST, 0x0004),
        (Method.REFRESH, MessageClass.SUCCESS, 0x0104),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CREATE_PERMISSION, MessageClass.REQUEST, 0x0008),
        (Method.CREATE_PERMISSION, MessageClass.ERROR, 0x0118),
        (Method.CHANNEL_BIND, MessageClass.REQUEST, 0x0009),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (0xFFF, MessageClass.REQUEST, 0x3EEF),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
        (0x000, MessageClass.ERROR, 0x0110),
        (0x010, MessageClass.REQUEST, 0x0020),
        (0x080, MessageClass.REQUEST, 0x0200),
    ],
)
def test_message_type_values(method: int, cls: MessageClass, value: int) -> None:
    assert message_type(method, cls) == value
    assert split_message_type(value) == (method, cls)
    data = encode(Message(method, cls, TID))
    assert int.from_bytes(data[:2]) == value
    decoded = decode(data)
    assert (decoded.method, decoded.cls) == (method, cls)


def test_message_type_interleaving_all_methods_and_classes() -> None:
    """M11-M7, C1, M6-M4, C0, M3-M0: every method/class pair round-trips."""
    seen = set()
    for method in range(0x1000):
        for cls in MessageClass:
            value = message_type(method, cls)
            assert value < 0x4000
            assert bool(value & 0x0010) == bool(cls & 0b01)
            assert bool(value & 0x0100) == bool(cls & 0b10)
            assert split_message_type(value) == (method, cls)
            seen.add(value)
    assert len(seen) == 0x4000


def test_message_str_and_accessors() -> None:
    msg = _request(Software("a"), Software("b"), Realm("r"))
    assert str(msg) == f"BINDING REQUEST {TID.hex()}"
    assert str(Message(0x0FF, MessageClass.SUCCESS, TID)) == (
        f"0x0ff SUCCESS {TID.hex()}"
    )
    assert msg.get(Software) == Software("a")
    assert list(msg.get_all(Software)) == [Software("a"), Software("b")]
    assert msg.get(Nonce) is None
    reply = msg.reply(MessageClass.ERROR, (Software("c"),))
    assert (reply.method, reply.cls, reply.transaction_id) == (
        Method.BINDING,
        MessageClass.ERROR,
        TID,
    )


# --- unknown attributes (RFC 8489 §14) ----------------------------------------


def test_unknown_comprehension_required_and_optional() -> None:
    data = _raw(
        [
            (0x0777, b"abc"),
            (0x8777, b"opt"),
            (0x002A, b"\x00\x00\x00\x01"),  # CONNECTION-ID: natkit has no codec
            (0x7FFF, b""),
            (AttrType.SOFTWARE, b"natkit"),
        ]
    )
    msg = decode(data)
    assert msg.unknown_required == (0x0777, 0x002A, 0x7FFF)
    assert msg.attributes == (
        UnknownAttribute(0x0777, b"abc"),
        UnknownAttribute(0x8777, b"opt"),
        UnknownAttribute(0x002A, b"\x00\x00\x00\x01"),
        UnknownAttribute(0x7FFF, b""),
        Software("natkit"),
    )
    # unknown attributes re-encode unchanged
    assert encode(msg) == data


def test_only_optional_unknowns() -> None:
    msg = decode(_raw([(0x8000 + 0x777, b"x"), (0xFFFF, b"")]))
    assert msg.unknown_required == ()
    assert len(msg.attributes) == 2


def test_attribute_value_error_reports_message_offset() -> None:
    data = _raw([(AttrType.SOFTWARE, b"abcd"), (AttrType.XOR_MAPPED_ADDRESS, bytes(8))])
    with pytest.raises(DecodeError, match="unknown family 0") as info:
        decode(data)
    assert info.value.offset == 20 + 8 + 4 + 1


def test_attribute_overruns_message() -> None:
    data = _raw([(AttrType.SOFTWARE, b"abcd")])
    bad = data[:22] + b"\x00\x08" + data[24:]
    with pytest.raises(DecodeError, match="overruns") as info:
        decode(bad)
    assert info.value.offset == 22


# --- placement rules (RFC 8489 §14.5, §14.6, §14.7) ---------------------------


def test_attributes_after_message_integrity_ignored() -> None:
    """§14.5: after MESSAGE-INTEGRITY only MI-SHA256 and FINGERPRINT count."""
    prefix = _raw([(AttrType.SOFTWARE, b"before")])
    data = _with_mac(prefix, AttrType.MESSAGE_INTEGRITY, 20, KEY)
    tail = _raw(
        [
            (AttrType.SOFTWARE, b"ignored"),
            (0x0777, b"unknown but ignored"),
            (AttrType.XOR_MAPPED_ADDRESS, b"garbage is not even decoded"),
            (AttrType.MESSAGE_INTEGRITY, bytes(20)),
        ]
    )[HEADER_LENGTH:]
    data = data[:2] + struct.pack("!H", len(data) - 20 + len(tail)) + data[4:] + tail
    msg = decode(data)
    assert msg.attributes[0] == Software("before")
    assert isinstance(msg.attributes[1], MessageIntegrity)
    assert len(msg.attributes) == 2
    assert msg.unknown_required == ()
    assert verify_integrity(msg, KEY)


def test_sha256_and_fingerprint_after_message_integrity() -> None:
    msg = _request(Software("s"))
    data = encode(msg, key=KEY, sha1=True, sha256=True, fingerprint=True)
    decoded = decode(data)
    kinds = [type(a) for a in decoded.attributes]
    assert kinds == [Software, MessageIntegrity, MessageIntegritySha256, Fingerprint]
    assert verify_integrity(decoded, KEY)


def test_only_fingerprint_after_message_integrity_sha256() -> None:
    """§14.6: after MI-SHA256 even MESSAGE-INTEGRITY is ignored."""
    prefix = _raw([(AttrType.REALM, b"example.org")])
    data = _with_mac(prefix, AttrType.MESSAGE_INTEGRITY_SHA256, 32, KEY)
    tail = _raw(
        [
            (AttrType.MESSAGE_INTEGRITY, bytes(20)),
            (AttrType.MESSAGE_INTEGRITY_SHA256, bytes(32)),
            (AttrType.SOFTWARE, b"ignored"),
            (0x0001, b"x"),
        ]
    )[HEADER_LENGTH:]
    data = data[:2] + struct.pack("!H", len(data) - 20 + len(tail)) + data[4:] + tail
    crc = integrity.fingerprint(data)
    data += struct.pack("!HHI", AttrType.FINGERPRINT, 4, crc)
    data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    msg = decode(data)
    kinds = [type(a) for a in msg.attributes]
    assert kinds == [Realm, MessageIntegritySha256, Fingerprint]
    assert msg.integrity_offset is None
    assert verify_integrity(msg, KEY)


@pytest.mark.parametrize(
    "after",
    [
        (AttrType.SOFTWARE, b"late"),
        (AttrType.FINGERPRINT, bytes(4)),
        (AttrType.MESSAGE_INTEGRITY, bytes(20)),
        (0x8777, b""),
    ],
)
def test_anything_after_fingerprint_is_an_error(after: tuple[int, bytes]) -> None:
    """§14.7: FINGERPRINT is the last attribute."""
    data = encode(_request(Software("s")), fingerprint=True)
    tail = _raw([after])[HEADER_LENGTH:]
    bad = data[:2] + struct.pack("!H", len(data) - 20 + len(tail)) + data[4:] + tail
    with pytest.raises(DecodeError, match="after FINGERPRINT") as info:
        decode(bad)
    assert info.value.offset == len(data)


def test_wrong_fingerprint_rejected() -> None:
    data = encode(_request(Software("s")), fingerprint=True)
    decode(data)
    for flip in (len(data) - 1, len(data) - 4, 24, 8):
        bad = bytearray(data)
        bad[flip] ^= 0x01
        with pytest.raises(DecodeError, match="FINGERPRINT") as info:
            decode(bytes(bad))
        assert info.value.offset == len(data) - 8


def test_fingerprint_value_and_length_adjustment() -> None:
    """§14.7: CRC-32 over the message with the length including FINGERPRINT."""
    data = encode(_request(Software("s")), fingerprint=True)
    prefix = data[:-8]
    crc = zlib.crc32(prefix[:2] + data[2:4] + prefix[4:]) ^ 0x5354554E
    assert data[-8:] == struct.pack("!HHI", AttrType.FINGERPRINT, 4, crc)
    msg = decode(data)
    assert msg.has_fingerprint and msg.get(Fingerprint) == Fingerprint(crc)
    assert not decode(encode(_request())).has_fingerprint


# --- integrity (RFC 8489 §14.5, §14.6, §9.2.4) --------------------------------


def test_verify_integrity_sha1() -> None:
    msg = _request(Username("user"), Software("x"))
    data = encode(msg, key=KEY, fingerprint=True)
    decoded = decode(data)
    mi = decoded.attributes[2]
    assert isinstance(mi, MessageIntegrity)
    assert verify_integrity(decoded, KEY)
    assert not verify_integrity(decoded, b"other")
    # the MAC covers the header with the adjusted length (§14.5)
    prefix = data[: decoded.integrity_offset]
    assert _with_mac(prefix, AttrType.MESSAGE_INTEGRITY, 20, KEY)[-20:] == mi.value


@pytest.mark.parametrize("size", [16, 20, 24, 28, 32])
def test_verify_integrity_sha256_truncated(size: int) -> None:
    msg = _request(Username("user"), Realm("example.org"))
    data = encode(msg, key=KEY, sha256=True, sha256_size=size, fingerprint=True)
    decoded = decode(data)
    mi = decoded.get(MessageIntegritySha256)
    assert mi is not None and len(mi.value) == size
    assert decoded.get(MessageIntegrity) is None
    assert verify_integrity(decoded, KEY)
    assert not verify_integrity(decoded, KEY + b"!")
    prefix = data[: decoded.integrity_sha256_offset]
    assert _with_mac(prefix, AttrType.MESSAGE_INTEGRITY_SHA256, size, KEY)[-size:] == (
        mi.value
    )


@pytest.mark.parametrize("size", [0, 4, 12, 15, 17, 30, 33, 36])
def test_bad_sha256_size_refused(size: int) -> None:
    with pytest.raises(UsageError):
        encode(_request(), key=KEY, sha256=True, sha256_size=size)


def test_verify_integrity_prefers_sha256() -> None:
    """§9.2.4: with both present, MESSAGE-INTEGRITY-SHA256 decides."""
    data = encode(_request(Software("x")), key=KEY, sha1=True, sha256=True)
    decoded = decode(data)
    assert verify_integrity(decoded, KEY)
    # break the SHA-1 MAC only: SHA-256 still verifies (and covers the SHA-1 MAC,
    # so recompute it over the changed bytes)
    assert decoded.integrity_offset is not None
    start = decoded.integrity_offset + 4
    bad = bytearray(data[: decoded.integrity_sha256_offset])
    bad[start] ^= 0xFF
    resigned = _with_mac(bytes(bad), AttrType.MESSAGE_INTEGRITY_SHA256, 32, KEY)
    redecoded = decode(resigned)
    assert verify_integrity(redecoded, KEY)
    # break the SHA-256 MAC: fails, though the SHA-1 one is right
    wrong = bytearray(data)
    wrong[-1] ^= 0x01
    assert not verify_integrity(decode(bytes(wrong)), KEY)


def test_verify_integrity_detects_tampering() -> None:
    data = encode(_request(Username("user"), Software("abcd")), key=KEY)
    for pos in (0, 1, 2, 3, 8, 19, 24, 30, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        try:
            msg = decode(bytes(bad))
        except DecodeError:
            continue
        assert not verify_integrity(msg, KEY), pos


def test_verify_integrity_without_integrity_attribute() -> None:
    assert not verify_integrity(decode(encode(_request(Software("x")))), KEY)
    # a message that was never decoded has no raw bytes to check
    assert not verify_integrity(_request(MessageIntegrity(bytes(20))), KEY)


def test_verify_integrity_uses_constant_time_compare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    sha1 = decode(encode(_request(), key=KEY))
    sha256 = decode(encode(_request(), key=KEY, sha256=True, sha256_size=16))
    assert verify_integrity(sha1, KEY)
    assert not verify_integrity(sha256, b"wrong")
    assert len(calls) == 2
    assert len(calls[0][0]) == 20 and len(calls[1][0]) == 16
    assert integrity.macs_equal(b"ab", b"ab") and len(calls) == 3


def test_xor_address_uses_transaction_id() -> None:
    attr = XorMappedAddress("2001:db8::1", 3478)
    a = encode(Message(Method.BINDING, MessageClass.SUCCESS, TID, (attr,)))
    other = bytes(range(12))
    b = encode(Message(Method.BINDING, MessageClass.SUCCESS, other, (attr,)))
    assert a[20:] != b[20:]
    assert decode(a).get(XorMappedAddress) == decode(b).get(XorMappedAddress) == attr


# --- framing helpers (RFC 8489 §6.2.2, RFC 7983) ------------------------------


def test_message_length_from_header() -> None:
    data = encode(_request(Software("natkit")), key=KEY, fingerprint=True)
    assert message_length_from_header(data[:4]) == len(data)
    assert message_length_from_header(data[:20]) == len(data)
    assert message_length_from_header(b"\x00\x01\x00\x00") == 20
    assert message_length_from_header(b"\x01\x01\xff\xfc") == 20 + 0xFFFC


def test_message_length_from_header_errors() -> None:
    with pytest.raises(UsageError):
        message_length_from_header(b"\x00\x01\x00")
    with pytest.raises(DecodeError, match="first two bits") as info:
        message_length_from_header(b"\x40\x01\x00\x00")
    assert info.value.offset == 0
    with pytest.raises(DecodeError, match="multiple of 4") as info:
        message_length_from_header(b"\x00\x01\x00\x05")
    assert info.value.offset == 2


def test_is_stun() -> None:
    data = encode(_request(Software("x")), fingerprint=True)
    assert is_stun(data)
    assert is_stun(encode(_request()))
    assert not is_stun(b"")
    assert not is_stun(data[:19])
    assert not is_stun(data[:-4])  # length field no longer matches
    assert not is_stun(data + b"\x00" * 4)
    assert not is_stun(b"\x80" + data[1:])  # RTP (RFC 7983)
    assert not is_stun(b"\x16\xfe\xfd" + bytes(30))  # DTLS
    assert not is_stun(b"\x40\x00\x00\x00" + bytes(16))  # ChannelData
