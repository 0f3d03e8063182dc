"""ICE candidates: RFC 8445 §5.1 priorities and foundations, RFC 8839 lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.ice.candidate import (
    ICE_CHARS,
    AddressRank,
    Candidate,
    CandidateType,
    Extension,
    LocalCandidate,
    address_rank,
    candidate_priority,
    compute_foundation,
    eliminate_redundant,
    local_preference,
    local_preference_of,
    priority_for,
)
from natkit.ice.credentials import Credentials, random_ice_string
from natkit.ice.sdp import (
    CandidateSyntaxError,
    format_candidate,
    format_credentials,
    is_end_of_candidates,
    parse_candidate,
    parse_credentials,
)
from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import UsageError

HOST = Endpoint("10.0.0.2", 40000)
MAPPED = Endpoint("203.0.113.7", 51000)
STUN = Endpoint("198.51.100.10", 3478)
TURN = Endpoint("198.51.100.30", 3478)
RELAYED = Endpoint("198.51.100.30", 50000)


# --- RFC 8445 §5.1.2 priorities -------------------------------------------------------


def test_priority_formula_rfc8445_5_1_2_1() -> None:
    # 2^24 * type preference + 2^8 * local preference + (256 - component)
    assert candidate_priority(126, 65535, 1) == 2130706431
    assert candidate_priority(100, 65535, 1) == (100 << 24) + (65535 << 8) + 255
    assert candidate_priority(0, 0, 256) == 0
    assert candidate_priority(110, 1000, 2) == (110 << 24) + (1000 << 8) + 254


def test_type_preferences_rfc8445_5_1_2_2() -> None:
    prio = {kind: priority_for(kind) for kind in CandidateType}
    assert (
        prio[CandidateType.HOST]
        > prio[CandidateType.PEER_REFLEXIVE]
        > prio[CandidateType.SERVER_REFLEXIVE]
        > prio[CandidateType.RELAYED]
    )
    assert prio[CandidateType.HOST] >> 24 == 126
    assert prio[CandidateType.PEER_REFLEXIVE] >> 24 == 110
    assert prio[CandidateType.SERVER_REFLEXIVE] >> 24 == 100
    assert prio[CandidateType.RELAYED] >> 24 == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [((127, 1, 1), "type preference"), ((1, 70000, 1), "local"), ((1, 1, 0), "1-256")],
)
def test_priority_ranges(args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        candidate_priority(*args)


def test_component_lowers_priority() -> None:
    one = priority_for(CandidateType.HOST, component=1)
    two = priority_for(CandidateType.HOST, component=2)
    assert one == two + 1


def test_local_preference_rfc8421_ordering() -> None:
    # one interface: global IPv6, then IPv4, then unique-local, then link-local
    v6 = local_preference("2001:db8::1")
    v4 = local_preference("192.0.2.1")
    ula = local_preference("fd00::1")
    ll6 = local_preference("fe80::1")
    assert v6 == 65535
    assert v6 > v4 > ula > ll6
    # the second interface sorts below every address of the first
    assert local_preference("2001:db8::2", interface_index=1) < ll6
    assert (
        local_preference_of(priority_for(CandidateType.HOST, local_preference=v4)) == v4
    )
    with pytest.raises(UsageError):
        local_preference("192.0.2.1", interface_index=64)


def test_address_ranks() -> None:
    assert address_rank("169.254.1.1") is AddressRank.IPV4_LINK_LOCAL
    assert address_rank("2002:c000:201::1") is AddressRank.TRANSITIONAL
    assert address_rank("2001:db8::1") is AddressRank.IPV6_GLOBAL


# --- RFC 8445 §5.1.1.3 foundations ----------------------------------------------------


def test_foundation_rules_rfc8445_5_1_1_3() -> None:
    host = Candidate.host(HOST)
    srflx = Candidate.server_reflexive(MAPPED, base=host, server=STUN)
    # same type, base IP, server and transport: the same foundation
    other_port = Candidate.host(Endpoint(HOST.ip, 40001))
    assert other_port.foundation == host.foundation
    again = Candidate.server_reflexive(
        Endpoint("203.0.113.7", 1), base=other_port, server=STUN
    )
    assert again.foundation == srflx.foundation
    # a different type, base, server or transport: different foundations
    assert srflx.foundation != host.foundation
    other_server = Candidate.server_reflexive(
        MAPPED, base=host, server=Endpoint("198.51.100.11", 3478)
    )
    assert other_server.foundation != srflx.foundation
    assert Candidate.host(Endpoint("10.0.0.3", 1)).foundation != host.foundation
    tcp = compute_foundation(CandidateType.HOST, HOST.ip, transport="tcp")
    assert tcp != host.foundation
    assert set(host.foundation) <= ICE_CHARS and len(host.foundation) <= 32


def test_builders() -> None:
    host = Candidate.host(HOST, component=2)
    assert host.base == HOST and host.component == 2
    srflx = Candidate.server_reflexive(MAPPED, base=host, server=STUN)
    assert srflx.base == HOST and srflx.related == HOST and srflx.component == 2
    assert local_preference_of(srflx.priority) == local_preference_of(host.priority)
    relay = Candidate.relayed(RELAYED, server=TURN, mapped=MAPPED)
    assert relay.base == RELAYED and relay.related == MAPPED
    assert relay.priority >> 24 == 0
    prflx = Candidate.peer_reflexive(MAPPED, base=host, priority=12345)
    assert prflx.priority == 12345 and prflx.type is CandidateType.PEER_REFLEXIVE
    assert LocalCandidate(host, "s").is_base
    assert not LocalCandidate(srflx, "s").is_base


def test_candidate_checks() -> None:
    with pytest.raises(UsageError, match="foundation"):
        Candidate(CandidateType.HOST, HOST, 1, "bad foundation")
    with pytest.raises(UsageError, match="32 bits"):
        Candidate(CandidateType.HOST, HOST, 1 << 32, "f")
    with pytest.raises(UsageError):
        Extension("a b", "c")


def test_redundant_candidates_rfc8445_5_1_3() -> None:
    public = Endpoint("203.0.113.50", 40000)
    host = Candidate.host(public)
    # no NAT: the server-reflexive candidate is the host candidate again
    srflx = Candidate.server_reflexive(public, base=host, server=STUN)
    natted = Candidate.server_reflexive(MAPPED, base=host, server=STUN)
    assert eliminate_redundant([srflx, host, natted]) == [host, natted]
    assert eliminate_redundant([host, host]) == [host]


# --- RFC 8839 candidate lines ---------------------------------------------------------


RFC8839_HOST = "candidate:1 1 UDP 2130706431 203.0.113.141 8998 typ host"
RFC8839_SRFLX = (
    "candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx "
    "raddr 203.0.113.141 rport 8998"
)
BROWSER = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 56143 typ srflx "
    "raddr 10.0.0.2 rport 56143 generation 0 ufrag Xu7f network-cost 999"
)


def test_rfc8839_examples() -> None:
    host = parse_candidate("a=" + RFC8839_HOST)
    assert host.type is CandidateType.HOST
    assert host.address == Endpoint("203.0.113.141", 8998)
    assert host.priority == 2130706431 and host.transport == "udp"
    assert format_candidate(host, transport_upper=True) == RFC8839_HOST
    srflx = parse_candidate(RFC8839_SRFLX)
    assert srflx.related == Endpoint("203.0.113.141", 8998)
    assert format_candidate(srflx, transport_upper=True) == RFC8839_SRFLX


def test_extensions_kept_in_order() -> None:
    cand = parse_candidate(BROWSER)
    assert cand.generation == 0 and cand.ufrag == "Xu7f"
    assert cand.extension("network-cost") == "999"
    assert format_candidate(cand) == BROWSER


def test_ipv6_and_tcp_candidates_parse() -> None:
    v6 = parse_candidate("candidate:3 1 udp 100 2001:db8::5 9 typ host")
    assert v6.address.is_ipv6
    tcp = parse_candidate("candidate:4 1 tcp 100 192.0.2.1 9 typ host tcptype active")
    assert tcp.transport == "tcp" and not tcp.is_udp
    assert tcp.extension("tcptype") == "active"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("foo:1 1 udp 1 192.0.2.1 1 typ host", "does not start"),
        ("candidate:1 1 udp 1 192.0.2.1 1 typ", "at least 8"),
        ("candidate:1 0 udp 1 192.0.2.1 1 typ host", "component"),
        ("candidate:1 1000 udp 1 192.0.2.1 1 typ host", "component"),
        ("candidate:1 1 udp x 192.0.2.1 1 typ host", "priority"),
        ("candidate:1 1 udp 99999999999 192.0.2.1 1 typ host", "priority"),
        ("candidate:1 1 udp 1 192.0.2.1 70000 typ host", "port"),
        ("candidate:1 1 udp 1 300.1.1.1 1 typ host", "not an IP"),
        ("candidate:1 1 udp 1 abc.local 1 typ host", "host name"),
        ("candidate:1 1 udp 1 192.0.2.1 1 type host", "'typ'"),
        ("candidate:1 1 udp 1 192.0.2.1 1 typ other", "unknown candidate type"),
        ("candidate:f_o 1 udp 1 192.0.2.1 1 typ host", "foundation"),
        ("candidate:1 1 udp 1 192.0.2.1 1 typ host raddr 1.2.3.4", "raddr and rport"),
        ("candidate:1 1 udp 1 192.0.2.1 1 typ host generation", "no value"),
        ("candidate:1 1 u:p 1 192.0.2.1 1 typ host", "transport"),
        (
            "candidate:1 1 udp 1 192.0.2.1 1 typ host raddr 1.2.3.4 rport 1 "
            "raddr 1.2.3.4 rport 1",
            "twice",
        ),
    ],
)
def test_malformed_lines(line: str, message: str) -> None:
    with pytest.raises(CandidateSyntaxError, match=message):
        parse_candidate(line)


def test_end_of_candidates() -> None:
    assert is_end_of_candidates("a=end-of-candidates")
    assert is_end_of_candidates("end-of-candidates\r\n")
    assert not is_end_of_candidates(RFC8839_HOST)


@given(st.text(max_size=200))
def test_parser_raises_only_its_error(text: str) -> None:
    try:
        parse_candidate(text)
    except CandidateSyntaxError:
        pass


_TOKENS = st.sampled_from(
    [
        "candidate:1",
        "candidate:ab+/",
        "1",
        "256",
        "udp",
        "UDP",
        "tcp",
        "2130706431",
        "192.0.2.1",
        "::1",
        "fe80::1%eth0",
        "8998",
        "65536",
        "typ",
        "host",
        "srflx",
        "relay",
        "raddr",
        "rport",
        "generation",
        "0",
        "x.local",
        "\u00e9",
    ]
)


@given(st.lists(_TOKENS, min_size=1, max_size=14))
def test_parser_token_soup(tokens: list[str]) -> None:
    try:
        cand = parse_candidate(" ".join(tokens))
    except CandidateSyntaxError:
        return
    assert parse_candidate(format_candidate(cand)) == cand


_ICE = st.text(alphabet="".join(sorted(ICE_CHARS)), min_size=1, max_size=32)
_IP = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).filter(
    lambda ip: not ip.startswith("::ffff:")
)
_ENDPOINT = st.builds(Endpoint, _IP, st.integers(0, 65535))
_EXT_PART = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8
).filter(lambda s: s not in ("raddr", "rport"))


@given(
    kind=st.sampled_from(list(CandidateType)),
    address=_ENDPOINT,
    priority=st.integers(0, (1 << 32) - 1),
    foundation=_ICE,
    component=st.integers(1, 256),
    related=st.none() | _ENDPOINT,
    extensions=st.lists(st.builds(Extension, _EXT_PART, _EXT_PART), max_size=3),
)
def test_round_trip(
    kind: CandidateType,
    address: Endpoint,
    priority: int,
    foundation: str,
    component: int,
    related: Endpoint | None,
    extensions: list[Extension],
) -> None:
    cand = Candidate(
        kind,
        address,
        priority,
        foundation,
        component=component,
        related=related,
        extensions=tuple(extensions),
    )
    assert parse_candidate(format_candidate(cand)) == cand


# --- RFC 8445 §5.3 credentials --------------------------------------------------------


def test_generated_credentials() -> None:
    creds = Credentials.generate()
    assert len(creds.ufrag) >= 4 and len(creds.pwd) >= 22
    assert set(creds.ufrag + creds.pwd) <= ICE_CHARS
    assert creds.pwd not in repr(creds)
    assert Credentials.generate() != creds
    assert len(random_ice_string(256)) == 256


@pytest.mark.parametrize(
    ("ufrag", "pwd"), [("abc", "x" * 22), ("abcd", "x" * 21), ("ab:d", "x" * 22)]
)
def test_bad_credentials(ufrag: str, pwd: str) -> None:
    with pytest.raises(UsageError):
        Credentials(ufrag, pwd)


def test_credential_lines() -> None:
    creds = Credentials.generate()
    assert parse_credentials(format_credentials(creds)) == creds
    with pytest.raises(CandidateSyntaxError, match="both"):
        parse_credentials(["a=ice-ufrag:abcd"])
    with pytest.raises(CandidateSyntaxError, match="22"):
        parse_credentials(["a=ice-ufrag:abcd", "a=ice-pwd:short"])
