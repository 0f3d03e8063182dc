"""Nomination and the selected pair (RFC 8445 §8), and the ICE state machine.

Regular nomination (RFC 8445 §8.1.1) is the only kind RFC 8445 keeps: the
controlling agent lets checks run, picks a valid pair and checks it again
with USE-CANDIDATE; when that check succeeds the pair is nominated and
selected. The controlled agent nominates the pair a USE-CANDIDATE request
arrived on once its own check on that pair has succeeded (RFC 8445
§7.3.1.5), and uses the highest-priority nominated pair.

:class:`Nominator` decides when the controlling agent nominates: at once if
no unfinished pair could beat the best valid pair, otherwise when
``delay`` seconds (0.2) have passed since the first valid pair appeared (a
short wait for a better pair, as RFC 8445 §8.1.1 allows). A relayed pair
waits longer (``relay_delay``, 2 s) unless both sides have finished
gathering and nothing better is pending: relaying costs the TURN server,
and a direct pair may be one late candidate away.

:class:`StateMachine` holds the :class:`IceState` and reports each change
as ``old -> new`` (DEBUG log and a :class:`StateChanged` event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from natkit.ice.checklist import CandidatePair, CheckList
from natkit.ice.events import IceEvent, IceState, StateChanged
from natkit.stun.errors import UsageError

__all__ = ["IceState", "Nominator", "StateMachine", "best_nominated"]

logger = logging.getLogger(__name__)

#: seconds the controlling agent waits for a better pair after the first valid one
DEFAULT_NOMINATION_DELAY = 0.2
#: the same wait when the best valid pair is relayed: a direct pair may need
#: a late server-reflexive candidate (a lost STUN request) to turn up
DEFAULT_RELAY_NOMINATION_DELAY = 2.0


class StateMachine:
    """The agent's :class:`IceState`; every change is an event."""

    def __init__(self, name: str, emit: Callable[[IceEvent], None]) -> None:
        self.name = name
        self.state = IceState.NEW
        self._emit = emit

    def set(self, new: IceState) -> bool:
        """Move to ``new``; False (and nothing emitted) if already there."""
        old = self.state
        if new is old:
            return False
        if old is IceState.CLOSED:
            raise UsageError(f"{self.name}: closed, cannot become {new.value}")
        logger.debug("%s: %s -> %s", self.name, old.value, new.value)
        self.state = new
        self._emit(StateChanged(old, new))
        return True


class Nominator:
    """When and what the controlling agent nominates (RFC 8445 §8.1.1)."""

    def __init__(
        self,
        delay: float = DEFAULT_NOMINATION_DELAY,
        relay_delay: float = DEFAULT_RELAY_NOMINATION_DELAY,
    ) -> None:
        if delay < 0 or relay_delay < 0:
            raise UsageError("nomination delays must not be negative")
        self.delay = delay
        self.relay_delay = max(delay, relay_delay)
        self.first_valid_at: float | None = None
        #: the pair whose USE-CANDIDATE check is under way
        self.in_flight: CandidatePair | None = None

    def reset(self) -> None:
        self.first_valid_at = None
        self.in_flight = None

    def saw_valid(self, now: float) -> None:
        """A valid pair exists: the wait for a better one starts (once)."""
        if self.first_valid_at is None:
            self.first_valid_at = now

    def deadline(self, checklist: CheckList) -> float | None:
        """When :meth:`choose` should be asked again (None: no need)."""
        if self.in_flight is not None or self.first_valid_at is None:
            return None
        valid = checklist.valid_pairs()
        if not valid:
            return None
        return self.first_valid_at + self._wait(valid[0])

    def _wait(self, best: CandidatePair) -> float:
        return self.relay_delay if best.is_relayed else self.delay

    def choose(
        self, checklist: CheckList, now: float, *, gathered: bool = True
    ) -> CandidatePair | None:
        """The valid pair to nominate now, or None to keep waiting.

        The best valid pair is nominated at once when no pair still being
        checked has a higher priority (for a relayed pair, only once both
        sides have also signalled end-of-candidates: ``gathered``);
        otherwise once ``delay`` (``relay_delay`` for a relayed pair) has
        passed since the first valid pair appeared.
        """
        if self.in_flight is not None:
            return None
        valid = checklist.valid_pairs()
        if not valid:
            return None
        best = valid[0]
        self.saw_valid(now)
        pending_better = any(
            p.priority > best.valid_priority
            for p in checklist.unresolved()
            if p is not best
        )
        unbeatable = not pending_better and (gathered or not best.is_relayed)
        first = self.first_valid_at if self.first_valid_at is not None else now
        if not unbeatable and now < first + self._wait(best):
            return None
        self.in_flight = best
        return best

    def failed(self, pair: CandidatePair) -> None:
        """The USE-CANDIDATE check on ``pair`` failed: choose again later."""
        if self.in_flight is pair:
            self.in_flight = None


def best_nominated(checklist: CheckList) -> CandidatePair | None:
    """RFC 8445 §8.1.1: of the nominated valid pairs, the highest-priority one."""
    nominated = [p for p in checklist.valid_pairs() if p.nominated]
    return nominated[0] if nominated else None
