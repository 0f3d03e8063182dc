"""Quotas of the TURN server: allocations, permissions, channels, bandwidth.

RFC 8656 §7.2 lets a server refuse an Allocate with 486 (Allocation Quota
Reached) and says the quota SHOULD be counted per username, not per client
address. Permissions and channels beyond a limit are a capacity problem of
the allocation: RFC 8656 §9.2 and §11.2 answer those with 508 (Insufficient
Capacity). Bandwidth is limited per allocation with a token bucket that is
told the time (sans-IO); packets over the limit are dropped and counted.
"""

from dataclasses import dataclass
from enum import StrEnum

from natkit.stun.errors import UsageError


class QuotaKind(StrEnum):
    """Which limit refused a request."""

    ALLOCATIONS_TOTAL = "allocations-total"
    ALLOCATIONS_PER_USER = "allocations-per-user"
    PERMISSIONS = "permissions-per-allocation"
    CHANNELS = "channels-per-allocation"


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """Limits enforced by the TURN server core; None means no limit.

    ``max_bytes_per_second`` limits what one allocation relays (both ways
    together); ``burst_seconds`` is how many seconds of that rate the bucket
    holds, so short bursts pass.
    """

    max_allocations: int | None = None
    max_allocations_per_user: int | None = 64
    max_permissions_per_allocation: int | None = 128
    max_channels_per_allocation: int | None = 128
    max_bytes_per_second: int | None = None
    burst_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "max_allocations",
            "max_allocations_per_user",
            "max_permissions_per_allocation",
            "max_channels_per_allocation",
            "max_bytes_per_second",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1 (or None), got {value}")
        if self.burst_seconds <= 0:
            raise UsageError(
                f"burst_seconds must be positive, got {self.burst_seconds}"
            )

    def new_bucket(self, now: float) -> "TokenBucket | None":
        """A full bucket for a new allocation, or None without a bandwidth limit."""
        if self.max_bytes_per_second is None:
            return None
        rate = float(self.max_bytes_per_second)
        return TokenBucket(rate, rate * self.burst_seconds, now)


class AllocationQuota:
    """Counts allocations in total and per user (RFC 8656 §7.2 step 10)."""

    __slots__ = ("_config", "_total", "_per_user")

    def __init__(self, config: QuotaConfig) -> None:
        self._config = config
        self._total = 0
        self._per_user: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self._total

    def count(self, user: str) -> int:
        return self._per_user.get(user, 0)

    def refused(self, user: str) -> QuotaKind | None:
        """The quota one more allocation for ``user`` would exceed, if any."""
        limit = self._config.max_allocations
        if limit is not None and self._total >= limit:
            return QuotaKind.ALLOCATIONS_TOTAL
        limit = self._config.max_allocations_per_user
        if limit is not None and self._per_user.get(user, 0) >= limit:
            return QuotaKind.ALLOCATIONS_PER_USER
        return None

    def limit(self, kind: QuotaKind) -> int:
        """The configured value of ``kind`` (for events); 0 when unlimited."""
        value = {
            QuotaKind.ALLOCATIONS_TOTAL: self._config.max_allocations,
            QuotaKind.ALLOCATIONS_PER_USER: self._config.max_allocations_per_user,
            QuotaKind.PERMISSIONS: self._config.max_permissions_per_allocation,
            QuotaKind.CHANNELS: self._config.max_channels_per_allocation,
        }[kind]
        return value or 0

    def add(self, user: str) -> None:
        self._total += 1
        self._per_user[user] = self._per_user.get(user, 0) + 1

    def remove(self, user: str) -> None:
        count = self._per_user.get(user, 0)
        if count <= 0:
            raise UsageError(f"no allocation counted for user {user!r}")
        self._total -= 1
        if count == 1:
            del self._per_user[user]
        else:
            self._per_user[user] = count - 1


class TokenBucket:
    """A byte-rate limiter: ``rate`` bytes/s, holding at most ``capacity`` bytes.

    ``consume(size, now)`` takes ``size`` tokens if there are enough and says
    whether it did; tokens refill with the time passed in. Time going
    backwards refills nothing.
    """

    __slots__ = ("rate", "capacity", "_tokens", "_last")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise UsageError("token bucket rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._last = now

    @property
    def tokens(self) -> float:
        return self._tokens

    def consume(self, size: int, now: float) -> bool:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens < size:
            return False
        self._tokens -= size
        return True
