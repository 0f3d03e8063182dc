"""Listener addresses: ``PROTO:HOST[:PORT]`` (``udp:0.0.0.0:3478``, ``tcp:[::]``).

Hosts are IP literals only, IPv6 in brackets; a missing port is the RFC 8489
§9 default for the transport.
"""

import ipaddress
from dataclasses import dataclass

from natkit.stun.transaction import Transport

#: RFC 8489 §9: the default port for STUN over UDP and TCP.
DEFAULT_PORT = 3478
#: RFC 8489 §9: the default port for STUN over TLS.
DEFAULT_TLS_PORT = 5349

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "ListenAddress",
    "Transport",
    "format_endpoint",
]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One listener: transport, IP literal and port.

    Written ``PROTO:HOST[:PORT]``, IPv6 hosts in brackets: ``udp:0.0.0.0:3478``,
    ``tcp:[::]:3478``, ``tls:[::1]``. Without a port, 3478 (UDP, TCP) or 5349
    (TLS) is used (RFC 8489 §9).
    """

    transport: Transport
    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def endpoint(self) -> str:
        """``host:port``, with IPv6 hosts in brackets."""
        return format_endpoint(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.transport}:{self.endpoint}"

    @classmethod
    def parse(cls, text: str) -> "ListenAddress":
        """Parse ``PROTO:HOST[:PORT]``; raises ValueError with a short reason."""
        proto, sep, rest = text.strip().partition(":")
        if not sep or not rest:
            raise ValueError("expected PROTO:HOST[:PORT], e.g. udp:0.0.0.0:3478")
        try:
            transport = Transport(proto.lower())
        except ValueError:
            raise ValueError(
                f"unknown transport {proto!r} (expected udp, tcp or tls)"
            ) from None
        host, port_text = _split_host_port(rest)
        port = DEFAULT_TLS_PORT if transport is Transport.TLS else DEFAULT_PORT
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 0xFFFF:
                raise ValueError("port must be 1-65535")
            port = int(port_text)
        return cls(transport, host, port)


def format_endpoint(host: str, port: int) -> str:
    """``host:port`` for logs, ``[host]:port`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Split ``HOST[:PORT]`` where HOST is IPv4 or ``[IPv6]``."""
    if text.startswith("["):
        host, sep, tail = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']' after IPv6 address")
        if tail and not tail.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
        port = tail[1:] if tail else None
        if not _is_ip(host, version=6):
            raise ValueError(f"{host!r} is not an IPv6 address")
        return host, port
    host, sep, port_text = text.partition(":")
    if ":" in port_text:
        raise ValueError("IPv6 addresses need brackets, e.g. tcp:[::]:3478")
    if not _is_ip(host, version=4):
        raise ValueError(f"{host!r} is not an IPv4 address (no host names)")
    return host, (port_text if sep else None)


def _is_ip(text: str, *, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False
