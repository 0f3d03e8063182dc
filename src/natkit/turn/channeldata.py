"""ChannelData messages and stream framing, RFC 8656 §12.4-§12.5.

A ChannelData message is a 4-byte header (channel number, length of the
application data) followed by the data. Over UDP the data need not be padded
(RFC 8656 §12.5 lets a receiver accept padding); over TCP and TLS each message
is padded to a multiple of 4 bytes so the next one starts aligned.

RFC 8656 §12 and RFC 7983 §7: the first byte tells the kinds apart on one
5-tuple. 0x00-0x3F starts a STUN message, 0x40-0x4F a ChannelData message
(channel numbers 0x4000-0x4FFF). RFC 5766 §11 allowed channels up to 0x7FFF
and older clients still bind them (coturn's turnutils_uclient picks from the
whole range), so natkit accepts 0x4000-0x7FFF on the wire, as coturn does,
while its own client only binds RFC 8656 numbers.

:func:`next_frame` is the framing helper for a stream driver: given the bytes
received so far it says what the next frame is and how many bytes it takes,
padding included, or that more bytes are needed.
"""

import struct
from dataclasses import dataclass
from enum import Enum

from natkit.stun.constants import HEADER_LENGTH
from natkit.stun.errors import DecodeError, UsageError

#: RFC 8656 §12: the channel numbers a client may bind.
MIN_CHANNEL = 0x4000
MAX_CHANNEL = 0x4FFF

#: RFC 5766 §11: the older, wider range, still accepted from clients.
MAX_LEGACY_CHANNEL = 0x7FFF

#: RFC 8656 §12.4: channel number (2 bytes) and length (2 bytes).
CHANNEL_HEADER_LENGTH = 4

_HEADER = struct.Struct("!HH")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def is_valid_channel(number: int) -> bool:
    """May ``number`` be bound? RFC 8656 §12 range plus RFC 5766's 0x5000-0x7FFF."""
    return MIN_CHANNEL <= number <= MAX_LEGACY_CHANNEL


def is_channel_data(data: bytes) -> bool:
    """RFC 7983 §7: a first byte of 0x40-0x7F starts a ChannelData message.

    RFC 8656 channels start 0x40-0x4F; 0x50-0x7F are RFC 5766 channels.
    """
    return len(data) >= CHANNEL_HEADER_LENGTH and 0x40 <= data[0] <= 0x7F


@dataclass(frozen=True, slots=True)
class ChannelData:
    """One decoded ChannelData message (RFC 8656 §12.4)."""

    channel: int
    data: bytes


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """RFC 8656 §12.4: header and data; ``pad`` for TCP/TLS (RFC 8656 §12.5)."""
    if not is_valid_channel(channel):
        raise UsageError(f"channel number 0x{channel:04x} outside 0x4000-0x7FFF")
    if len(data) > 0xFFFF:
        raise UsageError("ChannelData carries at most 65535 bytes")
    header = _HEADER.pack(channel, len(data))
    if pad:
        return header + data + _PADDING[len(data) & 3]
    return header + data


def decode_channel_data(message: bytes) -> ChannelData:
    """Decode one ChannelData message; bytes past the length are padding.

    RFC 8656 §12.4: a message shorter than its length field says is
    malformed, and so is a channel number outside 0x4000-0x7FFF.
    """
    if len(message) < CHANNEL_HEADER_LENGTH:
        raise DecodeError("ChannelData shorter than its 4-byte header", 0)
    channel, length = _HEADER.unpack_from(message)
    if not is_valid_channel(channel):
        raise DecodeError(f"channel number 0x{channel:04x} outside 0x4000-0x7FFF", 0)
    end = CHANNEL_HEADER_LENGTH + length
    if len(message) < end:
        raise DecodeError(
            f"ChannelData length {length} overruns the {len(message)}-byte message", 2
        )
    return ChannelData(channel, message[CHANNEL_HEADER_LENGTH:end])


class FrameKind(Enum):
    """What a frame on a TURN stream carries (RFC 8656 §12.5)."""

    STUN = "stun"
    CHANNEL_DATA = "channel-data"


@dataclass(frozen=True, slots=True)
class Frame:
    """The next frame in a stream buffer: its kind and size, padding included."""

    kind: FrameKind
    size: int


def next_frame(buffer: bytes | bytearray | memoryview, offset: int = 0) -> Frame | None:
    """The frame starting at ``offset`` in a TCP/TLS stream, or None for "need more".

    Only the 4 bytes at ``offset`` are looked at: a STUN message is 20 bytes
    plus its length field (RFC 8489 §6.2.2, already a multiple of 4); a
    ChannelData message is 4 bytes plus its length, padded to a multiple of
    4 (RFC 8656 §12.5). Raises :class:`DecodeError` when the bytes start
    neither: the stream is out of step and must be closed.
    """
    if len(buffer) - offset < 4:
        return None
    first = buffer[offset]
    length = buffer[offset + 2] << 8 | buffer[offset + 3]
    if first < 0x40:
        # RFC 8489 §5: STUN attributes are padded, so the length is too
        if length & 3:
            raise DecodeError(f"STUN message length {length} is not a multiple of 4", 2)
        return Frame(FrameKind.STUN, HEADER_LENGTH + length)
    if first <= 0x7F:
        return Frame(FrameKind.CHANNEL_DATA, CHANNEL_HEADER_LENGTH + (length + 3 & ~3))
    raise DecodeError(f"neither STUN nor ChannelData (first byte 0x{first:02x})", 0)
