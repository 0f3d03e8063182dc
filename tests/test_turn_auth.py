"""Long-term credential authentication (RFC 8489 §9.2.4, RFC 8656 §5).

Every request is built with natkit.stun.message.encode and decoded back, so
the MACs are the real ones of the wire format. Clocks are injected.
"""

import base64

import pytest

from natkit.stun import integrity
from natkit.stun.attributes import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    Attribute,
    ErrorCodeAttr,
    Lifetime,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    PasswordAlgorithmEntry,
    PasswordAlgorithms,
    Realm,
    RequestedTransport,
    Userhash,
    Username,
    nonce_security_features,
)
from natkit.stun.attributes import PasswordAlgorithm as PasswordAlgorithmAttr
from natkit.stun.constants import ErrorCode, MessageClass, Method, PasswordAlgorithm
from natkit.stun.errors import UsageError
from natkit.stun.message import (
    Message,
    decode,
    encode,
    new_transaction_id,
    verify_integrity,
)
from natkit.turn.auth import (
    DEFAULT_ALGORITHMS,
    FIPS_ALGORITHMS,
    AuthResult,
    ClientAddress,
    InMemoryKeyStore,
    IntegrityKind,
    LongTermAuthenticator,
    NonceManager,
    NonceStatus,
    encode_response,
    integrity_kind,
)

REALM = "example.org"
USER = "alice"
PASSWORD = "correct horse"
SECRET = b"0123456789abcdef-nonce-secret"
CLIENT = ClientAddress("127.0.0.1", 40000, "udp")
T0 = 1_700_000_000.0

SHA256 = PasswordAlgorithm.SHA256
MD5 = PasswordAlgorithm.MD5


def _store(
    algorithms: tuple[PasswordAlgorithm, ...] = DEFAULT_ALGORITHMS,
) -> InMemoryKeyStore:
    store = InMemoryKeyStore(algorithms=algorithms)
    store.add_user(USER, REALM, PASSWORD)
    return store


def _auth(*, fips: bool = False) -> LongTermAuthenticator:
    store = _store(FIPS_ALGORITHMS if fips else DEFAULT_ALGORITHMS)
    return LongTermAuthenticator(REALM, store, NonceManager(SECRET), fips=fips)


def _offered(auth: LongTermAuthenticator) -> PasswordAlgorithms:
    return PasswordAlgorithms(
        tuple(PasswordAlgorithmEntry(int(a)) for a in auth.algorithms)
    )


def _request(
    attributes: tuple[Attribute, ...],
    key: bytes | None = None,
    *,
    sha1: bool | None = None,
    sha256: bool = False,
) -> Message:
    """A TURN Allocate request, through the wire format and back."""
    base: tuple[Attribute, ...] = (RequestedTransport(17), Lifetime(600))
    msg = Message(
        Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id(), base + attributes
    )
    return decode(encode(msg, key=key, sha1=sha1, sha256=sha256, fingerprint=True))


def _challenge_nonce(auth: LongTermAuthenticator, now: float = T0) -> str:
    result = auth.verify_request(_request(()), CLIENT, now)
    nonce = next(a for a in result.attributes if isinstance(a, Nonce))
    return nonce.value


def _sha256_request(auth: LongTermAuthenticator, nonce: str) -> Message:
    key = integrity.long_term_key(USER, REALM, PASSWORD, SHA256)
    attrs = (
        Username(USER),
        Realm(REALM),
        Nonce(nonce),
        _offered(auth),
        PasswordAlgorithmAttr(SHA256),
    )
    return _request(attrs, key, sha256=True)


def _wire_error(result: AuthResult, request: Message) -> Message:
    """The error response as it travels: encoded, then decoded."""
    return decode(encode_response(result.error_response(request), result))


# --- nonces ------------------------------------------------------------------


def test_nonce_round_trip_and_features() -> None:
    nonces = NonceManager(SECRET)
    nonce = nonces.issue(CLIENT, T0)
    assert nonce.startswith("obMatJos2")
    assert len(nonce) < 128
    features = nonce_security_features(nonce)
    assert features == FEATURE_PASSWORD_ALGORITHMS | FEATURE_USERNAME_ANONYMITY
    assert nonces.check(nonce, CLIENT, T0) is NonceStatus.VALID
    assert nonces.check(nonce, CLIENT, T0 + 599) is NonceStatus.VALID


def test_nonce_goes_stale_after_lifetime() -> None:
    nonces = NonceManager(SECRET, lifetime_s=30)
    nonce = nonces.issue(CLIENT, T0)
    assert nonces.check(nonce, CLIENT, T0 + 30) is NonceStatus.VALID
    assert nonces.check(nonce, CLIENT, T0 + 30.5) is NonceStatus.STALE


@pytest.mark.parametrize(
    "other",
    [
        ClientAddress("127.0.0.2", 40000, "udp"),
        ClientAddress("127.0.0.1", 40001, "udp"),
        ClientAddress("127.0.0.1", 40000, "tcp"),
    ],
)
def test_nonce_bound_to_client(other: ClientAddress) -> None:
    nonces = NonceManager(SECRET)
    assert nonces.check(nonces.issue(CLIENT, T0), other, T0) is NonceStatus.INVALID


def test_nonce_from_other_secret_or_tampered_is_invalid() -> None:
    nonces = NonceManager(SECRET)
    foreign = NonceManager(b"another secret of 16+ bytes").issue(CLIENT, T0)
    assert nonces.check(foreign, CLIENT, T0) is NonceStatus.INVALID

    nonce = nonces.issue(CLIENT, T0)
    body = bytearray(base64.urlsafe_b64decode(nonce[13:] + "=="))
    body[3] ^= 0x01  # move the timestamp
    forged = nonce[:13] + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    assert nonces.check(forged, CLIENT, T0) is NonceStatus.INVALID


@pytest.mark.parametrize("nonce", ["", "abc", "obMatJos2AAAA" + "A" * 32])
def test_garbage_nonce_is_invalid(nonce: str) -> None:
    assert NonceManager(SECRET).check(nonce, CLIENT, T0) is NonceStatus.INVALID


@pytest.mark.parametrize("body", ["", "!!!!", "é", "AAAA", "A" * 31, "A" * 40])
def test_bad_body_after_our_cookie_is_invalid(body: str) -> None:
    nonces = NonceManager(SECRET)
    nonce = nonces.prefix + body
    assert nonces.check(nonce, CLIENT, T0) is NonceStatus.INVALID


def test_nonce_from_the_future_is_invalid() -> None:
    nonces = NonceManager(SECRET, clock_skew_s=5)
    nonce = nonces.issue(CLIENT, T0 + 60)
    assert nonces.check(nonce, CLIENT, T0) is NonceStatus.INVALID
    assert nonces.check(nonce, CLIENT, T0 + 56) is NonceStatus.VALID


def test_nonce_manager_refuses_weak_settings() -> None:
    with pytest.raises(UsageError):
        NonceManager(b"short")
    with pytest.raises(UsageError):
        NonceManager(SECRET, lifetime_s=0)


# --- the key store -----------------------------------------------------------


def test_store_keeps_only_derived_keys() -> None:
    store = _store()
    assert store.key_for(USER, REALM, MD5) == integrity.long_term_key(
        USER, REALM, PASSWORD, MD5
    )
    assert store.key_for(USER, REALM, SHA256) == integrity.long_term_key(
        USER, REALM, PASSWORD, SHA256
    )
    for keys in store._keys.values():
        for key in keys.values():
            assert PASSWORD.encode() not in key
    assert store.key_for(USER, "other realm", SHA256) is None
    assert store.key_for("bob", REALM, SHA256) is None


def test_store_userhash_lookup_and_removal() -> None:
    store = _store()
    digest = integrity.userhash(USER, REALM)
    assert store.user_for_hash(digest, REALM) == USER
    assert store.user_for_hash(digest, "other") is None
    assert store.remove_user(USER, REALM)
    assert store.user_for_hash(digest, REALM) is None
    assert not store.remove_user(USER, REALM)
    assert len(store) == 0


def test_fips_store_derives_no_md5_key() -> None:
    store = _store(FIPS_ALGORITHMS)
    assert store.key_for(USER, REALM, MD5) is None
    assert store.key_for(USER, REALM, SHA256) is not None


# --- RFC 8489 §9.2.4, step by step -------------------------------------------


def test_no_integrity_gets_401_challenge() -> None:
    auth = _auth()
    request = _request((Username(USER),))
    result = auth.verify_request(request, CLIENT, T0)
    assert not result.ok
    assert result.error_code == ErrorCode.UNAUTHENTICATED
    assert not result.credential_failure

    response = _wire_error(result, request)
    assert response.cls is MessageClass.ERROR
    assert response.transaction_id == request.transaction_id
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 401
    assert response.get(Realm) == Realm(REALM)
    nonce = response.get(Nonce)
    assert nonce is not None
    assert auth.nonces.check(nonce.value, CLIENT, T0) is NonceStatus.VALID
    offered = response.get(PasswordAlgorithms)
    assert offered is not None
    assert [e.algorithm for e in offered.algorithms] == [SHA256, MD5]
    assert response.get(MessageIntegrity) is None
    assert response.get(MessageIntegritySha256) is None
    assert response.get(Username) is None


@pytest.mark.parametrize("missing", [Username, Realm, Nonce])
def test_integrity_without_username_realm_or_nonce_gets_400(
    missing: type[Attribute],
) -> None:
    auth = _auth()
    key = integrity.long_term_key(USER, REALM, PASSWORD, MD5)
    everything: tuple[Attribute, ...] = (
        Username(USER),
        Realm(REALM),
        Nonce(_challenge_nonce(auth)),
    )
    attrs = tuple(a for a in everything if not isinstance(a, missing))
    request = _request(attrs, key)
    result = auth.verify_request(request, CLIENT, T0)
    assert result.error_code == ErrorCode.BAD_REQUEST
    response = _wire_error(result, request)
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 400
    for absent in (Realm, Nonce, Username, MessageIntegrity, MessageIntegritySha256):
        assert response.get(absent) is None


def test_sha256_client_succeeds_and_response_is_signed_alike() -> None:
    auth = _auth()
    request = _sha256_request(auth, _challenge_nonce(auth))
    result = auth.verify_request(request, CLIENT, T0 + 1)
    assert result.ok, result.detail
    assert result.username == USER
    assert result.algorithm is SHA256
    assert result.integrity is IntegrityKind.SHA256
    assert result.key == integrity.long_term_key(USER, REALM, PASSWORD, SHA256)

    success = request.reply(MessageClass.SUCCESS, (Lifetime(600),))
    response = decode(encode_response(success, result, fingerprint=True))
    assert response.get(MessageIntegritySha256) is not None
    assert response.get(MessageIntegrity) is None
    assert verify_integrity(response, result.key)


def test_rfc5389_client_uses_md5_and_sha1() -> None:
    auth = _auth()
    key = integrity.long_term_key(USER, REALM, PASSWORD, MD5)
    attrs = (Username(USER), Realm(REALM), Nonce(_challenge_nonce(auth)))
    request = _request(attrs, key)
    result = auth.verify_request(request, CLIENT, T0)
    assert result.ok, result.detail
    assert result.algorithm is MD5
    assert result.integrity is IntegrityKind.SHA1

    response = decode(encode_response(request.reply(MessageClass.SUCCESS), result))
    assert response.get(MessageIntegrity) is not None
    assert response.get(MessageIntegritySha256) is None
    assert verify_integrity(response, key)


def test_both_integrity_attributes_prefer_sha256() -> None:
    auth = _auth()
    key = integrity.long_term_key(USER, REALM, PASSWORD, MD5)
    attrs = (Username(USER), Realm(REALM), Nonce(_challenge_nonce(auth)))
    request = _request(attrs, key, sha1=True, sha256=True)
    assert integrity_kind(request) is IntegrityKind.SHA256
    result = auth.verify_request(request, CLIENT, T0)
    assert result.ok and result.integrity is IntegrityKind.SHA256


def test_stale_nonce_gets_438_with_a_fresh_nonce() -> None:
    auth = _auth()
    later = T0 + auth.nonces.lifetime_s + 1
    request = _sha256_request(auth, _challenge_nonce(auth, T0))
    result = auth.verify_request(request, CLIENT, later)
    assert result.error_code == ErrorCode.STALE_NONCE
    assert not result.credential_failure

    # RFC 8489 §9.2.4: NONCE, REALM and PASSWORD-ALGORITHMS; may be signed
    response = _wire_error(result, request)
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 438
    nonce = response.get(Nonce)
    assert nonce is not None
    assert auth.nonces.check(nonce.value, CLIENT, later) is NonceStatus.VALID
    assert response.get(Realm) == Realm(REALM)
    assert response.get(PasswordAlgorithms) is not None
    assert response.get(Username) is None
    assert result.key is not None and verify_integrity(response, result.key)

    # the retry with the new nonce goes through
    retry = auth.verify_request(_sha256_request(auth, nonce.value), CLIENT, later)
    assert retry.ok


def test_nonce_of_another_client_gets_401() -> None:
    auth = _auth()
    request = _sha256_request(auth, _challenge_nonce(auth))
    other = ClientAddress(CLIENT.ip, CLIENT.port + 1, CLIENT.transport)
    result = auth.verify_request(request, other, T0)
    assert result.error_code == ErrorCode.UNAUTHENTICATED
    assert not result.credential_failure
    assert _wire_error(result, request).get(Nonce) is not None


def test_nonce_without_our_cookie_gets_401() -> None:
    auth = _auth()
    result = auth.verify_request(_sha256_request(auth, "plain-nonce"), CLIENT, T0)
    assert result.error_code == ErrorCode.UNAUTHENTICATED


def test_wrong_password_gets_401_and_counts_as_failure() -> None:
    auth = _auth()
    key = integrity.long_term_key(USER, REALM, "wrong", SHA256)
    attrs = (
        Username(USER),
        Realm(REALM),
        Nonce(_challenge_nonce(auth)),
        _offered(auth),
        PasswordAlgorithmAttr(SHA256),
    )
    request = _request(attrs, key, sha256=True)
    result = auth.verify_request(request, CLIENT, T0)
    assert result.error_code == ErrorCode.UNAUTHENTICATED
    assert result.credential_failure
    assert result.key is None
    response = _wire_error(result, request)
    assert response.get(Realm) == Realm(REALM)
    assert response.get(Nonce) is not None
    assert response.get(MessageIntegrity) is None
    assert response.get(MessageIntegritySha256) is None


@pytest.mark.parametrize(
    ("username", "realm"), [("mallory", REALM), (USER, "other.example")]
)
def test_unknown_user_or_realm_gets_401(username: str, realm: str) -> None:
    auth = _auth()
    key = integrity.long_term_key(username, realm, PASSWORD, MD5)
    attrs = (Username(username), Realm(realm), Nonce(_challenge_nonce(auth)))
    result = auth.verify_request(_request(attrs, key), CLIENT, T0)
    assert result.error_code == ErrorCode.UNAUTHENTICATED
    assert result.credential_failure


def test_userhash_identifies_the_user() -> None:
    auth = _auth()
    key = integrity.long_term_key(USER, REALM, PASSWORD, SHA256)
    attrs = (
        Userhash(integrity.userhash(USER, REALM)),
        Realm(REALM),
        Nonce(_challenge_nonce(auth)),
        _offered(auth),
        PasswordAlgorithmAttr(SHA256),
    )
    result = auth.verify_request(_request(attrs, key, sha256=True), CLIENT, T0)
    assert result.ok, result.detail
    assert result.username == USER


def test_unknown_userhash_gets_401() -> None:
    auth = _auth()
    key = integrity.long_term_key(USER, REALM, PASSWORD, SHA256)
    attrs = (Userhash(bytes(32)), Realm(REALM), Nonce(_challenge_nonce(auth)))
    result = auth.verify_request(_request(attrs, key, sha256=True), CLIENT, T0)
    assert result.error_code == ErrorCode.UNAUTHENTICATED
    assert result.credential_failure


def _algorithm_request(
    auth: LongTermAuthenticator, extra: tuple[Attribute, ...]
) -> Message:
    key = integrity.long_term_key(USER, REALM, PASSWORD, SHA256)
    attrs = (Username(USER), Realm(REALM), Nonce(_challenge_nonce(auth)), *extra)
    return _request(attrs, key, sha256=True)


@pytest.mark.parametrize(
    "extra",
    [
        # PASSWORD-ALGORITHM without the PASSWORD-ALGORITHMS it came from
        (PasswordAlgorithmAttr(SHA256),),
        # PASSWORD-ALGORITHMS alone
        (PasswordAlgorithms((PasswordAlgorithmEntry(SHA256),)),),
        # a list that is not the one the server sent (bid-down attempt)
        (
            PasswordAlgorithms((PasswordAlgorithmEntry(SHA256),)),
            PasswordAlgorithmAttr(SHA256),
        ),
        # reordered list
        (
            PasswordAlgorithms(
                (PasswordAlgorithmEntry(MD5), PasswordAlgorithmEntry(SHA256))
            ),
            PasswordAlgorithmAttr(SHA256),
        ),
        # the choice is not in the list
        (
            PasswordAlgorithms(
                (PasswordAlgorithmEntry(SHA256), PasswordAlgorithmEntry(MD5))
            ),
            PasswordAlgorithmAttr(0x0003),
        ),
    ],
)
def test_password_algorithm_rules_give_400(extra: tuple[Attribute, ...]) -> None:
    auth = _auth()
    request = _algorithm_request(auth, extra)
    result = auth.verify_request(request, CLIENT, T0)
    assert result.error_code == ErrorCode.BAD_REQUEST, result.detail
    assert _wire_error(result, request).get(Nonce) is None


def test_fips_profile_offers_only_sha256() -> None:
    auth = _auth(fips=True)
    assert auth.algorithms == (SHA256,)
    challenge = auth.verify_request(_request(()), CLIENT, T0)
    offered = next(a for a in challenge.attributes if isinstance(a, PasswordAlgorithms))
    assert [e.algorithm for e in offered.algorithms] == [SHA256]

    # an RFC 5389 client (MD5 implied) is refused
    key = integrity.long_term_key(USER, REALM, PASSWORD, SHA256)
    attrs = (Username(USER), Realm(REALM), Nonce(_challenge_nonce(auth)))
    result = auth.verify_request(_request(attrs, key), CLIENT, T0)
    assert result.error_code == ErrorCode.BAD_REQUEST

    # an RFC 8489 client choosing SHA-256 gets in
    assert auth.verify_request(
        _sha256_request(auth, _challenge_nonce(auth)), CLIENT, T0
    ).ok


def test_fips_profile_refuses_md5_configuration() -> None:
    with pytest.raises(UsageError, match="FIPS"):
        LongTermAuthenticator(
            REALM, _store(), NonceManager(SECRET), algorithms=(SHA256, MD5), fips=True
        )


def test_algorithm_order_is_configurable() -> None:
    auth = LongTermAuthenticator(
        REALM, _store(), NonceManager(SECRET), algorithms=(MD5, SHA256)
    )
    request = _algorithm_request(auth, (_offered(auth), PasswordAlgorithmAttr(SHA256)))
    assert auth.verify_request(request, CLIENT, T0).ok


def test_indications_are_not_authenticated() -> None:
    auth = _auth()
    indication = Message(Method.SEND, MessageClass.INDICATION, new_transaction_id())
    with pytest.raises(UsageError):
        auth.verify_request(indication, CLIENT, T0)


def test_successful_result_has_no_error_response() -> None:
    with pytest.raises(UsageError):
        AuthResult(ok=True).error_response(_request(()))


def test_result_repr_hides_the_key() -> None:
    assert "key=" not in repr(AuthResult(ok=True, key=b"secret-key"))
