"""ICE between natkit's agent and aioice (0.13), an independent RFC 8445 agent.

aioice gathers host candidates from every interface but loopback
(``aioice.ice.get_host_addresses`` leaves 127.0.0.1 out); the tests replace
that function so it returns 127.0.0.1 only, and give natkit's agent
``host_ips=["127.0.0.1"]``: every datagram stays on loopback. Candidates
travel as RFC 8839 lines: aioice writes and reads them without the
``candidate:`` prefix.

Cases: natkit controlling and aioice controlled, and the reverse, over host
candidates; both relay-only through ``natkit serve`` (aioice's TURN client
and natkit's, UDP to the server, relay <-> relay with the default peer
policy); and a peer that vanishes (aioice closes its sockets) is noticed
by natkit's consent checks (RFC 7675) with a short consent timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from natkit.ice import CandidateType, ConsentLost, IceConfig, IceState
from natkit.net.ice_driver import Agent, ConsentLostError, TurnServerConfig

from .peers import TURN_PASSWORD, TURN_USER, ServerProcess, close_aioice

aioice = pytest.importorskip("aioice", reason="aioice (interop peer) not installed")
from aioice import ice as aioice_ice  # noqa: E402
from aioice.ice import TransportPolicy  # noqa: E402

pytestmark = pytest.mark.interop

#: an upper bound for gathering, connectivity checks and each data exchange
ICE_TIMEOUT = 10.0
#: consent settings that notice a vanished peer in ~2 s instead of 30 s
FAST_CONSENT = IceConfig(
    consent_interval=0.3, consent_timeout=2.0, disconnect_after=1.0
)


@pytest.fixture(autouse=True)
def aioice_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """aioice's host candidates: 127.0.0.1 only."""

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    monkeypatch.setattr(aioice_ice, "get_host_addresses", loopback)
    yield


def _aioice_line(candidate: Any) -> str:
    return "candidate:" + str(candidate.to_sdp())


async def _exchange(ours: Agent, theirs: Any) -> None:
    """Offer/answer in one go: credentials, candidates, end-of-candidates."""
    await asyncio.gather(ours.gather(), theirs.gather_candidates())
    for line in ours.local_candidates:
        await theirs.add_remote_candidate(
            aioice.Candidate.from_sdp(line.removeprefix("candidate:"))
        )
    await theirs.add_remote_candidate(None)
    theirs.remote_username = ours.local_credentials.ufrag
    theirs.remote_password = ours.local_credentials.pwd
    for candidate in theirs.local_candidates:
        ours.add_remote_candidate(_aioice_line(candidate))
    ours.add_remote_candidate(None)
    ours.set_remote_credentials(theirs.local_username, theirs.local_password)


async def _connect(ours: Agent, theirs: Any) -> float:
    """Both connect; returns the milliseconds it took."""
    started = time.perf_counter()
    async with asyncio.timeout(ICE_TIMEOUT):
        await asyncio.gather(ours.connect(), theirs.connect())
    return (time.perf_counter() - started) * 1000


async def _data_both_ways(ours: Agent, theirs: Any, rounds: int = 5) -> None:
    async with asyncio.timeout(ICE_TIMEOUT):
        for round_ in range(rounds):
            ping = b"ping %d from natkit" % round_
            ours.send(ping)
            assert await theirs.recv() == ping
            pong = b"pong %d from aioice" % round_
            await theirs.send(pong)
            assert await ours.recv() == pong


@pytest.mark.parametrize("natkit_controls", [True, False], ids=["natkit", "aioice"])
async def test_host_to_host_either_role(natkit_controls: bool) -> None:
    """Both roles over loopback host candidates; data both ways."""
    ours = Agent(natkit_controls, host_ips=["127.0.0.1"])
    theirs = aioice.Connection(
        ice_controlling=not natkit_controls, use_ipv4=True, use_ipv6=False
    )
    try:
        await _exchange(ours, theirs)
        await _connect(ours, theirs)
        pair = ours.selected_pair
        assert pair is not None
        assert pair.local.type is CandidateType.HOST
        assert pair.remote.type is CandidateType.HOST
        assert ours.controlling is natkit_controls
        assert ours.rtt is not None and ours.rtt < 1.0
        await _data_both_ways(ours, theirs)
    finally:
        await ours.close()
        await close_aioice(theirs)


async def test_relay_to_relay_through_natkit_serve(
    natkit_turn_server_strict: ServerProcess,
) -> None:
    """natkit (controlling) and aioice (controlled), both relay-only through
    one ``natkit serve`` with the default peer policy."""
    server = natkit_turn_server_strict
    endpoint = server.endpoint
    turn = TurnServerConfig(endpoint.ip, endpoint.port, TURN_USER, TURN_PASSWORD)
    ours = Agent(True, turn_servers=[turn], relay_only=True)
    theirs = aioice.Connection(
        ice_controlling=False,
        turn_server=(endpoint.ip, endpoint.port),
        turn_username=TURN_USER,
        turn_password=TURN_PASSWORD,
        turn_transport="udp",
        transport_policy=TransportPolicy.RELAY,
        use_ipv4=True,
        use_ipv6=False,
    )
    explain = f"{server.name} log (tail):\n{server.log_tail()}"
    try:
        await _exchange(ours, theirs)
        assert [c.type for c in theirs.local_candidates] == ["relay"], explain
        assert len(ours.local_candidates) == 1, (ours.gather_errors, explain)
        assert " typ relay " in ours.local_candidates[0], explain
        await _connect(ours, theirs)
        pair = ours.selected_pair
        assert pair is not None, explain
        assert pair.local.type is CandidateType.RELAYED, explain
        assert pair.remote.type is CandidateType.RELAYED, explain
        relayed = theirs.local_candidates[0]
        assert (pair.remote.address.ip, pair.remote.address.port) == (
            relayed.host,
            relayed.port,
        ), explain
        await _data_both_ways(ours, theirs)
    finally:
        await ours.close()
        await close_aioice(theirs)


async def test_vanished_aioice_peer_loses_consent() -> None:
    """RFC 7675 §5.1: aioice closes its sockets; natkit stops after the
    consent timeout (2 s here), reports ConsentLost and fails recv()."""
    ours = Agent(True, host_ips=["127.0.0.1"], config=FAST_CONSENT)
    theirs = aioice.Connection(ice_controlling=False, use_ipv4=True, use_ipv6=False)
    try:
        await _exchange(ours, theirs)
        await _connect(ours, theirs)
        await _data_both_ways(ours, theirs, rounds=1)

        # consent keeps the pair up while aioice answers
        await asyncio.sleep(1.0)
        assert ours.state is IceState.COMPLETED

        await close_aioice(theirs)
        vanished = time.monotonic()
        async with asyncio.timeout(ICE_TIMEOUT):
            while True:
                event = await ours.events.get()
                if isinstance(event, ConsentLost):
                    break
        took = time.monotonic() - vanished
        assert 1.5 <= took <= 4.0, took
        assert ours.ice.state is IceState.FAILED
        with pytest.raises(ConsentLostError, match="consent lost"):
            await ours.recv()
        with pytest.raises(ConsentLostError):
            ours.send(b"anyone there?")
    finally:
        await ours.close()
        await close_aioice(theirs)
