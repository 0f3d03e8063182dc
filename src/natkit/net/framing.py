"""STUN (and TURN) over a byte stream: RFC 8489 §6.2.2, RFC 8656 §12.5 framing.

Over TCP and TLS, messages follow each other with no separator; the length
field of each 20-byte header says where the next one starts. A header that
cannot start a STUN message means the stream is out of step and must be
closed: there is no way to find the next message boundary again.
"""

from natkit.stun.errors import DecodeError, NatkitError
from natkit.turn.channeldata import FrameKind, next_frame

HEADER_LENGTH = 20


class FramingError(NatkitError):
    """The stream does not carry STUN messages (RFC 8489 §6.2.2)."""


class StreamFramer:
    """Cuts a byte stream into whole STUN messages.

    Holds at most one partial message; a header announcing more than
    ``max_message_size`` bytes is a :class:`FramingError`, so the buffer never
    grows past that bound.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_message_size: int) -> None:
        if max_message_size < HEADER_LENGTH:
            raise ValueError("max_message_size is smaller than a STUN header")
        self._buffer = bytearray()
        self._max = max_message_size

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the messages it completes, in order."""
        if not self._buffer:
            # common case: the chunk is exactly one whole message
            if len(data) >= HEADER_LENGTH and self._size(data, 0) == len(data):
                return [data]
            self._buffer += data
        else:
            self._buffer += data
        return self._drain()

    def _drain(self) -> list[bytes]:
        buffer = self._buffer
        messages: list[bytes] = []
        start = 0
        while len(buffer) - start >= 4:
            size = self._size(buffer, start)
            if len(buffer) - start < size:
                break
            messages.append(bytes(buffer[start : start + size]))
            start += size
        if start:
            del buffer[:start]
        return messages

    def _size(self, data: bytes | bytearray, start: int) -> int:
        """Total size of the message whose header begins at ``start``."""
        # RFC 8489 §6: the two most significant bits of every message are zero
        if data[start] & 0xC0:
            raise FramingError(f"not a STUN header (first byte 0x{data[start]:02x})")
        length = data[start + 2] << 8 | data[start + 3]
        # RFC 8489 §5: attributes are padded, so the length is a multiple of 4
        if length & 3:
            raise FramingError(f"message length {length} is not a multiple of 4")
        size = HEADER_LENGTH + length
        if size > self._max:
            raise FramingError(f"message of {size} bytes exceeds {self._max}")
        return size


class TurnStreamFramer:
    """Cuts a TURN stream into STUN messages and ChannelData frames.

    RFC 8656 §12.5: over TCP and TLS a ChannelData message is padded to a
    multiple of 4 bytes; the first byte tells it from STUN (RFC 7983 §7,
    :func:`natkit.turn.channeldata.next_frame`). Frames are returned whole,
    ChannelData with its padding. ``max_message_size`` bounds STUN messages;
    a ChannelData frame is at most 4 + 65535 + 1 bytes by its header.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_message_size: int) -> None:
        if max_message_size < HEADER_LENGTH:
            raise ValueError("max_message_size is smaller than a STUN header")
        self._buffer = bytearray()
        self._max = max_message_size

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the frames it completes, in order."""
        if not self._buffer:
            # common case: the chunk is exactly one whole frame
            if len(data) >= 4 and self._size(data, 0) == len(data):
                return [data]
        self._buffer += data
        buffer = self._buffer
        frames: list[bytes] = []
        start = 0
        while len(buffer) - start >= 4:
            size = self._size(buffer, start)
            if len(buffer) - start < size:
                break
            frames.append(bytes(buffer[start : start + size]))
            start += size
        if start:
            del buffer[:start]
        return frames

    def _size(self, data: bytes | bytearray, start: int) -> int:
        try:
            frame = next_frame(data, start)
        except DecodeError as exc:
            raise FramingError(exc.reason) from None
        if frame is None:  # pragma: no cover - callers pass 4 bytes or more
            raise FramingError("short frame header")
        if frame.kind is FrameKind.STUN and frame.size > self._max:
            raise FramingError(f"message of {frame.size} bytes exceeds {self._max}")
        return frame.size
