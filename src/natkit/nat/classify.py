"""Turning RFC 5780 test outcomes into behaviour names, pure functions.

The vocabulary is RFC 4787's: mapping and filtering are each
endpoint-independent, address-dependent or address-and-port-dependent
(RFC 4787 §4.1, §5). The classic names of RFC 3489 §5 (full cone,
restricted cone, port-restricted cone, symmetric) are derived from the two,
as RFC 5780 §1 relates them. Whatever the tests could not establish is
``undetermined``, with a reason in the notes; nothing is guessed.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from natkit.nat.endpoint import Endpoint


class Behaviour(StrEnum):
    """A NAT's mapping or filtering behaviour (RFC 4787 §4.1 and §5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNDETERMINED = "undetermined"


class NatType(StrEnum):
    """The classic NAT names (RFC 3489 §5), from mapping and filtering."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "udp-blocked"
    UNDETERMINED = "undetermined"


class PortAllocation(StrEnum):
    """How the NAT picks external ports (RFC 4787 §4.2.1 port preservation)."""

    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    UNDETERMINED = "undetermined"


#: RFC 8445 §11: the default keepalive interval Tr, when nothing is measured.
DEFAULT_KEEPALIVE = 15.0
#: consecutive new external ports at most this far apart count as sequential
SEQUENTIAL_MAX_STEP = 16
#: fraction of a measured binding lifetime used as the keepalive interval
KEEPALIVE_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class MappingVerdict:
    """Mapping behaviour, whether it is endpoint-independent, and why not known.

    ``endpoint_independent`` can be known (False: a symmetric NAT) even when
    ``behaviour`` is undetermined because address-dependent and
    address-and-port-dependent could not be told apart.
    """

    behaviour: Behaviour
    endpoint_independent: bool | None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ServerMapping:
    """One server's view of the same local socket: where it was sent, what came
    back as XOR-MAPPED-ADDRESS (fallback mapping test without RFC 5780)."""

    server: Endpoint
    mapped: Endpoint


@dataclass(frozen=True, slots=True)
class PortSample:
    """One binding the NAT created: which local socket, its local port and the
    external port, in the order the NAT allocated them."""

    socket: str
    local_port: int
    mapped_port: int


@dataclass(frozen=True, slots=True)
class PortVerdict:
    pattern: PortAllocation
    notes: tuple[str, ...] = ()


def classify_mapping(
    test1: Endpoint, test2: Endpoint | None, test3: Endpoint | None
) -> MappingVerdict:
    """RFC 5780 §4.3: compare the mapped addresses of tests I, II and III.

    Test II went to the alternate IP and primary port: the same mapping as
    test I means endpoint-independent mapping. Otherwise test III went to the
    alternate IP and port: the same mapping as test II means
    address-dependent, a different one address-and-port-dependent.
    """
    if test2 is None:
        return MappingVerdict(
            Behaviour.UNDETERMINED,
            None,
            "mapping: no response from the alternate address (test II)",
        )
    if test2 == test1:
        return MappingVerdict(Behaviour.ENDPOINT_INDEPENDENT, True)
    if test3 is None:
        return MappingVerdict(
            Behaviour.UNDETERMINED,
            False,
            "mapping depends on the destination, but the alternate address "
            "and port did not answer (test III)",
        )
    if test3 == test2:
        return MappingVerdict(Behaviour.ADDRESS_DEPENDENT, False)
    return MappingVerdict(Behaviour.ADDRESS_AND_PORT_DEPENDENT, False)


def mapping_from_servers(samples: Sequence[ServerMapping]) -> MappingVerdict:
    """Mapping behaviour from several plain STUN servers (no RFC 5780).

    The same local socket asked each server for its mapped address. Two
    servers on different IPs that saw the same mapping rule out any
    destination-dependent mapping; different mappings rule out
    endpoint-independent mapping. Two servers on one IP with different ports
    tell address-dependent from address-and-port-dependent.
    """
    if len(samples) < 2:
        return MappingVerdict(
            Behaviour.UNDETERMINED,
            None,
            "mapping: the server does not support RFC 5780 (no OTHER-ADDRESS) "
            "and no second server answered; give more servers to compare",
        )

    # step 1: pairs on different IPs say whether the mapping is independent
    other_ip = [
        (a, b)
        for i, a in enumerate(samples)
        for b in samples[i + 1 :]
        if a.server.ip != b.server.ip
    ]
    same_ip = [
        (a, b)
        for i, a in enumerate(samples)
        for b in samples[i + 1 :]
        if a.server.ip == b.server.ip and a.server.port != b.server.port
    ]
    differs = any(
        a.mapped != b.mapped for i, a in enumerate(samples) for b in samples[i + 1 :]
    )
    if any(a.mapped == b.mapped for a, b in other_ip):
        if differs:
            return MappingVerdict(
                Behaviour.UNDETERMINED,
                None,
                "mapping: the servers saw inconsistent mapped addresses",
            )
        return MappingVerdict(Behaviour.ENDPOINT_INDEPENDENT, True)

    # step 2: same IP, different ports
    if any(a.mapped != b.mapped for a, b in same_ip):
        return MappingVerdict(Behaviour.ADDRESS_AND_PORT_DEPENDENT, False)
    if other_ip and same_ip:
        return MappingVerdict(Behaviour.ADDRESS_DEPENDENT, False)
    if other_ip:
        return MappingVerdict(
            Behaviour.UNDETERMINED,
            False,
            "mapping depends on the destination; telling address-dependent from "
            "address-and-port-dependent needs two servers on one IP",
        )
    if same_ip:
        return MappingVerdict(
            Behaviour.UNDETERMINED,
            None,
            "mapping does not depend on the server port; telling "
            "endpoint-independent from address-dependent needs servers on two IPs",
        )
    return MappingVerdict(
        Behaviour.UNDETERMINED,
        None,
        "mapping: every answer came from the same server address",
    )


def classify_filtering(change_both: bool | None, change_port: bool | None) -> Behaviour:
    """RFC 5780 §4.4: which of the changed-address responses got through.

    ``change_both`` is test II (response from the alternate IP and port),
    ``change_port`` test III (primary IP, alternate port); each True when a
    response arrived, False when none did, None when the test was not
    conclusive.
    """
    if change_both:
        return Behaviour.ENDPOINT_INDEPENDENT
    if change_both is None or change_port is None:
        return Behaviour.UNDETERMINED
    if change_port:
        return Behaviour.ADDRESS_DEPENDENT
    return Behaviour.ADDRESS_AND_PORT_DEPENDENT


def classify_nat_type(
    *,
    blocked: bool,
    is_open: bool,
    endpoint_independent: bool | None,
    filtering: Behaviour,
) -> NatType:
    """The RFC 3489 §5 name from RFC 4787 behaviours (RFC 5780 §1).

    Full cone is endpoint-independent mapping and filtering, restricted cone
    adds address-dependent filtering, port-restricted cone
    address-and-port-dependent filtering; any other mapping is symmetric.
    """
    if blocked:
        return NatType.UDP_BLOCKED
    if is_open:
        return NatType.OPEN
    if endpoint_independent is False:
        return NatType.SYMMETRIC
    if endpoint_independent is None:
        return NatType.UNDETERMINED
    return {
        Behaviour.ENDPOINT_INDEPENDENT: NatType.FULL_CONE,
        Behaviour.ADDRESS_DEPENDENT: NatType.RESTRICTED_CONE,
        Behaviour.ADDRESS_AND_PORT_DEPENDENT: NatType.PORT_RESTRICTED_CONE,
        Behaviour.UNDETERMINED: NatType.UNDETERMINED,
    }[filtering]


def classify_ports(samples: Sequence[PortSample]) -> PortVerdict:
    """Port allocation from the bindings seen, in allocation order.

    Preserving (RFC 4787 §4.2.1): the first binding of every socket kept its
    local port. Sequential: each new external port is a small step (at most
    :data:`SEQUENTIAL_MAX_STEP`, same direction) from the previous one.
    Random: neither. At least two sockets are needed to call ports
    preserved, three distinct bindings to call them sequential or random.
    """
    unique: list[PortSample] = []
    for sample in samples:
        if all(sample.mapped_port != u.mapped_port for u in unique):
            unique.append(sample)
    firsts: dict[str, PortSample] = {}
    for sample in unique:
        firsts.setdefault(sample.socket, sample)

    # step 1: port preservation, judged on each socket's first binding
    preserved = [s for s in firsts.values() if s.mapped_port == s.local_port]
    if len(firsts) >= 2 and len(preserved) == len(firsts):
        notes: tuple[str, ...] = ()
        if len(unique) > len(firsts):
            notes = (
                "ports: each socket's first binding kept its local port; further "
                "bindings of the same socket got other ports",
            )
        return PortVerdict(PortAllocation.PRESERVING, notes)

    # step 2: sequential or random, judged on all distinct bindings
    if len(unique) < 3:
        return PortVerdict(
            PortAllocation.UNDETERMINED,
            (f"ports: only {len(unique)} distinct binding(s) seen, need 3",),
        )
    steps = [b.mapped_port - a.mapped_port for a, b in itertools.pairwise(unique)]
    mixed: tuple[str, ...] = ()
    if preserved:
        mixed = (f"ports: {len(preserved)} of {len(firsts)} sockets kept their port",)
    same_sign = all(s > 0 for s in steps) or all(s < 0 for s in steps)
    if same_sign and all(abs(s) <= SEQUENTIAL_MAX_STEP for s in steps):
        return PortVerdict(PortAllocation.SEQUENTIAL, mixed)
    return PortVerdict(PortAllocation.RANDOM, mixed)


def recommended_keepalive(
    nat_type: NatType,
    filtering: Behaviour,
    lifetime: float | None,
    *,
    expires_within: float | None = None,
) -> float | None:
    """Seconds between keepalives that keep a binding open, or None.

    A measured binding lifetime gives :data:`KEEPALIVE_FRACTION` of it (at
    least 1 s); a binding known only to expire within ``expires_within``
    seconds gives half of that; otherwise the RFC 8445 §11 default of 15 s.
    No NAT and no filtering needs none, and neither does a path where UDP is
    blocked.
    """
    if nat_type is NatType.UDP_BLOCKED:
        return None
    if nat_type is NatType.OPEN and filtering is Behaviour.ENDPOINT_INDEPENDENT:
        return None
    if lifetime is not None and lifetime > 0:
        return max(1.0, float(int(lifetime * KEEPALIVE_FRACTION)))
    if expires_within is not None and expires_within > 0:
        return expires_within / 2
    return DEFAULT_KEEPALIVE
