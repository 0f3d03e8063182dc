"""Key derivation, string preparation, MACs and FINGERPRINT.

RFC 8489 §9.1.1 (short-term key), §9.2.2 (long-term keys), §14.4 (USERHASH),
§14.5-§14.7; RFC 4013 (SASLprep) and RFC 8265 §4.2 (OpaqueString).
"""

import hashlib
import hmac
import struct
import zlib
from typing import cast

import pytest

from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import UsageError
from natkit.stun.integrity import (
    fingerprint,
    hmac_sha1,
    hmac_sha256,
    long_term_key,
    macs_equal,
    opaque_string,
    saslprep,
    short_term_key,
    userhash,
)

# --- SASLprep (RFC 4013) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        # RFC 4013 §3, examples 1-5
        ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
        ("user", "user"),  # no transformation
        ("USER", "USER"),  # case preserved
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC, matches example 1
        # the RFC 5769 §2.4 password
        ("The\u00adM\u00aatr\u2168", "TheMatrIX"),
        # RFC 4013 §2.1: non-ASCII space to SPACE, B.1 characters to nothing
        ("a\u00a0b", "a b"),
        ("a\u3000b", "a b"),
        ("a\u200bb\u2060c\ufeffd", "abcd"),
        ("\ufb01", "fi"),  # compatibility ligature
        ("", ""),
        # right-to-left text that starts and ends with RandALCat is fine
        ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),
    ],
)
def test_saslprep(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("\u0007", "prohibited character U\\+0007"),  # RFC 4013 §3 example 6
        ("\u0627\u0031", "right-to-left"),  # RFC 4013 §3 example 7
        ("a\u0627", "mixes"),  # RandALCat with LCat
        ("a\x00b", "U\\+0000"),  # ASCII control
        ("a\x7f", "U\\+007F"),
        ("\u0085", "U\\+0085"),  # non-ASCII control
        ("\ue000", "U\\+E000"),  # private use
        ("\ufdd0", "U\\+FDD0"),  # non-character
        ("\ud800", "U\\+D800"),  # surrogate
        ("\u200e", "U\\+200E"),  # change display property
        ("\U000e0001", "U\\+E0001"),  # tagging
        ("\u0221", "U\\+0221"),  # unassigned in Unicode 3.2
    ],
)
def test_saslprep_refuses(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        saslprep(text)


# --- OpaqueString (RFC 8265 §4.2) ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("VOkJxbRl1RmTxUk/WvJxBt", "VOkJxbRl1RmTxUk/WvJxBt"),
        ("correct horse battery staple", "correct horse battery staple"),
        ("e\u0301", "\u00e9"),  # NFC composes
        ("\u212b", "\u00c5"),  # ANGSTROM SIGN: canonical equivalent
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to SPACE
        ("a\u2003b\u3000c", "a b c"),
        ("\u00aa\u2168", "\u00aa\u2168"),  # no NFKC: compatibility kept
        (
            "\u30de\u30c8\u30ea\u30c3\u30af\u30b9",
            "\u30de\u30c8\u30ea\u30c3\u30af\u30b9",
        ),
        ("Ab", "Ab"),  # case preserved
        ("\U0001f600", "\U0001f600"),
    ],
)
def test_opaque_string(text: str, prepared: str) -> None:
    assert opaque_string(text) == prepared


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x07",
        "a\tb",
        "a\nb",
        "\x7f",
        "\u0085",
        "\u00ad",  # default ignorable
        "\u200b",
        "\ue000",  # private use
        "\ud800",
        "\u0378",  # unassigned
        "\ufffe",
        "\u2028",  # line separator
    ],
)
def test_opaque_string_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="OpaqueString"):
        opaque_string(text)


# --- keys (RFC 8489 §9) -------------------------------------------------------


def test_short_term_key() -> None:
    """§9.1.1: key = OpaqueString(password), UTF-8."""
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"
    assert short_term_key("e\u0301") == "\u00e9".encode()
    with pytest.raises(UsageError):
        short_term_key("")


def test_long_term_key_md5_saslprep() -> None:
    """RFC 5389 §15.4 / RFC 8489 §9.2.2: MD5(user ":" realm ":" SASLprep(pw))."""
    user = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    key = long_term_key(user, "example.org", "The\u00adM\u00aatr\u2168")
    expected = hashlib.md5(f"{user}:example.org:TheMatrIX".encode()).digest()
    assert key == expected and len(key) == 16
    assert long_term_key("user", "realm", "pass", PasswordAlgorithm.MD5) == (
        hashlib.md5(b"user:realm:pass").digest()
    )
    with pytest.raises(UsageError, match="SASLprep"):
        long_term_key("user", "realm", "bad\x07")


def test_long_term_key_sha256_opaque_string() -> None:
    """§9.2.2: SHA-256(user ":" OpaqueString(realm) ":" OpaqueString(pw))."""
    key = long_term_key("user", "ex\u00a0ample", "p\u00a0w", PasswordAlgorithm.SHA256)
    assert key == hashlib.sha256(b"user:ex ample:p w").digest()
    assert len(key) == 32
    # OpaqueString does not apply NFKC, unlike SASLprep
    kept = long_term_key("u", "r", "\u2168", PasswordAlgorithm.SHA256)
    assert kept == hashlib.sha256("u:r:\u2168".encode()).digest()
    with pytest.raises(UsageError, match="OpaqueString"):
        long_term_key("u", "r", "", PasswordAlgorithm.SHA256)
    with pytest.raises(UsageError, match="OpaqueString"):
        long_term_key("u", "", "p", PasswordAlgorithm.SHA256)


def test_long_term_key_unknown_algorithm() -> None:
    with pytest.raises(UsageError, match="unknown password algorithm"):
        long_term_key("u", "r", "p", cast(PasswordAlgorithm, 3))


def test_userhash() -> None:
    """§14.4: SHA-256(OpaqueString(username) ":" OpaqueString(realm))."""
    assert userhash("user", "realm") == hashlib.sha256(b"user:realm").digest()
    assert userhash("e\u0301", "r") == hashlib.sha256("\u00e9:r".encode()).digest()
    # RFC 8489 Appendix B.1
    value = userhash("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "example.org")
    assert value.hex() == (
        "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    )


# --- MACs and FINGERPRINT -----------------------------------------------------

HEADER = bytes.fromhex("000100002112a442b7e7a701bc34d686fa87dfae")
BODY = bytes.fromhex("80220004") + b"abcd"


def test_hmac_sha1_adjusts_length() -> None:
    """§14.5: the length covers up to and including MESSAGE-INTEGRITY."""
    prefix = HEADER + BODY
    expected_header = HEADER[:2] + struct.pack("!H", 8 + 24) + HEADER[4:]
    expected = hmac.new(b"k", expected_header + BODY, hashlib.sha1).digest()
    assert hmac_sha1(b"k", prefix) == expected
    # whatever the length field said before
    other = prefix[:2] + b"\xff\xfc" + prefix[4:]
    assert hmac_sha1(b"k", other) == expected


@pytest.mark.parametrize("size", [16, 20, 24, 28, 32])
def test_hmac_sha256_truncation(size: int) -> None:
    """§14.6: the leftmost bytes; the length counts the truncated value."""
    prefix = HEADER + BODY
    header = HEADER[:2] + struct.pack("!H", 8 + 4 + size) + HEADER[4:]
    full = hmac.new(b"k", header + BODY, hashlib.sha256).digest()
    assert hmac_sha256(b"k", prefix, size) == full[:size]


def test_fingerprint_value() -> None:
    """§14.7: CRC-32 XOR 0x5354554e, length including the 8-byte attribute."""
    prefix = HEADER + BODY
    header = HEADER[:2] + struct.pack("!H", 8 + 8) + HEADER[4:]
    assert fingerprint(prefix) == zlib.crc32(header + BODY) ^ 0x5354554E
    assert fingerprint(prefix[:2] + b"\x01\x00" + prefix[4:]) == fingerprint(prefix)
    # RFC 5769 §2.2 without its FINGERPRINT
    vector = bytes.fromhex(
        "0101003c2112a442b7e7a701bc34d686fa87dfae"
        "8022000b7465737420766563746f7220"
        "002000080001a147e112a643"
        "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    )
    assert fingerprint(vector) == 0xC07D4C96


def test_macs_equal() -> None:
    assert macs_equal(b"\x01\x02", b"\x01\x02")
    assert not macs_equal(b"\x01\x02", b"\x01\x03")
    assert not macs_equal(b"\x01\x02", b"\x01")
