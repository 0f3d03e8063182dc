"""Time-limited TURN credentials from a shared secret ("TURN REST API").

The scheme of draft-uberti-behave-turn-rest-00 that coturn implements as
``use-auth-secret``: a web service that shares a secret with the TURN server
hands a client

- username ``"<expiry unix time>:<user>"`` (or only ``"<expiry unix time>"``),
- password ``base64(HMAC-SHA1(secret, username))``,

and the TURN server checks them without any per-user state. Several secrets
may be valid at once, so a secret can be rotated without cutting off the
credentials already handed out. HMAC-SHA256 can replace HMAC-SHA1 where both
sides agree (SHA-1 stays the default because coturn and its clients use it).

The password then serves as the long-term password of RFC 8489 §9.2.2:
:class:`RestSecretKeys` derives the MD5 or SHA-256 key from it.
"""

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from natkit.stun import integrity
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import UsageError

#: RFC 8489 §14.3: USERNAME is fewer than 509 bytes
_MAX_USERNAME_BYTES = 508


class RestHmac(Enum):
    """The HMAC that turns a REST username into its password."""

    #: what coturn's use-auth-secret and its clients use
    SHA1 = "sha1"
    SHA256 = "sha256"


@dataclass(frozen=True, slots=True)
class Credential:
    """A minted time-limited credential; ``expires_at`` is unix time."""

    username: str
    password: str = field(repr=False)
    expires_at: int
    ttl: int


@dataclass(frozen=True, slots=True)
class RestUsername:
    """A parsed REST username: expiry time and the user part ("" if none)."""

    expires_at: int
    user: str


def _secret_bytes(secret: bytes | str) -> bytes:
    data = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not data:
        raise UsageError("REST secret must not be empty")
    return data


def parse_rest_username(username: str) -> RestUsername | None:
    """``"<expiry>:<user>"`` or ``"<expiry>"``; None if it is not that shape.

    The expiry is the decimal part before the first colon; the user part may
    contain colons.
    """
    stamp, _, user = username.partition(":")
    if not stamp or not stamp.isascii() or not stamp.isdigit():
        return None
    return RestUsername(int(stamp), user)


def rest_password(
    secret: bytes | str, username: str, hmac_algorithm: RestHmac = RestHmac.SHA1
) -> str:
    """``base64(HMAC(secret, username))``, the password of a REST username."""
    digest = hashlib.sha1 if hmac_algorithm is RestHmac.SHA1 else hashlib.sha256
    mac = hmac.new(_secret_bytes(secret), username.encode("utf-8"), digest).digest()
    return base64.b64encode(mac).decode("ascii")


def mint(
    user: str,
    ttl_s: float,
    secret: bytes | str,
    now: float,
    *,
    hmac_algorithm: RestHmac = RestHmac.SHA1,
) -> Credential:
    """A credential for ``user`` valid from ``now`` for ``ttl_s`` seconds.

    An empty ``user`` gives a bare-expiry username. Raises UsageError for a
    non-positive TTL or a username too long for USERNAME (RFC 8489 §14.3).
    """
    if ttl_s <= 0:
        raise UsageError(f"TTL must be positive, got {ttl_s}")
    ttl = int(ttl_s)
    if ttl < 1:
        raise UsageError("TTL must be at least one second")
    expires_at = int(now) + ttl
    username = f"{expires_at}:{user}" if user else str(expires_at)
    if len(username.encode("utf-8")) > _MAX_USERNAME_BYTES:
        raise UsageError(f"username longer than {_MAX_USERNAME_BYTES} bytes")
    password = rest_password(secret, username, hmac_algorithm)
    return Credential(username, password, expires_at, ttl)


def is_current(username: str, now: float, *, max_ttl_s: float | None = None) -> bool:
    """Is ``username`` a REST username that has not expired at ``now``?

    A credential is valid while ``now < expires_at``. With ``max_ttl_s``,
    one that expires further than that in the future is refused too.
    """
    parsed = parse_rest_username(username)
    if parsed is None or now >= parsed.expires_at:
        return False
    return max_ttl_s is None or parsed.expires_at - now <= max_ttl_s


def verify_password(
    username: str,
    password: str,
    secrets: Sequence[bytes | str],
    now: float,
    *,
    hmac_algorithm: RestHmac = RestHmac.SHA1,
    max_ttl_s: float | None = None,
) -> bool:
    """Check a REST username/password pair against each of ``secrets``."""
    if not is_current(username, now, max_ttl_s=max_ttl_s):
        return False
    given = password.encode("utf-8")
    return any(
        hmac.compare_digest(
            rest_password(s, username, hmac_algorithm).encode("ascii"), given
        )
        for s in secrets
    )


class RestSecretKeys:
    """A :class:`~natkit.turn.auth.KeyLookup` for REST credentials.

    For a current REST username it derives, per secret, the password and from
    it the long-term key of RFC 8489 §9.2.2 (``realm`` and the algorithm
    asked for). ``secrets`` are tried in order, newest first by convention;
    :meth:`keys_for` gives one key per secret so rotation works.
    ``clock()`` returns unix time. USERHASH cannot name a REST user (the hash
    hides the expiry the key depends on), so :meth:`user_for_hash` always
    returns None.
    """

    __slots__ = ("_secrets", "clock", "hmac_algorithm", "max_ttl_s")

    def __init__(
        self,
        secrets: Sequence[bytes | str],
        *,
        clock: Callable[[], float],
        hmac_algorithm: RestHmac = RestHmac.SHA1,
        max_ttl_s: float | None = None,
    ) -> None:
        self._secrets: tuple[bytes, ...] = ()
        self.set_secrets(secrets)
        self.clock = clock
        self.hmac_algorithm = hmac_algorithm
        self.max_ttl_s = max_ttl_s

    def set_secrets(self, secrets: Sequence[bytes | str]) -> None:
        """Replace the secrets (rotation); at least one is needed."""
        if not secrets:
            raise UsageError("at least one REST secret is needed")
        self._secrets = tuple(_secret_bytes(s) for s in secrets)

    def keys_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> tuple[bytes, ...]:
        if not is_current(username, self.clock(), max_ttl_s=self.max_ttl_s):
            return ()
        return tuple(
            self._derive(secret, username, realm, algorithm) for secret in self._secrets
        )

    def key_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> bytes | None:
        if not is_current(username, self.clock(), max_ttl_s=self.max_ttl_s):
            return None
        return self._derive(self._secrets[0], username, realm, algorithm)

    def user_for_hash(self, userhash: bytes, realm: str) -> str | None:
        return None

    def _derive(
        self, secret: bytes, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> bytes:
        password = rest_password(secret, username, self.hmac_algorithm)
        return integrity.long_term_key(username, realm, password, algorithm)
