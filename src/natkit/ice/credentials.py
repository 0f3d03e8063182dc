"""ICE username fragments and passwords (RFC 8445 §5.3, RFC 8839 §5.4).

The ufrag needs at least 24 bits of randomness (4 ice-chars), the password
at least 128 bits (22 ice-chars); both are at most 256 characters. Each
ice-char carries 6 bits, so the defaults (8 and 24 characters) carry 48 and
144 bits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from natkit.ice.candidate import ICE_CHARS
from natkit.stun.errors import UsageError

MIN_UFRAG = 4
MIN_PWD = 22
MAX_CREDENTIAL = 256
DEFAULT_UFRAG_LENGTH = 8
DEFAULT_PWD_LENGTH = 24

_ALPHABET = "".join(sorted(ICE_CHARS))


@dataclass(frozen=True, slots=True)
class Credentials:
    """An ``ice-ufrag`` and ``ice-pwd`` pair; ``repr`` hides the password."""

    ufrag: str
    pwd: str

    def __post_init__(self) -> None:
        check_ice_string(self.ufrag, "ice-ufrag", MIN_UFRAG)
        check_ice_string(self.pwd, "ice-pwd", MIN_PWD)

    def __repr__(self) -> str:
        return f"Credentials(ufrag={self.ufrag!r}, pwd=<{len(self.pwd)} chars>)"

    @classmethod
    def generate(
        cls,
        *,
        ufrag_length: int = DEFAULT_UFRAG_LENGTH,
        pwd_length: int = DEFAULT_PWD_LENGTH,
    ) -> Credentials:
        """Fresh random credentials (RFC 8445 §5.3) from :mod:`secrets`."""
        return cls(random_ice_string(ufrag_length), random_ice_string(pwd_length))


def random_ice_string(length: int) -> str:
    if not 1 <= length <= MAX_CREDENTIAL:
        raise UsageError(f"length must be 1-{MAX_CREDENTIAL}, not {length}")
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def check_ice_string(value: str, what: str, minimum: int) -> None:
    """RFC 8839 §5.4: ``minimum``-256 ice-chars, else :class:`UsageError`."""
    if not minimum <= len(value) <= MAX_CREDENTIAL:
        raise UsageError(
            f"{what} must be {minimum}-{MAX_CREDENTIAL} characters, not {len(value)}"
        )
    if not set(value) <= ICE_CHARS:
        raise UsageError(f"{what} may hold only letters, digits, '+' and '/'")
