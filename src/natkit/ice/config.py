"""Settings of the ICE agent (RFC 8445 §14, RFC 7675 §5.1)."""

from __future__ import annotations

from dataclasses import dataclass

from natkit.ice.checklist import DEFAULT_MAX_PAIRS
from natkit.ice.consent import (
    CONSENT_INTERVAL,
    CONSENT_POLICY,
    CONSENT_TIMEOUT,
    DISCONNECT_AFTER,
    KEEPALIVE_INTERVAL,
    check_timers,
)
from natkit.ice.nomination import (
    DEFAULT_NOMINATION_DELAY,
    DEFAULT_RELAY_NOMINATION_DELAY,
)
from natkit.stun.errors import UsageError
from natkit.stun.transaction import RetransmitPolicy

#: RFC 8445 §14.2: the default pacing interval Ta, in seconds
DEFAULT_TA = 0.02
#: connectivity-check retransmissions: RTO 200 ms, 7 sends, given up
#: 0.2 × 63 + 8 × 0.2 = 14.2 s after the first. RFC 8445 §14.3 computes the
#: RTO from Ta and the number of pairs (at least 500 ms); a fixed, shorter
#: one lets a dead pair fail in 14 s instead of 39.5 s.
CHECK_POLICY = RetransmitPolicy(rto=0.2, rc=7, rm=8)


@dataclass(frozen=True, slots=True)
class IceConfig:
    """Agent settings; the defaults follow RFC 8445 §14 and RFC 7675 §5.1.

    ``nomination_delay``: how long the controlling agent waits, after the
    first valid pair, for a better one still being checked;
    ``relay_nomination_delay`` when that pair is relayed. Consent checks
    come every ``consent_interval`` (0.8-1.2 × randomised) seconds; consent
    is lost after ``consent_timeout`` without a response, and the agent is
    DISCONNECTED after ``disconnect_after``. ``consent_interval=None`` turns
    consent off; Binding indications every ``keepalive_interval`` (Tr,
    RFC 8445 §11) then keep NAT bindings open.
    """

    check_policy: RetransmitPolicy = CHECK_POLICY
    max_pairs: int = DEFAULT_MAX_PAIRS
    nomination_delay: float = DEFAULT_NOMINATION_DELAY
    relay_nomination_delay: float = DEFAULT_RELAY_NOMINATION_DELAY
    consent_interval: float | None = CONSENT_INTERVAL
    consent_timeout: float = CONSENT_TIMEOUT
    disconnect_after: float = DISCONNECT_AFTER
    keepalive_interval: float = KEEPALIVE_INTERVAL
    consent_policy: RetransmitPolicy = CONSENT_POLICY
    software: str | None = None

    def __post_init__(self) -> None:
        if self.max_pairs < 1:
            raise UsageError(f"max_pairs must be at least 1, not {self.max_pairs}")
        if self.nomination_delay < 0 or self.relay_nomination_delay < 0:
            raise UsageError("nomination delays must not be negative")
        check_timers(
            self.consent_interval,
            self.consent_timeout,
            self.disconnect_after,
            self.keepalive_interval,
        )
