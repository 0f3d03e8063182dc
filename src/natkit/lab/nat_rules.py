"""NAT types of the lab and the nftables rules that make a Linux router one.

Each router namespace gets one ``table ip natkit`` (loaded atomically with
``nft -f -``). The RFC 4787 behaviours come from three pieces:

- mapping (RFC 4787 §4.1): ``snat to WAN`` lets conntrack keep the host's
  source port whenever it is free, so every destination sees the same
  ``WAN:port`` (endpoint-independent); ``snat ... fully-random`` picks a new
  random port for every new conntrack entry, i.e. for every destination address
  and port (address-and-port-dependent, "symmetric").
- filtering (RFC 4787 §5): the forward chain drops (never rejects) what
  conntrack does not know, which on its own is address-and-port-dependent
  filtering. Endpoint-independent and address-dependent filtering add a DNAT
  of inbound UDP on ``WAN:port`` back to ``host:port``, allowed by a dynamic
  set that the host's outbound packets fill: the set of mapped ports (full
  cone) or of (remote address, mapped port) pairs (restricted cone).
- binding lifetime (RFC 4787 §4.3): the conntrack UDP timeouts of the router
  namespace, and the same value as the timeout of the dynamic sets.

docs/nat-lab.md explains each rule. Delay and loss (``NatSpec.delay_ms``,
``loss_percent``) use ``tc netem`` on the WAN link where the kernel has
``sch_netem``, else an nftables ``numgen`` drop rule for loss and the NFQUEUE
delayer of :mod:`natkit.lab.netns` for delay.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from natkit.lab import netns
from natkit.lab.netns import LabError

logger = logging.getLogger(__name__)

#: The kernel's UDP conntrack timeouts (seconds) when none is configured.
KERNEL_UDP_TIMEOUT = 30
KERNEL_UDP_TIMEOUT_STREAM = 120

#: nftables table that holds one router's NAT and filter rules.
TABLE = "natkit"
#: nftables table that holds the loss rule (when netem is missing).
SHAPING_TABLE = "natkit_shaping"
#: NFQUEUE number the delayer listens on (queues are per namespace).
DELAY_QUEUE = 0
#: Text in the delayer's command line, to find it among a namespace's processes.
DELAYER_MARK = "delayer_main"

_SYSCTL_UDP_TIMEOUT = "net.netfilter.nf_conntrack_udp_timeout"
_SYSCTL_UDP_TIMEOUT_STREAM = "net.netfilter.nf_conntrack_udp_timeout_stream"


class Behaviour(enum.StrEnum):
    """Mapping or filtering behaviour of a NAT (RFC 4787 §4.1, §5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class PortAllocation(enum.StrEnum):
    """How a NAT picks the external port of a new mapping (RFC 4787 §4.2.1)."""

    PRESERVING = "preserving"
    RANDOM = "random"


class NatType(enum.StrEnum):
    """The classic NAT types (RFC 3489 §5 names), as RFC 4787 behaviours."""

    OPEN = "open"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"

    @property
    def mapping(self) -> Behaviour | None:
        """Expected mapping behaviour; None means no NAT (mapped == local)."""
        if self is NatType.OPEN:
            return None
        if self is NatType.SYMMETRIC:
            return Behaviour.ADDRESS_AND_PORT_DEPENDENT
        return Behaviour.ENDPOINT_INDEPENDENT

    @property
    def filtering(self) -> Behaviour:
        """Expected filtering behaviour of inbound UDP (RFC 4787 §5)."""
        if self in (NatType.OPEN, NatType.FULL_CONE):
            return Behaviour.ENDPOINT_INDEPENDENT
        if self is NatType.RESTRICTED_CONE:
            return Behaviour.ADDRESS_DEPENDENT
        return Behaviour.ADDRESS_AND_PORT_DEPENDENT

    @property
    def port_allocation(self) -> PortAllocation | None:
        """Expected external port choice; None means no NAT."""
        if self is NatType.OPEN:
            return None
        if self is NatType.SYMMETRIC:
            return PortAllocation.RANDOM
        return PortAllocation.PRESERVING

    @property
    def translates(self) -> bool:
        """True if the router rewrites the host's address."""
        return self is not NatType.OPEN


@dataclass(frozen=True, slots=True, kw_only=True)
class NatSpec:
    """One NAT of a lab: its type and the conditions of its WAN link.

    ``udp_timeout`` (seconds) is the UDP binding lifetime (RFC 4787 §4.3), set
    as both conntrack UDP timeouts of the router; None keeps the kernel's
    30 s (unreplied) and 120 s (stream). ``delay_ms`` and ``loss_percent``
    apply to packets leaving the router's WAN interface (towards the internet).
    """

    type: NatType
    udp_timeout: int | None = None
    delay_ms: int = 0
    loss_percent: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.type, NatType):
            raise LabError(f"bad NAT type {self.type!r}")
        if self.udp_timeout is not None and not 1 <= self.udp_timeout <= 86400:
            raise LabError(f"udp_timeout {self.udp_timeout} not in 1..86400 seconds")
        if not 0 <= self.delay_ms <= 60000:
            raise LabError(f"delay_ms {self.delay_ms} not in 0..60000")
        if not (math.isfinite(self.loss_percent) and 0 <= self.loss_percent <= 100):
            raise LabError(f"loss_percent {self.loss_percent} not in 0..100")

    @classmethod
    def of(cls, value: NatType | NatSpec | str) -> NatSpec:
        """A NatSpec from a spec, a NatType or a type name such as "symmetric"."""
        if isinstance(value, NatSpec):
            return value
        try:
            return cls(type=NatType(value))
        except ValueError as exc:
            names = ", ".join(t.value for t in NatType)
            raise LabError(f"unknown NAT type {value!r} (one of: {names})") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterPlan:
    """Interfaces and addresses of one router, as the rules need them."""

    wan_if: str
    lan_if: str
    wan_ip: str
    lan_cidr: str
    host_ip: str


def binding_timeout(spec: NatSpec) -> int:
    """Seconds a UDP binding lives without traffic (the dynamic sets' timeout)."""
    if spec.udp_timeout is not None:
        return spec.udp_timeout
    return KERNEL_UDP_TIMEOUT_STREAM


def ruleset(spec: NatSpec, plan: RouterPlan) -> str:
    """The nftables ruleset that makes a router behave as ``spec.type``."""
    kind = spec.type
    wan, lan = f'"{plan.wan_if}"', f'"{plan.lan_if}"'
    ttl = binding_timeout(spec)
    sets: list[str] = []
    pre: list[str] = []
    post: list[str] = []
    fwd_learn: list[str] = []

    # mapping: SNAT to the WAN address; symmetric draws a random port per flow
    if kind is NatType.SYMMETRIC:
        post.append(
            f"oifname {wan} ip saddr {plan.lan_cidr} snat to {plan.wan_ip} fully-random"
        )
    elif kind.translates:
        post.append(f"oifname {wan} ip saddr {plan.lan_cidr} snat to {plan.wan_ip}")

    # filtering beyond conntrack: DNAT inbound UDP to the host when a set allows it
    if kind is NatType.FULL_CONE:
        sets.append(
            f"set mapped {{ type inet_service; flags timeout; timeout {ttl}s; }}"
        )
        fwd_learn.append(
            f"iifname {lan} oifname {wan} ip saddr {plan.host_ip} "
            "update @mapped { udp sport }"
        )
        pre.append(
            f"iifname {wan} ip daddr {plan.wan_ip} udp dport @mapped "
            f"dnat to {plan.host_ip}"
        )
    elif kind is NatType.RESTRICTED_CONE:
        sets.append(
            "set peers { type ipv4_addr . inet_service; flags timeout; "
            f"timeout {ttl}s; }}"
        )
        fwd_learn.append(
            f"iifname {lan} oifname {wan} ip saddr {plan.host_ip} "
            "update @peers { ip daddr . udp sport }"
        )
        pre.append(
            f"iifname {wan} ip daddr {plan.wan_ip} ip saddr . udp dport @peers "
            f"dnat to {plan.host_ip}"
        )

    forward_policy = "accept" if kind is NatType.OPEN else "drop"
    lines = [f"table ip {TABLE} {{"]
    lines += [f"  {s}" for s in sets]
    if pre:
        lines += _chain("prerouting", "type nat hook prerouting priority dstnat", pre)
    if post:
        lines += _chain(
            "postrouting", "type nat hook postrouting priority srcnat", post
        )
    lines += _chain(
        "forward",
        f"type filter hook forward priority filter; policy {forward_policy}",
        [
            *fwd_learn,
            "ct state established,related accept",
            f"iifname {lan} oifname {wan} accept",
            *([f"iifname {wan} oifname {lan} ct status dnat accept"] if pre else []),
        ],
    )
    lines += _chain(
        "input",
        "type filter hook input priority filter; policy drop",
        [
            'iifname "lo" accept',
            "ct state established,related accept",
            f"iifname {lan} accept",
        ],
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _chain(name: str, head: str, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {head};", *[f"    {r}" for r in rules], "  }"]


def apply_nat(router_netns: str, spec: NatSpec, plan: RouterPlan) -> None:
    """Turn on forwarding, set the binding timeout and load the NAT rules."""
    netns.set_sysctl(router_netns, "net.ipv4.ip_forward", "1")
    set_udp_timeout(router_netns, spec.udp_timeout)
    netns.load_nft(router_netns, ruleset(spec, plan))
    logger.debug("%s: %s rules loaded", router_netns, spec.type.value)


def set_udp_timeout(router_netns: str, seconds: int | None) -> None:
    """Set both UDP conntrack timeouts of a router (None: the kernel defaults).

    The kernel uses ``nf_conntrack_udp_timeout`` for a flow that has seen no
    reply yet (or less than 2 s of traffic) and ``_stream`` once it has; the lab
    sets both so that "binding timeout" means one number. They are per network
    namespace, so the host and other routers are not affected.
    """
    short = KERNEL_UDP_TIMEOUT if seconds is None else seconds
    stream = KERNEL_UDP_TIMEOUT_STREAM if seconds is None else seconds
    netns.set_sysctl(router_netns, _SYSCTL_UDP_TIMEOUT, str(short))
    netns.set_sysctl(router_netns, _SYSCTL_UDP_TIMEOUT_STREAM, str(stream))


class ShapingMethod(enum.StrEnum):
    """How a router's WAN delay and loss are made."""

    NONE = "none"
    NETEM = "netem"
    NFTABLES = "nftables+nfqueue"


def apply_shaping(
    router_netns: str,
    *,
    wan_if: str,
    lan_if: str,
    delay_ms: int,
    loss_percent: float,
) -> tuple[ShapingMethod, subprocess.Popen[str] | None]:
    """Delay and drop the host's packets on their way out to the internet.

    Tries ``tc qdisc replace dev WAN root netem`` first. Without ``sch_netem``
    the loss is an nftables ``numgen random`` drop on the WAN egress, and the
    delay an NFQUEUE rule served by the delayer process, which is returned.
    The queue rule sits in the raw table of PREROUTING on the LAN side, before
    conntrack sees the packet: a packet that waits in the queue has no
    unconfirmed conntrack entry yet, so a second packet of the same new flow
    cannot race it for a NAT binding. It is an iptables ``-j NFQUEUE`` rule
    because nft's own ``queue`` expression is missing on some kernels.
    """
    clear_shaping(router_netns, wan_if=wan_if)
    if delay_ms == 0 and loss_percent == 0:
        return ShapingMethod.NONE, None
    if _try_netem(router_netns, wan_if, delay_ms, loss_percent):
        return ShapingMethod.NETEM, None

    # loss: drop a random share of the packets leaving the WAN interface
    if loss_percent > 0:
        per_10k = round(loss_percent * 100)
        rule = f'oifname "{wan_if}" numgen random mod 10000 < {per_10k} drop'
        netns.load_nft(
            router_netns,
            f"table ip {SHAPING_TABLE} {{\n  chain loss {{\n"
            "    type filter hook postrouting priority -300; policy accept;\n"
            f"    {rule}\n  }}\n}}\n",
        )

    # delay: queue to the userspace delayer; bypass keeps traffic flowing if it dies
    proc: subprocess.Popen[str] | None = None
    if delay_ms > 0:
        proc = start_delayer(router_netns, delay_ms / 1000)
        argv = ["iptables", "-t", "raw", "-A", "PREROUTING", "-i", lan_if]
        argv += ["-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"]
        netns.ns_run(router_netns, argv)
    return ShapingMethod.NFTABLES, proc


def clear_shaping(router_netns: str, *, wan_if: str) -> None:
    """Remove any delay or loss from a router (the delayer process is not stopped)."""
    tc = ["tc", "qdisc", "del", "dev", wan_if, "root"]
    netns.ns_run(router_netns, tc, check=False)
    nft = ["nft", "delete", "table", "ip", SHAPING_TABLE]
    netns.ns_run(router_netns, nft, check=False)
    flush = ["iptables", "-t", "raw", "-F", "PREROUTING"]
    netns.ns_run(router_netns, flush, check=False)


def _try_netem(router_netns: str, wan_if: str, delay_ms: int, loss: float) -> bool:
    argv = ["tc", "qdisc", "replace", "dev", wan_if, "root", "netem"]
    argv += ["delay", f"{delay_ms}ms", "loss", f"{loss}%"]
    proc = netns.ns_run(router_netns, argv, check=False)
    if proc.returncode == 0:
        return True
    logger.debug("%s: netem unavailable (%s)", router_netns, proc.stderr.strip())
    return False


def python_env() -> dict[str, str]:
    """Environment for a Python child that must import natkit (any checkout)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def start_delayer(router_netns: str, delay: float) -> subprocess.Popen[str]:
    """Start the NFQUEUE delayer inside ``router_netns`` and wait until it is bound.

    Its stderr goes to an unlinked temporary file, read only if it fails to
    start, so a long-running delayer can never block on a full pipe.
    """
    code = f"from natkit.lab.netns import {DELAYER_MARK}; {DELAYER_MARK}()"
    argv = [sys.executable, "-c", code, str(DELAY_QUEUE), repr(delay)]
    with tempfile.TemporaryFile(mode="w+") as errors:
        proc = netns.popen_in(
            router_netns,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=python_env(),
        )
        if proc.stdout is None:
            raise LabError("delayer: no stdout pipe")
        readable, _, _ = select.select([proc.stdout], [], [], 10.0)
        line = proc.stdout.readline() if readable else ""
        if line.strip() == "ready":
            return proc
        proc.kill()
        proc.communicate(timeout=5)
        errors.seek(0)
        detail = errors.read().strip().splitlines()[-1:] or ["no answer within 10 s"]
    raise LabError(f"{router_netns}: NFQUEUE delayer failed: {detail[0]}")
