"""Endpoints: canonical IP text, parsing, formatting."""

import pytest

from natkit.nat.endpoint import Endpoint
from natkit.stun.errors import UsageError


def test_canonical_ipv6_text() -> None:
    assert Endpoint("2001:DB8:0::1", 5) == Endpoint("2001:db8::1", 5)
    assert Endpoint("2001:DB8:0::1", 5).ip == "2001:db8::1"


def test_ipv4_mapped_becomes_ipv4() -> None:
    """A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d."""
    assert Endpoint("::ffff:192.0.2.1", 80) == Endpoint("192.0.2.1", 80)


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("192.0.2.1:3478", Endpoint("192.0.2.1", 3478)),
        ("[2001:db8::1]:3479", Endpoint("2001:db8::1", 3479)),
        (" 198.51.100.7:0 ", Endpoint("198.51.100.7", 0)),
    ],
)
def test_parse_and_str(text: str, endpoint: Endpoint) -> None:
    assert Endpoint.parse(text) == endpoint
    assert Endpoint.parse(str(endpoint)) == endpoint


def test_str_brackets_ipv6() -> None:
    assert str(Endpoint("2001:db8::1", 3478)) == "[2001:db8::1]:3478"
    assert str(Endpoint("192.0.2.1", 3478)) == "192.0.2.1:3478"


@pytest.mark.parametrize(
    "text",
    ["192.0.2.1", "2001:db8::1:3478", "[2001:db8::1]", "host:3478", "1.2.3.4:x"],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        Endpoint.parse(text)


@pytest.mark.parametrize(("ip", "port"), [("999.1.1.1", 1), ("192.0.2.1", 70000)])
def test_rejects_bad_values(ip: str, port: int) -> None:
    with pytest.raises(UsageError):
        Endpoint(ip, port)


def test_unspecified() -> None:
    assert Endpoint("0.0.0.0", 1).is_unspecified
    assert Endpoint("::", 1).is_unspecified
    assert not Endpoint("192.0.2.1", 1).is_unspecified
