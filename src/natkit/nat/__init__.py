"""natkit.nat: RFC 5780 NAT behaviour discovery and classification, sans-IO.

- :mod:`natkit.nat.discovery`: :class:`NatProber`, the client side of
  RFC 5780 §4 (and its :class:`ProbeResult`);
- :mod:`natkit.nat.classify`: RFC 4787 behaviour names from test outcomes;
- :mod:`natkit.nat.server`: :class:`Rfc5780Responder`, the server side of
  RFC 5780 §6 (answers from two IPs and two ports);
- :mod:`natkit.nat.endpoint`: :class:`Endpoint`, a canonical ip:port.
"""

from natkit.nat.classify import Behaviour, NatType, PortAllocation
from natkit.nat.discovery import (
    PRIMARY,
    PROBE_POLICY,
    SECONDARY,
    NatProber,
    ProbeConfig,
    ProbeDatagram,
    ProbeResult,
    ProbeStep,
)
from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder, ServerReply

__all__ = [
    "PRIMARY",
    "PROBE_POLICY",
    "SECONDARY",
    "Behaviour",
    "Endpoint",
    "NatProber",
    "NatType",
    "PortAllocation",
    "ProbeConfig",
    "ProbeDatagram",
    "ProbeResult",
    "Rfc5780Responder",
    "ServerReply",
    "ProbeStep",
]
