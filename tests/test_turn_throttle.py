"""Authentication failure throttling, bounded memory, injected clock."""

import pytest

from natkit.stun.errors import UsageError
from natkit.turn.throttle import AuthThrottle

T0 = 1000.0


def test_blocks_after_max_failures_within_window() -> None:
    throttle = AuthThrottle(max_failures=3, window_s=60, block_s=300)
    assert not throttle.record_failure("192.0.2.1", T0)
    assert not throttle.record_failure("192.0.2.1", T0 + 1)
    assert not throttle.is_blocked("192.0.2.1", T0 + 1)
    assert throttle.record_failure("192.0.2.1", T0 + 2)
    assert throttle.is_blocked("192.0.2.1", T0 + 2)
    assert not throttle.is_blocked("192.0.2.2", T0 + 2)


def test_block_expires() -> None:
    throttle = AuthThrottle(max_failures=2, window_s=60, block_s=300)
    throttle.record_failure("192.0.2.1", T0)
    throttle.record_failure("192.0.2.1", T0)
    assert throttle.is_blocked("192.0.2.1", T0 + 299.9)
    assert not throttle.is_blocked("192.0.2.1", T0 + 300)

    # after the block the count starts again from zero
    assert not throttle.record_failure("192.0.2.1", T0 + 301)
    assert len(throttle) == 1


def test_failures_in_old_windows_do_not_add_up() -> None:
    throttle = AuthThrottle(max_failures=3, window_s=10, block_s=60)
    for step in range(10):
        # two failures per window, each window 10 s after the last began
        start = T0 + step * 10
        assert not throttle.record_failure("192.0.2.1", start)
        assert not throttle.record_failure("192.0.2.1", start + 9.9)
    assert not throttle.is_blocked("192.0.2.1", T0 + 100)


def test_success_clears_the_count() -> None:
    throttle = AuthThrottle(max_failures=2)
    throttle.record_failure("192.0.2.1", T0)
    throttle.record_success("192.0.2.1")
    assert not throttle.record_failure("192.0.2.1", T0)


def test_memory_bounded_under_100k_sources() -> None:
    throttle = AuthThrottle(max_failures=2, max_sources=10_000)
    for n in range(100_000):
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        throttle.record_failure(ip, T0 + n * 0.001)
        assert len(throttle) <= 20_000
    assert len(throttle._counting) == 10_000
    assert throttle.evictions == 90_000


def test_blocked_sources_bounded_too() -> None:
    throttle = AuthThrottle(max_failures=1, max_sources=100, block_s=1e9)
    for n in range(1000):
        assert throttle.record_failure(f"10.0.{n >> 8}.{n & 255}", T0)
    assert throttle.blocked == 100
    # the most recent blocks are kept
    assert throttle.is_blocked("10.0.3.231", T0)


def test_flood_of_counting_entries_does_not_unblock() -> None:
    throttle = AuthThrottle(max_failures=3, max_sources=100)
    for _ in range(3):
        throttle.record_failure("192.0.2.1", T0)
    for n in range(10_000):
        throttle.record_failure(f"10.1.{n >> 8 & 255}.{n & 255}", T0 + 1)
    assert throttle.is_blocked("192.0.2.1", T0 + 2)


def test_ipv6_sources_grouped_by_prefix() -> None:
    throttle = AuthThrottle(max_failures=3)
    throttle.record_failure("2001:db8:1:2::1", T0)
    throttle.record_failure("2001:db8:1:2::2", T0)
    assert throttle.record_failure("2001:db8:1:2:ffff::3", T0)
    assert throttle.is_blocked("2001:db8:1:2::99", T0)
    assert not throttle.is_blocked("2001:db8:1:3::1", T0)


def test_ipv4_mapped_counts_as_ipv4() -> None:
    throttle = AuthThrottle(max_failures=2)
    throttle.record_failure("::ffff:192.0.2.1", T0)
    assert throttle.record_failure("192.0.2.1", T0)
    assert not throttle.is_blocked("::ffff:192.0.2.2", T0)


def test_bad_input() -> None:
    with pytest.raises(UsageError):
        AuthThrottle().record_failure("not-an-ip", T0)
    with pytest.raises(UsageError):
        AuthThrottle(max_failures=0)
    with pytest.raises(UsageError):
        AuthThrottle(max_sources=0)
    with pytest.raises(UsageError):
        AuthThrottle(ipv6_prefix=0)
