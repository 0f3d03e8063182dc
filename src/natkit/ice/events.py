"""What the ICE agent hands its driver: datagrams to send and events.

Every record is a frozen, slotted dataclass. :class:`Transmit` says "send
these bytes from socket X to address Y"; the socket is the opaque id the
driver gave the local candidate (a UDP socket, or a TURN allocation whose
client core wraps the bytes in Send indications or ChannelData).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from natkit.ice.candidate import Candidate, CandidateType, SocketId
from natkit.nat.endpoint import Endpoint


class IceState(Enum):
    """The agent's overall state (RFC 8445 §6.1.2.1, RFC 7675 §5.1).

    NEW: nothing checked yet. CHECKING: checks running, nothing valid yet.
    CONNECTED: a valid pair exists (data may flow) but none is nominated.
    COMPLETED: a pair is nominated and selected. DISCONNECTED: the selected
    pair's consent checks have gone unanswered for a while (it may come
    back). FAILED: every pair failed after both ends of candidates, or
    consent was lost. CLOSED: :meth:`IceAgent.close` was called.
    """

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    FAILED = "failed"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``data`` from the driver's socket ``socket`` to ``destination``."""

    socket: SocketId
    destination: Endpoint
    data: bytes


@dataclass(frozen=True, slots=True)
class SelectedPair:
    """The pair data goes over: our candidate, the peer's, and our socket.

    ``local`` is the local candidate of the valid pair (RFC 8445 §7.2.5.3.2),
    so it may be server- or peer-reflexive; datagrams leave from ``socket``,
    the socket of its base.
    """

    local: Candidate
    remote: Candidate
    socket: SocketId

    @property
    def is_relayed(self) -> bool:
        """Our end is a TURN relayed candidate, or the peer's is."""
        return CandidateType.RELAYED in (self.local.type, self.remote.type)

    def __str__(self) -> str:
        return f"{self.local} -> {self.remote} via {self.socket}"


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The agent moved from ``old`` to ``new``."""

    old: IceState
    new: IceState


@dataclass(frozen=True, slots=True)
class PairSelected:
    """RFC 8445 §8.1.1: a nominated pair is now the selected pair."""

    pair: SelectedPair


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Application data (not STUN) from a known remote address."""

    socket: SocketId
    source: Endpoint
    data: bytes


@dataclass(frozen=True, slots=True)
class ConsentLost:
    """RFC 7675 §5.1: no consent response for ``silent_for`` s; sending stopped."""

    pair: SelectedPair
    silent_for: float


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """RFC 8445 §7.2.5.1, §7.3.1.1: a role conflict made us switch."""

    controlling: bool


@dataclass(frozen=True, slots=True)
class CandidateLearned:
    """A peer-reflexive candidate (RFC 8445 §7.2.5.3.1 local, §7.3.1.3 remote)."""

    candidate: Candidate
    local: bool
    socket: SocketId


@dataclass(frozen=True, slots=True)
class PermissionNeeded:
    """A relayed candidate on ``socket`` will talk to ``ip``: install a TURN
    permission for it (RFC 8656 §9) before checks can pass."""

    socket: SocketId
    ip: str


IceEvent = (
    StateChanged
    | PairSelected
    | DataReceived
    | ConsentLost
    | RoleChanged
    | CandidateLearned
    | PermissionNeeded
)
