"""Throttle repeated authentication failures per source, in bounded memory.

Long-term credentials (RFC 8489 §9.2) can be guessed online, one request at
a time; RFC 8656 §21 counts password attacks among the threats to a TURN
server. :class:`AuthThrottle` counts credential failures (unknown user, bad
MESSAGE-INTEGRITY) per source in a fixed window and blocks a source that
reaches the limit for a while.

Memory is bounded: sources being counted and sources blocked live in two
LRU maps, each capped; the least recently seen entry is dropped first. A
source is an IPv4 address or an IPv6 prefix (``/64`` by default), because one
IPv6 host can pick any address of its /64 and would otherwise flush the map.
IPv4-mapped IPv6 sources count as their IPv4 address.
"""

import ipaddress
from collections import OrderedDict

from natkit.stun.errors import UsageError

#: default cap on the number of sources tracked (each map)
DEFAULT_MAX_SOURCES = 10_000

_MAPPED_HIGH = 0xFFFF


class _Window:
    """Failures of one source in its current window (mutable, slotted)."""

    __slots__ = ("start", "failures")

    def __init__(self, start: float) -> None:
        self.start = start
        self.failures = 0


class AuthThrottle:
    """Block a source after ``max_failures`` failures within ``window_s``.

    A blocked source stays blocked for ``block_s`` seconds from the failure
    that tripped it; after that it starts from zero. ``now`` is passed in
    (seconds, any monotonic epoch). At most ``max_sources`` sources are
    counted and at most ``max_blocked`` (default ``max_sources``) blocked.
    """

    __slots__ = (
        "max_failures",
        "window_s",
        "block_s",
        "max_sources",
        "max_blocked",
        "ipv6_prefix",
        "_counting",
        "_blocked",
        "evictions",
    )

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        block_s: float = 300.0,
        max_sources: int = DEFAULT_MAX_SOURCES,
        max_blocked: int | None = None,
        ipv6_prefix: int = 64,
    ) -> None:
        if max_failures < 1 or window_s <= 0 or block_s <= 0:
            raise UsageError("throttle limits must be positive")
        if max_sources < 1 or (max_blocked is not None and max_blocked < 1):
            raise UsageError("throttle capacity must be positive")
        if not 1 <= ipv6_prefix <= 128:
            raise UsageError("IPv6 prefix length must be 1-128")
        self.max_failures = max_failures
        self.window_s = window_s
        self.block_s = block_s
        self.max_sources = max_sources
        self.max_blocked = max_sources if max_blocked is None else max_blocked
        self.ipv6_prefix = ipv6_prefix
        self._counting: OrderedDict[int, _Window] = OrderedDict()
        self._blocked: OrderedDict[int, float] = OrderedDict()
        #: entries dropped because a map was full
        self.evictions = 0

    def record_failure(self, ip: str, now: float) -> bool:
        """Count one failure from ``ip``; True if the source is (now) blocked."""
        key = self._key(ip)
        self._expire_blocks(now)
        if key in self._blocked:
            return True

        # step 1: the source's window, a new one if the old one has passed
        window = self._counting.get(key)
        if window is None or now - window.start >= self.window_s:
            window = _Window(now)
            self._counting[key] = window
        self._counting.move_to_end(key)
        window.failures += 1

        # step 2: at the limit, move the source to the blocked map
        if window.failures >= self.max_failures:
            del self._counting[key]
            self._blocked[key] = now + self.block_s
            self._trim(self._blocked, self.max_blocked)
            return True
        self._trim(self._counting, self.max_sources)
        return False

    def record_success(self, ip: str) -> None:
        """Forget the failures of ``ip`` (a block, if any, stays)."""
        self._counting.pop(self._key(ip), None)

    def is_blocked(self, ip: str, now: float) -> bool:
        """Should a request from ``ip`` be refused without checking it?"""
        key = self._key(ip)
        until = self._blocked.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._blocked[key]
        return False

    def __len__(self) -> int:
        """Sources held in memory, counted and blocked."""
        return len(self._counting) + len(self._blocked)

    @property
    def blocked(self) -> int:
        """Sources blocked (some may have expired but not been swept yet)."""
        return len(self._blocked)

    def _expire_blocks(self, now: float) -> None:
        # blocks all last block_s, so the map is in expiry order
        while self._blocked:
            key, until = next(iter(self._blocked.items()))
            if until > now:
                return
            del self._blocked[key]

    def _trim(
        self, entries: "OrderedDict[int, _Window] | OrderedDict[int, float]", cap: int
    ) -> None:
        while len(entries) > cap:
            entries.popitem(last=False)
            self.evictions += 1

    def _key(self, ip: str) -> int:
        """An int naming the source: version bit, then address or prefix."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"not an IP address: {ip!r}") from None
        value = int(addr)
        if addr.version == 6 and value >> 32 == _MAPPED_HIGH:
            return value & 0xFFFFFFFF
        if addr.version == 4:
            return value
        shift = 128 - self.ipv6_prefix
        return (1 << 128) | (value >> shift << shift)
