"""ICE through ``natkit serve``: two aioice agents that may use relays only.

aioice (0.13) is an independent ICE (RFC 8445) and TURN client. Both agents
get ``natkit serve`` as their TURN server and
``transport_policy=TransportPolicy.RELAY`` (no host or server-reflexive
candidates), so the only pair is relayed <-> relayed: each agent's checks
and data go through its own allocation to the other's relayed address on the
same server. aioice binds a channel to the remote candidate (RFC 8656 §11)
and sends ChannelData.

The server runs with the default peer policy: no ``--allow-peer``. Both
relayed addresses are on 127.0.0.1, which the built-in table and the
server-address rule deny; the relayed-address exception (the exact ip and
port of a live allocation on this server) is what must let two clients of
one server talk.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from natkit.security.certs import CERT_FILE

from .peers import TURN_PASSWORD, TURN_USER, ServerProcess, close_aioice

aioice = pytest.importorskip("aioice", reason="aioice (interop peer) not installed")
from aioice.ice import TransportPolicy  # noqa: E402

pytestmark = pytest.mark.interop

#: an upper bound for gathering, connectivity checks and each data exchange
ICE_TIMEOUT = 15.0


def _agents(server: ServerProcess, transport: str) -> tuple[Any, Any]:
    """Two agents, controlling and controlled, with relay-only candidates."""
    if transport == "tls":
        endpoint = server.tls_endpoint
        if endpoint is None:
            raise RuntimeError(f"{server.name} has no TLS listener")
        # the generated certificate names 127.0.0.1: verify it for real
        context = ssl.create_default_context(
            cafile=str(server.workdir / "data" / CERT_FILE)
        )
        options: dict[str, Any] = {"turn_transport": "tcp", "turn_ssl": context}
    else:
        endpoint = server.endpoint
        options = {"turn_transport": transport}
    options.update(
        turn_server=(endpoint.ip, endpoint.port),
        turn_username=TURN_USER,
        turn_password=TURN_PASSWORD,
        transport_policy=TransportPolicy.RELAY,
        use_ipv4=True,
        use_ipv6=False,
    )
    controlling = aioice.Connection(ice_controlling=True, **options)
    controlled = aioice.Connection(ice_controlling=False, **options)
    return controlling, controlled


async def _exchange(left: Any, right: Any) -> None:
    """Trickle-free offer/answer: candidates and credentials both ways."""
    for source, sink in ((left, right), (right, left)):
        for candidate in source.local_candidates:
            await sink.add_remote_candidate(candidate)
        await sink.add_remote_candidate(None)
        sink.remote_username = source.local_username
        sink.remote_password = source.local_password


async def _relay_to_relay(server: ServerProcess, transport: str) -> None:
    left, right = _agents(server, transport)
    try:
        async with asyncio.timeout(ICE_TIMEOUT):
            await asyncio.gather(left.gather_candidates(), right.gather_candidates())
        explain = f"{server.name} log (tail):\n{server.log_tail()}"
        for agent in (left, right):
            kinds = [c.type for c in agent.local_candidates]
            assert kinds == ["relay"], f"{agent.local_candidates}\n{explain}"
            assert agent.local_candidates[0].host == "127.0.0.1", explain

        async with asyncio.timeout(ICE_TIMEOUT):
            await _exchange(left, right)
            await asyncio.gather(left.connect(), right.connect())

        # the nominated pair joins the two relayed candidates (aioice has no
        # public accessor for it in 0.13)
        for agent, other in ((left, right), (right, left)):
            pair = agent._nominated[1]
            assert pair.local_candidate.type == "relay", explain
            assert pair.remote_candidate.type == "relay", explain
            remote = (pair.remote_candidate.host, pair.remote_candidate.port)
            relayed = other.local_candidates[0]
            assert remote == (relayed.host, relayed.port), explain

        # data both ways, several messages each, through both relays
        async with asyncio.timeout(ICE_TIMEOUT):
            for round_ in range(5):
                ping = b"ping %d from the controlling agent" % round_
                await left.send(ping)
                assert await right.recv() == ping, explain
                pong = b"pong %d from the controlled agent" % round_
                await right.send(pong)
                assert await left.recv() == pong, explain
    finally:
        await close_aioice(left, right)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_aioice_agents_connect_relay_to_relay(
    natkit_turn_server_strict: ServerProcess, transport: str
) -> None:
    """Two clients of one server reach each other through their relays with no
    --allow-peer rule, over UDP, TCP and TLS to the server."""
    asyncio.run(_relay_to_relay(natkit_turn_server_strict, transport))

    # and no request on the way was refused by the peer policy
    log = natkit_turn_server_strict.log_text()
    assert " denied: " not in log, natkit_turn_server_strict.log_tail()
