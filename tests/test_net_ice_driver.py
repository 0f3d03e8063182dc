"""The asyncio ICE driver (natkit.net.ice_driver) between two agents on loopback.

Every agent binds its host candidates to 127.0.0.1 only (``host_ips``), so
no datagram leaves loopback. TURN runs in-process: ``natkit serve``'s
:func:`~natkit.server.daemon.serve` on the test's own event loop, UDP and
TCP on one 127.0.0.1 port, relays on 127.0.0.1, the default peer policy
(the relayed addresses of its own allocations may talk to each other).
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from natkit.ice import (
    CandidateSyntaxError,
    CandidateType,
    ConsentLost,
    IceConfig,
    IceState,
    PairSelected,
    SelectedPair,
    StateChanged,
)
from natkit.net.ice_driver import (
    Agent,
    ConsentLostError,
    IceClosedError,
    IceError,
    IceFailedError,
    IceTimeoutError,
    TurnServerConfig,
)
from natkit.net.ice_gather import host_addresses
from natkit.server.config import load_config
from natkit.server.daemon import serve
from natkit.stun.errors import UsageError
from natkit.stun.transaction import RetransmitPolicy, Transport

TIMEOUT = 10.0
LOOPBACK = ["127.0.0.1"]
USER, PASSWORD = "alice", "alice-secret"
#: consent that notices a vanished peer in ~1.5 s instead of 30 s
FAST_CONSENT = IceConfig(
    consent_interval=0.3, consent_timeout=1.5, disconnect_after=1.0
)
#: checks that give up after 0.05 × 3 + 2 × 0.05 = 0.25 s
FAST_CHECKS = IceConfig(check_policy=RetransmitPolicy(rto=0.05, rc=2, rm=2))


def _free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass(frozen=True, slots=True)
class TurnServer:
    port: int

    def config(
        self, transport: Transport = Transport.UDP, **kw: str
    ) -> TurnServerConfig:
        user = kw.get("username", USER)
        password = kw.get("password", PASSWORD)
        return TurnServerConfig("127.0.0.1", self.port, user, password, transport)


@pytest.fixture
async def turn_server(tmp_path: Path) -> AsyncIterator[TurnServer]:
    """``natkit serve`` on this loop: STUN/TURN on 127.0.0.1 UDP+TCP."""
    port = _free_port()
    low = random.randrange(40000, 48000, 100)
    config = load_config(
        environ={},
        overrides={
            "listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
            "data_dir": str(tmp_path / "data"),
            "realm": "natkit.test",
            "users": [f"{USER}:{PASSWORD}"],
            "relay_ip": ["127.0.0.1"],
            "relay_ports": f"{low}-{low + 99}",
            "user_quota": 0,
        },
    )
    stop = asyncio.Event()
    ready: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, stop=stop, on_ready=ready.set_result))
    await asyncio.wait_for(ready, TIMEOUT)
    try:
        yield TurnServer(port)
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


def _introduce(sender: Agent, receiver: Agent) -> None:
    credentials = sender.local_credentials
    receiver.set_remote_credentials(credentials.ufrag, credentials.pwd)
    for line in sender.local_candidates:
        receiver.add_remote_candidate(line)
    receiver.add_remote_candidate(None)


async def _pair_up(left: Agent, right: Agent) -> tuple[SelectedPair, SelectedPair]:
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(left.gather(), right.gather())
        _introduce(left, right)
        _introduce(right, left)
        return await asyncio.gather(left.connect(), right.connect())


async def _data_both_ways(left: Agent, right: Agent, rounds: int = 3) -> None:
    async with asyncio.timeout(TIMEOUT):
        for round_ in range(rounds):
            left.send(b"ping %d" % round_)
            assert await right.recv() == b"ping %d" % round_
            right.send(b"pong %d" % round_)
            assert await left.recv() == b"pong %d" % round_


# --- host <-> host ------------------------------------------------------------


async def test_host_to_host_connects_and_carries_data_both_ways() -> None:
    seen_states: list[StateChanged] = []
    seen_pairs: list[SelectedPair] = []
    left = Agent(
        True,
        host_ips=LOOPBACK,
        on_state_change=seen_states.append,
        on_selected_pair=seen_pairs.append,
    )
    right = Agent(False, host_ips=LOOPBACK)
    try:
        left_pair, right_pair = await _pair_up(left, right)
        for pair in (left_pair, right_pair):
            assert pair.local.type is CandidateType.HOST
            assert pair.remote.type is CandidateType.HOST
            assert pair.local.address.ip == "127.0.0.1"
        assert left_pair.local.address == right_pair.remote.address
        assert left.selected_pair == left_pair
        await _data_both_ways(left, right)

        # measurements and events
        assert left.rtt is not None and 0 < left.rtt < 1.0
        connected = left.time_to_connected
        assert connected is not None and 0 < connected < TIMEOUT
        assert seen_pairs == [left_pair]
        assert [s.new for s in seen_states][-1] is IceState.COMPLETED
        events = []
        while not left.events.empty():
            events.append(left.events.get_nowait())
        assert any(isinstance(e, PairSelected) for e in events)
        assert any(isinstance(e, StateChanged) for e in events)
    finally:
        await left.close()
        await right.close()


async def test_candidates_trickle_then_end() -> None:
    lines: list[str | None] = []
    agent = Agent(True, host_ips=LOOPBACK, on_candidate=lines.append)
    try:
        gathering = asyncio.create_task(agent.gather())
        async with asyncio.timeout(TIMEOUT):
            iterated = [line async for line in agent.candidates()]
            await gathering
        assert lines == [*agent.local_candidates, None]
        assert iterated == agent.local_candidates
        assert len(iterated) == 1 and " typ host" in iterated[0]
        assert agent.gathering_done
    finally:
        await agent.close()


async def test_consent_lost_when_the_peer_vanishes() -> None:
    left = Agent(True, host_ips=LOOPBACK, config=FAST_CONSENT)
    right = Agent(False, host_ips=LOOPBACK, config=FAST_CONSENT)
    try:
        await _pair_up(left, right)
        await right.close()
        async with asyncio.timeout(TIMEOUT):
            while not isinstance(await left.events.get(), ConsentLost):
                pass
        with pytest.raises(ConsentLostError, match="consent lost"):
            await left.recv()
        with pytest.raises(IceClosedError):
            await right.recv()
    finally:
        await left.close()


async def test_every_pair_failing_is_a_clear_error() -> None:
    # the peer's only candidate is a port nobody answers on
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        agent = Agent(True, host_ips=LOOPBACK, config=FAST_CHECKS)
        try:
            await agent.gather()
            agent.set_remote_credentials("abcd", "a" * 22)
            agent.add_remote_candidate(
                f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"
            )
            agent.add_remote_candidate("a=end-of-candidates")
            with pytest.raises(IceFailedError, match="ICE failed: all 1 candidate"):
                await agent.connect(timeout=TIMEOUT)
        finally:
            await agent.close()


async def test_connect_timeout_without_end_of_candidates() -> None:
    agent = Agent(True, host_ips=LOOPBACK)
    try:
        await agent.gather()
        agent.set_remote_credentials("abcd", "a" * 22)
        with pytest.raises(IceTimeoutError, match="no ICE connection after 0.2 s"):
            await agent.connect(timeout=0.2)
    finally:
        await agent.close()


async def test_misuse_is_refused_with_one_line() -> None:
    with pytest.raises(UsageError, match="TURN server"):
        Agent(True, relay_only=True)
    agent = Agent(True, host_ips=LOOPBACK)
    try:
        with pytest.raises(UsageError, match="gather"):
            await agent.connect()
        await agent.gather()
        with pytest.raises(UsageError, match="set_remote_credentials"):
            await agent.connect()
        with pytest.raises(CandidateSyntaxError):
            agent.add_remote_candidate("candidate:1 1 udp 1 example.local 9 typ host")
        with pytest.raises(IceError, match="no connected pair"):
            agent.send(b"too early")
        with pytest.raises(UsageError, match="byte 0-3"):
            agent.send(b"\x01looks like STUN")
    finally:
        await agent.close()
    await agent.close()  # twice is fine
    with pytest.raises(IceClosedError):
        await agent.recv()
    with pytest.raises(IceClosedError):
        await agent.gather()


def test_host_addresses_leave_loopback_out_unless_asked() -> None:
    without = host_addresses(use_loopback=False)
    assert all(not a.ip.startswith("127.") and a.ip != "::1" for a in without)
    with_loopback = host_addresses(use_loopback=True)
    ips = [a.ip for a in with_loopback]
    assert "127.0.0.1" in ips
    # loopback interfaces rank last (the highest interface index)
    loop_index = with_loopback[ips.index("127.0.0.1")].index
    assert all(a.index <= loop_index for a in with_loopback)
    only_v4 = host_addresses(use_ipv6=False, use_loopback=True)
    assert all(":" not in a.ip for a in only_v4)


# --- STUN and TURN ------------------------------------------------------------------


async def test_relay_only_connects_relay_to_relay(turn_server: TurnServer) -> None:
    for transport in (Transport.UDP, Transport.TCP):
        turn = turn_server.config(transport)
        left = Agent(True, turn_servers=[turn], relay_only=True)
        right = Agent(False, turn_servers=[turn], relay_only=True)
        try:
            left_pair, right_pair = await _pair_up(left, right)
            for pair in (left_pair, right_pair):
                assert pair.local.type is CandidateType.RELAYED, transport
                assert pair.remote.type is CandidateType.RELAYED, transport
            assert left_pair.local.address == right_pair.remote.address
            assert all(" typ relay " in c for c in left.local_candidates)
            await _data_both_ways(left, right)
        finally:
            await left.close()
            await right.close()


async def test_udp_turn_shares_the_host_socket(turn_server: TurnServer) -> None:
    """RFC 8445 §5.1.1.2: the Allocate goes from the host candidate's socket
    (raddr of the relayed candidate); the mapped address equals the host one
    on loopback, so no srflx is kept (RFC 8445 §5.1.3), from TURN or STUN."""
    agent = Agent(
        True,
        host_ips=LOOPBACK,
        stun_servers=[("127.0.0.1", turn_server.port)],
        turn_servers=[turn_server.config()],
    )
    try:
        lines = await agent.gather()
        assert agent.gather_errors == []
        host, relay = (
            next(line for line in lines if f" typ {kind}" in line)
            for kind in ("host", "relay")
        )
        assert len(lines) == 2, lines
        _, _, _, _, ip, port, *_ = host.split()
        assert relay.endswith(f"raddr {ip} rport {port}")
    finally:
        await agent.close()


async def test_unanswered_stun_and_refused_turn_are_listed(
    turn_server: TurnServer,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        agent = Agent(
            True,
            host_ips=LOOPBACK,
            stun_servers=[silent.getsockname()],
            turn_servers=[turn_server.config(password="wrong-password")],
            stun_policy=RetransmitPolicy(rto=0.05, rc=2, rm=2),
            gather_timeout=3.0,
        )
        try:
            lines = await agent.gather()
            assert len(lines) == 1 and " typ host" in lines[0]
            errors = "\n".join(agent.gather_errors)
            assert "no STUN response" in errors
            assert "authentication failed for user 'alice'" in errors
        finally:
            await agent.close()


async def test_relay_only_with_a_refused_turn_server_has_no_candidates(
    turn_server: TurnServer,
) -> None:
    turn = turn_server.config(Transport.TCP, password="wrong-password")
    agent = Agent(True, turn_servers=[turn], relay_only=True)
    try:
        with pytest.raises(IceError, match="no local candidates: TURN"):
            await agent.gather()
    finally:
        await agent.close()


async def test_a_silent_turn_server_times_out_and_close_interrupts_gathering() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        turn = TurnServerConfig("127.0.0.1", port, USER, PASSWORD)

        # gather_timeout ends the wait; the host candidate is still there
        agent = Agent(True, host_ips=LOOPBACK, turn_servers=[turn], gather_timeout=0.3)
        try:
            lines = await agent.gather()
            assert len(lines) == 1 and " typ host" in lines[0]
            assert agent.gather_errors == [
                f"TURN 127.0.0.1:{port} (udp): no answer within 0.3 s"
            ]
        finally:
            await agent.close()

        # close() while gathering: gather() says so
        agent = Agent(True, turn_servers=[turn], relay_only=True)
        gathering = asyncio.create_task(agent.gather())
        await asyncio.sleep(0.1)
        await agent.close()
        with pytest.raises(IceClosedError, match="closed while gathering"):
            await gathering
