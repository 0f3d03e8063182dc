"""Consent freshness (RFC 7675) and keepalives (RFC 8445 §11) on the selected pair.

Once a pair is selected, a :class:`ConsentSession` asks for a consent check
(an ordinary ICE Binding request on that pair, RFC 7675 §5.1) every
``interval`` seconds, randomised to 0.8-1.2 × the interval so peers do not
synchronise. Each authenticated success response renews consent; when none
has come for ``timeout`` (30 s) consent is lost and the agent must stop
sending (RFC 7675 §5.1). After ``disconnect_after`` seconds of silence the
pair is "stale" (the agent reports DISCONNECTED and returns to COMPLETED if
a response arrives).

Keepalives: RFC 8445 §11 wants a packet on the selected pair at least every
Tr = 15 s. Every consent request is such a packet (it is a Binding request
on the pair, sent at most 6 s apart), and so is any application data, so
the keepalive timer, which runs from the last packet sent, never fires
while consent checks run; with consent checks turned off
(``interval=None``) a Binding indication goes out every Tr seconds of
silence. Either way a NAT binding with a 30 s timeout stays open.
"""

from __future__ import annotations

import logging
import random

from natkit.ice.credentials import Credentials
from natkit.ice.events import SelectedPair
from natkit.stun.errors import UsageError
from natkit.stun.transaction import RetransmitPolicy

logger = logging.getLogger(__name__)

#: RFC 7675 §5.1: a consent check every 5 s (randomised 0.8-1.2 ×)
CONSENT_INTERVAL = 5.0
#: RFC 7675 §5.1: consent expires 30 s after the last response
CONSENT_TIMEOUT = 30.0
#: silence after which the agent reports DISCONNECTED
DISCONNECT_AFTER = 15.0
#: RFC 8445 §11: Tr, the keepalive interval (at least 15 s)
KEEPALIVE_INTERVAL = 15.0
#: RFC 7675 §5.1 lets consent transactions retransmit little: 0.5 s RTO, 3
#: sends, done 3.5 s later, before the next check is due
CONSENT_POLICY = RetransmitPolicy(rto=0.5, rc=3, rm=4)

_JITTER = (0.8, 1.2)


class ConsentSession:
    """Consent and keepalive timers of one selected pair (RFC 7675, RFC 8445 §11).

    ``local``/``remote`` are the credentials the pair was selected under: an
    ICE restart changes the agent's, but consent on the old pair keeps
    using these until a new pair takes over. ``priority`` is the PRIORITY
    the pair's checks carried.
    """

    def __init__(
        self,
        selected: SelectedPair,
        *,
        local: Credentials,
        remote: Credentials,
        priority: int,
        now: float,
        rng: random.Random,
        interval: float | None = CONSENT_INTERVAL,
        timeout: float = CONSENT_TIMEOUT,
        disconnect_after: float = DISCONNECT_AFTER,
        keepalive: float = KEEPALIVE_INTERVAL,
    ) -> None:
        check_timers(interval, timeout, disconnect_after, keepalive)
        self.selected = selected
        self.local = local
        self.remote = remote
        self.priority = priority
        self.interval = interval
        self.timeout = timeout
        self.disconnect_after = disconnect_after
        self.keepalive = keepalive
        self.last_response = now
        self.last_sent = now
        self.stale = False
        self._rng = rng
        self.next_check_at: float | None = None
        if interval is not None:
            self.next_check_at = now + self._spacing()

    def __repr__(self) -> str:
        return f"<ConsentSession {self.selected} stale={self.stale}>"

    def _spacing(self) -> float:
        if self.interval is None:
            raise UsageError("consent checks are off")
        return self.interval * self._rng.uniform(*_JITTER)

    # --- the timers -------------------------------------------------------

    @property
    def expires_at(self) -> float | None:
        """RFC 7675 §5.1: when consent runs out (None with consent checks off)."""
        if self.interval is None:
            return None
        return self.last_response + self.timeout

    def next_deadline(self) -> float:
        times = [self.last_sent + self.keepalive]
        if self.interval is not None:
            if self.next_check_at is not None:
                times.append(self.next_check_at)
            times.append(self.last_response + self.timeout)
            if not self.stale:
                times.append(self.last_response + self.disconnect_after)
        return min(times)

    def expired(self, now: float) -> bool:
        expires = self.expires_at
        return expires is not None and now >= expires

    def check_due(self, now: float) -> bool:
        """Whether a consent check is due; if so the next one is scheduled."""
        if self.next_check_at is None or now < self.next_check_at:
            return False
        self.next_check_at = now + self._spacing()
        return True

    def keepalive_due(self, now: float) -> bool:
        """RFC 8445 §11: nothing sent on the pair for Tr seconds."""
        return now >= self.last_sent + self.keepalive

    def went_stale(self, now: float) -> bool:
        """True once, when the silence first exceeds ``disconnect_after``."""
        if self.interval is None or self.stale:
            return False
        if now >= self.last_response + self.disconnect_after:
            self.stale = True
            return True
        return False

    # --- what happened -----------------------------------------------------

    def sent(self, now: float) -> None:
        """A packet (check, keepalive or data) left on the pair."""
        self.last_sent = max(self.last_sent, now)

    def responded(self, now: float) -> bool:
        """RFC 7675 §5.1: consent renewed; True if the pair was stale."""
        self.last_response = max(self.last_response, now)
        was_stale, self.stale = self.stale, False
        return was_stale

    def silent_for(self, now: float) -> float:
        return now - self.last_response


def check_timers(
    interval: float | None, timeout: float, disconnect_after: float, keepalive: float
) -> None:
    """The consent and keepalive settings make sense, else :class:`UsageError`."""
    if interval is not None and interval <= 0:
        raise UsageError(f"consent interval must be positive, not {interval}")
    if timeout <= 0 or disconnect_after <= 0 or keepalive <= 0:
        raise UsageError("consent timeout, disconnect delay and Tr must be positive")
    if interval is not None and not interval * _JITTER[1] < timeout:
        raise UsageError("consent checks must come more often than the timeout")
    if disconnect_after > timeout:
        raise UsageError("disconnect_after must not exceed the consent timeout")
