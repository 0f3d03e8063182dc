"""From RFC 5780 test outcomes to RFC 4787 behaviours and classic names."""

import pytest

from natkit.nat.classify import (
    DEFAULT_KEEPALIVE,
    Behaviour,
    NatType,
    PortAllocation,
    PortSample,
    ServerMapping,
    classify_filtering,
    classify_mapping,
    classify_nat_type,
    classify_ports,
    mapping_from_servers,
    recommended_keepalive,
)
from natkit.nat.endpoint import Endpoint

EIM = Behaviour.ENDPOINT_INDEPENDENT
ADM = Behaviour.ADDRESS_DEPENDENT
APDM = Behaviour.ADDRESS_AND_PORT_DEPENDENT
UNDETERMINED = Behaviour.UNDETERMINED

M1 = Endpoint("203.0.113.1", 50000)
M2 = Endpoint("203.0.113.1", 50001)
M3 = Endpoint("203.0.113.1", 50002)


# --- RFC 5780 §4.3 mapping ----------------------------------------------------


def test_mapping_test_ii_same_is_endpoint_independent() -> None:
    verdict = classify_mapping(M1, M1, None)
    assert (verdict.behaviour, verdict.endpoint_independent) == (EIM, True)
    assert verdict.note is None


def test_mapping_test_iii_same_as_ii_is_address_dependent() -> None:
    verdict = classify_mapping(M1, M2, M2)
    assert (verdict.behaviour, verdict.endpoint_independent) == (ADM, False)


def test_mapping_test_iii_new_is_address_and_port_dependent() -> None:
    verdict = classify_mapping(M1, M2, M3)
    assert (verdict.behaviour, verdict.endpoint_independent) == (APDM, False)


def test_mapping_without_test_ii_is_undetermined() -> None:
    verdict = classify_mapping(M1, None, None)
    assert verdict.behaviour is UNDETERMINED
    assert verdict.endpoint_independent is None
    assert verdict.note


def test_mapping_without_test_iii_is_still_not_independent() -> None:
    verdict = classify_mapping(M1, M2, None)
    assert verdict.behaviour is UNDETERMINED
    assert verdict.endpoint_independent is False
    assert verdict.note


# --- mapping from plain servers -----------------------------------------------

S1 = Endpoint("198.51.100.1", 3478)
S1B = Endpoint("198.51.100.1", 3479)
S2 = Endpoint("198.51.100.2", 3478)


def test_servers_on_two_ips_same_mapping() -> None:
    verdict = mapping_from_servers([ServerMapping(S1, M1), ServerMapping(S2, M1)])
    assert (verdict.behaviour, verdict.endpoint_independent) == (EIM, True)


def test_servers_on_two_ips_different_mapping() -> None:
    verdict = mapping_from_servers([ServerMapping(S1, M1), ServerMapping(S2, M2)])
    assert verdict.behaviour is UNDETERMINED
    assert verdict.endpoint_independent is False
    assert verdict.note and "two servers on one IP" in verdict.note


def test_servers_two_ports_one_ip_tell_port_dependence() -> None:
    samples = [ServerMapping(S1, M1), ServerMapping(S1B, M2), ServerMapping(S2, M3)]
    verdict = mapping_from_servers(samples)
    assert (verdict.behaviour, verdict.endpoint_independent) == (APDM, False)


def test_servers_address_dependent() -> None:
    samples = [ServerMapping(S1, M1), ServerMapping(S1B, M1), ServerMapping(S2, M2)]
    verdict = mapping_from_servers(samples)
    assert (verdict.behaviour, verdict.endpoint_independent) == (ADM, False)


def test_servers_on_one_ip_same_mapping_is_undetermined() -> None:
    verdict = mapping_from_servers([ServerMapping(S1, M1), ServerMapping(S1B, M1)])
    assert verdict.behaviour is UNDETERMINED
    assert verdict.endpoint_independent is None
    assert verdict.note and "two IPs" in verdict.note


def test_one_server_is_undetermined() -> None:
    verdict = mapping_from_servers([ServerMapping(S1, M1)])
    assert verdict.behaviour is UNDETERMINED
    assert verdict.endpoint_independent is None
    assert verdict.note and "RFC 5780" in verdict.note


def test_inconsistent_servers_are_undetermined() -> None:
    samples = [ServerMapping(S1, M1), ServerMapping(S2, M1), ServerMapping(S1B, M2)]
    verdict = mapping_from_servers(samples)
    assert verdict.behaviour is UNDETERMINED
    assert verdict.endpoint_independent is None


# --- RFC 5780 §4.4 filtering --------------------------------------------------


@pytest.mark.parametrize(
    ("both", "port", "expected"),
    [
        (True, True, Behaviour.ENDPOINT_INDEPENDENT),
        (True, False, Behaviour.ENDPOINT_INDEPENDENT),
        (True, None, Behaviour.ENDPOINT_INDEPENDENT),
        (False, True, Behaviour.ADDRESS_DEPENDENT),
        (False, False, Behaviour.ADDRESS_AND_PORT_DEPENDENT),
        (None, True, Behaviour.UNDETERMINED),
        (None, False, Behaviour.UNDETERMINED),
        (False, None, Behaviour.UNDETERMINED),
    ],
)
def test_filtering(both: bool | None, port: bool | None, expected: Behaviour) -> None:
    assert classify_filtering(both, port) is expected


# --- classic names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("independent", "filtering", "expected"),
    [
        (True, Behaviour.ENDPOINT_INDEPENDENT, NatType.FULL_CONE),
        (True, Behaviour.ADDRESS_DEPENDENT, NatType.RESTRICTED_CONE),
        (True, Behaviour.ADDRESS_AND_PORT_DEPENDENT, NatType.PORT_RESTRICTED_CONE),
        (True, Behaviour.UNDETERMINED, NatType.UNDETERMINED),
        (False, Behaviour.ENDPOINT_INDEPENDENT, NatType.SYMMETRIC),
        (False, Behaviour.ADDRESS_AND_PORT_DEPENDENT, NatType.SYMMETRIC),
        (False, Behaviour.UNDETERMINED, NatType.SYMMETRIC),
        (None, Behaviour.ENDPOINT_INDEPENDENT, NatType.UNDETERMINED),
    ],
)
def test_nat_type(
    independent: bool | None, filtering: Behaviour, expected: NatType
) -> None:
    nat_type = classify_nat_type(
        blocked=False,
        is_open=False,
        endpoint_independent=independent,
        filtering=filtering,
    )
    assert nat_type is expected


def test_blocked_and_open() -> None:
    blocked = classify_nat_type(
        blocked=True, is_open=False, endpoint_independent=None, filtering=UNDETERMINED
    )
    assert blocked is NatType.UDP_BLOCKED
    opened = classify_nat_type(
        blocked=False, is_open=True, endpoint_independent=True, filtering=EIM
    )
    assert opened is NatType.OPEN


def test_enum_values_are_the_documented_strings() -> None:
    assert {b.value for b in Behaviour} == {
        "endpoint-independent",
        "address-dependent",
        "address-and-port-dependent",
        "undetermined",
    }
    assert {t.value for t in NatType} == {
        "open",
        "full-cone",
        "restricted-cone",
        "port-restricted-cone",
        "symmetric",
        "udp-blocked",
        "undetermined",
    }
    assert {p.value for p in PortAllocation} == {
        "preserving",
        "sequential",
        "random",
        "undetermined",
    }


# --- port allocation ----------------------------------------------------------


def samples(*pairs: tuple[str, int, int]) -> list[PortSample]:
    return [PortSample(socket, local, mapped) for socket, local, mapped in pairs]


def test_ports_preserved() -> None:
    verdict = classify_ports(samples(("a", 40000, 40000), ("b", 41234, 41234)))
    assert verdict.pattern is PortAllocation.PRESERVING
    assert verdict.notes == ()


def test_ports_preserved_per_socket_with_fallback_for_more_bindings() -> None:
    verdict = classify_ports(
        samples(("a", 40000, 40000), ("a", 40000, 61000), ("b", 41234, 41234))
    )
    assert verdict.pattern is PortAllocation.PRESERVING
    assert verdict.notes


def test_ports_sequential() -> None:
    verdict = classify_ports(
        samples(("a", 40000, 1030), ("b", 40100, 1031), ("c", 40200, 1033))
    )
    assert verdict.pattern is PortAllocation.SEQUENTIAL


def test_ports_sequential_downwards() -> None:
    verdict = classify_ports(
        samples(("a", 40000, 9000), ("b", 40100, 8998), ("c", 40200, 8996))
    )
    assert verdict.pattern is PortAllocation.SEQUENTIAL


def test_ports_random() -> None:
    verdict = classify_ports(
        samples(("a", 40000, 1030), ("b", 40100, 33000), ("c", 40200, 2000))
    )
    assert verdict.pattern is PortAllocation.RANDOM


def test_same_binding_seen_twice_counts_once() -> None:
    verdict = classify_ports(
        samples(("a", 40000, 1030), ("a", 40000, 1030), ("b", 40100, 1031))
    )
    assert verdict.pattern is PortAllocation.UNDETERMINED
    assert verdict.notes


def test_too_few_samples() -> None:
    assert classify_ports([]).pattern is PortAllocation.UNDETERMINED
    one = classify_ports(samples(("a", 40000, 40000)))
    assert one.pattern is PortAllocation.UNDETERMINED


def test_partly_preserved_is_not_called_preserving() -> None:
    verdict = classify_ports(
        samples(("a", 40000, 40000), ("b", 40100, 7), ("c", 40200, 30000))
    )
    assert verdict.pattern is PortAllocation.RANDOM
    assert any("1 of 3" in note for note in verdict.notes)


# --- keepalive ----------------------------------------------------------------


def test_keepalive_from_lifetime() -> None:
    assert recommended_keepalive(NatType.FULL_CONE, EIM, 30.0) == 24.0
    assert recommended_keepalive(NatType.SYMMETRIC, APDM, 0.5) == 1.0


def test_keepalive_for_a_very_short_binding() -> None:
    keepalive = recommended_keepalive(NatType.FULL_CONE, EIM, None, expires_within=1.0)
    assert keepalive == 0.5


def test_keepalive_default_without_lifetime() -> None:
    keepalive = recommended_keepalive(NatType.PORT_RESTRICTED_CONE, APDM, None)
    assert keepalive == DEFAULT_KEEPALIVE == 15.0
    assert recommended_keepalive(NatType.UNDETERMINED, UNDETERMINED, None) == 15.0


def test_no_keepalive_when_open_or_blocked() -> None:
    assert recommended_keepalive(NatType.OPEN, EIM, None) is None
    assert recommended_keepalive(NatType.UDP_BLOCKED, UNDETERMINED, None) is None
    # open but behind a stateful firewall: keep the filter state alive
    assert recommended_keepalive(NatType.OPEN, APDM, None) == 15.0
