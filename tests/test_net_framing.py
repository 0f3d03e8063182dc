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


# --- TURN streams: STUN and ChannelData (RFC 8656 §12.5) ---------------------


def test_turn_framer_cuts_stun_and_padded_channel_data() -> None:
    from natkit.net.framing import TurnStreamFramer
    from natkit.turn.channeldata import encode_channel_data

    stun = message("a")
    odd = encode_channel_data(0x4000, b"abcde", pad=True)
    empty = encode_channel_data(0x4FFF, b"", pad=True)
    stream = stun + odd + empty + stun
    framer = TurnStreamFramer(1024)
    assert framer.feed(odd) == [odd]  # one whole frame: returned as is
    out: list[bytes] = []
    for index in range(0, len(stream), 3):
        out += framer.feed(stream[index : index + 3])
    assert out == [stun, odd, empty, stun]
    assert len(odd) == 12 and framer.pending == 0


def test_turn_framer_refuses_what_is_neither_and_big_stun() -> None:
    from natkit.net.framing import TurnStreamFramer
    from natkit.turn.channeldata import encode_channel_data

    with pytest.raises(FramingError, match="neither STUN nor ChannelData"):
        TurnStreamFramer(1024).feed(b"\x80\x00\x00\x00")
    with pytest.raises(FramingError, match="exceeds"):
        TurnStreamFramer(548).feed(message("x" * 600))
    # ChannelData is bounded by its own header, not by max_message_size
    big = encode_channel_data(0x4000, b"x" * 1000, pad=True)
    assert TurnStreamFramer(548).feed(big) == [big]
