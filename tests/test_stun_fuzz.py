"""Property tests of the STUN codec (RFC 8489 §5, §14).

Random valid messages with every attribute type survive encode -> decode
(with and without integrity and FINGERPRINT); random and mutated bytes make
``decode`` raise DecodeError and nothing else.
"""

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from natkit.stun import attributes as a
from natkit.stun.constants import HEADER_LENGTH, MAGIC_COOKIE, MessageClass
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import (
    Message,
    decode,
    encode,
    is_stun,
    message_length_from_header,
    verify_integrity,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)

#: any text that UTF-8 can carry, short enough for every text attribute
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)

addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


def _address(cls: type[a.Attribute]) -> st.SearchStrategy[a.Attribute]:
    return st.builds(cls, addresses, u16)


entries = st.builds(a.PasswordAlgorithmEntry, u16, st.binary(max_size=9))

STRATEGIES: dict[type[a.Attribute], st.SearchStrategy[a.Attribute]] = {
    a.MappedAddress: _address(a.MappedAddress),
    a.XorMappedAddress: _address(a.XorMappedAddress),
    a.AlternateServer: _address(a.AlternateServer),
    a.ResponseOrigin: _address(a.ResponseOrigin),
    a.OtherAddress: _address(a.OtherAddress),
    a.XorPeerAddress: _address(a.XorPeerAddress),
    a.XorRelayedAddress: _address(a.XorRelayedAddress),
    a.Username: st.builds(a.Username, text),
    a.Realm: st.builds(a.Realm, text),
    a.Nonce: st.builds(a.Nonce, text),
    a.Software: st.builds(a.Software, text),
    a.AlternateDomain: st.builds(a.AlternateDomain, text),
    a.MessageIntegrity: st.builds(
        a.MessageIntegrity, st.binary(min_size=20, max_size=20)
    ),
    a.MessageIntegritySha256: st.builds(
        a.MessageIntegritySha256,
        st.sampled_from([16, 20, 24, 28, 32]).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)
        ),
    ),
    a.Userhash: st.builds(a.Userhash, st.binary(min_size=32, max_size=32)),
    a.ReservationToken: st.builds(
        a.ReservationToken, st.binary(min_size=8, max_size=8)
    ),
    a.Data: st.builds(a.Data, st.binary(max_size=64)),
    a.Padding: st.builds(a.Padding, st.binary(max_size=64)),
    a.Fingerprint: st.builds(a.Fingerprint, u32),
    a.Lifetime: st.builds(a.Lifetime, u32),
    a.Priority: st.builds(a.Priority, u32),
    a.IceControlled: st.builds(a.IceControlled, u64),
    a.IceControlling: st.builds(a.IceControlling, u64),
    a.UseCandidate: st.builds(a.UseCandidate),
    a.DontFragment: st.builds(a.DontFragment),
    a.ChannelNumber: st.builds(a.ChannelNumber, u16),
    a.RequestedTransport: st.builds(a.RequestedTransport, u8),
    a.EvenPort: st.builds(a.EvenPort, st.booleans()),
    a.RequestedAddressFamily: st.builds(a.RequestedAddressFamily, u8),
    a.AdditionalAddressFamily: st.builds(a.AdditionalAddressFamily, u8),
    a.ErrorCodeAttr: st.builds(a.ErrorCodeAttr, st.integers(300, 699), text),
    a.AddressErrorCode: st.builds(a.AddressErrorCode, u8, st.integers(300, 699), text),
    a.Icmp: st.builds(a.Icmp, u8, u8, u32),
    a.UnknownAttributes: st.builds(
        a.UnknownAttributes, st.lists(u16, max_size=6).map(tuple)
    ),
    a.PasswordAlgorithms: st.builds(
        a.PasswordAlgorithms, st.lists(entries, max_size=4).map(tuple)
    ),
    a.PasswordAlgorithm: st.builds(a.PasswordAlgorithm, u16, st.binary(max_size=9)),
    a.ChangeRequest: st.builds(a.ChangeRequest, st.booleans(), st.booleans()),
    a.ResponsePort: st.builds(a.ResponsePort, u16),
}

#: attributes whose position is fixed by RFC 8489 §14.5-§14.7
TRAILER = (a.MessageIntegrity, a.MessageIntegritySha256, a.Fingerprint)

unknown = st.builds(
    a.UnknownAttribute,
    u16.filter(lambda t: t not in a.REGISTRY),
    st.binary(max_size=16),
)
body_attribute = st.one_of(
    unknown, *(s for cls, s in STRATEGIES.items() if cls not in TRAILER)
)

messages = st.builds(
    Message,
    method=st.integers(0, 0xFFF),
    cls=st.sampled_from(MessageClass),
    transaction_id=st.binary(min_size=12, max_size=12),
    attributes=st.lists(body_attribute, max_size=8).map(tuple),
    cookie=st.one_of(st.just(MAGIC_COOKIE), u32),
)


def test_every_attribute_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(a.REGISTRY.values())


@given(st.one_of(*STRATEGIES.values()), st.binary(min_size=12, max_size=12))
def test_attribute_round_trip(attr: a.Attribute, tid: bytes) -> None:
    value = attr.encode_value(tid)
    assert type(attr).decode_value(value, tid, HEADER_LENGTH) == attr


@given(messages, st.binary(min_size=1, max_size=1))
def test_message_round_trip(msg: Message, padding: bytes) -> None:
    data = encode(msg, padding=padding)
    assert is_stun(data)
    assert message_length_from_header(data[:4]) == len(data)
    decoded = decode(data)
    assert decoded == msg
    expected = tuple(
        x.type for x in msg.attributes if isinstance(x, a.UnknownAttribute)
    )
    assert decoded.unknown_required == tuple(t for t in expected if t < 0x8000)
    # decoded messages re-encode to the same bytes
    assert encode(decoded, padding=padding) == data


@given(
    messages,
    st.binary(min_size=1, max_size=64),
    st.sampled_from(["sha1", "sha256", "both"]),
    st.sampled_from([16, 20, 24, 28, 32]),
    st.booleans(),
)
def test_message_round_trip_with_integrity(
    msg: Message, key: bytes, kind: str, size: int, fingerprint: bool
) -> None:
    data = encode(
        msg,
        key=key,
        sha1=kind in ("sha1", "both"),
        sha256=kind in ("sha256", "both"),
        sha256_size=size,
        fingerprint=fingerprint,
    )
    decoded = decode(data)
    count = len(msg.attributes)
    assert decoded.attributes[:count] == msg.attributes
    trailer = [type(x) for x in decoded.attributes[count:]]
    expected: list[type[a.Attribute]] = []
    if kind in ("sha1", "both"):
        expected.append(a.MessageIntegrity)
    if kind in ("sha256", "both"):
        expected.append(a.MessageIntegritySha256)
    if fingerprint:
        expected.append(a.Fingerprint)
    assert trailer == expected
    assert decoded.has_fingerprint is fingerprint
    assert verify_integrity(decoded, key)
    assert not verify_integrity(decoded, b"\x01" + key)  # (HMAC zero-pads keys)


@given(
    messages,
    st.one_of(STRATEGIES[a.MessageIntegrity], STRATEGIES[a.MessageIntegritySha256]),
)
def test_integrity_attribute_given_as_last(msg: Message, mac: a.Attribute) -> None:
    """An integrity attribute passed in by hand decodes back unchanged."""
    with_mac = Message(
        msg.method, msg.cls, msg.transaction_id, (*msg.attributes, mac), msg.cookie
    )
    assert decode(encode(with_mac)) == with_mac


def _decode_or_decode_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except DecodeError as exc:
        assert 0 <= exc.offset <= max(len(data), HEADER_LENGTH)
        return
    assert len(msg.transaction_id) == 12
    verify_integrity(msg, b"key")


@given(st.binary(max_size=128))
def test_random_bytes(data: bytes) -> None:
    _decode_or_decode_error(data)
    is_stun(data)
    try:
        message_length_from_header(data)
    except (DecodeError, UsageError):
        pass


@given(
    st.integers(0, 0x3FFF),
    st.integers(0, 24)
    .map(lambda n: n * 4)
    .flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.booleans(),
)
def test_random_attributes_after_valid_header(
    kind: int, body: bytes, cookie: bool
) -> None:
    """A correct header, so that decoding reaches the attribute parser."""
    magic = MAGIC_COOKIE if cookie else 0x01020304
    data = struct.pack("!HHI12s", kind, len(body), magic, bytes(12)) + body
    _decode_or_decode_error(data)


garbage_attribute = st.tuples(
    st.sampled_from(sorted(a.REGISTRY)), st.binary(max_size=40)
)


@given(st.lists(garbage_attribute, max_size=6), st.binary(min_size=12, max_size=12))
def test_known_types_with_garbage_values(
    items: list[tuple[int, bytes]], tid: bytes
) -> None:
    """Well-framed attributes of registered types with random values."""
    body = b"".join(
        struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in items
    )
    data = struct.pack("!HHI12s", 0x0001, len(body), MAGIC_COOKIE, tid) + body
    _decode_or_decode_error(data)


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    msg = draw(messages)
    key = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=16)))
    return encode(
        msg,
        key=key,
        sha256=draw(st.booleans()) and key is not None,
        fingerprint=draw(st.booleans()),
    )


@given(valid_messages(), st.data())
def test_bit_flips(data: bytes, draw: st.DataObject) -> None:
    out = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(0, len(out) - 1))
        out[pos] ^= 1 << draw.draw(st.integers(0, 7))
    _decode_or_decode_error(bytes(out))


@given(valid_messages(), st.data())
def test_truncations_and_extensions(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    _decode_or_decode_error(data[:cut])
    extra = draw.draw(st.binary(min_size=1, max_size=12))
    _decode_or_decode_error(data + extra)


@given(valid_messages(), u16, st.booleans())
def test_length_field_changes(data: bytes, length: int, resize: bool) -> None:
    """A changed header length, with the datagram cut or padded to match."""
    out = data[:2] + struct.pack("!H", length) + data[4:]
    if resize:
        out = (out + bytes(length))[: HEADER_LENGTH + length]
    _decode_or_decode_error(out)


@given(valid_messages(), st.data())
def test_attribute_length_changes(data: bytes, draw: st.DataObject) -> None:
    """Rewrite one attribute's length field: values overrun or shift."""
    starts = []
    pos = HEADER_LENGTH
    while pos + 4 <= len(data):
        starts.append(pos)
        (length,) = struct.unpack_from("!H", data, pos + 2)
        pos += 4 + length + (-length % 4)
    if not starts:
        return
    at = draw.draw(st.sampled_from(starts))
    new = draw.draw(u16)
    out = data[: at + 2] + struct.pack("!H", new) + data[at + 4 :]
    _decode_or_decode_error(out)


def test_strategies_cover_both_families() -> None:
    """Sanity check of the address strategy itself."""
    v4 = ipaddress.ip_address("192.0.2.1")
    assert a.XorMappedAddress(str(v4), 1).family == 1
