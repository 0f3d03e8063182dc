"""The one error tree of natkit's STUN layer.

``DecodeError`` says where decoding failed; ``StunProtocolError`` carries the
STUN error code that the server turns into an error response in one place.
"""


class NatkitError(Exception):
    """Base of every error natkit raises on purpose."""


class DecodeError(NatkitError):
    """Bytes that are not a valid STUN message (or attribute).

    ``offset`` is the byte position in the message where the problem was found.
    """

    def __init__(self, reason: str, offset: int = 0) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


class StunProtocolError(NatkitError):
    """A request that must be answered with a STUN error response."""

    def __init__(
        self,
        code: int,
        reason: str | None = None,
        *,
        unknown_attributes: tuple[int, ...] = (),
    ) -> None:
        from natkit.stun.constants import REASON_PHRASES

        self.code = code
        self.reason = reason or REASON_PHRASES.get(code, "Error")
        self.unknown_attributes = unknown_attributes
        super().__init__(f"{code} {self.reason}")


class UsageError(NatkitError):
    """The API was called in a way it does not support."""
