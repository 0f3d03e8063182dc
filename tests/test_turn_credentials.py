"""Time-limited REST credentials (coturn use-auth-secret), with injected clocks."""

import pytest

from natkit.stun import integrity
from natkit.stun.attributes import (
    Nonce,
    PasswordAlgorithmEntry,
    PasswordAlgorithms,
    Realm,
    RequestedTransport,
    Username,
)
from natkit.stun.attributes import PasswordAlgorithm as PasswordAlgorithmAttr
from natkit.stun.constants import ErrorCode, MessageClass, Method, PasswordAlgorithm
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.turn.auth import (
    ClientAddress,
    KeyLookup,
    LongTermAuthenticator,
    NonceManager,
    RotatingKeyLookup,
)
from natkit.turn.credentials import (
    Credential,
    RestHmac,
    RestSecretKeys,
    RestUsername,
    is_current,
    mint,
    parse_rest_username,
    rest_password,
    verify_password,
)

NOW = 1_700_000_000.0
SECRET = "north-secret"
REALM = "example.org"
CLIENT = ClientAddress("127.0.0.1", 40000, "udp")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_password_matches_openssl_vectors() -> None:
    # printf '%s' 1700003600:alice | openssl dgst -sha1 -hmac north-secret -binary
    assert rest_password(SECRET, "1700003600:alice") == "Ji4axghh2/aljHmsPgH9mtDGVLw="
    assert (
        rest_password(SECRET, "1700003600:alice", RestHmac.SHA256)
        == "dAnNmdT2zBN5kFLE1/prbmNmjp3NWZvHwq9SRBDLYpA="
    )


def test_mint() -> None:
    credential = mint("alice", 3600, SECRET, NOW)
    assert credential == Credential(
        "1700003600:alice", "Ji4axghh2/aljHmsPgH9mtDGVLw=", 1_700_003_600, 3600
    )
    assert "Ji4ax" not in repr(credential)
    sha256 = mint("alice", 3600, SECRET, NOW, hmac_algorithm=RestHmac.SHA256)
    assert sha256.password.startswith("dAnN")


def test_mint_bare_expiry() -> None:
    credential = mint("", 60, b"bytes-secret", NOW + 0.9)
    assert credential.username == "1700000060"
    assert verify_password(
        credential.username, credential.password, [b"bytes-secret"], NOW
    )


@pytest.mark.parametrize("ttl", [0, -5, 0.5])
def test_mint_refuses_bad_ttl(ttl: float) -> None:
    with pytest.raises(UsageError):
        mint("alice", ttl, SECRET, NOW)


def test_mint_refuses_long_user_and_empty_secret() -> None:
    with pytest.raises(UsageError):
        mint("x" * 600, 60, SECRET, NOW)
    with pytest.raises(UsageError):
        mint("alice", 60, "", NOW)


@pytest.mark.parametrize(
    ("username", "parsed"),
    [
        ("1700003600:alice", RestUsername(1_700_003_600, "alice")),
        ("1700003600", RestUsername(1_700_003_600, "")),
        ("1700003600:a:b", RestUsername(1_700_003_600, "a:b")),
        ("alice", None),
        ("alice:1700003600", None),
        (":alice", None),
        ("-5:alice", None),
        ("١٢٣:alice", None),  # non-ASCII digits
    ],
)
def test_parse_rest_username(username: str, parsed: RestUsername | None) -> None:
    assert parse_rest_username(username) == parsed


def test_expiry_and_max_ttl() -> None:
    assert is_current("1700003600:alice", NOW)
    assert is_current("1700003600:alice", 1_700_003_599.9)
    assert not is_current("1700003600:alice", 1_700_003_600)
    assert not is_current("1700003600:alice", NOW, max_ttl_s=60)
    assert not is_current("alice", NOW)


def test_verify_password_tries_each_secret() -> None:
    credential = mint("alice", 600, "old-secret", NOW)
    secrets = ["new-secret", "old-secret"]
    assert verify_password(credential.username, credential.password, secrets, NOW)
    assert not verify_password(credential.username, credential.password, ["x"], NOW)
    assert not verify_password(credential.username, "wrong", secrets, NOW)
    assert not verify_password(
        credential.username, credential.password, secrets, NOW + 601
    )


def test_rest_keys_derive_long_term_keys() -> None:
    clock = Clock(NOW)
    keys = RestSecretKeys([SECRET], clock=clock)
    credential = mint("alice", 600, SECRET, NOW)
    for algorithm in PasswordAlgorithm:
        expected = integrity.long_term_key(
            credential.username, REALM, credential.password, algorithm
        )
        assert keys.key_for(credential.username, REALM, algorithm) == expected
        assert keys.keys_for(credential.username, REALM, algorithm) == (expected,)
    assert keys.user_for_hash(bytes(32), REALM) is None

    # expired, or not a REST username at all
    clock.now = NOW + 600
    assert keys.key_for(credential.username, REALM, PasswordAlgorithm.SHA256) is None
    assert keys.keys_for(credential.username, REALM, PasswordAlgorithm.MD5) == ()
    assert keys.key_for("alice", REALM, PasswordAlgorithm.MD5) is None


def test_rest_keys_is_a_rotating_key_lookup() -> None:
    keys: KeyLookup = RestSecretKeys([SECRET], clock=Clock(NOW))
    assert isinstance(keys, RotatingKeyLookup)


def test_rest_keys_need_a_secret() -> None:
    with pytest.raises(UsageError):
        RestSecretKeys([], clock=Clock(NOW))


def _login(auth: LongTermAuthenticator, credential: Credential, now: float) -> int:
    """Challenge, then an RFC 8489 SHA-256 request; 0 on success, else the code."""
    challenge = auth.verify_request(
        decode(
            encode(
                Message(
                    Method.ALLOCATE,
                    MessageClass.REQUEST,
                    new_transaction_id(),
                    (RequestedTransport(17),),
                )
            )
        ),
        CLIENT,
        now,
    )
    nonce = next(a for a in challenge.attributes if isinstance(a, Nonce))
    algorithm = PasswordAlgorithm.SHA256
    key = integrity.long_term_key(
        credential.username, REALM, credential.password, algorithm
    )
    offered = PasswordAlgorithms(
        tuple(PasswordAlgorithmEntry(int(a)) for a in auth.algorithms)
    )
    request = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        new_transaction_id(),
        (
            RequestedTransport(17),
            Username(credential.username),
            Realm(REALM),
            nonce,
            offered,
            PasswordAlgorithmAttr(algorithm),
        ),
    )
    wire = decode(encode(request, key=key, sha256=True))
    result = auth.verify_request(wire, CLIENT, now)
    if result.ok:
        assert result.username == credential.username
        return 0
    assert result.error_code is not None
    return result.error_code


def test_authenticator_with_rotated_secrets() -> None:
    clock = Clock(NOW)
    keys = RestSecretKeys(["new-secret", "old-secret"], clock=clock)
    auth = LongTermAuthenticator(REALM, keys, NonceManager(b"n" * 32))

    # credentials minted with either secret work
    assert _login(auth, mint("alice", 600, "old-secret", NOW), NOW) == 0
    assert _login(auth, mint("bob", 600, "new-secret", NOW), NOW) == 0

    # retire the old secret: its credentials stop working
    keys.set_secrets(["new-secret"])
    old = mint("alice", 600, "old-secret", NOW)
    assert _login(auth, old, NOW) == ErrorCode.UNAUTHENTICATED

    # expiry: the clock moves past the credential's end
    fresh = mint("carol", 60, "new-secret", NOW)
    clock.now = NOW + 61
    assert _login(auth, fresh, NOW + 61) == ErrorCode.UNAUTHENTICATED


def test_authenticator_with_sha256_rest_hmac() -> None:
    keys = RestSecretKeys([SECRET], clock=Clock(NOW), hmac_algorithm=RestHmac.SHA256)
    auth = LongTermAuthenticator(REALM, keys, NonceManager(b"n" * 32))
    good = mint("alice", 600, SECRET, NOW, hmac_algorithm=RestHmac.SHA256)
    assert _login(auth, good, NOW) == 0
    sha1 = mint("alice", 600, SECRET, NOW)
    assert _login(auth, sha1, NOW) == ErrorCode.UNAUTHENTICATED
