"""ICE candidates (RFC 8445 §5.1): types, priorities, foundations, redundancy.

A :class:`Candidate` is what travels in signalling (RFC 8839 ``candidate:``
lines, see :mod:`natkit.ice.sdp`) plus, for our own candidates, the base it
is sent from. A :class:`LocalCandidate` adds the opaque socket id the driver
gave it: the agent never sees a socket, it says "send from socket X".

Priorities follow RFC 8445 §5.1.2.1; local preferences rank interfaces and
address families the way RFC 8421 §4 suggests (IPv6 before IPv4 on one
interface, link-local and transitional addresses last); foundations follow
RFC 8445 §5.1.1.3.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import UsageError

#: RFC 8445 §5.1.2.1: the largest local preference
MAX_LOCAL_PREFERENCE = 0xFFFF
#: RFC 8445 §5.1.2.1: components are numbered 1-256
MAX_COMPONENT = 256
#: RFC 8839 §5.1: a foundation is 1-32 ice-chars
MAX_FOUNDATION = 32
#: RFC 8445 §5.1.2.1 gives 2^31 - 1 as the top; PRIORITY is 32 bits on the wire
MAX_PRIORITY = 0xFFFFFFFF
#: RFC 8839 §5.1: ice-char = ALPHA / DIGIT / "+" / "/"
ICE_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)

#: one socket of the driver (a UDP socket, or a TURN allocation)
SocketId = str


class CandidateType(StrEnum):
    """RFC 8445 §5.1.1: how a candidate was obtained (its SDP ``typ``)."""

    HOST = "host"
    SERVER_REFLEXIVE = "srflx"
    PEER_REFLEXIVE = "prflx"
    RELAYED = "relay"

    @property
    def is_reflexive(self) -> bool:
        return self in (CandidateType.SERVER_REFLEXIVE, CandidateType.PEER_REFLEXIVE)


class TypePreference(IntEnum):
    """RFC 8445 §5.1.2.2: the recommended type preferences."""

    HOST = 126
    PEER_REFLEXIVE = 110
    SERVER_REFLEXIVE = 100
    RELAYED = 0


TYPE_PREFERENCE: dict[CandidateType, int] = {
    CandidateType.HOST: TypePreference.HOST,
    CandidateType.PEER_REFLEXIVE: TypePreference.PEER_REFLEXIVE,
    CandidateType.SERVER_REFLEXIVE: TypePreference.SERVER_REFLEXIVE,
    CandidateType.RELAYED: TypePreference.RELAYED,
}


def candidate_priority(
    type_preference: int, local_preference: int, component: int
) -> int:
    """RFC 8445 §5.1.2.1: 2^24 × type + 2^8 × local + (256 - component)."""
    if not 0 <= type_preference <= 126:
        raise UsageError(f"type preference must be 0-126, not {type_preference}")
    if not 0 <= local_preference <= MAX_LOCAL_PREFERENCE:
        raise UsageError(f"local preference must be 0-65535, not {local_preference}")
    check_component(component)
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


def priority_for(
    kind: CandidateType,
    *,
    local_preference: int = MAX_LOCAL_PREFERENCE,
    component: int = 1,
) -> int:
    """:func:`candidate_priority` with the type preference of ``kind``."""
    return candidate_priority(TYPE_PREFERENCE[kind], local_preference, component)


def local_preference_of(priority: int) -> int:
    """The local preference bits of an RFC 8445 §5.1.2.1 priority."""
    return (priority >> 8) & 0xFFFF


def check_component(component: int) -> None:
    if not 1 <= component <= MAX_COMPONENT:
        raise UsageError(f"component id must be 1-256, not {component}")


# --- local preference (RFC 8445 §5.1.2.2, RFC 8421 §4) -----------------------


class AddressRank(IntEnum):
    """How an address ranks on one interface (RFC 8421 §4, RFC 6724 ideas)."""

    IPV6_GLOBAL = 0
    IPV4 = 1
    IPV6_UNIQUE_LOCAL = 2
    IPV4_LINK_LOCAL = 3
    IPV6_LINK_LOCAL = 4
    TRANSITIONAL = 5


#: each interface gets a block of local preferences this wide
_INTERFACE_BLOCK = 1024
_RANK_STEP = 128
#: the most interfaces :func:`local_preference` can tell apart
MAX_INTERFACES = (MAX_LOCAL_PREFERENCE + 1) // _INTERFACE_BLOCK


def address_rank(ip: str) -> AddressRank:
    """Where ``ip`` sorts among the addresses of one interface."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        return (
            AddressRank.IPV4_LINK_LOCAL if address.is_link_local else AddressRank.IPV4
        )
    if address.ipv4_mapped or address.teredo or address.sixtofour:
        return AddressRank.TRANSITIONAL
    if address.is_link_local:
        return AddressRank.IPV6_LINK_LOCAL
    if address in ipaddress.ip_network("fc00::/7"):
        return AddressRank.IPV6_UNIQUE_LOCAL
    return AddressRank.IPV6_GLOBAL


def local_preference(ip: str, *, interface_index: int = 0) -> int:
    """RFC 8445 §5.1.2.2: the local preference of a host address.

    Interface 0 (the preferred one) gets the highest block; within an
    interface, a global IPv6 address comes before IPv4, which comes before
    unique-local and link-local addresses, as RFC 8421 §4 recommends so that
    both families are tried early. Relayed and reflexive candidates take the
    local preference of their base (RFC 8445 §5.1.2.2).
    """
    if not 0 <= interface_index < MAX_INTERFACES:
        raise UsageError(
            f"interface index must be 0-{MAX_INTERFACES - 1}, not {interface_index}"
        )
    rank = address_rank(Endpoint(ip, 0).ip)
    return MAX_LOCAL_PREFERENCE - interface_index * _INTERFACE_BLOCK - rank * _RANK_STEP


def is_link_local(ip: str) -> bool:
    """IPv4 169.254/16 or IPv6 fe80::/10 (RFC 8445 §6.1.2.2 keeps them apart)."""
    return ipaddress.ip_address(ip).is_link_local


def same_family(a: Endpoint, b: Endpoint) -> bool:
    return a.is_ipv6 == b.is_ipv6


# --- foundations (RFC 8445 §5.1.1.3) -----------------------------------------


def compute_foundation(
    kind: CandidateType,
    base_ip: str,
    *,
    server: str | None = None,
    transport: str = "udp",
) -> str:
    """RFC 8445 §5.1.1.3: equal for the same type, base IP, server and transport.

    ``server`` is the STUN or TURN server's IP (None for host and
    peer-reflexive candidates). The value is 8 hex digits (ice-chars) of a
    hash, so two agents that never talk still agree on what is "the same".
    """
    text = "|".join(
        (kind.value, Endpoint(base_ip, 0).ip, server or "", transport.lower())
    )
    return hashlib.blake2s(text.encode(), digest_size=4).hexdigest()


def check_foundation(foundation: str) -> None:
    if not 1 <= len(foundation) <= MAX_FOUNDATION or not set(foundation) <= ICE_CHARS:
        raise UsageError(f"foundation must be 1-32 ice-chars, not {foundation!r}")


def is_transport_token(text: str) -> bool:
    """RFC 8839 §5.1 ``transport``: "UDP" or an extension token (letters,
    digits, hyphens)."""
    return bool(text) and text.isascii() and text.replace("-", "").isalnum()


#: names the ``candidate:`` grammar reserves (RFC 8839 §5.1)
RESERVED_NAMES = frozenset(("raddr", "rport"))


# --- records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extension:
    """An RFC 8839 §5.1 ``cand-extension``: a name and a value, both tokens."""

    name: str
    value: str

    def __post_init__(self) -> None:
        for part in (self.name, self.value):
            if not part or any(ch.isspace() for ch in part):
                raise UsageError(
                    f"extension parts must be non-empty, no spaces: {part!r}"
                )
        if self.name in RESERVED_NAMES:
            raise UsageError(f"{self.name} is not an extension attribute")


@dataclass(frozen=True, slots=True)
class Candidate:
    """An ICE candidate (RFC 8445 §5.1), local or remote.

    ``address`` is the transport address; ``related`` the RFC 8839 ``raddr``/
    ``rport`` (the base of a reflexive candidate, the mapped address of a
    relayed one). ``base`` is only known for our own candidates (RFC 8445
    §5.1.1: the address the agent sends from; for host and relayed
    candidates the candidate itself). ``extensions`` keep every other
    name/value pair of the ``candidate:`` line, in order (``generation``,
    ``ufrag``, ``network-id``...).
    """

    type: CandidateType
    address: Endpoint
    priority: int
    foundation: str
    component: int = 1
    transport: str = "udp"
    related: Endpoint | None = None
    base: Endpoint | None = None
    extensions: tuple[Extension, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", CandidateType(self.type))
        check_foundation(self.foundation)
        check_component(self.component)
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise UsageError(f"priority must fit 32 bits, not {self.priority}")
        if not is_transport_token(self.transport):
            raise UsageError(f"bad transport {self.transport!r}")
        object.__setattr__(self, "transport", self.transport.lower())

    def __str__(self) -> str:
        return f"{self.type.value} {self.address} (prio {self.priority})"

    @property
    def is_udp(self) -> bool:
        return self.transport == "udp"

    @property
    def generation(self) -> int | None:
        """The ``generation`` extension (RFC 8840 predecessors), if numeric."""
        value = self.extension("generation")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def ufrag(self) -> str | None:
        """The ``ufrag`` extension (RFC 8840 §4.2 trickled candidates)."""
        return self.extension("ufrag")

    def extension(self, name: str) -> str | None:
        for ext in self.extensions:
            if ext.name == name:
                return ext.value
        return None

    @property
    def sending_base(self) -> Endpoint:
        """Where datagrams for this candidate are sent from (RFC 8445 §5.1.1)."""
        return self.base if self.base is not None else self.address

    # --- builders for local candidates -----------------------------------

    @classmethod
    def host(
        cls,
        address: Endpoint,
        *,
        component: int = 1,
        interface_index: int = 0,
        local_preference: int | None = None,
    ) -> Candidate:
        """RFC 8445 §5.1.1.1: a host candidate (its own base)."""
        pref = (
            local_preference
            if local_preference is not None
            else _local_pref(address.ip, interface_index)
        )
        return cls(
            type=CandidateType.HOST,
            address=address,
            priority=priority_for(
                CandidateType.HOST, local_preference=pref, component=component
            ),
            foundation=compute_foundation(CandidateType.HOST, address.ip),
            component=component,
            base=address,
        )

    @classmethod
    def server_reflexive(
        cls, address: Endpoint, *, base: Candidate, server: Endpoint
    ) -> Candidate:
        """RFC 8445 §5.1.1.2: the mapped address a STUN server saw from ``base``."""
        return cls._derived(CandidateType.SERVER_REFLEXIVE, address, base, server.ip)

    @classmethod
    def peer_reflexive(
        cls, address: Endpoint, *, base: Candidate, priority: int
    ) -> Candidate:
        """RFC 8445 §7.2.5.3.1: a local address learned from a check response."""
        derived = cls._derived(CandidateType.PEER_REFLEXIVE, address, base, None)
        return _replace_priority(derived, priority)

    @classmethod
    def relayed(
        cls,
        address: Endpoint,
        *,
        server: Endpoint,
        mapped: Endpoint | None = None,
        component: int = 1,
        local_preference: int = MAX_LOCAL_PREFERENCE,
    ) -> Candidate:
        """RFC 8445 §5.1.1.2: a TURN relayed address (its own base).

        ``mapped`` (the XOR-MAPPED-ADDRESS of the Allocate response) becomes
        ``raddr``/``rport``; the foundation uses the relay's IP and the
        server's (RFC 8445 §5.1.1.3).
        """
        return cls(
            type=CandidateType.RELAYED,
            address=address,
            priority=priority_for(
                CandidateType.RELAYED,
                local_preference=local_preference,
                component=component,
            ),
            foundation=compute_foundation(
                CandidateType.RELAYED, address.ip, server=server.ip
            ),
            component=component,
            related=mapped,
            base=address,
        )

    @classmethod
    def _derived(
        cls,
        kind: CandidateType,
        address: Endpoint,
        base: Candidate,
        server: str | None,
    ) -> Candidate:
        base_address = base.sending_base
        return cls(
            type=kind,
            address=address,
            priority=priority_for(
                kind,
                local_preference=local_preference_of(base.priority),
                component=base.component,
            ),
            foundation=compute_foundation(kind, base_address.ip, server=server),
            component=base.component,
            related=base_address,
            base=base_address,
        )


def _local_pref(ip: str, interface_index: int) -> int:
    return local_preference(ip, interface_index=interface_index)


def _replace_priority(candidate: Candidate, priority: int) -> Candidate:
    return Candidate(
        type=candidate.type,
        address=candidate.address,
        priority=priority,
        foundation=candidate.foundation,
        component=candidate.component,
        transport=candidate.transport,
        related=candidate.related,
        base=candidate.base,
        extensions=candidate.extensions,
    )


@dataclass(frozen=True, slots=True)
class LocalCandidate:
    """One of our candidates and the driver's socket it is sent from."""

    candidate: Candidate
    socket: SocketId

    @property
    def is_base(self) -> bool:
        """A host or relayed candidate: it is its own base (RFC 8445 §5.1.1)."""
        return self.candidate.address == self.candidate.sending_base

    @property
    def component(self) -> int:
        return self.candidate.component

    def __str__(self) -> str:
        return f"{self.candidate} via {self.socket}"


def is_redundant(candidate: Candidate, others: list[Candidate]) -> bool:
    """RFC 8445 §5.1.3: same address and same base as a candidate at least as
    good (higher priority, or equal and listed earlier)."""
    return any(
        other.address == candidate.address
        and other.sending_base == candidate.sending_base
        and other.component == candidate.component
        and other.transport == candidate.transport
        and other.priority >= candidate.priority
        for other in others
    )


def eliminate_redundant(candidates: list[Candidate]) -> list[Candidate]:
    """RFC 8445 §5.1.3: drop candidates redundant with a higher-priority one.

    A server-reflexive candidate equal to its host base (no NAT) goes; so
    does the second of two identical ones. Order is otherwise kept.
    """
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].priority)
    kept: list[Candidate] = []
    survivors: set[int] = set()
    for index in order:
        if not is_redundant(candidates[index], kept):
            kept.append(candidates[index])
            survivors.add(index)
    return [c for i, c in enumerate(candidates) if i in survivors]
