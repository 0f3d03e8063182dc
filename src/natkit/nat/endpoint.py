"""Transport addresses (IP and UDP port) as the NAT probe and lab see them.

An :class:`Endpoint` is canonical: the IP is written the way
:mod:`ipaddress` writes it and an IPv4-mapped IPv6 address
(``::ffff:192.0.2.1``, what a dual-stack socket reports) becomes the IPv4
address, so two endpoints compare equal exactly when they name the same
address (RFC 5780 §4.3 compares the mapped address with the local one).
"""

import ipaddress
from dataclasses import dataclass

from natkit.stun.errors import UsageError


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An IP literal and a port, e.g. ``Endpoint("192.0.2.1", 3478)``."""

    ip: str
    port: int

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.ip)
        except ValueError:
            raise UsageError(f"not an IP address: {self.ip!r}") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not 0 <= self.port <= 0xFFFF:
            raise UsageError(f"port out of range: {self.port}")
        # canonical text, so equality means the same address
        object.__setattr__(self, "ip", str(address))

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.ip

    @property
    def is_unspecified(self) -> bool:
        """``0.0.0.0`` or ``::``: a wildcard bind, not an address of this host."""
        return ipaddress.ip_address(self.ip).is_unspecified

    def with_port(self, port: int) -> "Endpoint":
        return Endpoint(self.ip, port)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.is_ipv6 else f"{self.ip}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "Endpoint":
        """Parse ``IP:PORT`` or ``[IPv6]:PORT``; raise UsageError if it is not."""
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise UsageError(f"expected [IPv6]:PORT, not {text!r}")
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                raise UsageError(f"expected IP:PORT or [IPv6]:PORT, not {text!r}")
        if not port_text.isdigit():
            raise UsageError(f"port must be a number, not {port_text!r}")
        return cls(host, int(port_text))
