"""Prometheus metrics of ``natkit serve`` (natkit.server.metrics).

The collector is checked on hand-made counters (every family, bounded
labels only, traffic of ended allocations kept), then through the admin
listener of a live server: a TURN allocation relays to a loopback peer and
the scrape shows the bytes, without any per-user or per-address label.
"""

import asyncio
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from natkit.net.listeners import ServiceStats
from natkit.net.turn_client import TurnClient
from natkit.net.turn_driver import TurnStats
from natkit.server.metrics import (
    AdminCounters,
    MetricSources,
    TurnEventCounters,
    build_registry,
    install_event_counters,
)
from natkit.server.tokens import Role
from natkit.stun.server import ResponderStats
from natkit.turn.client import Address
from natkit.turn.events import (
    AllocationCreated,
    AllocationDeleted,
    AuthFailed,
    CollectingEventSink,
    EndReason,
    EventSink,
    PeerDenied,
    QuotaRefused,
    TrafficStats,
)
from natkit.turn.quota import QuotaKind
from natkit.turn.server import ServerStats
from test_admin_api import PASSWORD, USER, ServerThread, call, make_config

#: the only label names a natkit metric may have (no user, address or id)
BOUNDED_LABELS = {"transport", "direction", "result", "reason", "quota", "request"}

EXPECTED_FAMILIES = {
    "natkit_info",
    "natkit_stun_binding_responses",
    "natkit_stun_malformed",
    "natkit_stream_connections",
    "natkit_stream_connections_closed",
    "natkit_turn_allocations",
    "natkit_turn_relayed_bytes",
    "natkit_turn_relayed_packets",
    "natkit_turn_auth_failures",
    "natkit_turn_peers_denied",
    "natkit_turn_quota_refusals",
    "natkit_turn_dropped",
    "natkit_turn_malformed",
    "natkit_turn_requests",
    "natkit_turn_responses",
    "natkit_admin_auth_failures",
    "natkit_admin_throttled",
}


def _stats() -> ServiceStats:
    core = ServerStats(
        allocations=0,
        requests=7,
        success=5,
        errors=2,
        malformed=3,
        policy_denied=4,
        no_permission=1,
        rate_limited=2,
    )
    turn = TurnStats(
        core=core,
        relay_sockets=0,
        fast_to_peer=11,
        fast_to_client=12,
        send_errors=1,
        bind_failures=0,
        internal_errors=0,
    )
    return ServiceStats(
        responder=ResponderStats(requests=9, success=8, errors=1, malformed=6),
        fast_answered=20,
        stream_desync=2,
        idle_closed=1,
        rejected_connections=0,
        active_connections=3,
        internal_errors=0,
        turn=turn,
        client_drops=5,
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _families(text: str) -> dict[str, set[str]]:
    """Family name -> every label name its samples use."""
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names = families.setdefault(family.name, set())
        for sample in family.samples:
            names.update(sample.labels)
    return families


def _events() -> TurnEventCounters:
    counters = TurnEventCounters(CollectingEventSink())
    counters.emit(
        AuthFailed(
            "alice", "udp:127.0.0.1:5000->127.0.0.1:3478", "Allocate", 401, "bad"
        )
    )
    counters.emit(PeerDenied("a1", "alice", "10.0.0.1", 9, "private"))
    counters.emit(QuotaRefused("alice", "udp:x", QuotaKind.ALLOCATIONS_PER_USER, 2))
    counters.emit(
        AllocationCreated(
            "a1", "alice", "tcp:127.0.0.1:5000->127.0.0.1:3478", ("r",), 600
        )
    )
    counters.emit(
        AllocationDeleted(
            "a1",
            "alice",
            EndReason.REVOKED,
            3.0,
            TrafficStats(
                bytes_to_peer=100,
                packets_to_peer=2,
                bytes_to_client=40,
                packets_to_client=1,
            ),
        )
    )
    return counters


def test_event_counters_count_and_pass_on() -> None:
    counters = _events()
    assert counters.auth_failures == 1
    assert counters.peers_denied == 1
    assert counters.quota_refused[str(QuotaKind.ALLOCATIONS_PER_USER)] == 1
    assert counters.ended["tcp"].bytes_to_peer == 100
    assert counters.ended["udp"].bytes_to_peer == 0
    inner = counters.inner
    assert isinstance(inner, CollectingEventSink) and len(inner.events) == 5


def test_install_event_counters_wraps_once() -> None:
    class Core:
        def __init__(self) -> None:
            self.events: EventSink = CollectingEventSink()

    core = Core()
    first = install_event_counters(core)
    assert core.events is first
    assert install_event_counters(core) is first


def test_every_family_with_bounded_labels() -> None:
    admin = AdminCounters()
    admin.auth_failures = 4
    registry = build_registry(
        MetricSources(
            stats=_stats, allocations=lambda: (), events=_events(), admin=admin
        )
    )
    text = generate_latest(registry).decode()
    families = _families(text)
    assert EXPECTED_FAMILIES <= set(families), EXPECTED_FAMILIES - set(families)
    for name, labels in families.items():
        assert labels <= BOUNDED_LABELS | {"version"}, (name, labels)
        if name != "natkit_info":
            assert "version" not in labels
    assert "alice" not in text and "127.0.0.1" not in text and "a1" not in text.split()

    samples = _samples(text)
    assert samples[("natkit_turn_auth_failures_total", ())] == 1
    assert samples[("natkit_admin_auth_failures_total", ())] == 4
    assert (
        samples[("natkit_turn_peers_denied_total", (("request", "permission"),))] == 1
    )
    assert samples[("natkit_turn_peers_denied_total", (("request", "send"),))] == 4
    assert (
        samples[
            (
                "natkit_turn_relayed_bytes_total",
                (("direction", "to_peer"), ("transport", "tcp")),
            )
        ]
        == 100
    )
    assert (
        samples[("natkit_stun_binding_responses_total", (("result", "success"),))] == 28
    )
    assert samples[("natkit_stun_malformed_total", ())] == 6
    assert (
        samples[("natkit_turn_dropped_total", (("reason", "client_buffer_full"),))] == 5
    )
    assert samples[("natkit_stream_connections", ())] == 3
    quota = str(QuotaKind.ALLOCATIONS_PER_USER)
    assert samples[("natkit_turn_quota_refusals_total", (("quota", quota),))] == 1


def test_stun_only_server_has_no_turn_families() -> None:
    plain = _stats()
    stats = ServiceStats(
        responder=plain.responder,
        fast_answered=0,
        stream_desync=0,
        idle_closed=0,
        rejected_connections=0,
        active_connections=0,
        internal_errors=0,
    )
    text = generate_latest(build_registry(MetricSources(stats=lambda: stats))).decode()
    assert "natkit_stun_binding_responses_total" in text
    assert "natkit_turn_" not in text


# --- through the admin listener ------------------------------------------------


async def test_scrape_shows_relayed_traffic_without_per_user_labels(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    with ServerThread(config) as server, peer:
        token = server.admin_token
        async with TurnClient(
            "127.0.0.1", server.stun_port, username=USER, password=PASSWORD, timeout=5
        ) as client:
            await client.allocate()
            await client.create_permission("127.0.0.1")
            target = Address("127.0.0.1", peer.getsockname()[1])
            client.send(target, b"x" * 100)
            data = await asyncio.wait_for(loop.sock_recv(peer, 2048), 5)
            assert data == b"x" * 100

            scrape = await asyncio.to_thread(
                call, config, "GET", "/metrics", token=token
            )
            assert scrape.status == 200
            assert scrape.headers["content-type"].startswith("text/plain")
            text = scrape.body.decode()
            samples = _samples(text)
            key = (
                "natkit_turn_relayed_bytes_total",
                (("direction", "to_peer"), ("transport", "udp")),
            )
            assert samples[key] >= 100
            assert samples[("natkit_turn_allocations", (("transport", "udp"),))] == 1
            for name, labels in _families(text).items():
                assert labels <= BOUNDED_LABELS | {"version"}, (name, labels)
            assert USER not in text and "127.0.0.1" not in text

        # the allocation is gone; its traffic stays counted
        after = await asyncio.to_thread(call, config, "GET", "/metrics", token=token)
        samples = _samples(after.body.decode())
        assert samples[key] >= 100
        assert samples[("natkit_turn_allocations", (("transport", "udp"),))] == 0


@pytest.mark.parametrize("role", list(Role))
def test_every_role_may_scrape_but_no_token_may_not(tmp_path: Path, role: Role) -> None:
    config = make_config(tmp_path / "data")
    with ServerThread(config) as server:
        assert call(config, "GET", "/metrics").status == 401
        created = call(
            config,
            "POST",
            "/v1/tokens",
            token=server.admin_token,
            body={"name": "scraper", "role": role.value},
        )
        scrape = call(config, "GET", "/metrics", token=created.json()["token"])
        assert scrape.status == 200
        assert b"natkit_info" in scrape.body


def test_metrics_public_on_loopback(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", metrics_public=True)
    with ServerThread(config):
        scrape = call(config, "GET", "/metrics")
        assert scrape.status == 200 and b"natkit_stun" in scrape.body
        # the rest still needs a token
        assert call(config, "GET", "/v1/stats").status == 401


def test_metrics_off(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", metrics=False)
    with ServerThread(config) as server:
        assert call(config, "GET", "/metrics", token=server.admin_token).status == 404
