"""The asyncio TURN client against real servers on loopback (RFC 8656).

coturn's ``turnserver`` (Debian 4.6.1) and ``natkit serve`` run as
subprocesses on 127.0.0.1 with long-term credentials and relaying to
loopback peers allowed; the peer is a UDP echo socket of the test. The
fixtures here are shared with ``test_cli_turn.py`` and ``test_bench_turn.py``.

coturn 4.6.1 start-up flags used (checked with ``turnserver -h``):
``-n`` (no config file), ``--listening-ip/--relay-ip 127.0.0.1``,
``--listening-port P``, ``--min-port/--max-port`` (relay range),
``--lt-cred-mech --user u:p --realm r``, ``--allow-loopback-peers`` (it
refuses 127.0.0.0/8 peers with 403 otherwise), ``--no-tls --no-dtls
--no-cli``, ``--log-file DIR/turn.log --simple-log --no-stdout-log``,
``--userdb DIR/turndb`` and ``--pidfile DIR/turnserver.pid``. It offers
only MD5 (a plain nonce without the RFC 8489 security-feature cookie) and
signs responses with MESSAGE-INTEGRITY.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import threading
import time
from asyncio.trsock import TransportSocket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import natkit
from interop.peers import (
    Endpoint,
    Listener,
    coturn_argv,
    coturn_long_term,
    free_port,
    require_binary,
    running_server,
)
from natkit.net import turn_client
from natkit.net.stun_client import ConnectionFailedError, StunTimeoutError
from natkit.net.turn_client import (
    AuthenticationError,
    TurnClient,
    TurnClosedError,
    TurnRequestError,
    probe,
    start_echo_peer,
)
from natkit.security.certs import ensure_self_signed, server_context
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.transaction import Transport
from natkit.turn.client import Address, ClientState

USER, PASSWORD, REALM = "tester", "s3cret-pass", "natkit.test"
SRC = str(Path(natkit.__file__).resolve().parent.parent)
CERT_FILE = "tls-cert.pem"


# --- servers, shared with the CLI and bench tests ------------------------------


@dataclass(frozen=True, slots=True)
class TurnServerUnderTest:
    """A running TURN server: where it listens and how to log in."""

    name: str
    ip: str
    port: int
    workdir: Path
    log_path: Path
    tls_port: int | None = None
    cafile: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def relay_block(count: int = 200) -> tuple[int, int]:
    """A random range of ``count`` relay ports in 49152-64999."""
    low = random.Random().randrange(49152, 65000 - count)
    return low, low + count - 1


def natkit_env() -> dict[str, str]:
    """The environment for a natkit subprocess: this checkout, no NATKIT_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


NATKIT_ARGV = [sys.executable, "-c", "from natkit.cli import main; main()"]


def natkit_serve_has_turn() -> bool:
    """Whether ``natkit serve`` is wired as a TURN server yet."""
    done = subprocess.run(
        [*NATKIT_ARGV, "serve", "--help"],
        capture_output=True,
        text=True,
        env=natkit_env(),
        timeout=30,
        check=False,
    )
    return "--relay-ports" in done.stdout and "--user " in done.stdout


def run_coturn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    """coturn's turnserver on 127.0.0.1 (UDP+TCP), long-term credentials.

    For a module-scoped fixture: ``yield from run_coturn(tmp_path_factory)``.
    """
    binary = require_binary("turnserver", "coturn")
    workdir = tmp_path_factory.mktemp("coturn-turn")
    endpoint = Endpoint("127.0.0.1", free_port("127.0.0.1"))
    options = coturn_long_term(USER, PASSWORD, REALM, relay_block())
    argv = coturn_argv(binary, endpoint, workdir, *options)
    listeners = [Listener(endpoint, udp=True), Listener(endpoint, udp=False)]
    with running_server(
        "turnserver", argv, workdir=workdir, listeners=listeners
    ) as server:
        yield TurnServerUnderTest(
            name="coturn",
            ip=endpoint.ip,
            port=endpoint.port,
            workdir=workdir,
            log_path=workdir / "turn.log",
        )
        del server


def run_natkit(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    """``natkit serve`` as a TURN server on 127.0.0.1: UDP, TCP, TLS.

    Skips while ``natkit serve`` has no TURN options. Loopback peers are
    allowed for 127.0.0.1/32 only (127.0.0.2 is refused with 403).
    """
    if not natkit_serve_has_turn():
        pytest.skip("natkit serve has no TURN options (--relay-ports, --user) yet")
    workdir = tmp_path_factory.mktemp("natkit-turn")
    endpoint = Endpoint("127.0.0.1", free_port("127.0.0.1"))
    tls = Endpoint("127.0.0.1", free_port("127.0.0.1"))
    low, high = relay_block()
    argv = [
        *NATKIT_ARGV,
        "serve",
        "--listen",
        f"udp:{endpoint}",
        "--listen",
        f"tcp:{endpoint}",
        "--listen",
        f"tls:{tls}",
        "--data-dir",
        str(workdir / "data"),
        "--user",
        f"{USER}:{PASSWORD}",
        "--realm",
        REALM,
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        f"{low}-{high}",
        "--allow-peer",
        "127.0.0.1/32",
        "--user-quota",
        "0",
    ]
    listeners = [
        Listener(endpoint, udp=True),
        Listener(endpoint, udp=False),
        Listener(tls, udp=False),
    ]
    with running_server(
        "natkit-serve",
        argv,
        workdir=workdir,
        listeners=listeners,
        env=natkit_env(),
        tls_endpoint=tls,
    ) as server:
        yield TurnServerUnderTest(
            name="natkit",
            ip=endpoint.ip,
            port=endpoint.port,
            workdir=workdir,
            log_path=server.log_path,
            tls_port=tls.port,
            cafile=workdir / "data" / CERT_FILE,
        )


def pick_server(request: pytest.FixtureRequest) -> TurnServerUnderTest:
    """For a fixture with params ``["coturn", "natkit"]``: that server."""
    server: TurnServerUnderTest = request.getfixturevalue(f"{request.param}_turn")
    return server


@pytest.fixture(scope="module")
def coturn_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_coturn(tmp_path_factory)


@pytest.fixture(scope="module")
def natkit_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_natkit(tmp_path_factory)


@pytest.fixture(params=["coturn", "natkit"])
def turn_server(request: pytest.FixtureRequest) -> TurnServerUnderTest:
    return pick_server(request)


def silent_udp_port() -> socket.socket:
    """A bound loopback UDP socket that never answers (for timeouts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# --- the driver against real servers ---------------------------------------------


def _client(
    server: TurnServerUnderTest, transport: Transport, **extra: object
) -> TurnClient:
    port = server.port
    if transport is Transport.TLS:
        assert server.tls_port is not None
        port = server.tls_port
    options: dict[str, object] = {"username": USER, "password": PASSWORD}
    options.update(extra)
    return TurnClient(
        server.ip,
        port,
        transport=transport,
        timeout=10.0,
        **options,  # type: ignore[arg-type]
    )


async def _relay_round_trip(
    server: TurnServerUnderTest, transport: Transport, **extra: object
) -> None:
    echo, peer = await start_echo_peer()
    try:
        async with _client(server, transport, **extra) as client:
            info = await client.allocate()
            assert info.relayed.ip == "127.0.0.1"
            assert info.mapped == Address(info.local.ip, info.local.port)
            assert info.lifetime > 0
            expected = PasswordAlgorithm.MD5
            if server.name == "natkit":
                expected = PasswordAlgorithm.SHA256
            assert client.core.algorithm is expected

            # Send indication -> Data indication
            await client.create_permission(peer.ip)
            client.send(peer, b"via indication")
            got = await asyncio.wait_for(client.recv(), 5)
            assert (got.peer, got.data, got.channel) == (peer, b"via indication", None)

            # ChannelData both ways
            channel = await client.bind_channel(peer)
            assert 0x4000 <= channel <= 0x4FFF
            client.send(peer, b"via channel")
            got = await asyncio.wait_for(client.recv(), 5)
            assert (got.peer, got.data, got.channel) == (peer, b"via channel", channel)

            assert await client.refresh() > 0
        assert client.core.state is ClientState.CLOSED
    finally:
        echo.close()


@pytest.mark.interop
@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
async def test_relay_round_trip(
    turn_server: TurnServerUnderTest, transport: Transport
) -> None:
    await _relay_round_trip(turn_server, transport)


@pytest.mark.interop
async def test_relay_round_trip_over_tls_to_natkit(
    natkit_turn: TurnServerUnderTest,
) -> None:
    assert natkit_turn.cafile is not None and natkit_turn.cafile.is_file()
    await _relay_round_trip(natkit_turn, Transport.TLS, cafile=str(natkit_turn.cafile))


@pytest.mark.interop
async def test_tls_verifies_the_certificate_by_default(
    natkit_turn: TurnServerUnderTest,
) -> None:
    client = _client(natkit_turn, Transport.TLS)
    with pytest.raises(ConnectionFailedError, match="not trusted"):
        await client.allocate()
    insecure = _client(natkit_turn, Transport.TLS, insecure=True)
    async with insecure:
        assert (await insecure.allocate()).lifetime > 0


@pytest.mark.interop
async def test_close_over_tls_closes_the_socket(
    natkit_turn: TurnServerUnderTest,
) -> None:
    """close() returns once the TLS connection is closed, not while the
    close_notify exchange is still under way (the socket would outlive it)."""
    assert natkit_turn.cafile is not None
    client = _client(natkit_turn, Transport.TLS, cafile=str(natkit_turn.cafile))
    await client.allocate()
    sock = client.extra_info("socket")
    assert isinstance(sock, socket.socket | TransportSocket)
    assert sock.fileno() >= 0
    await client.close()
    assert sock.fileno() == -1


def _silent_tls_server(
    tmp_path: Path, stop: threading.Event
) -> tuple[socket.socket, threading.Thread]:
    """A TLS server that completes the handshake and then reads nothing."""
    files = ensure_self_signed(tmp_path)
    context = server_context(files)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True):
            stop.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


async def test_close_aborts_a_tls_connection_the_server_does_not_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_client, "STREAM_CLOSE_TIMEOUT", 0.2)
    stop = threading.Event()
    listener, thread = _silent_tls_server(tmp_path, stop)
    try:
        port = listener.getsockname()[1]
        client = TurnClient(
            "127.0.0.1",
            port,
            username=USER,
            password=PASSWORD,
            transport=Transport.TLS,
            insecure=True,
        )
        await client.connect()
        sock = client.extra_info("socket")
        assert isinstance(sock, socket.socket | TransportSocket)
        started = time.monotonic()
        await client.close()
        assert time.monotonic() - started < 2.0
        assert sock.fileno() == -1
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.interop
async def test_wrong_password_is_authentication_failed(
    turn_server: TurnServerUnderTest,
) -> None:
    client = _client(turn_server, Transport.UDP, password="not-the-password")
    with pytest.raises(AuthenticationError, match="authentication failed") as info:
        await client.allocate()
    assert info.value.code == 401
    await client.close()


@pytest.mark.interop
async def test_peer_outside_the_allowed_range_is_403(
    natkit_turn: TurnServerUnderTest,
) -> None:
    async with _client(natkit_turn, Transport.UDP) as client:
        await client.allocate()
        with pytest.raises(TurnRequestError) as info:
            await client.create_permission("127.0.0.2")
        assert info.value.code == 403
        # the allocation is still there
        assert client.core.state is ClientState.ALLOCATED


@pytest.mark.interop
async def test_probe_sends_and_measures(turn_server: TurnServerUnderTest) -> None:
    echo, peer = await start_echo_peer()
    try:
        async with _client(turn_server, Transport.UDP) as client:
            report = await probe(client, peer, count=10, interval=0.002, size=32)
    finally:
        echo.close()
    assert (report.sent, report.received, report.loss_pct) == (10, 10, 0.0)
    low, mid, high = report.rtt(0.0), report.rtt(0.5), report.rtt(1.0)
    assert low is not None and mid is not None and high is not None
    assert 0 < low <= mid <= high < 2


@pytest.mark.interop
async def test_close_deletes_and_recv_then_fails(
    coturn_turn: TurnServerUnderTest,
) -> None:
    client = _client(coturn_turn, Transport.UDP)
    await client.allocate()
    await client.close()
    with pytest.raises(TurnClosedError):
        await client.recv()
    with pytest.raises(TurnClosedError):
        client.send(Address("127.0.0.1", 9), b"x")


# --- without a server ----------------------------------------------------------


async def test_udp_port_unreachable_is_connection_refused() -> None:
    port = free_port("127.0.0.1")
    client = TurnClient("127.0.0.1", port, username=USER, password=PASSWORD)
    with pytest.raises(ConnectionFailedError, match="refused"):
        await client.allocate()
    await client.close()


async def test_tcp_refused_is_connection_refused() -> None:
    port = free_port("127.0.0.1")
    client = TurnClient(
        "127.0.0.1", port, username=USER, password=PASSWORD, transport=Transport.TCP
    )
    with pytest.raises(ConnectionFailedError, match="refused"):
        await client.allocate()


async def test_silent_server_times_out() -> None:
    with silent_udp_port() as sock:
        port = sock.getsockname()[1]
        client = TurnClient(
            "127.0.0.1", port, username=USER, password=PASSWORD, timeout=0.3
        )
        with pytest.raises(StunTimeoutError, match="after 0.3 s"):
            await client.allocate()
        await client.close()


async def test_requests_need_an_allocation() -> None:
    client = TurnClient("127.0.0.1", 9, username=USER, password=PASSWORD)
    with pytest.raises(TurnClosedError, match="allocate"):
        await client.create_permission("127.0.0.1")


async def test_server_closing_the_stream_fails_the_request() -> None:
    async def hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(20)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = TurnClient(
            "127.0.0.1", port, username=USER, password=PASSWORD, transport=Transport.TCP
        )
        with pytest.raises(ConnectionFailedError, match="closed the connection"):
            await client.allocate()
        await client.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_on_the_stream_fails_the_request() -> None:
    async def babble(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(20)
        writer.write(b"\xff" * 8)
        await writer.drain()
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = TurnClient(
            "127.0.0.1", port, username=USER, password=PASSWORD, transport=Transport.TCP
        )
        with pytest.raises(ConnectionFailedError, match="out of step"):
            await client.allocate()
        await client.close()
    finally:
        server.close()
        await server.wait_closed()
