"""Published STUN test vectors: RFC 5769 §2.1-§2.4 and RFC 8489 Appendix B.1.

The bytes are transcribed from the RFCs, one 32-bit word per line as printed
there. Every MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT value below is
recomputed by the tests, so a mistyped byte anywhere in a vector fails them.
"""

import hashlib
import hmac

import pytest

from natkit.stun.attributes import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    NONCE_COOKIE,
    Fingerprint,
    IceControlled,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    PasswordAlgorithm,
    Priority,
    Realm,
    Software,
    Userhash,
    Username,
    XorMappedAddress,
    nonce_cookie_prefix,
    nonce_security_features,
)
from natkit.stun.constants import (
    MAGIC_COOKIE,
    MessageClass,
    Method,
)
from natkit.stun.constants import (
    PasswordAlgorithm as Algorithm,
)
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.integrity import (
    fingerprint,
    long_term_key,
    saslprep,
    short_term_key,
    userhash,
)
from natkit.stun.message import Message, decode, encode, verify_integrity


def _hex(text: str) -> bytes:
    """Bytes from RFC-style hex lines; ``#`` starts a comment."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


def _without_trailer(msg: Message) -> Message:
    """``msg`` minus its integrity and FINGERPRINT attributes."""
    trailer = (MessageIntegrity, MessageIntegritySha256, Fingerprint)
    kept = tuple(a for a in msg.attributes if not isinstance(a, trailer))
    return Message(msg.method, msg.cls, msg.transaction_id, kept, msg.cookie)


#: RFC 5769 §2.1-§2.3: the short-term password of the sample messages
SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

#: RFC 5769 §2.4 and RFC 8489 Appendix B.1 long-term credentials
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LT_PASSWORD = "The\u00adM\u00aatr\u2168"
LT_REALM = "example.org"
LT_TRANSACTION_ID = bytes.fromhex("78ad3433c6ad72c029da412e")

RFC5769_2_1 = _hex("""
    00 01 00 58   # request type and message length
    21 12 a4 42   # magic cookie
    b7 e7 a7 01   # transaction id
    bc 34 d6 86
    fa 87 df ae
    80 22 00 10   # SOFTWARE
    53 54 55 4e
    20 74 65 73
    74 20 63 6c
    69 65 6e 74
    00 24 00 04   # PRIORITY
    6e 00 01 ff
    80 29 00 08   # ICE-CONTROLLED
    93 2f f9 b1
    51 26 3b 36
    00 06 00 09   # USERNAME (9 bytes) and padding (3 bytes)
    65 76 74 6a
    3a 68 36 76
    59 20 20 20
    00 08 00 14   # MESSAGE-INTEGRITY
    9a ea a7 0c
    bf d8 cb 56
    78 1e f2 b5
    b2 d3 f2 49
    c1 b5 71 a2
    80 28 00 04   # FINGERPRINT
    e5 7a 3b cf
""")

RFC5769_2_2 = _hex("""
    01 01 00 3c   # response type and message length
    21 12 a4 42   # magic cookie
    b7 e7 a7 01   # transaction id
    bc 34 d6 86
    fa 87 df ae
    80 22 00 0b   # SOFTWARE (11 bytes) and padding (1 byte)
    74 65 73 74
    20 76 65 63
    74 6f 72 20
    00 20 00 08   # XOR-MAPPED-ADDRESS
    00 01 a1 47
    e1 12 a6 43
    00 08 00 14   # MESSAGE-INTEGRITY
    2b 91 f5 99
    fd 9e 90 c3
    8c 74 89 f9
    2a f9 ba 53
    f0 6b e7 d7
    80 28 00 04   # FINGERPRINT
    c0 7d 4c 96
""")

RFC5769_2_3 = _hex("""
    01 01 00 48   # response type and message length
    21 12 a4 42   # magic cookie
    b7 e7 a7 01   # transaction id
    bc 34 d6 86
    fa 87 df ae
    80 22 00 0b   # SOFTWARE (11 bytes) and padding (1 byte)
    74 65 73 74
    20 76 65 63
    74 6f 72 20
    00 20 00 14   # XOR-MAPPED-ADDRESS
    00 02 a1 47
    01 13 a9 fa
    a5 d3 f1 79
    bc 25 f4 b5
    be d2 b9 d9
    00 08 00 14   # MESSAGE-INTEGRITY
    a3 82 95 4e
    4b e6 7b f1
    17 84 c9 7c
    82 92 c2 75
    bf e3 ed 41
    80 28 00 04   # FINGERPRINT
    c8 fb 0b 4c
""")

RFC5769_2_4 = _hex("""
    00 01 00 60   # request type and message length
    21 12 a4 42   # magic cookie
    78 ad 34 33   # transaction id
    c6 ad 72 c0
    29 da 41 2e
    00 06 00 12   # USERNAME (18 bytes) and padding (2 bytes)
    e3 83 9e e3
    83 88 e3 83
    aa e3 83 83
    e3 82 af e3
    82 b9 00 00
    00 15 00 1c   # NONCE
    66 2f 2f 34
    39 39 6b 39
    35 34 64 36
    4f 4c 33 34
    6f 4c 39 46
    53 54 76 79
    36 34 73 41
    00 14 00 0b   # REALM (11 bytes) and padding (1 byte)
    65 78 61 6d
    70 6c 65 2e
    6f 72 67 00
    00 08 00 14   # MESSAGE-INTEGRITY
    f6 70 24 65
    6d d6 4a 3e
    02 b8 e0 71
    2e 85 c9 a2
    8c a8 96 66
""")

_B1_BODY = """
    21 12 a4 42   # magic cookie
    78 ad 34 33   # transaction id
    c6 ad 72 c0
    29 da 41 2e
    00 1e 00 20   # USERHASH
    4a 3c f3 8f
    ef 69 92 bd
    a9 52 c6 78
    04 17 da 0f
    24 81 94 15
    56 9e 60 b2
    05 c4 6e 41
    40 7f 17 04
    00 15 00 29   # NONCE (41 bytes) and padding (3 bytes)
    6f 62 4d 61
    74 4a 6f 73
    32 41 41 41
    43 66 2f 2f
    34 39 39 6b
    39 35 34 64
    36 4f 4c 33
    34 6f 4c 39
    46 53 54 76
    79 36 34 73
    41 00 00 00
    00 14 00 0b   # REALM (11 bytes) and padding (1 byte)
    65 78 61 6d
    70 6c 65 2e
    6f 72 67 00
"""

#: RFC 8489 Appendix B.1 exactly as published (length field 0x009c)
RFC8489_B_1_PUBLISHED = _hex(
    "00 01 00 9c  # request type and message length"
    + _B1_BODY
    + """
    00 1c 00 20   # MESSAGE-INTEGRITY-SHA256
    e4 68 6c 8f
    0e de b5 90
    13 e0 70 90
    01 0a 93 ef
    cc bc cc 54
    4c 0a 45 d9
    f8 30 aa 6d
    6f 73 5a 01
"""
)

#: RFC 8489 Appendix B.1 as corrected by Errata ID 6268
RFC8489_B_1_ERRATUM = _hex(
    "00 01 00 90  # request type and message length"
    + _B1_BODY
    + """
    00 1d 00 04   # PASSWORD-ALGORITHM
    00 02 00 00   # SHA-256, no parameters
    00 1c 00 20   # MESSAGE-INTEGRITY-SHA256
    b5 c7 bf 00
    5b 6c 52 a2
    1c 51 c5 e8
    92 f8 19 24
    13 62 96 cb
    92 7c 43 14
    93 09 27 8c
    c6 51 8e 65
"""
)

B1_NONCE = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"


def _check_reencode(vector: bytes, key: bytes, *, padding: bytes, **kw: bool) -> None:
    """Both ways of re-encoding a decoded vector give the vector back."""
    msg = decode(vector)
    rebuilt = encode(_without_trailer(msg), key=key, padding=padding, **kw)
    assert rebuilt == vector
    assert encode(msg, padding=padding) == vector


# --- RFC 5769 ----------------------------------------------------------------


def test_rfc5769_2_1_sample_request() -> None:
    """RFC 5769 §2.1: Binding request, short-term credential, ICE attributes."""
    msg = decode(RFC5769_2_1)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.cookie == MAGIC_COOKIE and not msg.is_rfc3489
    assert msg.transaction_id == TRANSACTION_ID
    assert msg.unknown_required == ()
    assert msg.attributes == (
        Software("STUN test client"),
        Priority(0x6E0001FF),
        IceControlled(0x932FF9B151263B36),
        Username("evtj:h6vY"),
        MessageIntegrity(bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")),
        Fingerprint(0xE57A3BCF),
    )
    key = short_term_key(SHORT_TERM_PASSWORD)
    assert key == SHORT_TERM_PASSWORD.encode()
    assert verify_integrity(msg, key)
    assert not verify_integrity(msg, key + b"x")
    assert msg.has_fingerprint
    assert fingerprint(RFC5769_2_1[:-8]) == 0xE57A3BCF
    _check_reencode(RFC5769_2_1, key, padding=b" ", fingerprint=True)


def test_rfc5769_2_2_sample_ipv4_response() -> None:
    """RFC 5769 §2.2: success response with XOR-MAPPED-ADDRESS 192.0.2.1:32853."""
    msg = decode(RFC5769_2_2)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.SUCCESS)
    assert msg.transaction_id == TRANSACTION_ID
    assert msg.attributes == (
        Software("test vector"),
        XorMappedAddress("192.0.2.1", 32853),
        MessageIntegrity(bytes.fromhex("2b91f599fd9e90c38c7489f92af9ba53f06be7d7")),
        Fingerprint(0xC07D4C96),
    )
    key = short_term_key(SHORT_TERM_PASSWORD)
    assert verify_integrity(msg, key)
    _check_reencode(RFC5769_2_2, key, padding=b" ", fingerprint=True)


def test_rfc5769_2_3_sample_ipv6_response() -> None:
    """RFC 5769 §2.3: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]."""
    msg = decode(RFC5769_2_3)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.SUCCESS)
    assert msg.attributes == (
        Software("test vector"),
        XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853),
        MessageIntegrity(bytes.fromhex("a382954e4be67bf11784c97c8292c275bfe3ed41")),
        Fingerprint(0xC8FB0B4C),
    )
    key = short_term_key(SHORT_TERM_PASSWORD)
    assert verify_integrity(msg, key)
    _check_reencode(RFC5769_2_3, key, padding=b" ", fingerprint=True)


@pytest.mark.parametrize("vector", [RFC5769_2_1, RFC5769_2_2, RFC5769_2_3])
def test_rfc5769_fingerprint_checked_by_decode(vector: bytes) -> None:
    """RFC 5769 §2.1-§2.3: a changed FINGERPRINT (or covered byte) is refused."""
    bad_fp = vector[:-1] + bytes((vector[-1] ^ 1,))
    with pytest.raises(DecodeError, match="FINGERPRINT"):
        decode(bad_fp)
    # a changed transaction id byte breaks the CRC too (and the MAC)
    bad_body = vector[:8] + bytes((vector[8] ^ 0x80,)) + vector[9:]
    with pytest.raises(DecodeError, match="FINGERPRINT"):
        decode(bad_body)


def test_rfc5769_2_4_sample_request_long_term_authentication() -> None:
    """RFC 5769 §2.4: long-term credential, MD5 key with SASLprep'd password.

    key = MD5(username ":" realm ":" SASLprep(password)), where SASLprep maps
    "The<U+00AD>M<U+00AA>tr<U+2168>" to "TheMatrIX". This vector pads with
    zero bytes (the others use spaces) and has no FINGERPRINT.
    """
    msg = decode(RFC5769_2_4)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.transaction_id == LT_TRANSACTION_ID
    assert msg.attributes[:3] == (
        Username(LT_USERNAME),
        Nonce("f//499k954d6OL34oL9FSTvy64sA"),
        Realm(LT_REALM),
    )
    assert msg.get(MessageIntegrity) == MessageIntegrity(
        bytes.fromhex("f67024656dd64a3e02b8e0712e85c9a28ca89666")
    )
    assert not msg.has_fingerprint
    assert nonce_security_features("f//499k954d6OL34oL9FSTvy64sA") is None

    assert saslprep(LT_PASSWORD) == "TheMatrIX"
    key = long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    expected = f"{LT_USERNAME}:{LT_REALM}:TheMatrIX".encode()
    assert key == hashlib.md5(expected).digest()
    assert verify_integrity(msg, key)
    # the unprepared password gives another key, which must not verify
    raw = hashlib.md5(f"{LT_USERNAME}:{LT_REALM}:{LT_PASSWORD}".encode()).digest()
    assert not verify_integrity(msg, raw)
    _check_reencode(RFC5769_2_4, key, padding=b"\x00")


# --- RFC 8489 Appendix B.1 ---------------------------------------------------


def test_rfc8489_b_1_published_length_field_is_wrong() -> None:
    """RFC 8489 Appendix B.1 as published, checked against Errata ID 6268.

    What Errata ID 6268 (RFC 8489, Appendix B.1) says: the published header
    length 0x009c is the size of the whole message, header included; a STUN
    length excludes the 20-byte header (RFC 8489 §5), so it should be
    0x9c - 20 = 0x88. The erratum also adds the PASSWORD-ALGORITHM attribute
    (SHA-256 is not the default, so the request must name it) and gives a
    recomputed MESSAGE-INTEGRITY-SHA256 for the corrected message.

    What this test verifies of the published bytes:

    - they are 156 bytes, so the length field 0x9c (156) is wrong and the
      right value is 136 (0x88); ``decode`` refuses the vector as published;
    - the published HMAC-SHA256 is reproducible, but only over the header
      as printed, with the wrong length 0x9c in it (RFC 8489 §14.6 wants the
      length to end just after MESSAGE-INTEGRITY-SHA256, that is 0x88): so the
      vector's MAC was computed after the length error, and with the length
      repaired it no longer verifies;
    - it reproduces only with the password "TheMatrIX", i.e. the RFC 4013
      SASLprep output. RFC 8489 Appendix B.1 claims "TheMatrIX" is the
      OpaqueString (RFC 8265) result, but OpaqueString keeps U+00AA and U+2168
      (it normalises with NFC, not NFKC) and refuses U+00AD (a default
      ignorable code point), so ``long_term_key`` with the raw password and
      the SHA-256 algorithm raises UsageError.
    """
    published = RFC8489_B_1_PUBLISHED
    assert len(published) == 156
    assert int.from_bytes(published[2:4]) == 0x9C == len(published)
    with pytest.raises(DecodeError, match="length field") as info:
        decode(published)
    assert info.value.offset == 2

    # the length the erratum gives: everything after the header
    repaired = published[:2] + (len(published) - 20).to_bytes(2) + published[4:]
    assert repaired[2:4] == b"\x00\x88"
    msg = decode(repaired)
    assert msg.get(Userhash) == Userhash(userhash(LT_USERNAME, LT_REALM))
    assert msg.get(Nonce) == Nonce(B1_NONCE)
    assert msg.get(Realm) == Realm(LT_REALM)
    assert msg.get(PasswordAlgorithm) is None  # the erratum adds it

    key = long_term_key(LT_USERNAME, LT_REALM, "TheMatrIX", Algorithm.SHA256)
    mac = published[-32:]
    assert hmac.new(key, published[:-36], hashlib.sha256).digest() == mac
    assert not verify_integrity(msg, key)

    with pytest.raises(UsageError, match="U\\+00AD"):
        long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD, Algorithm.SHA256)
    assert key == long_term_key(
        LT_USERNAME, LT_REALM, saslprep(LT_PASSWORD), Algorithm.SHA256
    )


def test_rfc8489_b_1_request_sha256_userhash_erratum_6268() -> None:
    """RFC 8489 Appendix B.1 as corrected by Errata ID 6268.

    The corrected vector has length 0x90 (144 = 36 USERHASH + 48 NONCE +
    16 REALM + 8 PASSWORD-ALGORITHM + 36 MESSAGE-INTEGRITY-SHA256) and a
    MESSAGE-INTEGRITY-SHA256 that verifies with
    key = SHA-256(username ":" realm ":" "TheMatrIX") (RFC 8489 §9.2.2), the
    password again being the SASLprep form (see the test above). The nonce
    starts with the "obMatJos2" cookie followed by "AAAC": feature set
    0x000002, i.e. bit 1, "Username anonymity", counting bit 0 as the least
    significant (the request carries USERHASH, which that feature allows).
    """
    vector = RFC8489_B_1_ERRATUM
    assert int.from_bytes(vector[2:4]) == len(vector) - 20 == 0x90
    msg = decode(vector)
    assert (msg.method, msg.cls) == (Method.BINDING, MessageClass.REQUEST)
    assert msg.transaction_id == LT_TRANSACTION_ID

    # USERHASH = SHA-256(OpaqueString(username) ":" OpaqueString(realm))
    digest = hashlib.sha256(f"{LT_USERNAME}:{LT_REALM}".encode()).digest()
    assert userhash(LT_USERNAME, LT_REALM) == digest
    assert msg.attributes[:4] == (
        Userhash(digest),
        Nonce(B1_NONCE),
        Realm(LT_REALM),
        PasswordAlgorithm(Algorithm.SHA256, b""),
    )
    assert msg.get(Username) is None and msg.get(MessageIntegrity) is None

    # the nonce cookie and its security feature set (RFC 8489 §9.2.1, §18.1)
    assert B1_NONCE.startswith(NONCE_COOKIE)
    features = nonce_security_features(B1_NONCE)
    assert features == FEATURE_USERNAME_ANONYMITY == 0x000002
    assert not features & FEATURE_PASSWORD_ALGORITHMS
    assert nonce_cookie_prefix(FEATURE_USERNAME_ANONYMITY) == "obMatJos2AAAC"

    key = long_term_key(LT_USERNAME, LT_REALM, "TheMatrIX", Algorithm.SHA256)
    digest = hashlib.sha256(f"{LT_USERNAME}:{LT_REALM}:TheMatrIX".encode()).digest()
    assert key == digest
    mi = msg.get(MessageIntegritySha256)
    assert mi is not None and len(mi.value) == 32
    assert verify_integrity(msg, key)
    assert not verify_integrity(msg, long_term_key(LT_USERNAME, LT_REALM, "x"))

    # only MESSAGE-INTEGRITY-SHA256 is appended: sha256 without sha1
    _check_reencode(vector, key, padding=b"\x00", sha256=True)
