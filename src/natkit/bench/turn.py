"""TURN relay load generator that works against any TURN server (coturn too).

What one run does, in order:

1. starts ``echo_peers`` UDP echo peers on 127.0.0.1 (random ports) in a
   child process, so echoing does not take time from the measuring loop;
2. opens N UDP sockets to the server and runs N allocations at once (at most
   :data:`SETUP_WINDOW` in flight), each answering the 401 challenge: the time
   until all are granted gives allocations/s;
3. binds one channel per allocation to an echo peer (ChannelBind also
   installs the permission, RFC 8656 §12.2);
4. sends ChannelData round-robin over the allocations at ``rate`` packets/s
   in total for ``duration`` seconds; each payload carries a sequence number
   and its send time, so every echo gives one latency sample and duplicates
   are recognised;
5. waits up to :data:`DRAIN_TIME` for the last echoes, deletes the
   allocations (Refresh 0) and stops the echo process.

The load itself is the sans-IO :class:`RelayLoad`; :func:`run_bench` is its
asyncio driver. Everything goes to the one server address given, and the
echo peers listen on loopback only: the server must allow relaying to
127.0.0.1 (``natkit serve --allow-peer 127.0.0.1/32``, coturn
``--allow-loopback-peers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import socket
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from natkit.bench.stun import percentile
from natkit.net.stun_client import StunClientError
from natkit.net.turn_client import TurnClient, TurnRequestError
from natkit.stun.constants import ErrorCode
from natkit.stun.errors import NatkitError, UsageError
from natkit.stun.transaction import Transport
from natkit.turn.client import Address

logger = logging.getLogger(__name__)

#: bounds that keep a run finite whatever the flags say
MAX_DURATION = 300.0
MAX_ALLOCATIONS = 1000
MAX_RATE = 200_000.0
MAX_ECHO_PEERS = 8
MIN_SIZE = 16
MAX_SIZE = 1200
#: the aggregate rate when none is given
DEFAULT_RATE = 20_000.0
#: allocations being set up at once
SETUP_WINDOW = 64
#: how long setting up all allocations and channels may take
SETUP_TIMEOUT = 60.0
#: how long to wait for echoes after the last packet was sent
DRAIN_TIME = 1.0
#: at most this many latency samples are kept (evenly spread)
MAX_SAMPLES = 1_000_000
#: the longest a single pacing tick may send for (burst limit), in seconds
MAX_BURST = 0.005

_PAYLOAD = struct.Struct("!Qd")
_CHANNEL_HEADER = struct.Struct("!HH")


class TurnBenchError(NatkitError):
    """The bench could not run; the message is one line for a user."""


@dataclass(frozen=True, slots=True)
class TurnBenchConfig:
    """What to run: ``allocations`` relays, ``rate`` packets/s in total of
    ``size``-byte payloads for ``duration`` seconds."""

    username: str
    password: str
    allocations: int = 10
    duration: float = 10.0
    rate: float = DEFAULT_RATE
    size: int = 100
    realm: str | None = None
    echo_peers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.allocations <= MAX_ALLOCATIONS:
            raise UsageError(
                f"allocations must be 1..{MAX_ALLOCATIONS}, not {self.allocations}"
            )
        if not 0 < self.duration <= MAX_DURATION:
            raise UsageError(
                f"duration must be in (0, {MAX_DURATION:g}] s, not {self.duration:g}"
            )
        if not 0 < self.rate <= MAX_RATE:
            raise UsageError(f"rate must be in (0, {MAX_RATE:g}], not {self.rate:g}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise UsageError(f"size must be {MIN_SIZE}..{MAX_SIZE}, not {self.size}")
        if not 1 <= self.echo_peers <= MAX_ECHO_PEERS:
            raise UsageError(f"echo peers must be 1..{MAX_ECHO_PEERS}")

    @property
    def max_packets(self) -> int:
        return math.ceil(self.rate * self.duration) + 1


@dataclass(frozen=True, slots=True)
class TurnBenchReport:
    """The outcome of one run; times in seconds, latencies in milliseconds."""

    target: str
    allocations: int
    allocated: int
    setup_failures: int
    setup_error: str | None
    allocate_s: float
    allocations_per_s: float
    channels_s: float
    duration_s: float
    rate: float
    size: int
    echo_peers: int
    sent: int
    received: int
    duplicates: int
    invalid: int
    lost: int
    loss_pct: float
    relayed_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --- the load, sans-IO ---------------------------------------------------------


class RelayLoad:
    """Pacing, payloads and echo bookkeeping for one run.

    :meth:`due` says how many packets may go at ``now`` to stay at the rate;
    :meth:`payload` builds the next one; :meth:`handle_echo` takes a payload
    that came back. Times are seconds of one monotonic clock.
    """

    def __init__(self, config: TurnBenchConfig, now: float) -> None:
        self.config = config
        self.started_at = now
        self.stop_at = now + config.duration
        self.stopped_at: float | None = None
        self.sent = 0
        self.received = 0
        self.duplicates = 0
        self.invalid = 0
        self.latencies: array[float] = array("d")
        self._seen = bytearray(config.max_packets)
        self._sample_every = max(1, math.ceil(config.max_packets / MAX_SAMPLES))
        self._padding = b"\x00" * (config.size - _PAYLOAD.size)
        self._burst = max(1, int(config.rate * MAX_BURST))

    @property
    def sending(self) -> bool:
        return self.stopped_at is None

    def due(self, now: float) -> int:
        """Packets to send at ``now``: behind schedule, at most one burst."""
        if self.stopped_at is None and now >= self.stop_at:
            self.stopped_at = now
        if self.stopped_at is not None:
            return 0
        target = int((now - self.started_at) * self.config.rate) + 1
        return max(0, min(target - self.sent, self._burst, len(self._seen) - self.sent))

    def payload(self, now: float) -> bytes:
        """The next payload: sequence number, send time, padding."""
        seq = self.sent
        self.sent += 1
        return _PAYLOAD.pack(seq, now) + self._padding

    def handle_echo(self, payload: bytes | memoryview, now: float) -> None:
        """One echoed payload: count it once, sample its latency."""
        if len(payload) < _PAYLOAD.size:
            self.invalid += 1
            return
        seq, sent_at = _PAYLOAD.unpack_from(payload)
        if seq >= self.sent:
            self.invalid += 1
            return
        if self._seen[seq]:
            self.duplicates += 1
            return
        self._seen[seq] = 1
        self.received += 1
        if seq % self._sample_every == 0:
            self.latencies.append(now - sent_at)

    def all_back(self) -> bool:
        return self.received >= self.sent


# --- echo peers in a child process -----------------------------------------------


def echo_peer_main(argv: list[str] | None = None) -> None:
    """Child process: UDP echo sockets on 127.0.0.1; prints their ports.

    ``argv``: number of sockets and the seconds to live. It also stops when
    its parent goes away, so a killed bench leaves nothing behind.
    """
    args = sys.argv[1:] if argv is None else argv
    count, lifetime = int(args[0]), float(args[1])
    parent = os.getppid()
    deadline = time.monotonic() + lifetime
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, 1 << 22)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sockets.append(sock)
    ports = " ".join(str(s.getsockname()[1]) for s in sockets)
    sys.stdout.write(ports + "\n")
    sys.stdout.flush()
    while time.monotonic() < deadline and os.getppid() == parent:
        ready, _, _ = select.select(sockets, [], [], 0.2)
        for sock in ready:
            _echo_burst(sock)


def _echo_burst(sock: socket.socket) -> None:
    """Echo what is queued on ``sock`` (bounded, so others get a turn)."""
    recv, send = sock.recvfrom, sock.sendto
    for _ in range(256):
        try:
            data, addr = recv(65535)
        except BlockingIOError:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            send(data, addr)


class EchoPeers:
    """The echo child process: started, asked for its ports, always stopped."""

    def __init__(self, count: int, lifetime: float) -> None:
        self.count = count
        self.lifetime = lifetime
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []

    def start(self, timeout: float = 10.0) -> list[int]:
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (src, env.get("PYTHONPATH", "")) if p
        )
        code = "from natkit.bench.turn import echo_peer_main; echo_peer_main()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(self.count), f"{self.lifetime:g}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
        )
        stdout = self.process.stdout
        if stdout is None:
            raise TurnBenchError("echo peer process has no stdout")
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline().decode(errors="replace") if ready else ""
        try:
            self.ports = [int(word) for word in line.split()]
        except ValueError:
            self.ports = []
        if len(self.ports) != self.count:
            self.stop()
            raise TurnBenchError("the UDP echo peer process did not start")
        return self.ports

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


# --- the asyncio driver -----------------------------------------------------------


class _Session:
    """One allocation with its channel to an echo peer."""

    def __init__(self, make: Callable[[], TurnClient], peer: Address) -> None:
        self.make = make
        self.client = make()
        self.peer = peer
        self.header = b""
        self.error: str | None = None

    async def connect(self) -> None:
        await self.client.connect()
        _grow_buffers(self.client)

    async def renew(self) -> None:
        """A fresh socket, so a fresh 5-tuple (after 437, RFC 8656 §7.3)."""
        await self.client.close()
        self.client = self.make()
        await self.connect()


def _forbidden_hint(error: TurnRequestError) -> str:
    return (
        f"{error} - the server does not relay to the loopback echo peer; "
        "start natkit serve with --allow-peer 127.0.0.1/32 "
        "(coturn: --allow-loopback-peers)"
    )


async def run_bench(host: str, port: int, config: TurnBenchConfig) -> TurnBenchReport:
    """Run the bench against ``host:port`` (an IP address) and report.

    Raises :class:`TurnBenchError` (or another :class:`NatkitError`) with
    one line when not a single allocation could be set up.
    """
    target = str(Address(host, port))
    lifetime = SETUP_TIMEOUT * 2 + config.duration + DRAIN_TIME + 30
    echo = EchoPeers(config.echo_peers, lifetime)
    echo_ports = echo.start()
    sessions: list[_Session] = []
    try:
        return await _run(host, port, config, target, echo_ports, sessions)
    finally:
        await _close_all(sessions)
        echo.stop()


async def _run(
    host: str,
    port: int,
    config: TurnBenchConfig,
    target: str,
    echo_ports: list[int],
    sessions: list[_Session],
) -> TurnBenchReport:
    load = RelayLoad(config, time.perf_counter())
    clock = time.perf_counter

    def on_channel_data(frame: bytes) -> None:
        load.handle_echo(memoryview(frame)[4:], clock())

    # step 1: the clients, each on its own UDP socket (its own 5-tuple)
    def make() -> TurnClient:
        return TurnClient(
            host,
            port,
            username=config.username,
            password=config.password,
            realm=config.realm,
            transport=Transport.UDP,
            timeout=SETUP_TIMEOUT,
            on_channel_data=on_channel_data,
        )

    for index in range(config.allocations):
        peer = Address("127.0.0.1", echo_ports[index % len(echo_ports)])
        sessions.append(_Session(make, peer))
    for session in sessions:
        await session.connect()

    # step 2: allocations (with the 401 round trip), then the channels
    window = asyncio.Semaphore(SETUP_WINDOW)
    started = clock()
    async with asyncio.timeout(SETUP_TIMEOUT):
        await asyncio.gather(*(_allocate_only(s, window) for s in sessions))
    allocated_at = clock()
    live = [s for s in sessions if s.error is None]
    async with asyncio.timeout(SETUP_TIMEOUT):
        await asyncio.gather(*(_bind_only(s, window) for s in live))
    bound_at = clock()
    ready = [s for s in sessions if s.error is None]
    failures = [s.error for s in sessions if s.error is not None]
    if not ready:
        raise TurnBenchError(failures[0] if failures else "no allocation")
    allocated = sum(1 for s in sessions if s.client.info is not None)

    # step 3: paced ChannelData, round-robin over the allocations
    frames: list[tuple[Callable[[bytes], None], bytes]] = [
        (s.client.send_frame, s.header + struct.pack("!H", config.size)) for s in ready
    ]
    load = RelayLoad(config, clock())
    await _pace(load, frames)
    end = clock()
    deadline = end + DRAIN_TIME
    while not load.all_back() and clock() < deadline:
        await asyncio.sleep(0.01)
    return _report(
        load,
        config,
        target=target,
        allocated=allocated,
        failures=failures,
        allocate_s=allocated_at - started,
        channels_s=bound_at - allocated_at,
        duration=end - load.started_at,
    )


async def hold_allocations(
    host: str,
    port: int,
    *,
    username: str,
    password: str,
    count: int,
    on_held: Callable[[int], None],
    realm: str | None = None,
) -> int:
    """Set up ``count`` allocations with a channel each, call ``on_held``, end.

    For measuring a server's memory per allocation: every allocation gets a
    permission and a channel (to a loopback UDP socket that nobody reads;
    no data is relayed). ``on_held(allocated)`` runs (blocking the loop)
    while all are held; then every allocation is deleted. Returns how many
    were allocated. ``count`` may exceed :data:`MAX_ALLOCATIONS`; the open
    file limit must allow a socket per allocation.
    """
    if count < 1:
        raise UsageError("count must be at least 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        peer = Address("127.0.0.1", sink.getsockname()[1])

        def make() -> TurnClient:
            return TurnClient(
                host,
                port,
                username=username,
                password=password,
                realm=realm,
                transport=Transport.UDP,
                timeout=SETUP_TIMEOUT,
            )

        sessions = [_Session(make, peer) for _ in range(count)]
        try:
            for session in sessions:
                await session.connect()
            window = asyncio.Semaphore(SETUP_WINDOW)
            async with asyncio.timeout(SETUP_TIMEOUT * 4):
                await asyncio.gather(*(_allocate_only(s, window) for s in sessions))
                live = [s for s in sessions if s.error is None]
                await asyncio.gather(*(_bind_only(s, window) for s in live))
            allocated = sum(1 for s in sessions if s.client.info is not None)
            on_held(allocated)
            return allocated
        finally:
            await _close_all(sessions, timeout=max(10.0, count / 200))


async def _allocate_only(session: _Session, window: asyncio.Semaphore) -> None:
    """Allocate; after 437 (the 5-tuple is still taken on the server, e.g.
    by an earlier run's socket with the same port) retry from a new one."""
    async with window:
        for attempt in range(3):
            try:
                await session.client.allocate()
                return
            except TurnRequestError as exc:
                if exc.code == ErrorCode.ALLOCATION_MISMATCH and attempt < 2:
                    await session.renew()
                    continue
                session.error = str(exc)
            except StunClientError as exc:
                session.error = str(exc)
            return


async def _bind_only(session: _Session, window: asyncio.Semaphore) -> None:
    async with window:
        try:
            channel = await session.client.bind_channel(session.peer)
        except TurnRequestError as exc:
            session.error = _forbidden_hint(exc) if exc.code == 403 else str(exc)
            return
        except StunClientError as exc:
            session.error = str(exc)
            return
        session.header = struct.pack("!H", channel)


async def _pace(
    load: RelayLoad, frames: list[tuple[Callable[[bytes], None], bytes]]
) -> None:
    """Send at the rate until the duration is over (1 ms ticks)."""
    clock = time.perf_counter
    count = len(frames)
    senders = [sender for sender, _ in frames]
    headers = [header for _, header in frames]
    index = 0
    while load.sending:
        now = clock()
        for _ in range(load.due(now)):
            send = senders[index]
            send(headers[index] + load.payload(now))
            index = index + 1 if index + 1 < count else 0
        await asyncio.sleep(0.001)


async def _close_all(sessions: list[_Session], timeout: float = 10.0) -> None:
    """Delete every allocation (Refresh 0), ``timeout`` seconds at most."""
    if not sessions:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(
                *(s.client.close() for s in sessions), return_exceptions=True
            )


def _grow_buffers(client: TurnClient) -> None:
    sock = client.extra_info("socket")
    if not isinstance(sock, socket.socket):
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, 1 << 20)


def _report(
    load: RelayLoad,
    config: TurnBenchConfig,
    *,
    target: str,
    allocated: int,
    failures: list[str],
    allocate_s: float,
    channels_s: float,
    duration: float,
) -> TurnBenchReport:
    latencies = array("d", sorted(load.latencies))
    duration = max(duration, 1e-9)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 3)

    lost = load.sent - load.received
    return TurnBenchReport(
        target=target,
        allocations=config.allocations,
        allocated=allocated,
        setup_failures=len(failures),
        setup_error=failures[0] if failures else None,
        allocate_s=round(allocate_s, 4),
        allocations_per_s=round(allocated / max(allocate_s, 1e-9), 1),
        channels_s=round(channels_s, 4),
        duration_s=round(duration, 3),
        rate=config.rate,
        size=config.size,
        echo_peers=config.echo_peers,
        sent=load.sent,
        received=load.received,
        duplicates=load.duplicates,
        invalid=load.invalid,
        lost=lost,
        loss_pct=round(100.0 * lost / load.sent, 3) if load.sent else 0.0,
        relayed_per_s=round(load.received / duration, 1),
        latency_p50_ms=ms(percentile(latencies, 0.50)),
        latency_p99_ms=ms(percentile(latencies, 0.99)),
        latency_max_ms=ms(latencies[-1] if latencies else None),
    )


def format_report(report: TurnBenchReport) -> list[str]:
    """The report as aligned lines for a terminal."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"target          {report.target} (udp, {report.echo_peers} echo peer"
        f"{'s' if report.echo_peers > 1 else ''} on 127.0.0.1)",
        f"allocations     {report.allocated}/{report.allocations} in "
        f"{report.allocate_s:.3f} s ({report.allocations_per_s:.1f}/s), "
        f"channels in {report.channels_s:.3f} s",
    ]
    if report.setup_error is not None:
        lines.append(f"setup failures  {report.setup_failures}: {report.setup_error}")
    lines += [
        f"duration        {report.duration_s:.3f} s at {report.rate:g} pps, "
        f"{report.size} B payloads",
        f"sent            {report.sent}",
        f"received        {report.received} (duplicates {report.duplicates}, "
        f"invalid {report.invalid})",
        f"relayed/s       {report.relayed_per_s:.1f}",
        f"lost            {report.lost} ({report.loss_pct:.3f} %)",
        f"latency ms      p50 {ms(report.latency_p50_ms)}  "
        f"p99 {ms(report.latency_p99_ms)}  max {ms(report.latency_max_ms)}",
    ]
    return lines
