"""asyncio driver of the RFC 5780 §4 NAT behaviour probe.

The sans-IO :class:`~natkit.nat.discovery.NatProber` decides every test;
:func:`probe` only does what it cannot:

1. resolves the server (and the ``extra_servers``, in the server's address
   family) with getaddrinfo;
2. finds the local IP that routes to the server (a connected UDP socket
   that sends nothing), because the prober compares the mapped address with
   the local one (RFC 5780 §4.3) and so needs a concrete address, not a
   wildcard. Nothing assumes loopback: inside a network namespace this is
   the address of the namespace's interface toward the server;
3. opens one unconnected UDP socket on that IP per id in
   :attr:`~natkit.nat.discovery.ProbeConfig.socket_ids` (unconnected, so
   responses from the alternate addresses and hairpinned requests get in);
4. sends what :meth:`~NatProber.datagrams_to_send` returns, hands every
   datagram to :meth:`~NatProber.handle_response` with the socket it came
   in on, and wakes the prober with ``loop.call_at`` at
   :meth:`~NatProber.next_deadline`.

A server that never answers is a result (``udp-blocked``), not an error;
errors are for what stops the probe from running at all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
from collections.abc import Sequence
from typing import Any

from natkit.nat.classify import NatType
from natkit.nat.discovery import NatProber, ProbeConfig, ProbeResult
from natkit.nat.endpoint import Endpoint
from natkit.net.stun_client import ServerSpec, StunClientError, resolve
from natkit.stun.transaction import RetransmitPolicy, Transport

logger = logging.getLogger(__name__)

#: the shape of PROBE_POLICY (5 sends, then 5 RTOs) with a chosen total wait
_PROBE_RC = 5
_PROBE_RM = 5
#: the most tests (batches) the plan runs besides port samples, extra
#: servers and the lifetime search; only for the safety limit
_BASE_STEPS = 12


class ProbeError(StunClientError):
    """The probe could not run: no route, no socket, a bad address."""


def probe_policy(timeout: float) -> RetransmitPolicy:
    """Timers giving up ``timeout`` s after a test's first send (5 sends).

    With Rc = Rm = 5 the wait is 20 RTOs (RFC 8489 §6.2.1 arithmetic), so
    3 s gives the default PROBE_POLICY, RTO 150 ms.
    """
    if not timeout > 0:
        raise ProbeError(f"timeout must be positive, not {timeout}")
    rto = timeout / (2 ** (_PROBE_RC - 1) - 1 + _PROBE_RM)
    return RetransmitPolicy(rto=rto, rc=_PROBE_RC, rm=_PROBE_RM)


def time_limit(config: ProbeConfig, extra_servers: int) -> float:
    """An upper bound for a whole probe, as a safety limit (seconds).

    The prober ends on its own timers; this only keeps a bug from hanging
    the caller. The binding lifetime search (RFC 5780 §4.6) dominates when
    enabled: each trial waits up to ``lifetime_max`` plus two tests.
    """
    per_test = config.policy.give_up_after(Transport.UDP) + config.pacing
    steps = _BASE_STEPS + 2 * extra_servers + config.port_samples
    limit = per_test * steps
    if config.lifetime_max is not None:
        high = config.lifetime_max
        trials = 4 + math.log2(max(high / config.lifetime_start, 1.0))
        trials += math.log2(max(high / config.lifetime_resolution, 1.0))
        limit += (high + 2 * per_test) * trials
    return limit + 5.0


def lifetime_estimate(config: ProbeConfig) -> float | None:
    """About how long the RFC 5780 §4.6 search may idle in all (seconds).

    The doubling and halving of :meth:`NatProber._lifetime` wait at most
    about ``lifetime_max`` × (2 + log2(lifetime_max / lifetime_resolution)).
    """
    high = config.lifetime_max
    if high is None:
        return None
    return high * (2 + math.log2(max(high / config.lifetime_resolution, 1.0)))


async def probe(
    server: ServerSpec,
    *,
    extra_servers: Sequence[ServerSpec] = (),
    family: socket.AddressFamily = socket.AF_UNSPEC,
    config: ProbeConfig | None = None,
    local_ip: str | None = None,
) -> ProbeResult:
    """Run RFC 5780 §4 discovery against ``server``; return what it found.

    ``local_ip`` overrides the address the sockets bind to (by default the
    one that routes to the server). Raises :class:`ProbeError` (or another
    :class:`~natkit.net.stun_client.StunClientError`, e.g. when a name does
    not resolve) with a one-line message.
    """
    config = config or ProbeConfig()
    target = await _resolve(server, family)
    extras = [await _resolve(s, _family_of(target)) for s in extra_servers]
    ip = local_ip if local_ip is not None else route_ip(target)
    sockets = _open_sockets(config.socket_ids, ip, _family_of(target))
    try:
        local = {sid: _sock_endpoint(sock) for sid, sock in sockets.items()}
        prober = NatProber(target, local=local, extra_servers=extras, config=config)
        limit = time_limit(config, len(extras))
        return await _drive(prober, sockets, limit)
    finally:
        # those the event loop did not take over (it closes its own)
        for sock in sockets.values():
            sock.close()


async def _resolve(server: ServerSpec, family: socket.AddressFamily) -> Endpoint:
    address = await resolve(server, transport=Transport.UDP, family=family)
    return Endpoint(address.ip.partition("%")[0], address.port)


def _family_of(endpoint: Endpoint) -> socket.AddressFamily:
    return socket.AF_INET6 if endpoint.is_ipv6 else socket.AF_INET


def route_ip(destination: Endpoint) -> str:
    """The local IP the kernel would send from to ``destination``.

    Connecting a UDP socket picks the route and source address without
    sending a packet. Raises :class:`ProbeError` when there is no route.
    """
    family = _family_of(destination)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((destination.ip, destination.port))
        except OSError as exc:
            raise ProbeError(
                f"no route to {destination}: {exc.strerror or exc}"
            ) from None
        ip = str(sock.getsockname()[0])
    return ip.partition("%")[0]


def _open_sockets(
    ids: Sequence[str], ip: str, family: socket.AddressFamily
) -> dict[str, socket.socket]:
    """One unconnected UDP socket per id, each on ``ip`` and its own port."""
    opened: dict[str, socket.socket] = {}
    try:
        for sid in ids:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            opened[sid] = sock
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((ip, 0))
            sock.setblocking(False)
    except OSError as exc:
        for sock in opened.values():
            sock.close()
        where = f"[{ip}]" if ":" in ip else ip
        raise ProbeError(
            f"cannot open a UDP socket on {where}: {exc.strerror or exc}"
        ) from None
    return opened


def _sock_endpoint(sock: socket.socket) -> Endpoint:
    host, port = sock.getsockname()[:2]
    return Endpoint(str(host).partition("%")[0], int(port))


async def _drive(
    prober: NatProber, sockets: dict[str, socket.socket], limit: float
) -> ProbeResult:
    """Run the prober to its end on the running loop.

    Each socket handed to the loop is removed from ``sockets``: from then
    on its transport owns it.
    """
    loop = asyncio.get_running_loop()
    driver = _Driver(prober, loop)
    try:
        for sid in list(sockets):
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_ProbeProtocol, driver, sid), sock=sockets[sid]
            )
            del sockets[sid]
            driver.transports[sid] = transport
        driver.start()
        try:
            async with asyncio.timeout(limit):
                return await driver.finished
        except TimeoutError:
            raise ProbeError(
                f"the probe of {prober.server} did not finish in {limit:.0f} s "
                f"(stuck at {prober.phase})"
            ) from None
    finally:
        driver.stop()
        # let the transports run connection_lost and close their sockets
        await asyncio.sleep(0)


class _Driver:
    """Moves the prober's datagrams and wakes it at its deadlines."""

    def __init__(self, prober: NatProber, loop: asyncio.AbstractEventLoop) -> None:
        self.prober = prober
        self.loop = loop
        self.transports: dict[str, asyncio.DatagramTransport] = {}
        self.finished: asyncio.Future[ProbeResult] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.prober.start(self.loop.time())
        self._pump()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in self.transports.values():
            transport.close()
        if not self.finished.done():
            self.finished.cancel()

    def received(self, sid: str, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.finished.done():
            return
        source = Endpoint(str(addr[0]).partition("%")[0], int(addr[1]))
        self.prober.handle_response(sid, source, data, self.loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        if self.finished.done():
            return
        self.prober.handle_timeout(self.loop.time())
        self._pump()

    def _pump(self) -> None:
        """Send what is queued, then finish or re-arm the timer."""
        prober = self.prober
        for datagram in prober.datagrams_to_send():
            transport = self.transports[datagram.socket]
            destination = datagram.destination
            transport.sendto(datagram.data, (destination.ip, destination.port))
        result = prober.result
        if result is not None:
            if not self.finished.done():
                self.finished.set_result(result)
            return
        deadline = prober.next_deadline()
        if self._timer is not None and (
            deadline is None or self._timer.when() != deadline
        ):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)


class _ProbeProtocol(asyncio.DatagramProtocol):
    """One probe socket: every datagram goes to the driver, tagged."""

    def __init__(self, driver: _Driver, sid: str) -> None:
        self._driver = driver
        self._sid = sid

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self._driver.received(self._sid, data, addr)
        except Exception:
            logger.exception("probe socket %s: error handling a datagram", self._sid)

    def error_received(self, exc: Exception) -> None:
        # a send failed (no route, refused by a firewall): the test times out
        logger.debug("probe socket %s: %s", self._sid, exc)


# --- the human summary -------------------------------------------------------

_NAT_TYPE_TEXT = {
    NatType.OPEN: "open (no NAT)",
    NatType.FULL_CONE: "full cone NAT",
    NatType.RESTRICTED_CONE: "restricted cone NAT",
    NatType.PORT_RESTRICTED_CONE: "port-restricted cone NAT",
    NatType.SYMMETRIC: "symmetric NAT",
    NatType.UDP_BLOCKED: "UDP blocked (no response)",
    NatType.UNDETERMINED: "undetermined",
}


def format_result(result: ProbeResult, *, verbose: bool = False) -> list[str]:
    """The lines of ``natkit probe``'s summary; ``verbose`` lists the tests."""
    other = f" (other address {result.other_address})" if result.other_address else ""
    lifetime = "not measured (--lifetime)"
    if result.binding_lifetime_s is not None:
        lifetime = f"at least {result.binding_lifetime_s:g} s idle"
    keepalive = "not needed"
    if result.recommended_keepalive_s is not None:
        keepalive = f"every {result.recommended_keepalive_s:g} s"
    elif result.nat_type is NatType.UDP_BLOCKED:
        keepalive = "-"
    rows = [
        ("NAT type", _NAT_TYPE_TEXT[result.nat_type]),
        ("mapping", result.mapping.value),
        ("filtering", result.filtering.value),
        ("mapped address", str(result.mapped) if result.mapped else "-"),
        ("local address", str(result.local)),
        ("server", f"{result.server}{other}"),
        ("hairpinning", _yes_no(result.hairpinning)),
        ("port allocation", result.port_allocation.value),
        ("binding lifetime", lifetime),
        ("keepalive", keepalive),
    ]
    lines = [f"{name:<17} {value}" for name, value in rows]
    if result.notes:
        lines.append("notes")
        lines.extend(f"  - {note}" for note in result.notes)
    if verbose:
        lines.append("tests")
        for test in result.tests:
            rtt = f", {test.rtt * 1000:.1f} ms" if test.rtt is not None else ""
            got = f" from {test.source}" if test.source else ""
            lines.append(
                f"  {test.name}: {test.socket} -> {test.destination}: "
                f"{test.outcome}{got}{rtt}"
            )
    return lines


def _yes_no(value: bool | None) -> str:
    return "undetermined" if value is None else ("yes" if value else "no")
