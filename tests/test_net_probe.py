"""The asyncio driver of the RFC 5780 §4 probe, against loopback servers.

Each test runs a :class:`~natkit.net.listeners.StunService` with
:class:`~natkit.net.rfc5780.Rfc5780Sockets` on 127.0.0.1 and 127.0.0.2 (both
on ``lo``) and :func:`natkit.net.probe.probe` on the same event loop
(asyncio and uvloop). Loopback has no NAT, so the honest answer is "open"
with endpoint-independent mapping and filtering; responders that drop some
replies stand in for a firewall, to see the driver carry other outcomes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from natkit.nat.classify import Behaviour, NatType, PortAllocation
from natkit.nat.discovery import PROBE_POLICY, ProbeConfig, ProbeResult
from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder, ServerReply
from natkit.net.address import ListenAddress, Transport
from natkit.net.listeners import StunService
from natkit.net.probe import (
    ProbeError,
    format_result,
    lifetime_estimate,
    probe,
    probe_policy,
    route_ip,
    time_limit,
)
from natkit.net.rfc5780 import Rfc5780Sockets
from natkit.net.stun_client import ResolveError, ServerSpec
from natkit.stun.server import BindingResponder
from natkit.stun.transaction import Transport as ClientTransport

T = TypeVar("T")
A1 = "127.0.0.1"
A2 = "127.0.0.2"
#: short test timers: each test gives up after 0.6 s
FAST = ProbeConfig(policy=probe_policy(0.6))


def _bindable(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


pytestmark = pytest.mark.skipif(
    not _bindable(A2, 0), reason="127.0.0.2 cannot be bound on this machine"
)


def free_port(attempts: int = 100) -> int:
    """A port P with P and P + 1 free for UDP on 127.0.0.1 and 127.0.0.2."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((A1, 0))
            port = int(sock.getsockname()[1])
        if port < 0xFFFF and all(
            _bindable(ip, p) for ip in (A1, A2) for p in (port, port + 1)
        ):
            return port
    raise RuntimeError("no free pair of UDP ports on 127.0.0.1 and 127.0.0.2")


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


loops = pytest.mark.parametrize("loop_factory", _loop_factories())


def run(
    factory: Callable[[], asyncio.AbstractEventLoop],
    coro: Coroutine[Any, Any, T],
) -> T:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class AddressFilter(Rfc5780Responder):
    """A responder whose replies from another IP (or port) are lost, as if a
    firewall in front of the client dropped them."""

    def __init__(self, *args: Any, same_port: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.same_port = same_port

    def handle(
        self,
        data: bytes,
        *,
        local: Endpoint,
        source: Endpoint,
        stream: bool = False,
    ) -> ServerReply | None:
        reply = super().handle(data, local=local, source=source, stream=stream)
        if reply is None or reply.source.ip != local.ip:
            return None
        if self.same_port and reply.source.port != local.port:
            return None
        return reply


async def start_server(
    *,
    rfc5780: bool = True,
    responder: type[Rfc5780Responder] = Rfc5780Responder,
    **kwargs: Any,
) -> tuple[StunService, int]:
    """A STUN service on 127.0.0.1:P and, with RFC 5780, the other three."""
    port = free_port()
    listeners = [ListenAddress(Transport.UDP, A1, port)]
    sockets = None
    if rfc5780:
        sockets = Rfc5780Sockets(
            responder(Endpoint(A1, port), Endpoint(A2, port + 1), **kwargs)
        )
        listeners += sockets.extra_listeners(listeners)
    service = StunService(BindingResponder(), rfc5780=sockets)
    await service.start(listeners)
    return service, port


async def probe_server(
    config: ProbeConfig = FAST,
    *,
    extra: tuple[ServerSpec, ...] = (),
    **server: Any,
) -> ProbeResult:
    service, port = await start_server(**server)
    try:
        return await probe(ServerSpec(A1, port), extra_servers=extra, config=config)
    finally:
        await service.close()


# --- against natkit's RFC 5780 server ---------------------------------------------


@loops
def test_loopback_is_open_with_endpoint_independent_behaviour(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    result = run(loop_factory, probe_server())

    assert result.nat_type is NatType.OPEN
    assert result.mapping is Behaviour.ENDPOINT_INDEPENDENT
    assert result.filtering is Behaviour.ENDPOINT_INDEPENDENT
    assert result.mapped == result.local
    assert result.local.ip == A1
    assert result.other_address == Endpoint(A2, result.server.port + 1)
    assert result.hairpinning is True
    assert result.port_allocation is PortAllocation.PRESERVING
    assert result.binding_lifetime_s is None
    assert result.recommended_keepalive_s is None

    # the filtering tests were answered from the addresses they asked for
    by_name = {t.name: t for t in result.tests}
    assert by_name["filtering test II"].source == result.other_address
    assert by_name["filtering test III"].source == Endpoint(A1, result.server.port + 1)


def test_json_has_the_documented_keys() -> None:
    result = run(asyncio.new_event_loop, probe_server())
    data = result.to_json()
    assert {
        "mapping",
        "filtering",
        "nat_type",
        "mapped",
        "hairpinning",
        "port_allocation",
        "binding_lifetime_s",
    } <= data.keys()
    assert data["nat_type"] == "open"


@loops
def test_binding_lifetime_with_response_port(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """RFC 5780 §4.6 on loopback: nothing expires, so the maximum is found."""
    config = ProbeConfig(policy=probe_policy(0.6), lifetime_max=1.0, port_samples=0)
    result = run(loop_factory, probe_server(config))
    assert result.binding_lifetime_s == 1.0
    assert any("still alive after 1 s" in note for note in result.notes)


def test_address_dependent_firewall() -> None:
    """Replies from the other IP are lost: test II fails, test III passes."""
    result = run(asyncio.new_event_loop, probe_server(responder=AddressFilter))
    assert result.nat_type is NatType.OPEN
    assert result.mapping is Behaviour.ENDPOINT_INDEPENDENT
    assert result.filtering is Behaviour.ADDRESS_DEPENDENT
    assert any("but a firewall" in note for note in result.notes)


def test_address_and_port_dependent_firewall() -> None:
    result = run(
        asyncio.new_event_loop,
        probe_server(responder=AddressFilter, same_port=True),
    )
    assert result.filtering is Behaviour.ADDRESS_AND_PORT_DEPENDENT
    assert result.recommended_keepalive_s is not None


# --- servers without RFC 5780, and none at all ----------------------------------


def test_plain_stun_server_leaves_filtering_undetermined() -> None:
    result = run(asyncio.new_event_loop, probe_server(rfc5780=False))
    assert result.nat_type is NatType.OPEN
    assert result.mapping is Behaviour.ENDPOINT_INDEPENDENT
    assert result.filtering is Behaviour.UNDETERMINED
    assert result.other_address is None
    assert any("does not support RFC 5780" in note for note in result.notes)


def _silent_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((A1, 0))
    return sock


@loops
def test_no_response_is_udp_blocked_not_an_error(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with _silent_socket() as silent:
        port = silent.getsockname()[1]
        config = ProbeConfig(policy=probe_policy(0.3))
        result = run(loop_factory, probe(ServerSpec(A1, port), config=config))
    assert result.nat_type is NatType.UDP_BLOCKED
    assert result.mapped is None
    assert result.recommended_keepalive_s is None
    assert "udp-blocked" in result.notes[0]
    assert "no response in 0.3 s" in result.notes[0]


def test_silent_server_but_an_extra_server_answers() -> None:
    async def go(port: int) -> ProbeResult:
        service, other = await start_server(rfc5780=False)
        try:
            extra = (ServerSpec(A1, other),)
            config = ProbeConfig(policy=probe_policy(0.3))
            return await probe(ServerSpec(A1, port), extra_servers=extra, config=config)
        finally:
            await service.close()

    with _silent_socket() as silent:
        result = run(asyncio.new_event_loop, go(silent.getsockname()[1]))
    assert result.nat_type is NatType.UNDETERMINED
    assert any("answered: check the server address" in n for n in result.notes)


# --- the pieces ------------------------------------------------------------------


def test_route_ip_is_the_source_address_for_the_server() -> None:
    assert route_ip(Endpoint(A1, 3478)) == A1
    assert route_ip(Endpoint(A2, 3478)) in (A1, A2)


def test_probe_policy_scales_the_default_timers() -> None:
    assert probe_policy(3.0) == PROBE_POLICY
    assert probe_policy(0.6).give_up_after(ClientTransport.UDP) == pytest.approx(0.6)
    with pytest.raises(ProbeError):
        probe_policy(0)


def test_time_limit_bounds_the_whole_probe() -> None:
    plain = time_limit(ProbeConfig(), 0)
    assert 30 < plain < 120
    lifetime = time_limit(ProbeConfig(lifetime_max=900.0), 2)
    assert lifetime > 900 * 10
    estimate = lifetime_estimate(ProbeConfig(lifetime_max=120.0))
    assert estimate is not None and 120 * 8 < estimate < 120 * 9
    assert lifetime_estimate(ProbeConfig()) is None


def test_unresolvable_server_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(ResolveError, match="cannot resolve 'stun.example'"):
        run(asyncio.new_event_loop, probe(ServerSpec("stun.example", 3478)))


def test_a_local_ip_of_another_family_is_an_error() -> None:
    with pytest.raises(ProbeError, match=r"cannot open a UDP socket on 127\.0\.0\.1"):
        run(
            asyncio.new_event_loop,
            probe(ServerSpec("::1", 3478), local_ip=A1, config=FAST),
        )


def test_summary_names_every_finding() -> None:
    result = run(asyncio.new_event_loop, probe_server())
    text = "\n".join(format_result(result, verbose=True))
    for label in (
        "NAT type          open (no NAT)",
        "mapping           endpoint-independent",
        "filtering         endpoint-independent",
        f"mapped address    {result.mapped}",
        f"server            {result.server} (other address {result.other_address})",
        "hairpinning       yes",
        "port allocation   preserving",
        "binding lifetime  not measured",
        "keepalive         not needed",
        "notes",
        "  filtering test II: primary ->",
    ):
        assert label in text
