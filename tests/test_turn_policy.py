"""Peer address policy (RFC 8656 §21.1.4 network separation).

Pure function tests: addresses are only values passed to check(); nothing is
sent anywhere.
"""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.stun.errors import NatkitError
from natkit.turn.policy import (
    SPECIAL_RANGES,
    PeerPolicy,
    PolicyDecision,
    PolicyError,
    RangeKind,
    parse_peer_rule,
)

SERVER_V4 = "198.51.100.7"  # stands for the server's public address
SERVER_V6 = "2001:db8::7"


def _teredo(server: str, client: str) -> str:
    """RFC 4380 §4: 2001:0:<server>:<flags>:<~port>:<~client>."""
    server_bits = int(ipaddress.IPv4Address(server))
    client_bits = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    value = (0x20010000 << 96) | (server_bits << 64) | (0x8000 << 48)
    value |= (0x63BF << 32) | client_bits
    return str(ipaddress.IPv6Address(value))


DENIED_BY_DEFAULT = [
    "127.0.0.1",
    "0.0.0.0",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "fe80::1",
    "fc00::1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::127.0.0.1",
    _teredo("8.8.8.8", "127.0.0.1"),
    _teredo("10.1.2.3", "8.8.8.8"),
    _teredo("8.8.8.8", "10.9.8.7"),
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "64:ff9b:1::1",
    "100::1",
    "2001:2::1",
    "2001:db8::1",
    "3fff::1",
    "fec0::1",
    "ff02::1",
]


@pytest.mark.parametrize("ip", DENIED_BY_DEFAULT)
def test_special_address_denied_with_reason(ip: str) -> None:
    decision = PeerPolicy().check(ip, 3478)
    assert decision == PolicyDecision(False, decision.reason)
    assert "RFC" in decision.reason


@pytest.mark.parametrize(
    ("ip", "words"),
    [
        ("127.0.0.1", "loopback 127.0.0.0/8"),
        ("::ffff:127.0.0.1", "loopback 127.0.0.0/8"),
        ("::127.0.0.1", "loopback 127.0.0.0/8"),
        ("169.254.169.254", "cloud metadata"),
        ("100.64.0.1", "CGNAT"),
        ("64:ff9b::a9fe:a9fe", "NAT64 IPv4 169.254.169.254"),
        ("2002:7f00:1::", "6to4 IPv4 127.0.0.1"),
        (_teredo("8.8.8.8", "127.0.0.1"), "Teredo client IPv4 127.0.0.1"),
        (_teredo("10.1.2.3", "8.8.8.8"), "Teredo server IPv4 10.1.2.3"),
        ("255.255.255.255", "limited broadcast"),
    ],
)
def test_reason_names_the_range(ip: str, words: str) -> None:
    assert words in PeerPolicy().check(ip, 3478).reason


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        _teredo("8.8.8.8", "1.1.1.1"),
    ],
)
def test_public_addresses_allowed(ip: str) -> None:
    decision = PeerPolicy().check(ip, 3478)
    assert decision.allowed, decision.reason


def test_server_own_addresses_denied() -> None:
    policy = PeerPolicy(server_addresses=[SERVER_V4, SERVER_V6, "8.8.4.4"])
    for ip in (SERVER_V4, SERVER_V6, "8.8.4.4", "::ffff:8.8.4.4", "2002:808:404::"):
        decision = policy.check(ip, 3478)
        assert not decision.allowed, ip
        assert "8.8.4.4" in decision.reason or "server address" in decision.reason
    assert policy.check("8.8.4.5", 3478).allowed


def test_server_address_allowed_by_rule() -> None:
    policy = PeerPolicy(allow=["8.8.4.4"], server_addresses=["8.8.4.4"])
    assert policy.check("8.8.4.4", 3478).allowed


def test_allow_rule_overrides_builtin_and_deny() -> None:
    policy = PeerPolicy(allow=["10.1.0.0/16"], deny=["10.0.0.0/8"])
    allowed = policy.check("10.1.2.3", 5000)
    assert allowed == PolicyDecision(True, "allowed by rule 10.1.0.0/16")
    assert not policy.check("10.2.0.1", 5000).allowed
    assert "denied by rule 10.0.0.0/8" in policy.check("10.2.0.1", 5000).reason


def test_allow_rule_applies_to_embedded_and_mapped_forms() -> None:
    policy = PeerPolicy(allow=["10.0.0.0/8"])
    assert policy.check("::ffff:10.0.0.1", 5000).allowed
    assert policy.check("2002:a00:1::", 5000).allowed
    assert policy.check("64:ff9b::a00:1", 5000).allowed


def test_allow_rule_written_as_mapped_ipv6_matches_ipv4() -> None:
    policy = PeerPolicy(allow=["::ffff:10.0.0.0/104"])
    assert policy.check("10.3.3.3", 5000).allowed


def test_allow_range_in_coturn_syntax() -> None:
    policy = PeerPolicy(allow=["192.168.1.10-192.168.1.20"])
    assert policy.check("192.168.1.15", 5000).allowed
    assert not policy.check("192.168.1.21", 5000).allowed


def test_deny_rule_for_a_public_range() -> None:
    policy = PeerPolicy(deny=["8.8.8.0/24", "2606:4700::/32"])
    decision = policy.check("8.8.8.8", 53)
    assert decision == PolicyDecision(False, "denied by rule 8.8.8.0/24")
    assert not policy.check("2606:4700::1", 53).allowed
    assert not policy.check("::ffff:8.8.8.8", 53).allowed
    assert not policy.check("2002:808:808::", 53).allowed
    assert policy.check("8.8.4.4", 53).allowed


def test_relayed_address_of_another_allocation_is_reachable() -> None:
    relays = {(SERVER_V4, 50000), ("127.0.0.1", 50002)}
    policy = PeerPolicy(
        server_addresses=[SERVER_V4],
        relay_addresses_allowed=lambda ip, port: (ip, port) in relays,
    )
    assert policy.check(SERVER_V4, 50000).allowed
    assert policy.check("::ffff:" + SERVER_V4, 50000).allowed
    assert policy.check("127.0.0.1", 50002).allowed

    # only the exact pairs: other ports of the same IP stay denied
    assert not policy.check(SERVER_V4, 50001).allowed
    assert not policy.check(SERVER_V4, 3478).allowed
    assert not policy.check("127.0.0.1", 22).allowed


def test_relayed_exception_loses_to_explicit_deny() -> None:
    policy = PeerPolicy(
        deny=["127.0.0.0/8"], relay_addresses_allowed=lambda ip, port: True
    )
    assert not policy.check("127.0.0.1", 50000).allowed


def test_relayed_exception_not_through_embedded_forms() -> None:
    policy = PeerPolicy(relay_addresses_allowed=lambda ip, port: True)
    assert not policy.check("2002:7f00:1::", 50000).allowed


def test_relayed_predicate_not_called_for_public_peers() -> None:
    calls: list[tuple[str, int]] = []

    def relayed(ip: str, port: int) -> bool:
        calls.append((ip, port))
        return False

    policy = PeerPolicy(relay_addresses_allowed=relayed)
    policy.check("8.8.8.8", 1)
    assert calls == []
    policy.check("::ffff:127.0.0.1", 7)
    assert calls == [("127.0.0.1", 7)]


@pytest.mark.parametrize("port", [-1, 65536])
def test_bad_port_denied(port: int) -> None:
    assert not PeerPolicy().check("8.8.8.8", port).allowed


def test_port_zero_decides_on_the_ip_alone() -> None:
    # RFC 8656 §9.2: CreatePermission ignores the port, so 0 is a valid ask
    assert PeerPolicy().check("8.8.8.8", 0).allowed
    assert not PeerPolicy().check("127.0.0.1", 0).allowed
    relayed = PeerPolicy(
        server_addresses=["127.0.0.1"], relay_addresses_allowed=lambda ip, port: True
    )
    assert not relayed.check("127.0.0.1", 0).allowed


@pytest.mark.parametrize("ip", ["", "foo", "1.2.3", "01.2.3.4", "1.2.3.4/32", "::g"])
def test_not_an_address_denied_without_raising(ip: str) -> None:
    decision = PeerPolicy().check(ip, 3478)
    assert not decision.allowed
    assert "not an IP address" in decision.reason


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("10.0.0.0/33", "not a CIDR"),
        ("10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
        ("banana", "not a CIDR"),
        ("10.0.0.9-10.0.0.1", "first address is after the last"),
        ("10.0.0.1-::1", "mixes IPv4 and IPv6"),
        ("10.0.0.1-x", "two IP addresses"),
    ],
)
def test_bad_rules_raise_one_clear_error(text: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        PeerPolicy(allow=[text])
    message = str(info.value)
    assert words in message
    assert "--allow-peer" in message
    assert "\n" not in message
    assert isinstance(info.value, NatkitError)
    assert isinstance(info.value, ValueError)


def test_bad_deny_rule_names_its_option() -> None:
    with pytest.raises(PolicyError, match="--deny-peer"):
        PeerPolicy(deny=["300.0.0.0/8"])


def test_bad_server_address() -> None:
    with pytest.raises(PolicyError, match="server address"):
        PeerPolicy(server_addresses=["example.com"])


def test_parse_peer_rule_ranges() -> None:
    rule = parse_peer_rule(" 192.0.2.0/24 ")
    assert (rule.version, rule.start, rule.end) == (4, 0xC0000200, 0xC00002FF)
    host = parse_peer_rule("2001:db8::1")
    assert host.version == 6 and host.start == host.end


def test_table_rows_are_valid_networks_with_rfcs() -> None:
    for row in SPECIAL_RANGES:
        ipaddress.ip_network(row.network)
        assert row.rfc.startswith("RFC ")
    transitions = {r.network for r in SPECIAL_RANGES if r.kind is RangeKind.TRANSITION}
    assert {"2002::/16", "2001::/32", "64:ff9b::/96"} <= transitions


def test_every_denied_row_is_denied_at_both_ends() -> None:
    policy = PeerPolicy()
    for row in SPECIAL_RANGES:
        if row.kind is not RangeKind.DENIED:
            continue
        net = ipaddress.ip_network(row.network)
        for address in (net.network_address, net.broadcast_address):
            decision = policy.check(str(address), 1)
            assert not decision.allowed, (row, address)


def test_neighbours_of_denied_ranges_are_allowed() -> None:
    policy = PeerPolicy()
    for ip in (
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2001:200::1",
        "2003::1",
        "fbff::1",
    ):
        assert policy.check(ip, 1).allowed, ip


def test_cache_gives_same_decisions() -> None:
    policy = PeerPolicy(cache_size=2)
    first = [policy.check(ip, 1) for ip in DENIED_BY_DEFAULT]
    second = [policy.check(ip, 1) for ip in DENIED_BY_DEFAULT]
    assert first == second
    policy.cache_clear()
    assert policy.check("127.0.0.1", 1) == first[0]


@given(st.ip_addresses(v=4))
def test_ipv4_and_mapped_form_agree(address: ipaddress.IPv4Address) -> None:
    policy = _SHARED_POLICY
    mapped = f"::ffff:{address}"
    assert policy.check(str(address), 9) == policy.check(mapped, 9)


@given(st.ip_addresses(v=4))
def test_builtin_matches_a_naive_scan(address: ipaddress.IPv4Address) -> None:
    denied = any(
        address in ipaddress.ip_network(row.network)
        for row in SPECIAL_RANGES
        if row.kind is RangeKind.DENIED and ":" not in row.network
    )
    assert _SHARED_POLICY.check(str(address), 9).allowed is not denied


_SHARED_POLICY = PeerPolicy()
