"""Attribute codecs, one by one (RFC 8489 §14, RFC 8656 §18, RFC 5780 §7,
RFC 8445 §7.1).

Every class in ``attributes.REGISTRY`` has typical and edge values here that
must survive ``encode_value``/``decode_value``; each malformed value must
raise DecodeError with the offset of the offending byte.
"""

import pytest

from natkit.stun import attributes as attrs
from natkit.stun.attributes import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    NONCE_COOKIE,
    REGISTRY,
    AdditionalAddressFamily,
    AddressErrorCode,
    AlternateDomain,
    AlternateServer,
    Attribute,
    ChangeRequest,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCodeAttr,
    EvenPort,
    Fingerprint,
    IceControlled,
    IceControlling,
    Icmp,
    Lifetime,
    MappedAddress,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    OtherAddress,
    Padding,
    PasswordAlgorithm,
    PasswordAlgorithmEntry,
    PasswordAlgorithms,
    Priority,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    UseCandidate,
    Userhash,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    nonce_cookie_prefix,
    nonce_security_features,
)
from natkit.stun.constants import AddressFamily, AttrType
from natkit.stun.constants import PasswordAlgorithm as Algorithm
from natkit.stun.errors import DecodeError, UsageError

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

#: where the value sits in an imaginary message; offsets are reported from it
AT = 100

ADDRESS_CLASSES: list[type[attrs.Attribute]] = [
    MappedAddress,
    XorMappedAddress,
    AlternateServer,
    ResponseOrigin,
    OtherAddress,
    XorPeerAddress,
    XorRelayedAddress,
]

_ADDRESSES = [
    ("192.0.2.1", 32853),
    ("0.0.0.0", 0),
    ("255.255.255.255", 65535),
    ("2001:db8:1234:5678:11:2233:4455:6677", 32853),
    ("::", 0),
    ("::1", 1),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
    ("::ffff:c000:201", 3478),
]

EXAMPLES: dict[type[Attribute], list[Attribute]] = {
    **{
        cls: [cls(ip, port) for ip, port in _ADDRESSES]  # type: ignore[call-arg]
        for cls in ADDRESS_CLASSES
    },
    Username: [Username(""), Username("evtj:h6vY"), Username("\u00e9" * 254)],
    Realm: [Realm("example.org"), Realm(""), Realm("r" * 763)],
    Nonce: [Nonce("f//499k954d6OL34oL9FSTvy64sA"), Nonce("\u30de" * 254)],
    Software: [Software("natkit"), Software("x" * 763), Software("\U0001f600")],
    AlternateDomain: [AlternateDomain("stun.example.org"), AlternateDomain("a" * 255)],
    MessageIntegrity: [MessageIntegrity(bytes(20)), MessageIntegrity(b"\xff" * 20)],
    MessageIntegritySha256: [
        MessageIntegritySha256(bytes(range(n))) for n in (16, 20, 24, 28, 32)
    ],
    Userhash: [Userhash(bytes(range(32)))],
    ReservationToken: [ReservationToken(b"\x01\x02\x03\x04\x05\x06\x07\x08")],
    Data: [Data(b""), Data(b"\x00"), Data(b"hello"), Data(bytes(1500))],
    Padding: [Padding(b""), Padding(bytes(3)), Padding(b"\xaa" * 64)],
    Fingerprint: [Fingerprint(0), Fingerprint(0xE57A3BCF), Fingerprint(0xFFFFFFFF)],
    Lifetime: [Lifetime(0), Lifetime(600), Lifetime(0xFFFFFFFF)],
    Priority: [Priority(0), Priority(0x6E0001FF), Priority(0xFFFFFFFF)],
    IceControlled: [IceControlled(0), IceControlled(2**64 - 1)],
    IceControlling: [IceControlling(0x932FF9B151263B36), IceControlling(1)],
    UseCandidate: [UseCandidate()],
    DontFragment: [DontFragment()],
    ChannelNumber: [ChannelNumber(0x4000), ChannelNumber(0x4FFF), ChannelNumber(0)],
    RequestedTransport: [RequestedTransport(17), RequestedTransport(6)],
    EvenPort: [EvenPort(True), EvenPort(False)],
    RequestedAddressFamily: [RequestedAddressFamily(1), RequestedAddressFamily(2)],
    AdditionalAddressFamily: [AdditionalAddressFamily(2)],
    ErrorCodeAttr: [
        ErrorCodeAttr(300, "Try Alternate"),
        ErrorCodeAttr(401, "Unauthenticated"),
        ErrorCodeAttr(420, ""),
        ErrorCodeAttr(699, "\u00e9chec"),
    ],
    AddressErrorCode: [
        AddressErrorCode(1, 440, "Address Family not Supported"),
        AddressErrorCode(2, 508, "Insufficient Capacity"),
    ],
    Icmp: [Icmp(3, 1, 0), Icmp(255, 255, 0xFFFFFFFF)],
    UnknownAttributes: [
        UnknownAttributes(()),
        UnknownAttributes((0x0777,)),
        UnknownAttributes((0x0777, 0x7FFF, 0x0030)),
    ],
    PasswordAlgorithms: [
        PasswordAlgorithms(()),
        PasswordAlgorithms(
            (
                PasswordAlgorithmEntry(Algorithm.MD5),
                PasswordAlgorithmEntry(Algorithm.SHA256),
            )
        ),
        PasswordAlgorithms(
            (
                PasswordAlgorithmEntry(0x1234, b"\x01"),
                PasswordAlgorithmEntry(0x0002, b"abcd"),
                PasswordAlgorithmEntry(0xFFFF, b"xyz"),
                PasswordAlgorithmEntry(0x0001, b"12345"),
            )
        ),
    ],
    PasswordAlgorithm: [
        PasswordAlgorithm(Algorithm.SHA256),
        PasswordAlgorithm(Algorithm.MD5, b""),
        PasswordAlgorithm(0x7777, b"\x00\x01\x02"),
    ],
    ChangeRequest: [
        ChangeRequest(),
        ChangeRequest(change_ip=True),
        ChangeRequest(change_port=True),
        ChangeRequest(True, True),
    ],
    ResponsePort: [ResponsePort(0), ResponsePort(3478), ResponsePort(65535)],
}

_ALL = [
    pytest.param(attr, id=f"{type(attr).__name__}-{i}")
    for values in EXAMPLES.values()
    for i, attr in enumerate(values)
]


def test_every_registered_attribute_has_examples() -> None:
    assert set(EXAMPLES) == set(REGISTRY.values())


def test_registry_keys_are_the_iana_types() -> None:
    """Each class is registered under its own TYPE, an AttrType member."""
    for attr_type, cls in REGISTRY.items():
        assert cls.TYPE == attr_type
        assert AttrType(attr_type).value == attr_type


def test_every_attr_type_has_a_codec() -> None:
    assert set(AttrType) == set(REGISTRY)


@pytest.mark.parametrize("attr", _ALL)
def test_round_trip(attr: Attribute) -> None:
    value = attr.encode_value(TID)
    assert type(attr).decode_value(value, TID, AT) == attr


# --- addresses (RFC 8489 §14.1, §14.2) ----------------------------------------


def test_xor_mapped_address_ipv4_rfc5769_bytes() -> None:
    """RFC 5769 §2.2: 192.0.2.1:32853 XORed with the magic cookie."""
    value = bytes.fromhex("0001a147e112a643")
    assert XorMappedAddress("192.0.2.1", 32853).encode_value(TID) == value
    assert XorMappedAddress.decode_value(value, TID, AT) == XorMappedAddress(
        "192.0.2.1", 32853
    )
    assert XorMappedAddress("192.0.2.1", 1).family == AddressFamily.IPV4


def test_xor_mapped_address_ipv6_rfc5769_bytes() -> None:
    """RFC 5769 §2.3: the IPv6 address is XORed with cookie + transaction id."""
    value = bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")
    attr = XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert attr.encode_value(TID) == value
    assert XorMappedAddress.decode_value(value, TID, AT) == attr
    assert attr.family == AddressFamily.IPV6
    # another transaction id gives another IPv6 value but the same IPv4 one
    other = bytes(12)
    assert attr.encode_value(other) != value
    v4 = XorMappedAddress("192.0.2.1", 32853)
    assert v4.encode_value(other) == v4.encode_value(TID)


def test_mapped_address_is_not_xored() -> None:
    """RFC 8489 §14.1: family 0x01, port, address in the clear."""
    value = MappedAddress("192.0.2.1", 32853).encode_value(TID)
    assert value == bytes.fromhex("00018055c0000201")
    value6 = MappedAddress("2001:db8::1", 3478).encode_value(TID)
    assert value6 == bytes.fromhex("00020d96") + bytes.fromhex(
        "20010db8000000000000000000000001"
    )


@pytest.mark.parametrize("cls", ADDRESS_CLASSES)
@pytest.mark.parametrize(
    ("value", "offset", "match"),
    [
        (b"", AT, "shorter than 4"),
        (b"\x00\x01\x00", AT, "shorter than 4"),
        (b"\x00\x03\x00\x01" + bytes(4), AT + 1, "unknown family 3"),
        (b"\x00\x00\x00\x01" + bytes(4), AT + 1, "unknown family 0"),
        (b"\x00\x01\x00\x01" + bytes(3), AT, "must be 8 bytes"),
        (b"\x00\x01\x00\x01" + bytes(16), AT, "must be 8 bytes"),
        (b"\x00\x02\x00\x01" + bytes(4), AT, "must be 20 bytes"),
        (b"\x00\x02\x00\x01" + bytes(17), AT, "must be 20 bytes"),
    ],
)
def test_address_bad_values(
    cls: type[Attribute], value: bytes, offset: int, match: str
) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        cls.decode_value(value, TID, AT)
    assert info.value.offset == offset


@pytest.mark.parametrize("cls", [MappedAddress, XorMappedAddress])
@pytest.mark.parametrize(
    ("ip", "port"),
    [("192.0.2.300", 1), ("example.org", 1), ("", 1), ("192.0.2.1", 65536)],
)
def test_address_encode_refuses_bad_input(
    cls: type[Attribute], ip: str, port: int
) -> None:
    attr = cls(ip, port)  # type: ignore[call-arg]
    with pytest.raises(UsageError):
        attr.encode_value(TID)


def test_address_reserved_byte_ignored() -> None:
    """RFC 8489 §14.1: the first byte is ignored on receipt."""
    value = b"\xff" + MappedAddress("192.0.2.1", 9).encode_value(TID)[1:]
    assert MappedAddress.decode_value(value, TID, AT) == MappedAddress("192.0.2.1", 9)


# --- text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "limit"),
    [
        (Username, 508),
        (Realm, 763),
        (Nonce, 763),
        (Software, 763),
        (AlternateDomain, 255),
    ],
)
def test_text_length_limits(cls: type[Attribute], limit: int) -> None:
    """RFC 8489 §14.3, §14.9, §14.10, §14.14, §14.16 byte limits."""
    expected = cls("a" * limit)  # type: ignore[call-arg]
    assert cls.decode_value(b"a" * limit, TID, AT) == expected
    with pytest.raises(DecodeError, match="longer than") as info:
        cls.decode_value(b"a" * (limit + 1), TID, AT)
    assert info.value.offset == AT
    with pytest.raises(UsageError):
        cls("a" * (limit + 1)).encode_value(TID)  # type: ignore[call-arg]
    # the limit is in bytes, not characters
    with pytest.raises(UsageError):
        cls("\u00e9" * (limit // 2 + 1)).encode_value(TID)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", [Username, Realm, Nonce, Software, AlternateDomain])
@pytest.mark.parametrize(
    ("value", "bad_at"),
    [(b"\xff", 0), (b"ab\xc3", 2), (b"abc\xed\xa0\x80", 3), (b"ok\x80ok", 2)],
)
def test_text_invalid_utf8(cls: type[Attribute], value: bytes, bad_at: int) -> None:
    with pytest.raises(DecodeError, match="UTF-8") as info:
        cls.decode_value(value, TID, AT)
    assert info.value.offset == AT + bad_at


# --- fixed and variable bytes ------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "length"),
    [(MessageIntegrity, 20), (Userhash, 32), (ReservationToken, 8)],
)
def test_fixed_bytes_lengths(cls: type[Attribute], length: int) -> None:
    for bad in (0, length - 1, length + 1, length + 4):
        with pytest.raises(DecodeError, match=f"must be {length} bytes") as info:
            cls.decode_value(bytes(bad), TID, AT)
        assert info.value.offset == AT
        with pytest.raises(UsageError):
            cls(bytes(bad)).encode_value(TID)  # type: ignore[call-arg]


@pytest.mark.parametrize("length", [0, 4, 12, 15, 17, 18, 30, 33, 36, 64])
def test_message_integrity_sha256_bad_lengths(length: int) -> None:
    """RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4."""
    with pytest.raises(DecodeError, match="16-32") as info:
        MessageIntegritySha256.decode_value(bytes(length), TID, AT)
    assert info.value.offset == AT
    with pytest.raises(UsageError):
        MessageIntegritySha256(bytes(length)).encode_value(TID)


@pytest.mark.parametrize("cls", [Data, Padding])
def test_variable_bytes_are_verbatim(cls: type[Attribute]) -> None:
    attr = cls(b"\x00\x01\x02")  # type: ignore[call-arg]
    assert attr.encode_value(TID) == b"\x00\x01\x02"


# --- integers and flags -------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "length"),
    [
        (Fingerprint, 4),
        (Lifetime, 4),
        (Priority, 4),
        (IceControlled, 8),
        (IceControlling, 8),
        (UseCandidate, 0),
        (DontFragment, 0),
        (ChannelNumber, 4),
        (RequestedTransport, 4),
        (EvenPort, 1),
        (RequestedAddressFamily, 4),
        (AdditionalAddressFamily, 4),
        (Icmp, 8),
        (ChangeRequest, 4),
        (ResponsePort, 4),
    ],
)
def test_fixed_length_values(cls: type[Attribute], length: int) -> None:
    for bad in {0, 1, 2, 3, 4, 5, 8, 9} - {length}:
        with pytest.raises(DecodeError, match=f"must be {length} bytes") as info:
            cls.decode_value(bytes(bad), TID, AT)
        assert info.value.offset == AT


@pytest.mark.parametrize(
    "attr",
    [
        Lifetime(-1),
        Lifetime(2**32),
        Priority(2**32),
        IceControlled(-1),
        IceControlling(2**64),
        ChannelNumber(0x10000),
        ChannelNumber(-1),
        RequestedTransport(256),
        RequestedAddressFamily(256),
        ResponsePort(65536),
        ErrorCodeAttr(299, "x"),
        ErrorCodeAttr(700, "x"),
        ErrorCodeAttr(400, "x" * 764),
        Icmp(1, 1, 2**32),
        UnknownAttributes((0x10000,)),
        UnknownAttributes((-1,)),
    ],
)
def test_encode_refuses_out_of_range(attr: Attribute) -> None:
    with pytest.raises(UsageError):
        attr.encode_value(TID)


def test_integer_layouts() -> None:
    assert Lifetime(600).encode_value(TID) == bytes.fromhex("00000258")
    assert IceControlled(1).encode_value(TID) == bytes.fromhex("0000000000000001")
    assert ChannelNumber(0x4001).encode_value(TID) == bytes.fromhex("40010000")
    assert RequestedTransport(17).encode_value(TID) == bytes.fromhex("11000000")
    assert EvenPort(True).encode_value(TID) == b"\x80"
    assert EvenPort(False).encode_value(TID) == b"\x00"
    assert ResponsePort(3478).encode_value(TID) == bytes.fromhex("0d960000")
    assert RequestedAddressFamily(2).encode_value(TID) == bytes.fromhex("02000000")
    assert Icmp(3, 1, 7).encode_value(TID) == bytes.fromhex("0000030100000007")
    assert UseCandidate().encode_value(TID) == b""


def test_reserved_bits_ignored_on_receipt() -> None:
    """RFFU fields are set to zero and ignored (RFC 8656 §18.1, §18.6, §18.7)."""
    assert ChannelNumber.decode_value(bytes.fromhex("4001ffff"), TID, AT) == (
        ChannelNumber(0x4001)
    )
    assert RequestedTransport.decode_value(bytes.fromhex("11ffffff"), TID, AT) == (
        RequestedTransport(17)
    )
    assert EvenPort.decode_value(b"\x7f", TID, AT) == EvenPort(False)
    assert EvenPort.decode_value(b"\xff", TID, AT) == EvenPort(True)
    assert ResponsePort.decode_value(bytes.fromhex("0d96abcd"), TID, AT) == (
        ResponsePort(3478)
    )


@pytest.mark.parametrize(
    ("flags", "attr"),
    [
        (0x00, ChangeRequest(False, False)),
        (0x02, ChangeRequest(False, True)),
        (0x04, ChangeRequest(True, False)),
        (0x06, ChangeRequest(True, True)),
    ],
)
def test_change_request_flags(flags: int, attr: ChangeRequest) -> None:
    """RFC 5780 §7.2: A (0x04) is change IP, B (0x02) change port."""
    value = flags.to_bytes(4)
    assert attr.encode_value(TID) == value
    assert ChangeRequest.decode_value(value, TID, AT) == attr
    # other bits are ignored
    assert ChangeRequest.decode_value((flags | 0xF9).to_bytes(4), TID, AT) == attr


# --- ERROR-CODE (RFC 8489 §14.8) ----------------------------------------------


@pytest.mark.parametrize(
    ("code", "klass", "number"),
    [(300, 3, 0), (401, 4, 1), (420, 4, 20), (438, 4, 38), (508, 5, 8), (699, 6, 99)],
)
def test_error_code_class_and_number(code: int, klass: int, number: int) -> None:
    value = ErrorCodeAttr(code, "Reason").encode_value(TID)
    assert value == bytes((0, 0, klass, number)) + b"Reason"
    assert ErrorCodeAttr.decode_value(value, TID, AT) == ErrorCodeAttr(code, "Reason")


def test_error_code_reserved_bits_ignored() -> None:
    """RFC 8489 §14.8: the 21 reserved bits are ignored; class is 3 bits."""
    value = bytes((0xFF, 0xFF, 0xF8 | 4, 1)) + b"Unauthenticated"
    assert ErrorCodeAttr.decode_value(value, TID, AT) == ErrorCodeAttr(
        401, "Unauthenticated"
    )


@pytest.mark.parametrize(
    ("value", "offset", "match"),
    [
        (b"", AT, "shorter than 4"),
        (b"\x00\x00\x04", AT, "shorter than 4"),
        (b"\x00\x00\x02\x00", AT + 2, "invalid code 2/0"),
        (b"\x00\x00\x07\x00", AT + 2, "invalid code 7/0"),
        (b"\x00\x00\x00\x00", AT + 2, "invalid code 0/0"),
        (b"\x00\x00\x04\x64", AT + 2, "invalid code 4/100"),
        (b"\x00\x00\x04\x00ok\xff", AT + 6, "UTF-8"),
        (b"\x00\x00\x04\x00" + b"x" * 764, AT + 4, "longer than"),
    ],
)
def test_error_code_bad_values(value: bytes, offset: int, match: str) -> None:
    for cls in (ErrorCodeAttr, AddressErrorCode):
        with pytest.raises(DecodeError, match=match) as info:
            cls.decode_value(value, TID, AT)
        assert info.value.offset == offset


def test_address_error_code_layout() -> None:
    """RFC 8656 §18.12: family byte, then the ERROR-CODE layout."""
    attr = AddressErrorCode(2, 440, "Address Family not Supported")
    value = attr.encode_value(TID)
    assert value[:4] == bytes((2, 0, 4, 40))
    assert value[4:] == b"Address Family not Supported"


# --- UNKNOWN-ATTRIBUTES (RFC 8489 §14.13) ---------------------------------------


def test_unknown_attributes_layout() -> None:
    attr = UnknownAttributes((0x0777, 0x8001))
    assert attr.encode_value(TID) == bytes.fromhex("07778001")
    # odd count: the value is not padded by the codec (the message pads it)
    assert UnknownAttributes((0x0001,)).encode_value(TID) == b"\x00\x01"


@pytest.mark.parametrize("length", [1, 3, 5])
def test_unknown_attributes_odd_length(length: int) -> None:
    with pytest.raises(DecodeError, match="odd") as info:
        UnknownAttributes.decode_value(bytes(length), TID, AT)
    assert info.value.offset == AT


# --- PASSWORD-ALGORITHMS / PASSWORD-ALGORITHM (RFC 8489 §14.11, §14.12) -------


def test_password_algorithms_parameters_and_padding() -> None:
    """Each entry: algorithm, parameter length, parameters padded to 4."""
    attr = PasswordAlgorithms(
        (
            PasswordAlgorithmEntry(Algorithm.MD5),
            PasswordAlgorithmEntry(0x1234, b"\xaa"),
            PasswordAlgorithmEntry(Algorithm.SHA256, b"abcd"),
            PasswordAlgorithmEntry(0x0009, b"12345"),
        )
    )
    value = attr.encode_value(TID)
    assert value == bytes.fromhex(
        "00010000"  # MD5, no parameters
        "12340001"
        "aa000000"  # 1 byte of parameters, 3 of padding
        "00020004"
        "61626364"  # 4 bytes, no padding
        "00090005"
        "3132333435000000"  # 5 bytes, 3 of padding
    )
    assert PasswordAlgorithms.decode_value(value, TID, AT) == attr


def test_password_algorithms_padding_content_ignored() -> None:
    value = bytes.fromhex("12340001aaffffff00020000")
    assert PasswordAlgorithms.decode_value(value, TID, AT) == PasswordAlgorithms(
        (PasswordAlgorithmEntry(0x1234, b"\xaa"), PasswordAlgorithmEntry(2))
    )


@pytest.mark.parametrize(
    ("value", "offset", "match"),
    [
        (bytes.fromhex("0001"), AT, "entry truncated"),
        (bytes.fromhex("000100000002"), AT + 4, "entry truncated"),
        (bytes.fromhex("00010004aabb"), AT, "overrun"),
        (bytes.fromhex("0001000000020008aabbccdd"), AT + 4, "overrun"),
        (bytes.fromhex("00010001aa"), AT, "padding"),
        (bytes.fromhex("00010003aabbcc"), AT, "padding"),
    ],
)
def test_password_algorithms_bad_values(value: bytes, offset: int, match: str) -> None:
    for cls in (PasswordAlgorithms, PasswordAlgorithm):
        with pytest.raises(DecodeError, match=match) as info:
            cls.decode_value(value, TID, AT)
        assert info.value.offset == offset


@pytest.mark.parametrize("value", [b"", bytes.fromhex("0001000000020000")])
def test_password_algorithm_needs_exactly_one(value: bytes) -> None:
    with pytest.raises(DecodeError, match="exactly one") as info:
        PasswordAlgorithm.decode_value(value, TID, AT)
    assert info.value.offset == AT


def test_password_algorithm_layout() -> None:
    assert PasswordAlgorithm(Algorithm.SHA256).encode_value(TID) == bytes.fromhex(
        "00020000"
    )
    assert PasswordAlgorithm(7, b"\x01\x02").encode_value(TID) == bytes.fromhex(
        "0007000201020000"
    )


@pytest.mark.parametrize(
    "attr",
    [
        PasswordAlgorithm(0x10000),
        PasswordAlgorithm(-1),
        PasswordAlgorithms((PasswordAlgorithmEntry(0x10000),)),
        PasswordAlgorithm(1, bytes(0x10000)),
    ],
)
def test_password_algorithm_encode_refuses_out_of_range(attr: Attribute) -> None:
    with pytest.raises(UsageError):
        attr.encode_value(TID)


# --- nonce security features (RFC 8489 §9.2.1, §18.1) ------------------------


def test_nonce_security_features_bits() -> None:
    """Bit 0 (password algorithms) is the least significant bit of the set."""
    assert FEATURE_PASSWORD_ALGORITHMS == 0x000001
    assert FEATURE_USERNAME_ANONYMITY == 0x000002
    assert nonce_cookie_prefix(0) == "obMatJos2AAAA"
    assert nonce_cookie_prefix(FEATURE_PASSWORD_ALGORITHMS) == "obMatJos2AAAB"
    assert nonce_cookie_prefix(FEATURE_USERNAME_ANONYMITY) == "obMatJos2AAAC"
    both = FEATURE_PASSWORD_ALGORITHMS | FEATURE_USERNAME_ANONYMITY
    assert nonce_cookie_prefix(both) == "obMatJos2AAAD"
    assert nonce_cookie_prefix(0xFFFFFF) == "obMatJos2////"


@pytest.mark.parametrize("features", [0, 1, 2, 3, 0x3F, 0x40, 0x123456, 0xFFFFFF])
def test_nonce_security_features_round_trip(features: int) -> None:
    prefix = nonce_cookie_prefix(features)
    assert len(prefix) == 13 and prefix.startswith(NONCE_COOKIE)
    assert nonce_security_features(prefix) == features
    assert nonce_security_features(prefix + "f//499k954d6OL34oL9FSTvy64sA") == features


@pytest.mark.parametrize(
    "nonce",
    ["", "f//499k954d6OL34oL9FSTvy64sA", "obMatJos2", "obMatJos2AAA", "obMatJos2AA-A"],
)
def test_nonce_without_security_features(nonce: str) -> None:
    assert nonce_security_features(nonce) is None


@pytest.mark.parametrize("features", [-1, 1 << 24])
def test_nonce_cookie_prefix_range(features: int) -> None:
    with pytest.raises(UsageError):
        nonce_cookie_prefix(features)
