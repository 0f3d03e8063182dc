"""ChannelData messages and TURN stream framing (RFC 8656 §12.4-§12.5)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.stun.constants import MessageClass, Method
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import Message, encode, new_transaction_id
from natkit.turn.channeldata import (
    MAX_CHANNEL,
    MIN_CHANNEL,
    ChannelData,
    Frame,
    FrameKind,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    is_valid_channel,
    next_frame,
)


def test_channel_number_range() -> None:
    """RFC 8656 §12: 0x4000-0x4FFF are the channel numbers."""
    assert (MIN_CHANNEL, MAX_CHANNEL) == (0x4000, 0x4FFF)
    assert is_valid_channel(0x4000)
    assert is_valid_channel(0x4FFF)
    assert not is_valid_channel(0x3FFF)
    # RFC 5766 §11 channels, still bound by older clients
    assert is_valid_channel(0x5000)
    assert is_valid_channel(0x7FFF)
    assert not is_valid_channel(0x8000)


def test_encode_layout() -> None:
    """RFC 8656 §12.4: channel number, length, data; no padding over UDP."""
    assert encode_channel_data(0x4001, b"abc") == b"\x40\x01\x00\x03abc"
    assert encode_channel_data(0x4001, b"") == b"\x40\x01\x00\x00"


@pytest.mark.parametrize(("size", "total"), [(0, 4), (1, 8), (3, 8), (4, 8), (5, 12)])
def test_encode_pads_for_streams(size: int, total: int) -> None:
    """RFC 8656 §12.5: over TCP/TLS, padded to a multiple of 4."""
    frame = encode_channel_data(0x4000, b"x" * size, pad=True)
    assert len(frame) == total
    assert frame[2:4] == size.to_bytes(2, "big")  # the length excludes padding


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(UsageError):
        encode_channel_data(0x3FFF, b"")
    with pytest.raises(UsageError):
        encode_channel_data(0x4000, b"x" * 0x10000)


def test_decode_ignores_padding() -> None:
    frame = encode_channel_data(0x4ABC, b"hello", pad=True)
    assert decode_channel_data(frame) == ChannelData(0x4ABC, b"hello")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x40\x00\x00",
        b"\x40\x00\x00\x05abcd",
        b"\x80\x00\x00\x00",
        b"\x3f\xff\x00\x00",
    ],
    ids=["empty", "short-header", "short-data", "reserved-number", "stun-range"],
)
def test_decode_refuses_malformed(message: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_channel_data(message)


@given(st.integers(MIN_CHANNEL, MAX_CHANNEL), st.binary(max_size=300), st.booleans())
def test_round_trip(channel: int, data: bytes, pad: bool) -> None:
    frame = encode_channel_data(channel, data, pad=pad)
    assert is_channel_data(frame)
    assert decode_channel_data(frame) == ChannelData(channel, data)
    frame_info = next_frame(frame)
    assert frame_info is not None
    assert frame_info.kind is FrameKind.CHANNEL_DATA
    assert frame_info.size == 4 + (len(data) + 3) // 4 * 4


@given(st.binary(max_size=40))
def test_decode_raises_only_decode_error(data: bytes) -> None:
    try:
        decode_channel_data(data)
    except DecodeError:
        pass


def test_is_channel_data_demultiplexes() -> None:
    """RFC 7983 §7: 0x40-0x7F is ChannelData (0x50-0x7F RFC 5766), 0x00-0x3F STUN."""
    stun = encode(Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()))
    assert not is_channel_data(stun)
    assert is_channel_data(b"\x4f\xff\x00\x00")
    assert is_channel_data(b"\x50\x00\x00\x00")
    assert not is_channel_data(b"\x80\x00\x00\x00")
    assert not is_channel_data(b"\x40\x00")


# --- stream framing ----------------------------------------------------------


def test_next_frame_stun() -> None:
    stun = encode(Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id()))
    assert next_frame(stun) == Frame(FrameKind.STUN, 20)
    assert next_frame(stun[:4]) == Frame(FrameKind.STUN, 20)


def test_next_frame_needs_four_bytes() -> None:
    assert next_frame(b"") is None
    assert next_frame(b"\x40\x00\x00") is None
    assert next_frame(b"\x00\x00\x00\x00", 1) is None


def test_next_frame_walks_a_mixed_stream() -> None:
    stun = encode(Message(Method.REFRESH, MessageClass.REQUEST, new_transaction_id()))
    first = encode_channel_data(0x4000, b"abcde", pad=True)
    second = encode_channel_data(0x4001, b"", pad=True)
    stream = bytearray(first + stun + second)

    kinds = []
    offset = 0
    while (frame := next_frame(stream, offset)) is not None:
        kinds.append(frame.kind)
        offset += frame.size
    assert kinds == [FrameKind.CHANNEL_DATA, FrameKind.STUN, FrameKind.CHANNEL_DATA]
    assert offset == len(stream)
    assert next_frame(memoryview(stream), len(first)) == Frame(FrameKind.STUN, 20)


@pytest.mark.parametrize(
    "header",
    [
        b"\x80\x00\x00\x00",
        b"\xff\xff\xff\xff",
        b"\x00\x01\x00\x03",
    ],
    ids=["rtp-like", "all-ones", "stun-unaligned"],
)
def test_next_frame_out_of_step(header: bytes) -> None:
    with pytest.raises(DecodeError):
        next_frame(header)


@given(st.binary(max_size=12), st.integers(0, 12))
def test_next_frame_raises_only_decode_error(data: bytes, offset: int) -> None:
    try:
        frame = next_frame(data, offset)
    except DecodeError:
        return
    if frame is not None:
        assert frame.size >= 4
        assert frame.size % 4 == 0
