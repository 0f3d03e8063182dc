"""The Binding fast path answers byte for byte like the full responder."""

import os
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.net.fastpath import BindingFastPath
from natkit.stun.attributes import Attribute, Software, UnknownAttribute
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, encode, new_transaction_id
from natkit.stun.server import BindingResponder

V4 = ("192.0.2.7", 40000)
V6 = ("2001:db8::1:2", 3478, 0, 0)


def full(software: str | None, data: bytes, addr: tuple[Any, ...]) -> bytes | None:
    return BindingResponder(software).handle(data, addr[0], addr[1])


def request(*attributes: Attribute, fingerprint: bool = False) -> bytes:
    msg = Message(
        Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attributes
    )
    return encode(msg, fingerprint=fingerprint)


SIMPLE = [
    pytest.param(request(), id="bare"),
    pytest.param(request(fingerprint=True), id="fingerprint"),
    pytest.param(request(Software("client 1.0")), id="software"),
    pytest.param(request(Software("ü" * 5), fingerprint=True), id="software+fp"),
    pytest.param(request(Software("")), id="empty-software"),
]


@pytest.mark.parametrize("software", [None, "natkit", "x" * 127])
@pytest.mark.parametrize("addr", [V4, V6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("data", SIMPLE)
def test_simple_requests_take_the_fast_path_with_identical_bytes(
    data: bytes, addr: tuple[Any, ...], software: str | None
) -> None:
    fast = BindingFastPath(software)
    response = fast.respond(data, addr)
    assert response is not None
    assert response == full(software, data, addr)
    assert fast.answered == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(request(UnknownAttribute(0x8F01, b"opt")), id="other-attribute"),
        pytest.param(request(UnknownAttribute(0x7F01, b"")), id="420"),
        pytest.param(b"\x00\x01\x00\x00" + os.urandom(16), id="rfc3489"),
        pytest.param(request() + b"\x00" * 4, id="trailing-bytes"),
        pytest.param(request()[:19], id="short"),
        pytest.param(b"\x00\x11" + request()[2:], id="indication"),
    ],
)
def test_other_messages_fall_through(data: bytes) -> None:
    fast = BindingFastPath()
    assert fast.respond(data, V4) is None
    assert fast.answered == 0


def test_bad_fingerprint_falls_through() -> None:
    data = bytearray(request(fingerprint=True))
    data[-1] ^= 1
    assert BindingFastPath().respond(bytes(data), V4) is None


def test_invalid_utf8_software_falls_through() -> None:
    data = request(Software("abcd"))
    data = data[:24] + b"\xff\xfe\xfd\xfc"
    assert BindingFastPath().respond(data, V4) is None
    assert full(None, data, V4) is None


def test_ipv6_zone_is_not_part_of_the_address() -> None:
    data = request()
    zoned = BindingFastPath().respond(data, ("fe80::1%lo", 5000, 0, 1))
    assert zoned == full(None, data, ("fe80::1", 5000))


def _mutations() -> st.SearchStrategy[bytes]:
    """Simple requests with a few bytes changed, cut or appended."""
    base = st.sampled_from([p.values[0] for p in SIMPLE])

    def mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(data)
        for pos, value in edits:
            out[pos % len(out)] = value
        return bytes(out[: max(0, len(out) - cut)])

    return st.builds(
        mutate,
        base,
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
        st.integers(0, 3),
    )


@given(
    data=_mutations() | st.binary(max_size=64),
    software=st.sampled_from([None, "natkit"]),
    v6=st.booleans(),
)
def test_fast_path_never_disagrees_with_the_full_path(
    data: bytes, software: str | None, v6: bool
) -> None:
    addr = V6 if v6 else V4
    fast = BindingFastPath(software).respond(data, addr)
    if fast is not None:
        assert fast == full(software, data, addr)


def test_cache_is_bounded() -> None:
    fast = BindingFastPath()
    data = request()
    for port in range(5000):
        fast.respond(data, ("192.0.2.1", port))
    assert len(fast._v4_cache) <= 4096
    reply = fast.respond(data, ("192.0.2.1", 1234))
    assert reply is not None
    (xport,) = struct.unpack_from("!H", reply, 26)
    assert xport ^ 0x2112 == 1234
