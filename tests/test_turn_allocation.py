"""TURN server state: allocations, permissions, channels, timers, quotas, events.

RFC 8656 §6 (allocations), §9 (permissions), §11 (channels). The request
procedures that use these are tested in test_turn_server.py.
"""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natkit.stun.constants import AddressFamily, ErrorCode
from natkit.stun.errors import StunProtocolError, UsageError
from natkit.turn.allocation import (
    Allocation,
    ChannelBinding,
    ClientAddress,
    ExpiryHeap,
    Permission,
    RelayAddress,
    Reservation,
    Transport,
    family_of,
)
from natkit.turn.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationExpired,
    AllocationRefreshed,
    AuthFailed,
    AuthSucceeded,
    ChannelBound,
    ChannelExpired,
    CollectingEventSink,
    EndReason,
    LoggingEventSink,
    PeerDenied,
    PermissionCreated,
    PermissionExpired,
    QuotaRefused,
    TrafficStats,
    TurnEvent,
    format_event,
)
from natkit.turn.quota import AllocationQuota, QuotaConfig, QuotaKind, TokenBucket

CLIENT = ClientAddress(Transport.UDP, "192.0.2.50", 40000, "192.0.2.1", 3478)
V4 = RelayAddress("192.0.2.1", 49152)
V6 = RelayAddress("2001:db8::1", 49152)


def allocation(*relays: RelayAddress, client: ClientAddress = CLIENT) -> Allocation:
    return Allocation(
        allocation_id="a1",
        username="alice",
        quota_user="alice",
        client=client,
        relays=relays or (V4,),
        now=100.0,
        lifetime=600,
    )


# --- addresses -----------------------------------------------------------------


def test_client_address_is_the_5_tuple() -> None:
    same = ClientAddress(Transport.UDP, "192.0.2.50", 40000, "192.0.2.1", 3478)
    other_server = ClientAddress(Transport.UDP, "192.0.2.50", 40000, "192.0.2.2", 3478)
    tcp = ClientAddress(Transport.TCP, "192.0.2.50", 40000, "192.0.2.1", 3478)

    assert same == CLIENT
    assert hash(same) == hash(CLIENT)
    assert len({CLIENT, same, other_server, tcp}) == 3
    assert str(CLIENT) == "udp:192.0.2.50:40000->192.0.2.1:3478"


def test_relay_address_family_and_text() -> None:
    assert V4.family is AddressFamily.IPV4
    assert V6.family is AddressFamily.IPV6
    assert str(V6) == "[2001:db8::1]:49152"
    assert family_of("::ffff:192.0.2.1") is AddressFamily.IPV6


def test_stream_allocations_pad_channel_data() -> None:
    tcp = ClientAddress(Transport.TLS, "192.0.2.50", 1, "192.0.2.1", 5349)
    assert not allocation().stream
    assert allocation(client=tcp).stream


# --- allocations ---------------------------------------------------------------


def test_allocation_lifetime_and_stats() -> None:
    alloc = allocation()
    assert alloc.expires_at == 700.0
    alloc.bytes_to_peer += 10
    alloc.packets_to_peer += 1
    alloc.dropped += 2
    assert alloc.stats() == TrafficStats(bytes_to_peer=10, packets_to_peer=1, dropped=2)
    assert "a1" in repr(alloc)


def test_relay_for_family_and_peer_family_check() -> None:
    dual = allocation(V4, V6)
    assert dual.relay_for(AddressFamily.IPV6) == V6
    dual.check_peer_family("2001:db8:1::1")

    single = allocation(V4)
    assert single.relay_for(AddressFamily.IPV6) is None
    with pytest.raises(StunProtocolError) as info:
        single.check_peer_family("2001:db8:1::1")
    assert info.value.code == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH


def test_permission_install_refresh_remove() -> None:
    alloc = allocation(V4, V6)
    created = alloc.install_permission("198.51.100.7", 400.0)
    assert isinstance(created, Permission)
    assert created.packed == bytes((198, 51, 100, 7))
    assert created.relay == V4
    assert alloc.install_permission("2001:db8:1::7", 400.0) is not None
    assert alloc.permissions["2001:db8:1::7"].relay == V6

    # a refresh moves the time, returns nothing new
    assert alloc.install_permission("198.51.100.7", 500.0) is None
    assert created.expires_at == 500.0
    assert alloc.active_permission("198.51.100.7", 499.9) is created
    assert alloc.active_permission("198.51.100.7", 500.0) is None
    assert alloc.active_permission("198.51.100.8", 0.0) is None

    alloc.remove_permission(created)
    assert not created.alive
    assert "198.51.100.7" not in alloc.permissions


def test_permission_of_a_family_without_relay_is_443() -> None:
    with pytest.raises(StunProtocolError) as info:
        allocation(V4).install_permission("2001:db8:1::7", 1.0)
    assert info.value.code == ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH


def test_channel_bind_rules() -> None:
    """RFC 8656 §11.2: one number per peer address, one peer per number."""
    alloc = allocation()
    binding = alloc.bind_channel(0x4000, "198.51.100.7", 6000, 700.0)
    assert isinstance(binding, ChannelBinding)
    assert binding.relay == V4
    assert alloc.channel_by_peer[("198.51.100.7", 6000)] is binding

    # the same pair is a refresh
    alloc.check_channel_bind(0x4000, "198.51.100.7", 6000)
    assert alloc.bind_channel(0x4000, "198.51.100.7", 6000, 800.0) is None
    assert binding.expires_at == 800.0

    for number, ip, port in (
        (0x4000, "198.51.100.7", 6001),
        (0x4000, "198.51.100.8", 6000),
        (0x4001, "198.51.100.7", 6000),
    ):
        with pytest.raises(StunProtocolError) as info:
            alloc.check_channel_bind(number, ip, port)
        assert info.value.code == ErrorCode.BAD_REQUEST

    alloc.remove_channel(binding)
    assert not binding.alive
    assert alloc.channels == {}
    assert alloc.channel_by_peer == {}
    alloc.check_channel_bind(0x4001, "198.51.100.7", 6000)


def test_channel_of_a_family_without_relay_is_443() -> None:
    with pytest.raises(StunProtocolError):
        allocation(V4).bind_channel(0x4000, "2001:db8:1::7", 1, 1.0)


def test_end_marks_everything_dead() -> None:
    alloc = allocation()
    perm = alloc.install_permission("198.51.100.7", 1.0)
    binding = alloc.bind_channel(0x4000, "198.51.100.7", 1, 1.0)
    assert perm is not None and binding is not None
    alloc.end()

    assert not (alloc.alive or perm.alive or binding.alive)
    assert (alloc.permissions, alloc.channels, alloc.channel_by_peer) == ({}, {}, {})


# --- the expiry heap -----------------------------------------------------------


def test_heap_pops_in_deadline_order() -> None:
    heap = ExpiryHeap()
    items = [Reservation(bytes([i]) * 8, V4, float(t)) for i, t in enumerate((3, 1, 2))]
    for item in items:
        heap.push(item)

    assert heap.next_deadline() == 1.0
    assert heap.pop_due(0.5) is None
    assert heap.pop_due(10.0) is items[1]
    assert heap.pop_due(10.0) is items[2]
    assert heap.pop_due(10.0) is items[0]
    assert heap.pop_due(10.0) is None
    assert heap.next_deadline() is None


def test_heap_repushes_refreshed_and_drops_dead() -> None:
    heap = ExpiryHeap()
    refreshed = Reservation(b"r" * 8, V4, 10.0)
    dead = Reservation(b"d" * 8, V4, 5.0)
    heap.push(refreshed)
    heap.push(dead)
    refreshed.expires_at = 50.0
    dead.alive = False

    assert heap.next_deadline() == 10.0  # early is fine, never late
    assert len(heap) == 1
    assert heap.pop_due(20.0) is None
    assert heap.next_deadline() == 50.0
    assert len(heap) == 1
    assert heap.pop_due(50.0) is refreshed


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=30))
def test_heap_never_returns_early_or_misses(pairs: list[tuple[int, int]]) -> None:
    heap = ExpiryHeap()
    items = []
    for index, (first, later) in enumerate(pairs):
        item = Reservation(index.to_bytes(8, "big"), V4, float(first))
        heap.push(item)
        item.expires_at = float(max(first, later))
        items.append(item)

    popped: list[Reservation] = []
    for now in range(0, 102):
        while (due := heap.pop_due(float(now))) is not None:
            assert isinstance(due, Reservation)
            assert due.expires_at <= now
            due.alive = False
            popped.append(due)
    assert sorted(id(i) for i in popped) == sorted(id(i) for i in items)


# --- quotas --------------------------------------------------------------------


def test_allocation_quota_counts_per_user_and_total() -> None:
    quota = AllocationQuota(QuotaConfig(max_allocations=3, max_allocations_per_user=2))
    assert quota.refused("alice") is None
    quota.add("alice")
    quota.add("alice")
    assert quota.refused("alice") is QuotaKind.ALLOCATIONS_PER_USER
    assert quota.refused("bob") is None
    quota.add("bob")
    assert quota.refused("bob") is QuotaKind.ALLOCATIONS_TOTAL
    assert (quota.total, quota.count("alice")) == (3, 2)

    quota.remove("alice")
    quota.remove("bob")
    assert quota.refused("bob") is None
    assert quota.count("bob") == 0
    with pytest.raises(UsageError):
        quota.remove("bob")


def test_quota_limits_for_events() -> None:
    quota = AllocationQuota(QuotaConfig(max_allocations=None))
    assert quota.limit(QuotaKind.ALLOCATIONS_TOTAL) == 0
    assert quota.limit(QuotaKind.PERMISSIONS) == 128
    assert quota.limit(QuotaKind.CHANNELS) == 128
    assert quota.limit(QuotaKind.ALLOCATIONS_PER_USER) == 64


@pytest.mark.parametrize(
    "options",
    [
        {"max_allocations": 0},
        {"max_allocations_per_user": -1},
        {"max_permissions_per_allocation": 0},
        {"max_channels_per_allocation": 0},
        {"max_bytes_per_second": 0},
        {"burst_seconds": 0.0},
    ],
)
def test_quota_config_validation(options: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        QuotaConfig(**options)  # type: ignore[arg-type]


def test_quota_config_bucket() -> None:
    assert QuotaConfig().new_bucket(0.0) is None
    bucket = QuotaConfig(max_bytes_per_second=100, burst_seconds=2).new_bucket(0.0)
    assert bucket is not None
    assert (bucket.rate, bucket.capacity) == (100.0, 200.0)


def test_token_bucket_refills_with_time() -> None:
    bucket = TokenBucket(rate=100.0, capacity=100.0, now=0.0)
    assert bucket.consume(60, 0.0)
    assert not bucket.consume(60, 0.0)
    assert bucket.consume(60, 0.2)  # 40 + 20 refilled
    assert bucket.tokens == pytest.approx(0.0)
    assert not bucket.consume(1, 0.1)  # time going back refills nothing
    assert bucket.consume(100, 100.0)  # capped at capacity
    assert not bucket.consume(1, 100.0)
    with pytest.raises(UsageError):
        TokenBucket(rate=0.0, capacity=1.0, now=0.0)


# --- events --------------------------------------------------------------------

STATS = TrafficStats(1, 2, 3, 4, 5)
EVENTS: list[TurnEvent] = [
    AllocationCreated("a1", "alice", str(CLIENT), ("192.0.2.1:49152",), 600),
    AllocationRefreshed("a1", "alice", 1200, STATS),
    AllocationExpired("a1", "alice", 600.0, STATS),
    AllocationDeleted("a1", "alice", EndReason.REFRESH, 10.0, STATS),
    PermissionCreated("a1", "198.51.100.7"),
    PermissionExpired("a1", "198.51.100.7"),
    ChannelBound("a1", 0x4000, "2001:db8:1::7", 6000),
    ChannelExpired("a1", 0x4000, "198.51.100.7", 6000),
    PeerDenied("a1", "alice", "127.0.0.1", 1, "loopback 127.0.0.0/8"),
    QuotaRefused("alice", str(CLIENT), QuotaKind.ALLOCATIONS_PER_USER, 64),
    AuthSucceeded("alice", str(CLIENT), "ALLOCATE"),
    AuthFailed(None, str(CLIENT), "REFRESH", 401, "unknown user"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_formats_as_one_line(event: TurnEvent) -> None:
    text = format_event(event)
    assert text
    assert "\n" not in text


def test_format_event_details() -> None:
    assert format_event(EVENTS[0]) == (
        "[a1] allocated user=alice client=udp:192.0.2.50:40000->192.0.2.1:3478 "
        "relay=192.0.2.1:49152 lifetime=600s"
    )
    assert "to_peer=2p/1B to_client=4p/3B dropped=5" in format_event(EVENTS[2])
    assert "[2001:db8:1::7]:6000" in format_event(EVENTS[6])


def test_logging_sink_writes_info(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingEventSink()
    with caplog.at_level(logging.INFO, logger="natkit.turn.events"):
        sink.emit(EVENTS[4])
    assert caplog.records[0].levelno == logging.INFO
    assert caplog.records[0].getMessage() == "[a1] permission 198.51.100.7"


def test_logging_sink_is_quiet_above_info(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("natkit.test.quiet")
    logger.setLevel(logging.WARNING)
    LoggingEventSink(logger).emit(EVENTS[0])
    assert caplog.records == []


def test_collecting_sink_filters_by_type() -> None:
    sink = CollectingEventSink()
    for event in EVENTS:
        sink.emit(event)
    assert sink.of_type(PermissionCreated) == [EVENTS[4]]
    assert len(sink.events) == len(EVENTS)
