"""Which peers a TURN relay may talk to: network separation, sans-IO.

A relay lets a client reach whatever the server can reach (RFC 8656 §21,
security considerations). :class:`PeerPolicy`
decides, per XOR-PEER-ADDRESS, whether the relay may send there. By default
it denies the special-purpose ranges of the IANA IPv4 and IPv6
Special-Purpose Address Registries listed in :data:`SPECIAL_RANGES` (loopback,
private, link-local with the cloud metadata address, CGNAT, multicast,
reserved, documentation, ...) and the server's own addresses.

Addresses are canonicalised first (RFC 4291 §2.5.5 IPv4-mapped and
IPv4-compatible become the IPv4 address), and the IPv4 addresses embedded in
NAT64 (RFC 6052 §2.1), 6to4 (RFC 3056 §2) and Teredo (RFC 4380 §4) addresses
are checked too: one denied embedded address denies the whole address.

Precedence, strongest first:

1. an ``allow`` rule (as coturn's ``allowed-peer-ip``),
2. a ``deny`` rule,
3. the relayed address (exact ip and port) of a live allocation on this server,
4. the server's own addresses,
5. the built-in table.

The table is an explicit list, not :attr:`ipaddress.IPv4Address.is_private`,
so that what is denied is written down and does not change with the Python
version.
"""

import bisect
import functools
import heapq
import ipaddress
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

from natkit.stun.errors import NatkitError

_V4_BITS = 32
_V6_BITS = 128
_V4_MASK = 0xFFFFFFFF

#: top 96 bits of an RFC 4291 §2.5.5.2 IPv4-mapped address
_MAPPED_HIGH = 0xFFFF
#: top 96 bits of the RFC 6052 §2.1 NAT64 well-known prefix 64:ff9b::/96
_NAT64_HIGH = 0x0064FF9B_00000000_00000000
#: top 16 bits of an RFC 3056 6to4 address, 2002::/16
_SIX_TO_FOUR_HIGH = 0x2002
#: top 32 bits of an RFC 4380 Teredo address, 2001::/32
_TEREDO_HIGH = 0x20010000

#: how many peer IP strings :class:`PeerPolicy` remembers the verdict of
DEFAULT_CACHE_SIZE = 4096


class PolicyError(NatkitError, ValueError):
    """A peer rule or server address that does not parse.

    A ValueError too, so configuration validators report it as a bad value.
    """


class RangeKind(Enum):
    """What the built-in table does with an address in a range."""

    #: relaying there is denied
    DENIED = "denied"
    #: a transition prefix: decided by the IPv4 address embedded in it
    TRANSITION = "transition"


@dataclass(frozen=True, slots=True)
class SpecialRange:
    """One row of the built-in table: network, name and the defining RFC."""

    network: str
    name: str
    rfc: str
    kind: RangeKind = RangeKind.DENIED


_T = RangeKind.TRANSITION

#: The built-in table, from the IANA IPv4 and IPv6 Special-Purpose Address
#: Registries (RFC 6890). TRANSITION rows are never denied by themselves:
#: the IPv4 address inside them is checked instead.
SPECIAL_RANGES: tuple[SpecialRange, ...] = (
    # IPv4
    SpecialRange("0.0.0.0/8", "this network", "RFC 791"),
    SpecialRange("10.0.0.0/8", "private", "RFC 1918"),
    SpecialRange("100.64.0.0/10", "shared address space (CGNAT)", "RFC 6598"),
    SpecialRange("127.0.0.0/8", "loopback", "RFC 1122 §3.2.1.3"),
    SpecialRange(
        "169.254.0.0/16", "link-local (cloud metadata 169.254.169.254)", "RFC 3927"
    ),
    SpecialRange("172.16.0.0/12", "private", "RFC 1918"),
    SpecialRange("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    SpecialRange("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    SpecialRange("192.88.99.0/24", "6to4 relay anycast", "RFC 7526"),
    SpecialRange("192.168.0.0/16", "private", "RFC 1918"),
    SpecialRange("198.18.0.0/15", "benchmarking", "RFC 2544"),
    SpecialRange("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    SpecialRange("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    SpecialRange("224.0.0.0/4", "multicast", "RFC 5771"),
    SpecialRange("240.0.0.0/4", "reserved", "RFC 1112 §4"),
    SpecialRange("255.255.255.255/32", "limited broadcast", "RFC 919"),
    # IPv6
    SpecialRange("::/128", "unspecified", "RFC 4291 §2.5.2"),
    SpecialRange("::1/128", "loopback", "RFC 4291 §2.5.3"),
    SpecialRange("::/96", "IPv4-compatible", "RFC 4291 §2.5.5.1", _T),
    SpecialRange("::ffff:0:0/96", "IPv4-mapped", "RFC 4291 §2.5.5.2", _T),
    SpecialRange("64:ff9b::/96", "NAT64 well-known prefix", "RFC 6052 §2.1", _T),
    SpecialRange("64:ff9b:1::/48", "local-use NAT64", "RFC 8215"),
    SpecialRange("100::/64", "discard-only", "RFC 6666"),
    SpecialRange("2001::/23", "IETF protocol assignments", "RFC 2928"),
    SpecialRange("2001::/32", "Teredo", "RFC 4380", _T),
    SpecialRange("2001:db8::/32", "documentation", "RFC 3849"),
    SpecialRange("2002::/16", "6to4", "RFC 3056", _T),
    SpecialRange("3fff::/20", "documentation", "RFC 9637"),
    SpecialRange("fc00::/7", "unique local", "RFC 4193"),
    SpecialRange("fe80::/10", "link-local", "RFC 4291 §2.5.6"),
    SpecialRange("fec0::/10", "site-local (deprecated)", "RFC 3879"),
    SpecialRange("ff00::/8", "multicast", "RFC 4291 §2.7"),
)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The answer of :meth:`PeerPolicy.check`: may the relay send there, and why.

    ``reason`` names the range or rule that decided, for logs and audit.
    """

    allowed: bool
    reason: str


# --- parsing -----------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AddressRange:
    """A parsed peer rule: an inclusive range of one IP version."""

    version: int
    start: int
    end: int
    text: str


def _network_range(net: _Network, text: str) -> AddressRange:
    # an IPv4-mapped IPv6 network is the IPv4 network it maps
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        if int(net.network_address) >> 32 == _MAPPED_HIGH:
            low = int(net.network_address) & _V4_MASK
            net = ipaddress.IPv4Network((low, net.prefixlen - 96))
    start = int(net.network_address)
    return AddressRange(net.version, start, start + net.num_addresses - 1, text)


def parse_peer_rule(text: str, *, option: str = "peer rule") -> AddressRange:
    """Parse one ``--allow-peer`` / ``--deny-peer`` value.

    Accepts a CIDR (``10.0.0.0/8``, ``2001:db8::/32``), a bare address (one
    host) or, as coturn's ``allowed-peer-ip`` does, ``FIRST-LAST``. Raises
    :class:`PolicyError` with one line naming ``option``, the value and why.
    """
    value = text.strip()
    if "-" in value:
        return _parse_span(value, option)
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise PolicyError(_cidr_problem(value, option, exc)) from None
    return _network_range(net, value)


def _cidr_problem(value: str, option: str, exc: ValueError) -> str:
    if "has host bits set" in str(exc):
        loose = ipaddress.ip_network(value, strict=False)
        return f"{option} {value!r}: host bits set (did you mean {loose}?)"
    return (
        f"{option} {value!r}: not a CIDR or address "
        "(expected e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.1-192.0.2.9)"
    )


def _parse_span(value: str, option: str) -> AddressRange:
    first_text, _, last_text = value.partition("-")
    try:
        first = ipaddress.ip_address(first_text.strip())
        last = ipaddress.ip_address(last_text.strip())
    except ValueError:
        raise PolicyError(
            f"{option} {value!r}: a range is FIRST-LAST, two IP addresses"
        ) from None
    if first.version != last.version:
        raise PolicyError(f"{option} {value!r}: mixes IPv4 and IPv6")
    if int(first) > int(last):
        raise PolicyError(f"{option} {value!r}: first address is after the last")
    return AddressRange(first.version, int(first), int(last), value)


def _parse_server_address(text: str) -> "_Canonical":
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise PolicyError(f"server address {text!r}: not an IP address") from None
    return _canonical(addr.version, int(addr))


# --- canonical form ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Embedded:
    """An IPv4 address carried inside an IPv6 transition address."""

    label: str
    value: int


@dataclass(frozen=True, slots=True)
class _Canonical:
    version: int
    value: int
    embedded: tuple[_Embedded, ...] = ()


def _canonical(version: int, value: int) -> _Canonical:
    """IPv4-mapped and -compatible IPv6 become IPv4; NAT64, 6to4 and Teredo
    addresses keep their form and list the IPv4 addresses inside them."""
    if version == 4:
        return _Canonical(4, value)
    high96 = value >> 32
    if high96 == _MAPPED_HIGH or (high96 == 0 and value > 1):
        return _Canonical(4, value & _V4_MASK)
    if high96 == _NAT64_HIGH:
        return _Canonical(6, value, (_Embedded("NAT64", value & _V4_MASK),))
    if value >> 112 == _SIX_TO_FOUR_HIGH:
        return _Canonical(6, value, (_Embedded("6to4", (value >> 80) & _V4_MASK),))
    if value >> 96 == _TEREDO_HIGH:
        server = _Embedded("Teredo server", (value >> 64) & _V4_MASK)
        client = _Embedded("Teredo client", (value & _V4_MASK) ^ _V4_MASK)
        return _Canonical(6, value, (server, client))
    return _Canonical(6, value)


def _text(version: int, value: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


# --- the range table ---------------------------------------------------------


class _Layer(IntEnum):
    """Where a rule sits in the precedence order (higher wins)."""

    BUILTIN = 1
    SERVER = 2
    DENY = 3
    ALLOW = 4


@dataclass(frozen=True, slots=True)
class _Rule:
    layer: _Layer
    reason: str
    transition: bool = False

    @property
    def allows(self) -> bool:
        return self.layer is _Layer.ALLOW

    @property
    def decides(self) -> bool:
        return not self.transition


@dataclass(frozen=True, slots=True)
class _Entry:
    start: int
    end: int
    rule: _Rule


class _RangeTable:
    """Disjoint sorted segments, each labelled with the rule that wins there.

    Built once with a sweep over the rule boundaries; a lookup is one bisect.
    Where rules overlap, the higher layer wins, then the narrower range.
    """

    __slots__ = ("_starts", "_ends", "_rules")

    def __init__(self, entries: Iterable[_Entry]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._rules: list[_Rule] = []
        self._build(sorted(entries, key=lambda e: e.start))

    def _build(self, entries: list[_Entry]) -> None:
        points = sorted({e.start for e in entries} | {e.end + 1 for e in entries})
        active: list[tuple[int, int, int, _Entry]] = []
        pos = 0
        for index, point in enumerate(points):
            # step 1: rules that begin here join the heap
            while pos < len(entries) and entries[pos].start == point:
                entry = entries[pos]
                key = (-entry.rule.layer, entry.end - entry.start, pos, entry)
                heapq.heappush(active, key)
                pos += 1

            # step 2: drop rules that ended before here (lazily, from the top)
            while active and active[0][3].end < point:
                heapq.heappop(active)
            if not active or index + 1 == len(points):
                continue

            # step 3: the winner labels the segment up to the next boundary
            self._append(point, points[index + 1] - 1, active[0][3].rule)

    def _append(self, start: int, end: int, rule: _Rule) -> None:
        if self._rules and self._rules[-1] is rule and self._ends[-1] + 1 == start:
            self._ends[-1] = end
            return
        self._starts.append(start)
        self._ends.append(end)
        self._rules.append(rule)

    def lookup(self, value: int) -> _Rule | None:
        index = bisect.bisect_right(self._starts, value) - 1
        if index >= 0 and value <= self._ends[index]:
            return self._rules[index]
        return None

    def __len__(self) -> int:
        return len(self._rules)


@dataclass(frozen=True, slots=True)
class _Verdict:
    """The port-independent part of a decision, cached per IP string."""

    decision: PolicyDecision
    #: the relayed-address exception may still allow this ip:port
    relay_exempt: bool = False
    canonical: str = ""


_PUBLIC = PolicyDecision(True, "no rule matched (public address)")
_RELAYED = PolicyDecision(True, "relayed address of an allocation on this server")


class PeerPolicy:
    """Decides which peers a TURN relay may reach (RFC 8656 §21).

    ``allow`` and ``deny`` are peer rules (see :func:`parse_peer_rule`).
    ``server_addresses`` are the server's own listening and admin addresses;
    with a wildcard listener, pass every interface address. They are denied
    unless allowed. ``relay_addresses_allowed(ip, port)`` tells whether
    ``ip:port`` is the relayed transport address of a live allocation on this
    server: such an exact ip and port stays reachable, so two clients of one
    server can talk through their relays, even when the relay IP is a server
    address or in a denied built-in range. Only explicit ``deny`` rules beat
    that exception.

    TURN permissions are per IP (RFC 8656 §9), but this exception is per
    ip:port, so a server must check every Send indication and ChannelBind
    with its port, not only CreatePermission.

    Bad rules raise :class:`PolicyError`. :meth:`check` never raises.
    """

    __slots__ = ("_tables", "_relayed", "_verdict")

    def __init__(
        self,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        server_addresses: Collection[str] = (),
        relay_addresses_allowed: Callable[[str, int], bool] | None = None,
        *,
        builtin: Sequence[SpecialRange] = SPECIAL_RANGES,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        entries: dict[int, list[_Entry]] = {4: [], 6: []}

        # step 1: built-in table, then server addresses, then operator rules
        for row in builtin:
            net = ipaddress.ip_network(row.network)
            rng = AddressRange(
                net.version,
                int(net.network_address),
                int(net.broadcast_address),
                row.network,
            )
            rule = _Rule(
                _Layer.BUILTIN,
                f"{row.name} {row.network} ({row.rfc})",
                transition=row.kind is RangeKind.TRANSITION,
            )
            entries[rng.version].append(_Entry(rng.start, rng.end, rule))
        for address in server_addresses:
            server = _parse_server_address(address)
            rule = _Rule(_Layer.SERVER, f"server address {address.strip()}")
            entries[server.version].append(_Entry(server.value, server.value, rule))
        for layer, option, texts in (
            (_Layer.DENY, "--deny-peer", deny),
            (_Layer.ALLOW, "--allow-peer", allow),
        ):
            verb = "allowed" if layer is _Layer.ALLOW else "denied"
            for text in texts:
                rng = parse_peer_rule(text, option=option)
                rule = _Rule(layer, f"{verb} by rule {rng.text}")
                entries[rng.version].append(_Entry(rng.start, rng.end, rule))

        # step 2: one disjoint segment table per IP version
        self._tables = {version: _RangeTable(e) for version, e in entries.items()}
        self._relayed = relay_addresses_allowed
        self._verdict: Callable[[str], _Verdict] = functools.lru_cache(
            maxsize=cache_size
        )(self._compute_verdict)

    def check(self, ip: str, port: int) -> PolicyDecision:
        """May the relay send to ``ip:port``? Cheap: a cached table lookup.

        Port 0 asks about the IP alone: RFC 8656 §9.2 says the port of a
        CreatePermission XOR-PEER-ADDRESS is ignored, so clients may send 0.
        The relayed-address exception needs an exact port and never applies
        then.
        """
        if not 0 <= port <= 0xFFFF:
            return PolicyDecision(False, f"port {port} is not a peer port")
        verdict = self._verdict(ip)
        if (
            verdict.relay_exempt
            and port
            and self._relayed is not None
            and self._relayed(verdict.canonical, port)
        ):
            return _RELAYED
        return verdict.decision

    def _compute_verdict(self, ip: str) -> _Verdict:
        # step 1: parse and canonicalise
        try:
            if ":" in ip:
                parsed: ipaddress.IPv4Address | ipaddress.IPv6Address = (
                    ipaddress.IPv6Address(ip)
                )
            else:
                parsed = ipaddress.IPv4Address(ip)
        except ValueError:
            return _Verdict(PolicyDecision(False, f"not an IP address: {ip!r}"))
        canonical = _canonical(parsed.version, int(parsed))

        # step 2: the address itself
        rule = self._tables[canonical.version].lookup(canonical.value)
        if rule is not None and rule.decides:
            decision = PolicyDecision(rule.allows, rule.reason)
            exempt = rule.layer in (_Layer.SERVER, _Layer.BUILTIN)
            text = _text(canonical.version, canonical.value)
            return _Verdict(decision, relay_exempt=exempt, canonical=text)

        # step 3: every IPv4 address embedded in it (NAT64, 6to4, Teredo)
        for inner in canonical.embedded:
            inner_rule = self._tables[4].lookup(inner.value)
            if inner_rule is None or inner_rule.allows or not inner_rule.decides:
                continue
            inner_text = _text(4, inner.value)
            reason = (
                f"{inner.label} IPv4 {inner_text} embedded in {ip}: {inner_rule.reason}"
            )
            return _Verdict(PolicyDecision(False, reason))
        return _Verdict(_PUBLIC)

    def cache_clear(self) -> None:
        """Forget cached verdicts (they never go stale; this frees memory)."""
        cache_clear = getattr(self._verdict, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()

    @property
    def segments(self) -> int:
        """How many disjoint segments the compiled tables hold (for tests)."""
        return sum(len(table) for table in self._tables.values())
