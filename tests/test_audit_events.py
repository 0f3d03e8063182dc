"""Audit records of every event (NIST SP 800-53 AU-2, AU-3, AU-12).

Two levels: :class:`TurnAuditSink` turns each TURN core event into a record
with its fields; and ``natkit serve`` on loopback, driven by natkit's TURN
client and by raw STUN requests, writes those records (plus start, stop,
configuration, user and secret changes) into one chain that verifies and
that holds no password, key or MESSAGE-INTEGRITY value.
"""

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from natkit.cli import main
from natkit.net.address import ListenAddress
from natkit.net.turn_client import AuthenticationError, TurnClient, TurnRequestError
from natkit.security.audit import (
    CollectingAuditSink,
    TurnAuditSink,
    load_audit_key,
    read_checkpoint,
    split_client,
    verify_chain,
)
from natkit.server.config import ServerConfig, load_config
from natkit.stun import integrity
from natkit.stun.attributes import (
    MessageIntegrity,
    Nonce,
    Realm,
    RequestedTransport,
    Username,
)
from natkit.stun.constants import MessageClass, Method, PasswordAlgorithm
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.turn.client import Address
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
    PeerDenied,
    PermissionCreated,
    PermissionExpired,
    QuotaRefused,
    TrafficStats,
    TurnEvent,
)
from natkit.turn.quota import QuotaKind
from ports import pick_block
from serve_thread import serving

REALM = "audit.test"
USER, PASSWORD = "alice", "alice-Pa55word-for-audit"
CLIENT = "udp:192.0.2.7:40000->198.51.100.1:3478"
TIMEOUT = 5.0


# --- TurnAuditSink, one event at a time -----------------------------------------

STATS = TrafficStats(
    bytes_to_peer=100,
    packets_to_peer=2,
    bytes_to_client=300,
    packets_to_client=3,
    dropped=1,
)
CREATED = AllocationCreated("a1", USER, CLIENT, ("198.51.100.1:50000",), 600)

WHO = {
    "source": "192.0.2.7:40000",
    "transport": "udp",
    "listener": "198.51.100.1:3478",
    "user": USER,
    "realm": REALM,
}
ALLOCATION = {**WHO, "allocation": "a1", "relay": ["198.51.100.1:50000"]}
TRAFFIC = {
    "bytes_to_peer": 100,
    "packets_to_peer": 2,
    "bytes_to_client": 300,
    "packets_to_client": 3,
    "dropped_packets": 1,
}

CASES: list[tuple[TurnEvent, str, dict[str, Any]]] = [
    (
        AuthSucceeded(USER, CLIENT, "ALLOCATE"),
        "auth.success",
        {**WHO, "outcome": "success", "method": "ALLOCATE"},
    ),
    (
        AuthFailed(USER, CLIENT, "ALLOCATE", 401, "message integrity mismatch"),
        "auth.failure",
        {
            **WHO,
            "outcome": "failure",
            "code": 401,
            "reason": "message integrity mismatch",
            "method": "ALLOCATE",
        },
    ),
    (CREATED, "allocation.create", {**ALLOCATION, "lifetime": 600}),
    (
        AllocationRefreshed("a1", USER, 300, STATS),
        "allocation.refresh",
        {**ALLOCATION, **TRAFFIC, "lifetime": 300},
    ),
    (
        PermissionCreated("a1", "203.0.113.9"),
        "permission.create",
        {**ALLOCATION, "peer": "203.0.113.9"},
    ),
    (
        PermissionExpired("a1", "203.0.113.9"),
        "permission.expire",
        {**ALLOCATION, "peer": "203.0.113.9"},
    ),
    (
        ChannelBound("a1", 0x4000, "203.0.113.9", 5000),
        "channel.bind",
        {**ALLOCATION, "channel": 0x4000, "peer": "203.0.113.9:5000"},
    ),
    (
        ChannelExpired("a1", 0x4000, "2001:db8::9", 5000),
        "channel.expire",
        {**ALLOCATION, "channel": 0x4000, "peer": "[2001:db8::9]:5000"},
    ),
    (
        PeerDenied("a1", USER, "10.0.0.1", 80, "private address"),
        "peer.denied",
        {
            **ALLOCATION,
            "outcome": "failure",
            "code": 403,
            "reason": "private address",
            "peer": "10.0.0.1:80",
        },
    ),
    (
        QuotaRefused(USER, CLIENT, QuotaKind.ALLOCATIONS_PER_USER, 1),
        "quota.refused",
        {
            **WHO,
            "outcome": "failure",
            "code": 486,
            "quota": "allocations-per-user",
            "limit": 1,
        },
    ),
    (
        QuotaRefused(USER, CLIENT, QuotaKind.CHANNELS, 4),
        "quota.refused",
        {**WHO, "code": 508, "quota": "channels-per-allocation", "limit": 4},
    ),
    (
        AllocationExpired("a1", USER, 600.25, STATS),
        "allocation.expire",
        {**ALLOCATION, **TRAFFIC, "duration": 600.25, "reason": "expired"},
    ),
]


@pytest.mark.parametrize(
    ("event", "event_type", "fields"), CASES, ids=[c[1] for c in CASES]
)
def test_each_turn_event_becomes_a_record(
    event: TurnEvent, event_type: str, fields: dict[str, Any]
) -> None:
    audit = CollectingAuditSink()
    also = CollectingEventSink()
    sink = TurnAuditSink(audit, realm=REALM, also=also)
    if not isinstance(event, AllocationCreated):
        sink.emit(CREATED)  # later events learn who and where from it
    sink.emit(event)
    record = audit.events[-1]
    assert record.type == event_type
    for name, value in fields.items():
        assert record.fields.get(name) == value, (name, record.fields)
    assert record.fields.get("outcome") in ("success", "failure")
    assert also.events[-1] == event


def test_deleted_allocation_has_duration_traffic_and_reason() -> None:
    audit = CollectingAuditSink()
    sink = TurnAuditSink(audit, realm=REALM)
    sink.emit(CREATED)
    sink.emit(AllocationDeleted("a1", USER, EndReason.REFRESH, 12.3456, STATS))
    (record,) = audit.of_type("allocation.delete")
    assert record["reason"] == "refresh"
    assert record["duration"] == 12.346
    assert {k: record[k] for k in TRAFFIC} == TRAFFIC
    # once ended, the allocation is forgotten
    sink.emit(PermissionCreated("a1", "203.0.113.9"))
    late = audit.of_type("permission.create")[0]
    assert late["allocation"] == "a1" and "user" not in late


def test_a_failing_audit_sink_never_reaches_the_turn_core(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def emit(self, event_type: str, /, **fields: object) -> None:
            raise OSError("disk on fire")

    also = CollectingEventSink()
    sink = TurnAuditSink(Broken(), realm=REALM, also=also)
    sink.emit(CREATED)
    assert also.events == [CREATED]
    assert "cannot audit AllocationCreated" in caplog.text


@pytest.mark.parametrize(
    ("text", "transport", "source", "listener"),
    [
        (CLIENT, "udp", "192.0.2.7:40000", "198.51.100.1:3478"),
        ("tls:[2001:db8::1]:4->[::1]:5349", "tls", "[2001:db8::1]:4", "[::1]:5349"),
        ("odd", "", "odd", ""),
    ],
)
def test_split_client(text: str, transport: str, source: str, listener: str) -> None:
    parts = split_client(text)
    assert (parts.transport, parts.source, parts.listener) == (
        transport,
        source,
        listener,
    )


# --- natkit serve on loopback -----------------------------------------------------


def server_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    base = pick_block(12)
    settings: dict[str, Any] = {
        "listen": [f"udp:127.0.0.1:{base}", f"tcp:127.0.0.1:{base}"],
        "data_dir": str(data_dir),
        "realm": REALM,
        "users": [f"{USER}:{PASSWORD}"],
        "relay_ip": ["127.0.0.1"],
        "relay_ports": f"{base + 2}-{base + 11}",
        "allow_peer": ["127.0.0.1"],
        "admin": False,
        "audit_flush_seconds": 0.05,
    }
    settings.update(overrides)
    return load_config(environ={}, overrides=settings)


@asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[tuple[ListenAddress, ...]]:
    """``serve(config)`` on this loop until the block ends."""
    async with serving(config, timeout=TIMEOUT) as bound:
        yield bound


def audit_records(data_dir: Path) -> list[dict[str, Any]]:
    text = (data_dir / "audit.log").read_text()
    return [json.loads(line) for line in text.splitlines()]


def chain_ok(data_dir: Path) -> bool:
    key = load_audit_key(data_dir / "audit.key").key
    point = read_checkpoint(data_dir / "audit.checkpoint", key)
    report = verify_chain([data_dir / "audit.log"], key, checkpoint=point)
    return report.ok


def _raw_allocate(port: int, password: str) -> tuple[int, bytes]:
    """A hand-made Allocate with MESSAGE-INTEGRITY (MD5 key, RFC 5389 style).

    Returns the response class and the MESSAGE-INTEGRITY value sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        transport = RequestedTransport(17)
        first = Message(
            Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id(), (transport,)
        )
        sock.send(encode(first))
        challenge = decode(sock.recv(2048))
        nonce = challenge.get(Nonce)
        assert nonce is not None
        key = integrity.long_term_key(USER, REALM, password, PasswordAlgorithm.MD5)
        request = Message(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            new_transaction_id(),
            (transport, Username(USER), Realm(REALM), nonce),
        )
        data = encode(request, key=key)
        sent = decode(data).get(MessageIntegrity)
        assert sent is not None
        sock.send(data)
        answer = decode(sock.recv(2048))
        return int(answer.cls), sent.value


@pytest.fixture
def keys_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "keys"
    path.mkdir(mode=0o700)
    yield path


async def test_served_events_are_audited_without_secrets(tmp_path: Path) -> None:
    """AU-2/AU-12: every kind of TURN event from a real server, one chain."""
    data_dir = tmp_path / "data"
    config = server_config(data_dir, user_quota=1)
    async with running(config) as bound:
        port = bound[0].port

        # auth failure (wrong password), then a full allocation life
        bad = TurnClient(
            "127.0.0.1", port, username=USER, password="wrong", timeout=TIMEOUT
        )
        with pytest.raises(AuthenticationError):
            await bad.allocate()
        await bad.close()
        async with TurnClient(
            "127.0.0.1", port, username=USER, password=PASSWORD, timeout=TIMEOUT
        ) as client:
            await client.allocate()
            await client.refresh(300)
            await client.create_permission("127.0.0.1")
            await client.bind_channel(Address("127.0.0.1", 9))
            with pytest.raises(TurnRequestError) as denied:
                await client.create_permission("10.1.2.3")
            assert denied.value.code == 403

            # a second allocation of the same user is over user_quota = 1
            other = TurnClient(
                "127.0.0.1", port, username=USER, password=PASSWORD, timeout=TIMEOUT
            )
            with pytest.raises(TurnRequestError) as refused:
                await other.allocate()
            assert refused.value.code == 486
            await other.close()

        # raw requests: a wrong MD5 key and (after the quota freed) a right one
        wrong_class, wrong_mi = await asyncio.to_thread(_raw_allocate, port, "nope")
        right_class, right_mi = await asyncio.to_thread(_raw_allocate, port, PASSWORD)
        assert wrong_class == MessageClass.ERROR
        assert right_class == MessageClass.SUCCESS

    records = audit_records(data_dir)
    kinds = [r["type"] for r in records]
    for expected in (
        "audit.init",
        "server.start",
        "config.load",
        "auth.failure",
        "auth.success",
        "allocation.create",
        "allocation.refresh",
        "permission.create",
        "channel.bind",
        "peer.denied",
        "quota.refused",
        "allocation.delete",
        "server.stop",
    ):
        assert expected in kinds, (expected, kinds)
    assert kinds.index("server.start") < kinds.index("auth.failure")
    assert kinds[-2:] == ["server.stop", "audit.checkpoint"] or kinds[-1] == (
        "server.stop"
    )

    # AU-3: who, where, what, when and how it ended
    for record in records:
        assert record["node"] == socket.gethostname()
        assert record["ts"].endswith("Z") and len(record["ts"]) == 24
    failure = next(r for r in records if r["type"] == "auth.failure")
    assert failure["outcome"] == "failure" and failure["code"] == 401
    # the core reports the claimed USERNAME of a failure where it knows it
    assert failure["user"] in (USER, None) and failure["realm"] == REALM
    assert failure["transport"] == "udp"
    assert failure["listener"] == f"127.0.0.1:{port}"
    assert failure["source"].startswith("127.0.0.1:")
    create = next(r for r in records if r["type"] == "allocation.create")
    assert create["relay"][0].startswith("127.0.0.1:")
    deleted = next(r for r in records if r["type"] == "allocation.delete")
    assert deleted["duration"] >= 0
    assert deleted["allocation"] == create["allocation"]
    assert {"bytes_to_peer", "packets_to_client"} <= set(deleted)
    quota = next(r for r in records if r["type"] == "quota.refused")
    assert quota["code"] == 486 and quota["limit"] == 1
    denied_record = next(r for r in records if r["type"] == "peer.denied")
    assert denied_record["peer"].startswith("10.1.2.3")

    # no secret in any record
    text = (data_dir / "audit.log").read_text()
    keys = [
        integrity.long_term_key(USER, REALM, PASSWORD, algorithm)
        for algorithm in (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256)
    ]
    master = (data_dir / "master.key").read_text().strip()
    audit_key = (data_dir / "audit.key").read_text().strip()
    rest = (data_dir / "rest-secrets").read_text()
    forbidden = [PASSWORD, master, audit_key, *rest.split()[-1:]]
    for value in (*keys, wrong_mi, right_mi):
        forbidden += [value.hex(), base64.b64encode(value).decode()]
    for secret in forbidden:
        assert secret not in text, secret
    assert chain_ok(data_dir)


async def test_start_stop_and_config_records(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = server_config(data_dir, node_name="turn-a.example")
    async with running(config):
        pass
    records = audit_records(data_dir)
    start = next(r for r in records if r["type"] == "server.start")
    assert start["outcome"] == "success" and start["crypto_profile"] == "default"
    assert start["node"] == "turn-a.example"
    assert "openssl" in start and start["fips_mode"] in (True, False)
    loaded = next(r for r in records if r["type"] == "config.load")
    assert len(loaded["config_sha256"]) == 64
    assert loaded["static_users"] == 1
    assert PASSWORD not in json.dumps(loaded)
    stop = next(r for r in records if r["type"] == "server.stop")
    assert stop["outcome"] == "success"
    assert chain_ok(data_dir)


async def test_failed_start_is_audited(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = server_config(data_dir)
    # the UDP port is taken: the listeners fail after the trail is open
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", config.listeners()[0].port))
        from natkit.server.daemon import StartupError

        with pytest.raises(StartupError):
            async with running(config):
                pass
    starts = [r for r in audit_records(data_dir) if r["type"] == "server.start"]
    assert [s["outcome"] for s in starts] == ["success", "failure"]
    assert "cannot listen" in starts[1]["reason"]


def test_user_and_secret_changes_from_the_cli(tmp_path: Path) -> None:
    """Credential changes (IA-5, AU-2) made by the CLI land in the same chain."""
    data_dir = tmp_path / "data"
    runner = CliRunner()
    password = "bob-very-secret-password"

    def run(*args: str, stdin: str | None = None) -> None:
        result = runner.invoke(main, list(args), input=stdin)
        assert result.exit_code == 0, result.output

    common = ("--data-dir", str(data_dir))
    run("users", "add", "bob", "--password-stdin", *common, stdin=password)
    run("users", "add", "bob", "--password-stdin", "--replace", *common, stdin="x2")
    run("users", "remove", "bob", *common)
    run("secrets", "add", *common)
    run("secrets", "add", *common)
    run("secrets", "retire", "--oldest", *common)

    records = audit_records(data_dir)
    kinds = [r["type"] for r in records]
    assert kinds[:1] == ["audit.init"]
    for expected in ("user.add", "user.replace", "user.remove", "secret.add"):
        assert expected in kinds, kinds
    assert "secret.retire" in kinds
    added = next(r for r in records if r["type"] == "user.add")
    assert added["user"] == "bob" and added["realm"] == "natkit"
    assert added["algorithms"] == ["md5", "sha256"]
    assert added["actor"].startswith("os:")
    added_secret = [r for r in records if r["type"] == "secret.add"]
    assert all(len(r["fingerprint"]) == 8 for r in added_secret)
    text = (data_dir / "audit.log").read_text()
    assert password not in text
    assert chain_ok(data_dir)
    result = runner.invoke(main, ["audit", "verify", *common])
    assert result.exit_code == 0 and result.stdout.startswith("ok: ")


async def test_sighup_reloads_the_rest_secrets(tmp_path: Path) -> None:
    """``natkit secrets add`` then SIGHUP: the new secret works, and is audited."""
    import os
    import signal
    import time

    from natkit.security.secrets import add_rest_secret
    from natkit.turn.credentials import mint

    data_dir = tmp_path / "data"
    config = server_config(data_dir)
    async with running(config) as bound:
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
            pytest.skip("no SIGHUP handler here (not the main thread)")
        new = add_rest_secret(data_dir)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        credential = mint("henry", 600, new, time.time())
        async with TurnClient(
            "127.0.0.1",
            bound[0].port,
            username=credential.username,
            password=credential.password,
            timeout=TIMEOUT,
        ) as client:
            await client.allocate()
    reloads = [r for r in audit_records(data_dir) if r["type"] == "config.reload"]
    assert [r["outcome"] for r in reloads] == ["success"]
    assert reloads[0]["rest_secret_count"] == 2
    assert chain_ok(data_dir)
