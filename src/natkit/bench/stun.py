"""Binding-request load generator that works against any STUN server.

The load itself is a sans-IO object, :class:`BindingLoad`: it says how many
requests may go out at ``now`` (a window of requests in flight, optionally a
rate), matches responses by transaction id, expires requests that went
unanswered and collects latencies. :func:`run_bench` is its asyncio driver:
a few connected UDP sockets to the one target address, a 1 ms pacing timer,
and a hard stop after the duration.

Requests are plain RFC 8489 §6.1 Binding requests with no attributes; a
response counts when it is a Binding success response (RFC 8489 §6.3.1) with
the id of a request still in flight. Every :data:`VERIFY_EVERY`-th response is
also decoded in full, so a server that answers with garbage shows up as
``invalid`` rather than as a fast server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from array import array
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from natkit.stun.attributes import MappedAddress, XorMappedAddress
from natkit.stun.constants import MAGIC_COOKIE_BYTES, MessageClass, Method
from natkit.stun.errors import DecodeError, UsageError
from natkit.stun.message import decode, message_type

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: upper bounds that keep a run finite whatever the flags say
MAX_DURATION = 300.0
MAX_WINDOW = 10_000
MAX_SOCKETS = 64
MAX_RATE = 1_000_000.0

#: decode every n-th response in full to check it really is a Binding success
VERIFY_EVERY = 64

_REQUEST_TYPE = message_type(Method.BINDING, MessageClass.REQUEST).to_bytes(2, "big")
_SUCCESS_TYPE = message_type(Method.BINDING, MessageClass.SUCCESS).to_bytes(2, "big")
_ERROR_TYPE = message_type(Method.BINDING, MessageClass.ERROR).to_bytes(2, "big")
_REQUEST_PREFIX = _REQUEST_TYPE + b"\x00\x00" + MAGIC_COOKIE_BYTES


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to run: ``window`` requests in flight at most, ``rate`` per second
    at most (None: as fast as responses come back), for ``duration`` seconds.

    A request unanswered after ``request_timeout`` seconds counts as lost.
    """

    duration: float
    window: int = 64
    rate: float | None = None
    sockets: int = 4
    request_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.duration <= MAX_DURATION:
            raise UsageError(
                f"duration must be in (0, {MAX_DURATION:g}] s, not {self.duration:g}"
            )
        if not 1 <= self.window <= MAX_WINDOW:
            raise UsageError(f"window must be 1..{MAX_WINDOW}, not {self.window}")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise UsageError(f"rate must be in (0, {MAX_RATE:g}], not {self.rate:g}")
        if not 1 <= self.sockets <= MAX_SOCKETS:
            raise UsageError(f"sockets must be 1..{MAX_SOCKETS}, not {self.sockets}")
        if not 0 < self.request_timeout <= 10:
            raise UsageError(
                f"request timeout must be in (0, 10] s, not {self.request_timeout:g}"
            )


@dataclass(frozen=True, slots=True)
class BenchReport:
    """The outcome of one run; latencies in milliseconds."""

    target: str
    duration_s: float
    window: int
    rate: float | None
    sockets: int
    sent: int
    received: int
    errors: int
    invalid: int
    late: int
    lost: int
    responses_per_s: float
    loss_pct: float
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(sorted_values: array[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class BindingLoad:
    """The sans-IO part of the load generator: ids, window, rate, statistics.

    All methods take ``now`` (seconds, any monotonic clock with fine
    resolution). Call :meth:`due` for the requests to send now,
    :meth:`handle_response` with every datagram received, and
    :meth:`handle_timeout` regularly to expire unanswered requests.
    """

    def __init__(self, config: BenchConfig, now: float) -> None:
        self.config = config
        self.started_at = now
        self.stop_at = now + config.duration
        self.stopped_at: float | None = None
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.invalid = 0
        self.late = 0
        self.lost = 0
        self.latencies: array[float] = array("d")
        self._in_flight: dict[bytes, float] = {}
        self._order: deque[bytes] = deque()
        self._id_prefix = os.urandom(4)
        self._counter = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def sending(self) -> bool:
        return self.stopped_at is None

    def finished(self, now: float) -> bool:
        """True once sending has stopped and nothing is left to wait for."""
        if self.stopped_at is None:
            return False
        return (
            not self._in_flight or now >= self.stopped_at + self.config.request_timeout
        )

    def due(self, now: float) -> list[bytes]:
        """The requests to send at ``now``: fill the window, within the rate."""
        if self.stopped_at is None and now >= self.stop_at:
            self.stopped_at = now
        if self.stopped_at is not None:
            return []
        count = self.config.window - len(self._in_flight)
        if self.config.rate is not None:
            allowed = int((now - self.started_at) * self.config.rate) + 1 - self.sent
            count = min(count, allowed)
        return [self._new_request(now) for _ in range(count)]

    def _new_request(self, now: float) -> bytes:
        self._counter += 1
        tid = self._id_prefix + self._counter.to_bytes(8, "big")
        self._in_flight[tid] = now
        self._order.append(tid)
        self.sent += 1
        return _REQUEST_PREFIX + tid

    def handle_response(self, data: bytes, now: float) -> None:
        """Match one datagram to a request in flight by its transaction id."""
        if len(data) < 20 or data[4:8] != MAGIC_COOKIE_BYTES:
            self.invalid += 1
            return
        sent_at = self._in_flight.pop(data[8:20], None)
        if sent_at is None:
            # a response after its request was declared lost, or a stray
            self.late += 1
            return
        kind = data[0:2]
        if kind == _SUCCESS_TYPE:
            if self.received % VERIFY_EVERY == 0 and not _is_valid_success(data):
                self.invalid += 1
                return
            self.received += 1
            self.latencies.append(now - sent_at)
        elif kind == _ERROR_TYPE:
            self.errors += 1
        else:
            self.invalid += 1

    def handle_timeout(self, now: float) -> None:
        """Count requests older than the request timeout as lost."""
        limit = now - self.config.request_timeout
        order, in_flight = self._order, self._in_flight
        while order:
            tid = order[0]
            sent_at = in_flight.get(tid)
            if sent_at is not None and sent_at > limit:
                break
            order.popleft()
            if sent_at is not None:
                del in_flight[tid]
                self.lost += 1

    def report(self, target: str, now: float) -> BenchReport:
        """Close the run: whatever is still in flight is lost."""
        self.lost += len(self._in_flight)
        self._in_flight.clear()
        self._order.clear()
        end = self.stopped_at if self.stopped_at is not None else now
        duration = max(end - self.started_at, 1e-9)
        latencies = array("d", sorted(self.latencies))

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return BenchReport(
            target=target,
            duration_s=round(duration, 3),
            window=self.config.window,
            rate=self.config.rate,
            sockets=self.config.sockets,
            sent=self.sent,
            received=self.received,
            errors=self.errors,
            invalid=self.invalid,
            late=self.late,
            lost=self.lost,
            responses_per_s=round(self.received / duration, 1),
            loss_pct=round(100.0 * self.lost / self.sent, 3) if self.sent else 0.0,
            latency_p50_ms=ms(percentile(latencies, 0.50)),
            latency_p90_ms=ms(percentile(latencies, 0.90)),
            latency_p99_ms=ms(percentile(latencies, 0.99)),
            latency_max_ms=ms(latencies[-1] if latencies else None),
        )


def _is_valid_success(data: bytes) -> bool:
    """RFC 8489 §6.3.1: a Binding success response with a mapped address."""
    try:
        msg = decode(data)
    except DecodeError:
        return False
    if msg.unknown_required:
        return False
    return msg.get(XorMappedAddress) is not None or msg.get(MappedAddress) is not None


# --- asyncio driver ------------------------------------------------------------


class _BenchProtocol(asyncio.DatagramProtocol):
    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._driver.on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable) on a connected socket: the
        # request is lost either way, the timeout counts it
        self._driver.icmp_errors += 1


class _Driver:
    """Moves the bytes of a :class:`BindingLoad` over connected UDP sockets."""

    def __init__(self, load: BindingLoad) -> None:
        self.load = load
        self.transports: list[asyncio.DatagramTransport] = []
        self.icmp_errors = 0
        self._next = 0

    def send(self, datagrams: list[bytes]) -> None:
        transports, n = self.transports, len(self.transports)
        for datagram in datagrams:
            transports[self._next].sendto(datagram)
            self._next = (self._next + 1) % n

    def on_datagram(self, data: bytes) -> None:
        now = time.perf_counter()
        self.load.handle_response(data, now)
        if self.load.sending:
            self.send(self.load.due(now))


async def run_bench(host: str, port: int, config: BenchConfig) -> BenchReport:
    """Run the load against ``host:port`` (an IP address) and report.

    Sends only to that one address. The run ends by itself after
    ``config.duration`` plus at most ``config.request_timeout``.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    target = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    load = BindingLoad(config, time.perf_counter())
    driver = _Driver(load)
    try:
        for _ in range(config.sockets):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _BenchProtocol(driver), remote_addr=(host, port), family=family
            )
            _grow_buffers(transport)
            driver.transports.append(transport)

        # restart the clock now that the sockets exist
        load = BindingLoad(config, time.perf_counter())
        driver.load = load
        while True:
            now = time.perf_counter()
            load.handle_timeout(now)
            if load.sending:
                driver.send(load.due(now))
            if load.finished(now):
                break
            await asyncio.sleep(0.001)
        report = load.report(target, time.perf_counter())
    finally:
        for transport in driver.transports:
            transport.close()
    if driver.icmp_errors:
        logger.info("%d ICMP errors from %s", driver.icmp_errors, target)
    return report


def _grow_buffers(transport: asyncio.DatagramTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, 1 << 20)


def run_on_fast_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on uvloop when it is installed, else on plain asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def format_report(report: BenchReport) -> list[str]:
    """The report as aligned lines for a terminal."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rate = "unlimited" if report.rate is None else f"{report.rate:g}/s"
    return [
        f"target        {report.target} (udp, {report.sockets} sockets, "
        f"window {report.window}, rate {rate})",
        f"duration      {report.duration_s:.3f} s",
        f"sent          {report.sent}",
        f"received      {report.received} (errors {report.errors}, "
        f"invalid {report.invalid}, late {report.late})",
        f"responses/s   {report.responses_per_s:.1f}",
        f"lost          {report.lost} ({report.loss_pct:.3f} %)",
        f"latency ms    p50 {ms(report.latency_p50_ms)}  "
        f"p90 {ms(report.latency_p90_ms)}  p99 {ms(report.latency_p99_ms)}  "
        f"max {ms(report.latency_max_ms)}",
    ]
