"""Long-term credential authentication for TURN, sans-IO.

RFC 8656 §5 requires the long-term credential mechanism of RFC 8489 §9.2 for
every TURN request except indications. This module holds:

- :class:`NonceManager`: stateless nonces (RFC 8489 §9.2, RFC 7616 §5.4),
  bound to the client's transport address and to the time they were issued;
- :class:`KeyLookup`: where long-term keys come from (a user store, REST
  secrets), with :class:`InMemoryKeyStore` keeping only derived keys;
- :class:`LongTermAuthenticator`: the server steps of RFC 8489 §9.2.4,
  returning an :class:`AuthResult` that either carries the key to sign the
  response with or the error response to send (400, 401, 438).
"""

import base64
import hashlib
import hmac
import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from natkit.stun import integrity
from natkit.stun.attributes import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    Attribute,
    ErrorCodeAttr,
    MessageIntegrity,
    MessageIntegritySha256,
    Nonce,
    PasswordAlgorithmEntry,
    PasswordAlgorithms,
    Realm,
    Userhash,
    Username,
    nonce_cookie_prefix,
    nonce_security_features,
)
from natkit.stun.attributes import PasswordAlgorithm as PasswordAlgorithmAttr
from natkit.stun.constants import (
    REASON_PHRASES,
    ErrorCode,
    MessageClass,
    PasswordAlgorithm,
)
from natkit.stun.errors import UsageError
from natkit.stun.message import Message, encode, verify_integrity
from natkit.stun.transaction import Transport

logger = logging.getLogger(__name__)

#: RFC 8489 §9.2: natkit announces password algorithms and, since it
#: resolves USERHASH, username anonymity (§18.1 bits 0 and 1).
NONCE_FEATURES = FEATURE_PASSWORD_ALGORITHMS | FEATURE_USERNAME_ANONYMITY

#: the order a server offers algorithms in; RFC 8489 §9.2.5 has clients take
#: the first one they support
DEFAULT_ALGORITHMS: tuple[PasswordAlgorithm, ...] = (
    PasswordAlgorithm.SHA256,
    PasswordAlgorithm.MD5,
)
#: FIPS 140 profile: no MD5 key derivation
FIPS_ALGORITHMS: tuple[PasswordAlgorithm, ...] = (PasswordAlgorithm.SHA256,)

_TIMESTAMP = struct.Struct("!Q")
_PORT = struct.Struct("!H")
_MIN_SECRET = 16


# --- nonces ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """Where a request came from: the client's side of the 5-tuple.

    ``transport`` is a :class:`~natkit.stun.transaction.Transport` value
    (``"udp"``, ``"tcp"``, ``"tls"``); any str-valued transport enum works.
    """

    ip: str
    port: int
    transport: str = Transport.UDP


class NonceStatus(Enum):
    """What :meth:`NonceManager.check` found."""

    #: issued by this server, for this client, and not expired
    VALID = "valid"
    #: issued by this server for this client, but too old: answer 438
    STALE = "stale"
    #: not a nonce of this server for this client: answer 401
    INVALID = "invalid"


class NonceManager:
    """Stateless nonces: nothing is stored per client (RFC 8489 §9.2).

    A nonce is the RFC 8489 §9.2 security-feature cookie, then base64url of
    the issue time (milliseconds, 8 bytes) and the first ``mac_size`` bytes
    of HMAC-SHA256(secret, cookie || time || client ip || port || transport).
    Anyone holding ``secret`` (every worker of one server) can check it; a
    nonce issued to one client is invalid from another.

    Times are the ``now`` the caller passes (seconds, any epoch used
    consistently, e.g. :func:`time.time`). A nonce older than ``lifetime_s``
    is stale; one issued more than ``clock_skew_s`` in the future is invalid.
    """

    __slots__ = ("_secret", "lifetime_s", "clock_skew_s", "prefix", "_mac_size")

    def __init__(
        self,
        secret: bytes,
        lifetime_s: float = 600,
        *,
        features: int = NONCE_FEATURES,
        mac_size: int = 16,
        clock_skew_s: float = 5.0,
    ) -> None:
        if len(secret) < _MIN_SECRET:
            raise UsageError(f"nonce secret must be at least {_MIN_SECRET} bytes")
        if lifetime_s <= 0:
            raise UsageError("nonce lifetime must be positive")
        if not 8 <= mac_size <= 32:
            raise UsageError("nonce MAC size must be 8-32 bytes")
        self._secret = secret
        self.lifetime_s = lifetime_s
        self.clock_skew_s = clock_skew_s
        self.prefix = nonce_cookie_prefix(features)
        self._mac_size = mac_size

    @property
    def features(self) -> int:
        """The security feature set the nonces announce (RFC 8489 §18.1)."""
        features = nonce_security_features(self.prefix)
        return 0 if features is None else features

    def issue(self, client: ClientAddress, now: float) -> str:
        """A fresh nonce for ``client`` at ``now``."""
        if now < 0:
            raise UsageError("now must not be negative")
        stamp = _TIMESTAMP.pack(int(now * 1000))
        body = stamp + self._mac(stamp, client)
        return self.prefix + base64.urlsafe_b64encode(body).rstrip(b"=").decode()

    def check(self, nonce: str, client: ClientAddress, now: float) -> NonceStatus:
        """Is ``nonce`` one of ours for ``client``, and still fresh at ``now``?"""

        # step 1: our cookie, then base64url of the right length
        if not nonce.startswith(self.prefix) or not nonce.isascii():
            return NonceStatus.INVALID
        text = nonce[len(self.prefix) :]
        try:
            body = base64.b64decode(text + "=" * (-len(text) % 4), b"-_", validate=True)
        except ValueError:
            return NonceStatus.INVALID
        if len(body) != _TIMESTAMP.size + self._mac_size:
            return NonceStatus.INVALID

        # step 2: the MAC binds the time to this client
        stamp, mac = body[: _TIMESTAMP.size], body[_TIMESTAMP.size :]
        if not hmac.compare_digest(mac, self._mac(stamp, client)):
            return NonceStatus.INVALID

        # step 3: age
        issued = _TIMESTAMP.unpack(stamp)[0] / 1000
        if issued > now + self.clock_skew_s:
            return NonceStatus.INVALID
        if now - issued > self.lifetime_s:
            return NonceStatus.STALE
        return NonceStatus.VALID

    def _mac(self, stamp: bytes, client: ClientAddress) -> bytes:
        ip = client.ip.encode("ascii", "replace")
        transport = str(client.transport).encode("ascii", "replace")
        data = b"".join(
            (
                self.prefix.encode("ascii"),
                stamp,
                bytes((len(ip),)),
                ip,
                _PORT.pack(client.port & 0xFFFF),
                transport,
            )
        )
        return hmac.new(self._secret, data, hashlib.sha256).digest()[: self._mac_size]


# --- key stores --------------------------------------------------------------


class KeyLookup(Protocol):
    """Where long-term keys come from (RFC 8489 §9.2.2).

    Implementations hand out derived keys only; a password never leaves them.
    """

    def key_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> bytes | None:
        """The long-term key of ``username`` in ``realm``, or None if unknown."""
        ...

    def user_for_hash(self, userhash: bytes, realm: str) -> str | None:
        """RFC 8489 §14.4: the user whose SHA-256(username:realm) is ``userhash``."""
        ...


@runtime_checkable
class RotatingKeyLookup(Protocol):
    """A :class:`KeyLookup` that may hold several valid keys for one user.

    Secret rotation (REST credentials) makes more than one key correct at a
    time; the authenticator tries each, in order, against the MAC.
    """

    def keys_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> Sequence[bytes]:
        """Every currently valid key of ``username`` in ``realm``."""
        ...


class InMemoryKeyStore:
    """A :class:`KeyLookup` in memory, for tests and small deployments.

    :meth:`add_user` derives the long-term keys of ``algorithms`` (RFC 8489
    §9.2.2) and the USERHASH (§14.4) and forgets the password. With
    ``algorithms=FIPS_ALGORITHMS`` no MD5 key is ever computed.
    """

    __slots__ = ("algorithms", "_keys", "_hashes")

    def __init__(
        self, *, algorithms: Sequence[PasswordAlgorithm] = DEFAULT_ALGORITHMS
    ) -> None:
        self.algorithms = tuple(algorithms)
        self._keys: dict[tuple[str, str], dict[PasswordAlgorithm, bytes]] = {}
        self._hashes: dict[bytes, tuple[str, str]] = {}

    def add_user(self, username: str, realm: str, password: str) -> None:
        """Store the derived keys of ``username``; raises UsageError on bad text."""
        keys = {
            algorithm: integrity.long_term_key(username, realm, password, algorithm)
            for algorithm in self.algorithms
        }
        self.add_keys(username, realm, keys)

    def add_keys(
        self, username: str, realm: str, keys: Mapping[PasswordAlgorithm, bytes]
    ) -> None:
        """Store keys derived elsewhere (e.g. imported from another server)."""
        self._keys[(username, realm)] = dict(keys)
        try:
            self._hashes[integrity.userhash(username, realm)] = (username, realm)
        except UsageError:
            # OpaqueString refuses the name: such a user cannot use USERHASH
            logger.debug("no USERHASH for a user whose name OpaqueString refuses")

    def remove_user(self, username: str, realm: str) -> bool:
        """Forget ``username``; True if it was known."""
        if self._keys.pop((username, realm), None) is None:
            return False
        stale = [h for h, owner in self._hashes.items() if owner == (username, realm)]
        for digest in stale:
            del self._hashes[digest]
        return True

    def key_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> bytes | None:
        keys = self._keys.get((username, realm))
        return None if keys is None else keys.get(algorithm)

    def user_for_hash(self, userhash: bytes, realm: str) -> str | None:
        owner = self._hashes.get(userhash)
        if owner is None or owner[1] != realm:
            return None
        return owner[0]

    def __len__(self) -> int:
        return len(self._keys)


# --- results -----------------------------------------------------------------


class IntegrityKind(Enum):
    """Which integrity attribute protects a message."""

    #: MESSAGE-INTEGRITY, HMAC-SHA1 (RFC 8489 §14.5)
    SHA1 = "sha1"
    #: MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6)
    SHA256 = "sha256"


def integrity_kind(msg: Message) -> IntegrityKind | None:
    """The integrity a request used; SHA-256 wins when both are present.

    RFC 8489 §9.2.4: the response to an authenticated request carries the same
    kind, computed with the same key.
    """
    if msg.get(MessageIntegritySha256) is not None:
        return IntegrityKind.SHA256
    if msg.get(MessageIntegrity) is not None:
        return IntegrityKind.SHA1
    return None


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of :meth:`LongTermAuthenticator.verify_request`.

    When ``ok``, ``username``, ``key``, ``algorithm`` and ``integrity`` say
    who sent the request and how to sign the response. Otherwise
    ``error_code`` and ``attributes`` (REALM, NONCE, PASSWORD-ALGORITHMS, as
    the RFC asks for that code) make up the error response; ``detail`` says
    why, for logs and audit, and is never sent. A 438 keeps ``key`` so the
    response may be signed (RFC 8489 §9.2.4). ``credential_failure`` marks
    the failures a throttle should count: unknown user, wrong realm, bad MAC.
    """

    ok: bool
    username: str | None = None
    key: bytes | None = field(default=None, repr=False)
    algorithm: PasswordAlgorithm | None = None
    integrity: IntegrityKind | None = None
    error_code: int | None = None
    attributes: tuple[Attribute, ...] = ()
    detail: str = ""
    credential_failure: bool = False

    def error_response(self, request: Message) -> Message:
        """The error response to ``request``: ERROR-CODE, then ``attributes``."""
        if self.error_code is None:
            raise UsageError("a successful AuthResult has no error response")
        phrase = REASON_PHRASES.get(self.error_code, "Error")
        error = ErrorCodeAttr(self.error_code, phrase)
        return request.reply(MessageClass.ERROR, (error, *self.attributes))


def encode_response(
    response: Message, result: AuthResult, *, fingerprint: bool = False
) -> bytes:
    """Encode ``response``, signed as RFC 8489 §9.2.4 asks.

    With the key of ``result`` and the integrity kind of the request; a
    result without a key (400, 401) gives an unsigned message.
    """
    if result.key is None or result.integrity is None:
        return encode(response, fingerprint=fingerprint)
    return encode(
        response,
        key=result.key,
        sha256=result.integrity is IntegrityKind.SHA256,
        fingerprint=fingerprint,
    )


# --- the server steps --------------------------------------------------------


class _BadRequest(Exception):
    """Internal: the PASSWORD-ALGORITHM(S) rules of RFC 8489 §9.2.4 failed."""


class LongTermAuthenticator:
    """The server side of RFC 8489 §9.2.4, for TURN requests (RFC 8656 §5).

    ``algorithms`` are offered in PASSWORD-ALGORITHMS in this order
    (default :data:`DEFAULT_ALGORITHMS`). With ``fips``, the default is
    :data:`FIPS_ALGORITHMS` and MD5 is refused (not a FIPS 140 algorithm).
    """

    __slots__ = ("realm", "keys", "nonces", "algorithms", "_offered", "_rotating")

    def __init__(
        self,
        realm: str,
        keys: KeyLookup,
        nonces: NonceManager,
        *,
        algorithms: Sequence[PasswordAlgorithm] | None = None,
        fips: bool = False,
    ) -> None:
        if algorithms is None:
            algorithms = FIPS_ALGORITHMS if fips else DEFAULT_ALGORITHMS
        algorithms = tuple(PasswordAlgorithm(a) for a in algorithms)
        if not algorithms or len(set(algorithms)) != len(algorithms):
            raise UsageError("password algorithms must be a non-empty unique list")
        if fips and PasswordAlgorithm.MD5 in algorithms:
            raise UsageError("the FIPS profile does not allow the MD5 algorithm")
        if not nonces.features & FEATURE_PASSWORD_ALGORITHMS:
            raise UsageError("nonces must announce the password-algorithms feature")
        self.realm = realm
        self.keys = keys
        self.nonces = nonces
        self.algorithms = algorithms
        self._offered = PasswordAlgorithms(
            tuple(PasswordAlgorithmEntry(int(a)) for a in algorithms)
        )
        self._rotating = keys if isinstance(keys, RotatingKeyLookup) else None

    def challenge(
        self, client: ClientAddress, now: float, *, detail: str = "no credentials"
    ) -> AuthResult:
        """401 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS (§9.2.4)."""
        return AuthResult(
            ok=False,
            error_code=ErrorCode.UNAUTHENTICATED,
            attributes=self._challenge_attributes(client, now),
            detail=detail,
        )

    def verify_request(
        self, msg: Message, client: ClientAddress, now: float
    ) -> AuthResult:
        """Authenticate a decoded request, in the order of RFC 8489 §9.2.4."""
        if msg.cls is not MessageClass.REQUEST:
            raise UsageError("only requests are authenticated (RFC 8656 §5)")

        # step 1: no MESSAGE-INTEGRITY(-SHA256): challenge with 401
        kind = integrity_kind(msg)
        if kind is None:
            return self.challenge(client, now)

        # step 2: integrity but no USERNAME/USERHASH, REALM or NONCE: 400
        username_attr = msg.get(Username)
        userhash_attr = msg.get(Userhash)
        realm_attr = msg.get(Realm)
        nonce_attr = msg.get(Nonce)
        if (
            (username_attr is None and userhash_attr is None)
            or realm_attr is None
            or nonce_attr is None
        ):
            return _bad_request("USERNAME/USERHASH, REALM or NONCE missing")

        # a nonce without our cookie can never become valid: challenge again
        nonce = nonce_attr.value
        if not nonce.startswith(self.nonces.prefix):
            return self.challenge(client, now, detail="nonce not issued here")

        # step 3: PASSWORD-ALGORITHM(S) must match what we offered
        try:
            algorithm = self._algorithm(msg)
        except _BadRequest as exc:
            return _bad_request(str(exc))

        # step 4: the user, by name or by USERHASH, in our realm
        if realm_attr.value != self.realm:
            return self._credential_failure(client, now, "wrong realm")
        username = (
            username_attr.value
            if username_attr is not None
            else self._user_for_hash(userhash_attr)
        )
        if username is None:
            return self._credential_failure(client, now, "unknown USERHASH")
        candidates = self._candidate_keys(username, algorithm)
        if not candidates:
            return self._credential_failure(client, now, "unknown user")

        # step 5: the MAC, SHA-256 when present (verify_integrity prefers it)
        key = next((k for k in candidates if verify_integrity(msg, k)), None)
        if key is None:
            return self._credential_failure(client, now, "message integrity mismatch")

        # step 6: the nonce: stale gets 438 and a new one, foreign gets 401
        status = self.nonces.check(nonce, client, now)
        if status is NonceStatus.STALE:
            return AuthResult(
                ok=False,
                username=username,
                key=key,
                algorithm=algorithm,
                integrity=kind,
                error_code=ErrorCode.STALE_NONCE,
                attributes=self._challenge_attributes(client, now),
                detail="nonce stale",
            )
        if status is NonceStatus.INVALID:
            return self.challenge(client, now, detail="nonce invalid for this client")
        return AuthResult(
            ok=True, username=username, key=key, algorithm=algorithm, integrity=kind
        )

    def _algorithm(self, msg: Message) -> PasswordAlgorithm:
        """RFC 8489 §9.2.4 checks on PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM.

        Our nonces always carry the "password algorithms" feature bit, so the
        rules apply to every request that reaches here.
        """
        offered = msg.get(PasswordAlgorithms)
        chosen = msg.get(PasswordAlgorithmAttr)

        # neither present: the request is processed as though MD5 were chosen
        if offered is None and chosen is None:
            if PasswordAlgorithm.MD5 not in self.algorithms:
                raise _BadRequest("MD5 implied but not offered")
            return PasswordAlgorithm.MD5

        # both present, the list is the one we sent, the choice is in it
        if offered is None or chosen is None:
            raise _BadRequest("PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS")
        if offered.algorithms != self._offered.algorithms:
            raise _BadRequest("PASSWORD-ALGORITHMS differs from the one offered")
        entry = PasswordAlgorithmEntry(chosen.algorithm, chosen.parameters)
        if entry not in offered.algorithms:
            raise _BadRequest("PASSWORD-ALGORITHM is not one offered")
        return PasswordAlgorithm(chosen.algorithm)

    def _user_for_hash(self, attr: Userhash | None) -> str | None:
        return None if attr is None else self.keys.user_for_hash(attr.value, self.realm)

    def _candidate_keys(
        self, username: str, algorithm: PasswordAlgorithm
    ) -> Sequence[bytes]:
        if self._rotating is not None:
            return self._rotating.keys_for(username, self.realm, algorithm)
        key = self.keys.key_for(username, self.realm, algorithm)
        return () if key is None else (key,)

    def _credential_failure(
        self, client: ClientAddress, now: float, detail: str
    ) -> AuthResult:
        """RFC 8489 §9.2.4: 401 with REALM, NONCE and PASSWORD-ALGORITHMS."""
        return AuthResult(
            ok=False,
            error_code=ErrorCode.UNAUTHENTICATED,
            attributes=self._challenge_attributes(client, now),
            detail=detail,
            credential_failure=True,
        )

    def _challenge_attributes(
        self, client: ClientAddress, now: float
    ) -> tuple[Attribute, ...]:
        nonce = Nonce(self.nonces.issue(client, now))
        return (Realm(self.realm), nonce, self._offered)


def _bad_request(detail: str) -> AuthResult:
    """RFC 8489 §9.2.4: 400 without USERNAME, USERHASH, NONCE or REALM."""
    return AuthResult(ok=False, error_code=ErrorCode.BAD_REQUEST, detail=detail)
