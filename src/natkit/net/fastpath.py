"""The Binding fast path: the common request answered with struct alone.

Nearly every Binding request a public STUN server sees is a bare RFC 8489
request: the header and no attributes, or only SOFTWARE and/or FINGERPRINT.
:class:`BindingFastPath` recognises exactly those and builds the response
without decoding into objects. Anything else returns None and goes to
:class:`natkit.stun.server.BindingResponder`, whose answer for the same input
is byte for byte the same (``tests/test_net_fastpath.py`` checks that).
"""

import socket
import struct
import zlib
from typing import Any

from natkit.stun.constants import FINGERPRINT_XOR, MAGIC_COOKIE, MAGIC_COOKIE_BYTES

_BINDING_REQUEST = b"\x00\x01"
#: type, length and cookie of a Binding request with no attributes
_BARE_HEAD = b"\x00\x01\x00\x00" + MAGIC_COOKIE_BYTES
#: type, length and cookie of a Binding request with FINGERPRINT only
_FP_HEAD = b"\x00\x01\x00\x08" + MAGIC_COOKIE_BYTES
_SUCCESS_HEADER = struct.Struct("!HHI")
_ATTR_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

_BINDING_SUCCESS = 0x0101
_SOFTWARE = 0x8022
_FINGERPRINT = 0x8028
_SOFTWARE_MAX = 763  # RFC 8489 §14.14
_XOR_PORT = MAGIC_COOKIE >> 16
_COOKIE_HIGH = MAGIC_COOKIE << 96  # the cookie over the top 32 of 128 bits
_FINGERPRINT_ATTR = b"\x80\x28\x00\x04"
_XMA_V4 = b"\x00\x20\x00\x08\x00\x01"  # XOR-MAPPED-ADDRESS, 8 bytes, IPv4
_XMA_V6 = b"\x00\x20\x00\x14\x00\x02"  # XOR-MAPPED-ADDRESS, 20 bytes, IPv6

#: how many IPv4 (ip, port) -> XOR-MAPPED-ADDRESS encodings to keep
_CACHE_SIZE = 4096


def software_attribute(software: str | None) -> bytes:
    """SOFTWARE (RFC 8489 §14.14) as it appears on the wire, or b""."""
    if software is None:
        return b""
    value = software.encode("utf-8")
    pad = b"\x00" * (-len(value) % 4)
    return _ATTR_HEADER.pack(_SOFTWARE, len(value)) + value + pad


class BindingFastPath:
    """Builds Binding success responses (RFC 8489 §6.3.1) for simple requests.

    ``respond`` takes the datagram and the peer address as the event loop
    gives it (``(ip, port)`` or ``(ip, port, flowinfo, scope_id)``).
    ``answered`` counts the responses it built.
    """

    __slots__ = (
        "answered",
        "_software",
        "_head_v4",
        "_head_v4_fp",
        "_head_v6",
        "_head_v6_fp",
        "_v4_cache",
        "_v6_cache",
    )

    def __init__(self, software: str | None = None) -> None:
        self.answered = 0
        self._software = software_attribute(software)
        extra = len(self._software)
        # the first 8 bytes of each response kind: type, length, cookie
        self._head_v4 = _head(12 + extra)
        self._head_v4_fp = _head(12 + extra + 8)
        self._head_v6 = _head(24 + extra)
        self._head_v6_fp = _head(24 + extra + 8)
        # IPv4 (ip, port) -> XOR-MAPPED-ADDRESS and SOFTWARE, ready to send
        self._v4_cache: dict[tuple[Any, ...], bytes] = {}
        # IPv6 address text -> the address as an integer
        self._v6_cache: dict[str, int] = {}

    def respond(self, data: bytes, addr: tuple[Any, ...]) -> bytes | None:
        """The success response for ``data``, or None if it is not simple."""
        size = len(data)
        if size == 20 and data[:8] == _BARE_HEAD:
            fingerprint = False
        elif size == 28 and data[:8] == _FP_HEAD and data[20:24] == _FINGERPRINT_ATTR:
            # FINGERPRINT only: it must match (RFC 8489 §14.7)
            crc = (zlib.crc32(data[:20]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if _U32.unpack_from(data, 24)[0] != crc:
                return None
            fingerprint = True
        else:
            fingerprint_at = _simple_attributes(data)
            if fingerprint_at < 0:
                return None
            fingerprint = fingerprint_at > 0

        # XOR-MAPPED-ADDRESS (RFC 8489 §14.2), then SOFTWARE if configured
        if len(addr) == 2:
            tail = self._v4_cache.get(addr)
            if tail is None:
                tail = self._cache_v4(addr)
            head = self._head_v4_fp if fingerprint else self._head_v4
        else:
            tail = self._xor_v6(addr, data[8:20]) + self._software
            head = self._head_v6_fp if fingerprint else self._head_v6

        out = head + data[8:20] + tail
        self.answered += 1
        if fingerprint:
            # RFC 8489 §14.7: the header length already counts FINGERPRINT
            crc = (zlib.crc32(out) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            return out + _FINGERPRINT_ATTR + _U32.pack(crc)
        return out

    def _xor_v6(self, addr: tuple[Any, ...], transaction_id: bytes) -> bytes:
        # RFC 8489 §14.2: IPv6 is XORed with the cookie and the transaction id
        ip = self._v6_cache.get(addr[0])
        if ip is None:
            packed = socket.inet_pton(socket.AF_INET6, addr[0].partition("%")[0])
            ip = int.from_bytes(packed, "big")
            if len(self._v6_cache) >= _CACHE_SIZE:
                self._v6_cache.clear()
            self._v6_cache[addr[0]] = ip
        value = ip ^ _COOKIE_HIGH ^ int.from_bytes(transaction_id, "big")
        port = _U16.pack(addr[1] ^ _XOR_PORT)
        return _XMA_V6 + port + value.to_bytes(16, "big")

    def _cache_v4(self, addr: tuple[Any, ...]) -> bytes:
        tail = _xor_v4(addr[0], addr[1]) + self._software
        if len(self._v4_cache) >= _CACHE_SIZE:
            self._v4_cache.clear()
        self._v4_cache[addr] = tail
        return tail


def _head(length: int) -> bytes:
    return _SUCCESS_HEADER.pack(_BINDING_SUCCESS, length, MAGIC_COOKIE)


def _simple_attributes(data: bytes) -> int:
    """Check for a Binding request with [SOFTWARE] [FINGERPRINT] only.

    Returns the offset of a valid FINGERPRINT, 0 if there is none, -1 if the
    message is anything else (or anything the full decoder would reject).
    """
    size = len(data)
    if (
        size < 20
        or size & 3
        or data[:2] != _BINDING_REQUEST
        or data[4:8] != MAGIC_COOKIE_BYTES
        or _U16.unpack_from(data, 2)[0] != size - 20
    ):
        return -1
    if size == 20:
        return 0
    pos = 20
    attr_type, length = _ATTR_HEADER.unpack_from(data, pos)
    if attr_type == _SOFTWARE:
        end = pos + 4 + length
        pos = end + (-length % 4)
        if length > _SOFTWARE_MAX or pos > size:
            return -1
        try:
            data[24:end].decode("utf-8")
        except UnicodeDecodeError:
            return -1
        if pos == size:
            return 0
        if size - pos < 4:
            return -1
        attr_type, length = _ATTR_HEADER.unpack_from(data, pos)
    if attr_type != _FINGERPRINT or length != 4 or pos + 8 != size:
        return -1
    crc = (zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    if _U32.unpack_from(data, pos + 4)[0] != crc:
        return -1
    return pos


def _xor_v4(ip: str, port: int) -> bytes:
    packed = int.from_bytes(socket.inet_aton(ip), "big") ^ MAGIC_COOKIE
    return _XMA_V4 + _U16.pack(port ^ _XOR_PORT) + _U32.pack(packed)
