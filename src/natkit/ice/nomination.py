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
waits longer: ``relay_delay`` (1 s) and at least 0.5 s after the latest new
candidate once both sides have signalled end-of-candidates, 3 s before that;
at once if both have and nothing better is pending. Relaying costs the TURN
server, and a direct pair may be one late candidate away.

Not every better pair still being checked is worth waiting for
(:class:`LongShots`). When both agents have learned a public address (a
server-reflexive candidate, or a host candidate outside private and loopback
ranges) and no public address is common to both, the two agents sit behind
different NATs; a host-to-host pair toward a remote private address (RFC
1918, CGNAT, link-local, ULA) then aims into a network the local agent is
not on. And when the peer's checks arrive from another port of the IP of
its server-reflexive candidate, its NAT maps per destination (symmetric)
and that candidate's port only ever worked for the STUN server. The wait
ignores such long shots, so two NATed peers nominate their working pair at
once instead of waiting for checks that time out. Peers behind one NAT
share its public address, so their host pairs are waited for and still win.

:class:`StateMachine` holds the :class:`IceState` and reports each change
as ``old -> new`` (DEBUG log and a :class:`StateChanged` event).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence

from natkit.ice.candidate import Candidate, CandidateType
from natkit.ice.checklist import CandidatePair, CheckList
from natkit.ice.events import IceEvent, IceState, StateChanged
from natkit.stun.errors import UsageError

__all__ = [
    "IceState",
    "Nominator",
    "StateMachine",
    "LongShots",
    "best_nominated",
    "public_addresses",
]

logger = logging.getLogger(__name__)

#: seconds the controlling agent waits for a better pair after the first valid one
DEFAULT_NOMINATION_DELAY = 0.2
#: the same wait when the best valid pair is relayed: a direct pair may need
#: a late server-reflexive candidate (a lost STUN request) to turn up
DEFAULT_RELAY_NOMINATION_DELAY = 1.0
#: and a relayed pair waits at least this long after the latest new
#: candidate, ours or the peer's: its checks need a few round trips
RELAY_SETTLE = 0.5
#: until both sides have finished gathering (a STUN request may have been
#: lost and be retransmitted), a relayed pair waits this long instead
RELAY_GATHERING_WAIT = 3.0


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
        #: when the latest new candidate (local or remote) turned up
        self.last_candidate_at: float | None = None
        #: the pair whose USE-CANDIDATE check is under way
        self.in_flight: CandidatePair | None = None

    def reset(self) -> None:
        self.first_valid_at = None
        self.in_flight = None

    def saw_candidate(self, now: float) -> None:
        """A new local or remote candidate: a relayed pair waits for its checks."""
        self.last_candidate_at = now

    def saw_valid(self, now: float) -> None:
        """A valid pair exists: the wait for a better one starts (once)."""
        if self.first_valid_at is None:
            self.first_valid_at = now

    def deadline(self, checklist: CheckList, *, gathered: bool = True) -> float | None:
        """When :meth:`choose` should be asked again (None: no need)."""
        if self.in_flight is not None or self.first_valid_at is None:
            return None
        valid = checklist.valid_pairs()
        if not valid:
            return None
        return self._ready_at(valid[0], self.first_valid_at, gathered)

    def _ready_at(
        self, best: CandidatePair, first_valid_at: float, gathered: bool
    ) -> float:
        """When ``best`` is nominated if nothing better turns up by then."""
        if not best.is_relayed:
            return first_valid_at + self.delay
        if not gathered:
            return first_valid_at + max(self.relay_delay, RELAY_GATHERING_WAIT)
        ready = first_valid_at + self.relay_delay
        if self.last_candidate_at is not None:
            ready = max(ready, self.last_candidate_at + RELAY_SETTLE)
        return ready

    def choose(
        self,
        checklist: CheckList,
        now: float,
        *,
        gathered: bool = True,
        ignore: Callable[[CandidatePair], bool] | None = None,
    ) -> CandidatePair | None:
        """The valid pair to nominate now, or None to keep waiting.

        The best valid pair is nominated at once when no pair still being
        checked has a higher priority (for a relayed pair, only once both
        sides have also signalled end-of-candidates: ``gathered``);
        otherwise once ``delay`` (``relay_delay`` for a relayed pair, and
        at least :data:`RELAY_SETTLE` after the latest new candidate;
        :data:`RELAY_GATHERING_WAIT` until ``gathered``) has
        passed since the first valid pair appeared. Pending pairs for which
        ``ignore`` is true (long shots) do not count as better.
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
            if p is not best and (ignore is None or not ignore(p))
        )
        unbeatable = not pending_better and (gathered or not best.is_relayed)
        first = self.first_valid_at if self.first_valid_at is not None else now
        if not unbeatable and now < self._ready_at(best, first, gathered):
            return None
        self.in_flight = best
        return best

    def failed(self, pair: CandidatePair) -> None:
        """The USE-CANDIDATE check on ``pair`` failed: choose again later."""
        if self.in_flight is pair:
            self.in_flight = None


#: networks that sit behind NATs: RFC 1918, shared CGNAT space (RFC 6598),
#: link-local and unique local IPv6 (RFC 4193)
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(text)
    for text in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


def _is_private(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in _PRIVATE_NETWORKS)


def _is_public(ip: str) -> bool:
    return not _is_private(ip) and not ipaddress.ip_address(ip).is_loopback


def public_addresses(candidates: Iterable[Candidate]) -> frozenset[str]:
    """The public IPs one agent's candidates show: server-reflexive
    addresses and host addresses outside private and loopback ranges."""
    found: set[str] = set()
    for candidate in candidates:
        ip = candidate.address.ip
        if candidate.type is CandidateType.SERVER_REFLEXIVE or (
            candidate.type is CandidateType.HOST and _is_public(ip)
        ):
            found.add(ip)
    return frozenset(found)


class LongShots:
    """The pending pairs the nomination wait does not wait for (module doc).

    Built from both agents' candidates; ``long_shots(pair)`` says whether
    ``pair`` is one:

    - a host-to-host pair toward a private remote address, when both agents
      showed public addresses and none in common: they are behind different
      NATs, so the address is not reachable from outside its network (a
      private local address toward a public one works: the NAT maps it);
    - a pair toward a server-reflexive candidate of an address whose checks
      came from another port (a peer-reflexive candidate with the same IP):
      the peer's NAT maps per destination (symmetric), so that port was
      opened for the STUN server only.
    """

    __slots__ = ("_apart", "_remapped")

    def __init__(self, local: Iterable[Candidate], remote: Sequence[Candidate]) -> None:
        mine, theirs = public_addresses(local), public_addresses(remote)
        self._apart = bool(mine and theirs and not mine & theirs)
        srflx = {c.address for c in remote if c.type is CandidateType.SERVER_REFLEXIVE}
        srflx_ips = {address.ip for address in srflx}
        self._remapped = frozenset(
            c.address.ip
            for c in remote
            if c.type is CandidateType.PEER_REFLEXIVE
            and c.address.ip in srflx_ips
            and c.address not in srflx
        )

    def __call__(self, pair: CandidatePair) -> bool:
        remote = pair.remote
        if remote.type is CandidateType.SERVER_REFLEXIVE:
            return remote.address.ip in self._remapped
        if not self._apart or remote.type is not CandidateType.HOST:
            return False
        local = pair.local.candidate
        return local.type is CandidateType.HOST and _is_private(remote.address.ip)


def best_nominated(checklist: CheckList) -> CandidatePair | None:
    """RFC 8445 §8.1.1: of the nominated valid pairs, the highest-priority one."""
    nominated = [p for p in checklist.valid_pairs() if p.nominated]
    return nominated[0] if nominated else None
