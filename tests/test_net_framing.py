"""RFC 8489 §6.2.2 stream framing."""

import pytest

from natkit.net.framing import FramingError, StreamFramer
from natkit.stun.attributes import Software
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, encode, new_transaction_id


def message(text: str = "") -> bytes:
    attrs = (Software(text),) if text else ()
    msg = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attrs)
    return encode(msg, fingerprint=True)


def test_one_whole_message_is_returned_as_is() -> None:
    data = message()
    out = StreamFramer(1024).feed(data)
    assert out == [data]
    assert out[0] is data


def test_two_messages_in_one_chunk() -> None:
    a, b = message("first"), message("second one")
    framer = StreamFramer(1024)
    assert framer.feed(a + b) == [a, b]
    assert framer.pending == 0


def test_one_message_split_byte_by_byte() -> None:
    data = message("split")
    framer = StreamFramer(1024)
    out: list[bytes] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert out == [data]
    assert framer.pending == 0


def test_message_and_a_half_then_the_rest() -> None:
    a, b = message("a"), message("b")
    framer = StreamFramer(1024)
    assert framer.feed(a + b[:7]) == [a]
    assert framer.pending == 7
    assert framer.feed(b[7:]) == [b]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc0\x01\x00\x00", id="top-bits"),
        pytest.param(b"\x40\x00\x00\x04", id="channel-data"),
        pytest.param(b"\x00\x01\x00\x03", id="length-not-multiple-of-4"),
        pytest.param(b"\x00\x01\x04\x00", id="too-long"),
    ],
)
def test_bad_header_is_a_framing_error(data: bytes) -> None:
    framer = StreamFramer(1024)
    with pytest.raises(FramingError):
        framer.feed(data + bytes(16))


def test_bad_header_after_a_good_message() -> None:
    framer = StreamFramer(1024)
    with pytest.raises(FramingError):
        framer.feed(message() + b"\xff" * 20)


def test_buffer_never_exceeds_the_bound() -> None:
    framer = StreamFramer(64)
    header = b"\x00\x01\x00\x28" + bytes(16)  # 60 bytes in all: fits
    framer.feed(header)
    assert framer.pending == 20
    with pytest.raises(FramingError):
        StreamFramer(64).feed(b"\x00\x01\x00\x30")  # 68 bytes: refused at once


def test_bound_below_header_size_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamFramer(10)
