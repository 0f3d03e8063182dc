"""The ICE checklist (RFC 8445 §6.1.2 - §6.1.4): pairs, states, scheduling.

One :class:`CheckList` per data stream (natkit runs one). Local candidates
are paired with remote candidates of the same component and address family
(§6.1.2.2; an IPv6 link-local address only with another link-local one);
reflexive local candidates are replaced by their base and redundant pairs
pruned (§6.1.2.4), so every pair is identified by the socket it is sent
from and the remote address (:class:`PairKey`). The list keeps at most
``max_pairs`` pairs (§6.1.2.5), dropping the lowest-priority unchecked ones.

Scheduling (§6.1.4.2): the triggered-check queue first, then the
highest-priority Waiting pair, then a Frozen pair whose foundation has
nothing Waiting or In-Progress. New pairs start Waiting when no pair of
their foundation is Waiting or In-Progress, Frozen otherwise (§6.1.2.6,
and RFC 8838 §10 for pairs trickled in later); a success unfreezes the
pairs of the same foundation (§7.2.5.3.3).

A pair also carries what the checks taught: the valid pair built from it
(§7.2.5.3.2, the local candidate matching the mapped address, which may be
peer-reflexive) and the nominated flag (§8.1.1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from natkit.ice.candidate import (
    Candidate,
    CandidateType,
    LocalCandidate,
    SocketId,
    is_link_local,
    same_family,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import UsageError

#: RFC 8445 §6.1.2.5: an implementation should limit the checklist (100 is usual)
DEFAULT_MAX_PAIRS = 100


class PairState(Enum):
    """RFC 8445 §6.1.2.6: the state of one candidate pair."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ChecklistState(Enum):
    """RFC 8445 §6.1.2.1: the state of the checklist as a whole."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


_UNRESOLVED = (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: 2^32 × MIN(G, D) + 2 × MAX(G, D) + (G > D ? 1 : 0).

    ``controlling`` (G) is the priority of the controlling agent's candidate,
    ``controlled`` (D) that of the controlled agent's.
    """
    g, d = controlling, controlled
    return (1 << 32) * min(g, d) + 2 * max(g, d) + (1 if g > d else 0)


def can_pair(local: Candidate, remote: Candidate) -> bool:
    """RFC 8445 §6.1.2.2: same component, transport and address family; an
    IPv6 (or IPv4) link-local address pairs only with another link-local one."""
    return (
        local.component == remote.component
        and local.transport == remote.transport == "udp"
        and same_family(local.address, remote.address)
        and is_link_local(local.address.ip) == is_link_local(remote.address.ip)
    )


@dataclass(frozen=True, slots=True, order=True)
class PairKey:
    """What makes two pairs redundant (RFC 8445 §6.1.2.4): same base, same remote."""

    socket: SocketId
    remote: Endpoint
    component: int


class CandidatePair:
    """One local × remote pair and what its checks found.

    ``local`` is the base candidate the check is sent from (host or relayed);
    ``valid_local``, once a check succeeded, is the local candidate of the
    valid pair (RFC 8445 §7.2.5.3.2): the one whose address is the mapped
    address. ``nominated`` is the valid pair's nominated flag;
    ``remote_nominated`` says the peer sent USE-CANDIDATE before our own
    check succeeded (RFC 8445 §7.3.1.5); ``nominate_next`` makes the next
    check carry USE-CANDIDATE (RFC 8445 §8.1.1).
    """

    __slots__ = (
        "local",
        "remote",
        "priority",
        "state",
        "nominated",
        "remote_nominated",
        "nominate_next",
        "valid_local",
        "valid_priority",
        "_controlling",
    )

    def __init__(
        self, local: LocalCandidate, remote: Candidate, *, controlling: bool
    ) -> None:
        self.local = local
        self.remote = remote
        self.state = PairState.FROZEN
        self.nominated = False
        self.remote_nominated = False
        self.nominate_next = False
        self.valid_local: LocalCandidate | None = None
        self.priority = 0
        self.valid_priority = 0
        self._controlling = controlling
        self.set_role(controlling)

    def __repr__(self) -> str:
        return (
            f"<CandidatePair {self.local.candidate.type.value} {self.local.socket} -> "
            f"{self.remote.type.value} {self.remote.address} {self.state.value}>"
        )

    @property
    def key(self) -> PairKey:
        return PairKey(self.local.socket, self.remote.address, self.remote.component)

    @property
    def foundation(self) -> str:
        """RFC 8445 §6.1.2.6: the local and the remote foundation together."""
        return f"{self.local.candidate.foundation}:{self.remote.foundation}"

    @property
    def component(self) -> int:
        return self.local.component

    @property
    def is_valid(self) -> bool:
        return self.valid_local is not None

    @property
    def is_relayed(self) -> bool:
        """Either end is a TURN relayed candidate."""
        local = self.valid_local or self.local
        return CandidateType.RELAYED in (local.candidate.type, self.remote.type)

    def set_role(self, controlling: bool) -> None:
        """Recompute the priorities for our role (RFC 8445 §6.1.2.3, §7.2.5.1)."""
        self._controlling = controlling
        self.priority = self._priority(self.local.candidate)
        if self.valid_local is not None:
            self.valid_priority = self._priority(self.valid_local.candidate)

    def make_valid(self, local: LocalCandidate) -> None:
        """RFC 8445 §7.2.5.3.2: the valid pair is ``local`` × our remote."""
        self.valid_local = local
        self.valid_priority = self._priority(local.candidate)

    def invalidate(self) -> None:
        self.valid_local = None
        self.valid_priority = 0
        self.nominated = False

    def _priority(self, local: Candidate) -> int:
        mine, theirs = local.priority, self.remote.priority
        if self._controlling:
            return pair_priority(mine, theirs)
        return pair_priority(theirs, mine)


class CheckList:
    """The candidate pairs of one data stream and their scheduling.

    ``controlling`` is the agent's role, which decides pair priorities; call
    :meth:`set_role` when it changes.
    """

    def __init__(
        self, *, controlling: bool, max_pairs: int = DEFAULT_MAX_PAIRS
    ) -> None:
        if max_pairs < 1:
            raise UsageError(f"max_pairs must be at least 1, not {max_pairs}")
        self.controlling = controlling
        self.max_pairs = max_pairs
        self.state = ChecklistState.RUNNING
        self._pairs: dict[PairKey, CandidatePair] = {}
        self._triggered: deque[CandidatePair] = deque()

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[CandidatePair]:
        """The pairs, highest priority first (RFC 8445 §6.1.2.3)."""
        return iter(self.pairs())

    def pairs(self) -> list[CandidatePair]:
        return sorted(self._pairs.values(), key=_by_priority)

    def get(self, key: PairKey) -> CandidatePair | None:
        return self._pairs.get(key)

    def find(self, socket: SocketId, remote: Endpoint) -> CandidatePair | None:
        """The pair sent from ``socket`` to ``remote`` (any component)."""
        for pair in self._pairs.values():
            if pair.local.socket == socket and pair.remote.address == remote:
                return pair
        return None

    # --- building the list ---------------------------------------------------

    def add(self, local: LocalCandidate, remote: Candidate) -> CandidatePair | None:
        """Pair ``local`` (a base candidate) with ``remote``; None if not added.

        RFC 8445 §6.1.2.4: a pair redundant with one at least as good is
        pruned; a better one replaces an unchecked lower-priority pair.
        """
        if not local.is_base:
            raise UsageError(f"pairs are formed from base candidates, not {local}")
        if not can_pair(local.candidate, remote):
            return None
        pair = CandidatePair(local, remote, controlling=self.controlling)
        existing = self._pairs.get(pair.key)
        if existing is not None:
            if existing.priority >= pair.priority or existing.state not in (
                PairState.FROZEN,
                PairState.WAITING,
            ):
                return None
            self._remove(existing)
        pair.state = self._initial_state(pair)
        self._pairs[pair.key] = pair
        self._enforce_limit()
        return pair if pair.key in self._pairs else None

    def add_all(
        self, locals_: Iterable[LocalCandidate], remotes: Iterable[Candidate]
    ) -> list[CandidatePair]:
        """Form every pair of ``locals_`` × ``remotes``, best first (§6.1.2.6)."""
        candidates = [
            CandidatePair(local, remote, controlling=self.controlling)
            for local in locals_
            for remote in remotes
        ]
        added: list[CandidatePair] = []
        for pair in sorted(candidates, key=_by_priority):
            new = self.add(pair.local, pair.remote)
            if new is not None:
                added.append(new)
        return [p for p in added if p.key in self._pairs]

    def _initial_state(self, pair: CandidatePair) -> PairState:
        """Waiting unless a pair of the same foundation is Waiting or In-Progress."""
        for other in self._pairs.values():
            if other.foundation == pair.foundation and other.state in (
                PairState.WAITING,
                PairState.IN_PROGRESS,
            ):
                return PairState.FROZEN
        return PairState.WAITING

    def _enforce_limit(self) -> None:
        """RFC 8445 §6.1.2.5: drop the lowest-priority pairs not yet checked."""
        excess = len(self._pairs) - self.max_pairs
        if excess <= 0:
            return
        droppable = [
            p
            for p in reversed(self.pairs())
            if p.state in (PairState.FROZEN, PairState.WAITING)
        ]
        for pair in droppable[:excess]:
            self._remove(pair)

    def _remove(self, pair: CandidatePair) -> None:
        self._pairs.pop(pair.key, None)
        if pair in self._triggered:
            self._triggered.remove(pair)

    def set_role(self, controlling: bool) -> None:
        self.controlling = controlling
        for pair in self._pairs.values():
            pair.set_role(controlling)

    # --- scheduling ------------------------------------------------------------

    def trigger(self, pair: CandidatePair) -> None:
        """RFC 8445 §7.3.1.4: queue a triggered check (once), set Waiting."""
        if pair.key not in self._pairs:
            raise UsageError(f"{pair!r} is not in this checklist")
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.WAITING
        if pair not in self._triggered:
            self._triggered.append(pair)

    def next_pair(self) -> CandidatePair | None:
        """RFC 8445 §6.1.4.2: the pair to check now, or None."""
        if self.state is not ChecklistState.RUNNING:
            return None

        # step 1: the triggered-check queue
        while self._triggered:
            pair = self._triggered.popleft()
            if pair.key in self._pairs:
                return pair

        # step 2: the best Waiting pair; failing that, unfreeze per foundation
        ordered = self.pairs()
        waiting = [p for p in ordered if p.state is PairState.WAITING]
        if not waiting:
            self._unfreeze_one_per_foundation(ordered)
            waiting = [p for p in ordered if p.state is PairState.WAITING]
        return waiting[0] if waiting else None

    def _unfreeze_one_per_foundation(self, ordered: list[CandidatePair]) -> None:
        busy = {
            p.foundation
            for p in ordered
            if p.state in (PairState.WAITING, PairState.IN_PROGRESS)
        }
        for pair in ordered:
            if pair.state is PairState.FROZEN and pair.foundation not in busy:
                pair.state = PairState.WAITING
                busy.add(pair.foundation)

    def unfreeze(self, foundation: str) -> None:
        """RFC 8445 §7.2.5.3.3: Frozen pairs of ``foundation`` become Waiting."""
        for pair in self._pairs.values():
            if pair.foundation == foundation and pair.state is PairState.FROZEN:
                pair.state = PairState.WAITING

    def has_work(self) -> bool:
        """Whether :meth:`next_pair` could return something."""
        if self.state is not ChecklistState.RUNNING:
            return False
        if any(p.key in self._pairs for p in self._triggered):
            return True
        busy: set[str] = set()
        frozen: set[str] = set()
        for pair in self._pairs.values():
            if pair.state is PairState.WAITING:
                return True
            if pair.state is PairState.IN_PROGRESS:
                busy.add(pair.foundation)
            elif pair.state is PairState.FROZEN:
                frozen.add(pair.foundation)
        return bool(frozen - busy)

    def unresolved(self) -> list[CandidatePair]:
        """Pairs whose checks have not concluded (Frozen, Waiting, In-Progress)."""
        return [p for p in self.pairs() if p.state in _UNRESOLVED]

    def valid_pairs(self) -> list[CandidatePair]:
        """RFC 8445 §7.2.5.3.2: the valid list, highest priority first."""
        return sorted(
            (p for p in self._pairs.values() if p.is_valid),
            key=lambda p: (-p.valid_priority, p.key),
        )

    def concluded(self) -> bool:
        """No pair is left to check (all Succeeded or Failed)."""
        return not self.unresolved() and not self._triggered

    def complete(self) -> None:
        """RFC 8445 §8.1.2: stop checking: nominated pairs exist."""
        self.state = ChecklistState.COMPLETED
        self._triggered.clear()
        for pair in self._pairs.values():
            if pair.state in (PairState.FROZEN, PairState.WAITING):
                pair.state = PairState.FAILED

    def fail(self) -> None:
        self.state = ChecklistState.FAILED
        self._triggered.clear()


def _by_priority(pair: CandidatePair) -> tuple[int, PairKey]:
    return (-pair.priority, pair.key)
