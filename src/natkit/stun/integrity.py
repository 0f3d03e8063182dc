"""Message integrity, fingerprint and key derivation.

RFC 8489 §14.5 (MESSAGE-INTEGRITY, HMAC-SHA1), §14.6
(MESSAGE-INTEGRITY-SHA256), §14.7 (FINGERPRINT), §9.1.1 (short-term key),
§9.2.2 (long-term keys), §14.4 (USERHASH). Password and realm preparation:
SASLprep (RFC 4013) for the RFC 5389 MD5 key, OpaqueString (RFC 8265 §4.2)
for the RFC 8489 SHA-256 key.
"""

import hashlib
import hmac
import stringprep
import struct
import unicodedata
import zlib

from natkit.stun.constants import FINGERPRINT_XOR, PasswordAlgorithm
from natkit.stun.errors import UsageError

# --- string preparation ------------------------------------------------------


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep, for stored strings (unassigned code points refused).

    Raises UsageError naming the offending character.
    """

    # step 1: map non-ASCII spaces to SPACE and "commonly mapped to nothing" away
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in text
        if not stringprep.in_table_b1(ch)
    )

    # step 2: normalise with NFKC
    prepared = unicodedata.normalize("NFKC", mapped)

    # step 3: prohibited output and unassigned code points
    for ch in prepared:
        if _saslprep_prohibited(ch):
            raise UsageError(f"SASLprep: prohibited character U+{ord(ch):04X}")

    # step 4: bidirectional rule of RFC 3454 §6
    _check_bidi(prepared)
    return prepared


def _saslprep_prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_a1(ch)
        or stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
    )


def _check_bidi(text: str) -> None:
    if not any(stringprep.in_table_d1(ch) for ch in text):
        return
    if any(stringprep.in_table_d2(ch) for ch in text):
        raise UsageError("SASLprep: mixes right-to-left and left-to-right text")
    if not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
        raise UsageError("SASLprep: right-to-left text must start and end RTL")


def opaque_string(text: str) -> str:
    """RFC 8265 §4.2 OpaqueString profile (enforcement).

    Non-ASCII spaces become SPACE, the result is NFC-normalised, and code
    points outside the PRECIS FreeformClass are refused: controls,
    unassigned, surrogates, private use, default-ignorable format characters
    and noncharacters. The derived-property table of RFC 8264 §9 is
    approximated from Unicode general categories, which the standard library
    provides; the difference affects only rare format characters.
    """
    mapped = "".join(
        " " if unicodedata.category(ch) == "Zs" and ch != " " else ch for ch in text
    )
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared:
        raise UsageError("OpaqueString: empty string")
    for ch in prepared:
        if _opaque_disallowed(ch):
            raise UsageError(f"OpaqueString: disallowed character U+{ord(ch):04X}")
    return prepared


def _opaque_disallowed(ch: str) -> bool:
    code = ord(ch)
    if 0x20 <= code <= 0x7E:
        return False
    category = unicodedata.category(ch)
    if category in ("Cc", "Cn", "Cs", "Co", "Cf", "Zl", "Zp"):
        return True
    noncharacter = 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE
    old_hangul_jamo = 0x1100 <= code <= 0x11FF or 0xA960 <= code <= 0xA97F
    variation_selector = 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF
    return noncharacter or old_hangul_jamo or variation_selector


# --- keys --------------------------------------------------------------------


def short_term_key(password: str) -> bytes:
    """RFC 8489 §9.1.1: key = OpaqueString(password)."""
    return opaque_string(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5,
) -> bytes:
    """RFC 8489 §9.2.2 long-term key.

    MD5 (RFC 5389 §15.4): MD5(username ":" realm ":" SASLprep(password)).
    SHA-256 (RFC 8489 §9.2.2):
    SHA-256(username ":" OpaqueString(realm) ":" OpaqueString(password)).
    """
    if algorithm == PasswordAlgorithm.MD5:
        text = f"{username}:{realm}:{saslprep(password)}"
        return hashlib.md5(text.encode("utf-8"), usedforsecurity=True).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        text = f"{username}:{opaque_string(realm)}:{opaque_string(password)}"
        return hashlib.sha256(text.encode("utf-8")).digest()
    raise UsageError(f"unknown password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """RFC 8489 §14.4: SHA-256(OpaqueString(username) ":" OpaqueString(realm))."""
    text = f"{opaque_string(username)}:{opaque_string(realm)}"
    return hashlib.sha256(text.encode("utf-8")).digest()


# --- MACs over messages ------------------------------------------------------


def _with_length(message_prefix: bytes, length: int) -> bytes:
    """The prefix with its header length field replaced by ``length``."""
    return message_prefix[:2] + struct.pack("!H", length) + message_prefix[4:]


def hmac_sha1(key: bytes, message_prefix: bytes) -> bytes:
    """RFC 8489 §14.5: HMAC-SHA1 over the message up to MESSAGE-INTEGRITY.

    ``message_prefix`` is the header and every attribute before
    MESSAGE-INTEGRITY; the length field is adjusted to end just after it.
    """
    length = len(message_prefix) - 20 + 24
    data = _with_length(message_prefix, length)
    return hmac.new(key, data, hashlib.sha1).digest()


def hmac_sha256(key: bytes, message_prefix: bytes, size: int = 32) -> bytes:
    """RFC 8489 §14.6: HMAC-SHA256, truncated to ``size`` bytes."""
    length = len(message_prefix) - 20 + 4 + size
    data = _with_length(message_prefix, length)
    return hmac.new(key, data, hashlib.sha256).digest()[:size]


def fingerprint(message_prefix: bytes) -> int:
    """RFC 8489 §14.7: CRC-32 over the message up to FINGERPRINT, xor 0x5354554e.

    The length field is adjusted to include the 8-byte FINGERPRINT attribute.
    """
    length = len(message_prefix) - 20 + 8
    data = _with_length(message_prefix, length)
    return (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def macs_equal(a: bytes, b: bytes) -> bool:
    """Compare two MACs in constant time."""
    return hmac.compare_digest(a, b)
