"""An aioice ICE peer that speaks ``natkit ice``'s file exchange, for the lab.

    python -m natkit.lab.aioice_peer offer  --out o.json --peer a.json \\
        --stun 203.0.113.10:3478 --turn 203.0.113.10:3478 \\
        --turn-user u --turn-password p
    python -m natkit.lab.aioice_peer answer --out a.json --peer o.json ...

The reference peer of ``natkit lab matrix --aioice``: two of these, one in
each host namespace, connect through the same NATs and the same ``natkit
serve`` as the natkit pair of the same cell, so their times compare. The
description written and read is the one of ``natkit ice`` (one JSON line
with ``ufrag``, ``pwd``, ``controlling``, RFC 8839 ``candidate:`` lines and,
in answers, ``offer_ufrag``), and the report printed on stdout has the keys
of ``natkit ice --json``. ``connected_ms`` is measured the same way: from the
peer's description being applied to the connection being up (aioice's
``connect()`` returning). aioice exposes no check round trip, so ``rtt_ms``
is null; ``data_rtt_ms`` is the fastest of three hellos over the pair.

aioice (0.13) leaves 127.0.0.1 out of its host candidates; ``--host-ip``
replaces its list of addresses, which the loopback benchmark needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the marker and version of a ``natkit ice`` description
_FORMAT = "natkit_ice"
_VERSION = 1
#: how often the peer's file is looked at while waiting for it
_POLL = 0.05
#: a hello goes out this often until it is acknowledged
_HELLO_EVERY = 0.2
#: hellos that must be acknowledged
_PINGS = 3
#: after the hellos, keep answering the peer's for this long
_LINGER = 0.3
_HELLO = b"natkit-ice hello "
_ACK = b"natkit-ice ack "


class PeerError(Exception):
    """Anything that ends the peer; printed as one line."""


@dataclass(frozen=True, slots=True)
class Description:
    """The peer's ufrag, pwd, candidate lines and (answers) offer ufrag."""

    ufrag: str
    pwd: str
    candidates: tuple[str, ...]
    controlling: bool | None
    offer_ufrag: str | None


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m natkit.lab.aioice_peer")
    parser.add_argument("role", choices=("offer", "answer"))
    parser.add_argument("--out", required=True, help="our description (a file)")
    parser.add_argument("--peer", required=True, help="the peer's (waited for)")
    parser.add_argument("--stun", type=_endpoint, metavar="HOST:PORT")
    parser.add_argument("--turn", type=_endpoint, metavar="HOST:PORT")
    parser.add_argument("--turn-user")
    parser.add_argument("--turn-password")
    parser.add_argument("--host-ip", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=30.0)
    return parser.parse_args(argv)


# --- descriptions ------------------------------------------------------------


def write_description(target: str, blob: dict[str, Any]) -> None:
    """Write ``blob`` to ``target`` atomically (the reader polls for it)."""
    path = Path(target)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(blob, separators=(",", ":")) + "\n")
    os.replace(temporary, path)


def parse_description(text: str) -> Description:
    """A ``natkit ice`` description; PeerError if it is not one."""
    try:
        blob = json.loads(text)
    except ValueError as exc:
        raise PeerError(f"peer description is not JSON: {exc}") from None
    if not isinstance(blob, dict) or blob.get(_FORMAT) != _VERSION:
        raise PeerError("peer description is not a natkit_ice 1 object")
    ufrag, pwd = blob.get("ufrag"), blob.get("pwd")
    candidates = blob.get("candidates")
    if not isinstance(ufrag, str) or not isinstance(pwd, str):
        raise PeerError("peer description needs ufrag and pwd strings")
    if not isinstance(candidates, list) or not all(
        isinstance(c, str) for c in candidates
    ):
        raise PeerError("peer description: candidates must be a list of lines")
    controlling = blob.get("controlling")
    offer_ufrag = blob.get("offer_ufrag")
    return Description(
        ufrag,
        pwd,
        tuple(candidates),
        controlling if isinstance(controlling, bool) else None,
        offer_ufrag if isinstance(offer_ufrag, str) else None,
    )


async def read_description(
    source: str, deadline: float, *, expect_offer: str | None
) -> Description:
    """Wait for ``source`` to hold a description (answering ours, if asked)."""
    loop = asyncio.get_running_loop()
    path = Path(source)
    problem = f"no peer description in {source}"
    while loop.time() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.strip():
            try:
                found = parse_description(text)
            except PeerError as exc:
                problem = str(exc)
            else:
                if expect_offer is None or found.offer_ufrag == expect_offer:
                    return found
                problem = f"{source} answers another offer"
        await asyncio.sleep(_POLL)
    raise PeerError(f"{problem} (waited the --timeout)")


# --- the session -------------------------------------------------------------


def _use_host_ips(ips: list[str]) -> None:
    """Make aioice gather host candidates on exactly ``ips``."""
    from aioice import ice as aioice_ice

    def chosen(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            ip for ip in ips if (":" in ip and use_ipv6) or ("." in ip and use_ipv4)
        ]

    aioice_ice.get_host_addresses = chosen


def _connection(args: argparse.Namespace, controlling: bool) -> Any:
    from aioice import Connection

    return Connection(
        ice_controlling=controlling,
        stun_server=args.stun,
        turn_server=args.turn,
        turn_username=args.turn_user,
        turn_password=args.turn_password,
        use_ipv6=False,
    )


async def session(args: argparse.Namespace) -> dict[str, Any]:
    """Offer or answer, connect, say hello; the report of ``natkit ice``."""
    from aioice import Candidate

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    offering = args.role == "offer"

    # the answerer learns its role from the offer
    peer: Description | None = None
    controlling = True
    if not offering:
        peer = await read_description(args.peer, deadline, expect_offer=None)
        controlling = not peer.controlling if peer.controlling is not None else False

    connection = _connection(args, controlling)
    try:
        # gather and publish our description
        await asyncio.wait_for(
            connection.gather_candidates(), max(0.1, deadline - loop.time())
        )
        lines = ["candidate:" + c.to_sdp() for c in connection.local_candidates]
        blob: dict[str, Any] = {
            _FORMAT: _VERSION,
            "ufrag": connection.local_username,
            "pwd": connection.local_password,
            "controlling": controlling,
            "candidates": lines,
        }
        if peer is not None:
            blob["offer_ufrag"] = peer.ufrag
        write_description(args.out, blob)
        if peer is None:
            peer = await read_description(
                args.peer, deadline, expect_offer=connection.local_username
            )

        # apply the peer's description, then connect (the time is measured here)
        started = time.perf_counter()
        connection.remote_username = peer.ufrag
        connection.remote_password = peer.pwd
        for line in peer.candidates:
            candidate = Candidate.from_sdp(line.removeprefix("candidate:"))
            await connection.add_remote_candidate(candidate)
        await connection.add_remote_candidate(None)
        try:
            await asyncio.wait_for(
                connection.connect(), max(0.1, deadline - loop.time())
            )
        except TimeoutError:
            raise PeerError("aioice: no ICE connection before the --timeout") from None
        except ConnectionError as exc:
            raise PeerError(f"aioice: {exc}") from None
        connected = time.perf_counter() - started
        data_rtt = await hello(connection, max(1.0, deadline - loop.time()))
        return report(connection, controlling, connected, data_rtt, peer)
    finally:
        await connection.close()


async def hello(connection: Any, budget: float) -> float | None:
    """Hellos until :data:`_PINGS` are acknowledged and one of the peer's was
    answered; the fastest round trip (s)."""
    rtts: list[float] = []
    sent: dict[int, float] = {}
    answered = asyncio.Event()
    acked = asyncio.Event()

    async def listen() -> None:
        while True:
            data: bytes = await connection.recv()
            if data.startswith(_HELLO):
                await connection.send(_ACK + data[len(_HELLO) :])
                answered.set()
            elif data.startswith(_ACK) and data[len(_ACK) :].isdigit():
                at = sent.pop(int(data[len(_ACK) :]), None)
                if at is not None:
                    rtts.append(time.perf_counter() - at)
                    acked.set()

    listener = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(budget):
            number = 0
            while len(rtts) < _PINGS:
                acked.clear()
                sent[number] = time.perf_counter()
                await connection.send(_HELLO + str(number).encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(acked.wait(), _HELLO_EVERY)
                if listener.done():
                    listener.result()
                number += 1
            await answered.wait()
        await asyncio.sleep(_LINGER)
    except TimeoutError:
        raise PeerError("connected, but no hello came back over the pair") from None
    except ConnectionError as exc:
        raise PeerError(f"aioice: {exc}") from None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
    return min(rtts, default=None)


def report(
    connection: Any,
    controlling: bool,
    connected: float,
    data_rtt: float | None,
    peer: Description,
) -> dict[str, Any]:
    """The keys of ``natkit ice --json`` for aioice's nominated pair."""
    # aioice 0.13 has no public accessor for the nominated pair
    nominated = getattr(connection, "_nominated", {})
    pair = nominated.get(1)
    if pair is None:
        raise PeerError("aioice connected but reports no nominated pair")
    local, remote = pair.local_candidate, pair.remote_candidate
    return {
        "impl": "aioice",
        "role": "controlling" if controlling else "controlled",
        "local": {"type": local.type, "address": f"{local.host}:{local.port}"},
        "remote": {"type": remote.type, "address": f"{remote.host}:{remote.port}"},
        "relayed": "relay" in (local.type, remote.type),
        "connected_ms": round(connected * 1000.0, 3),
        "rtt_ms": None,
        "data_rtt_ms": None if data_rtt is None else round(data_rtt * 1000.0, 3),
        "local_candidates": len(connection.local_candidates),
        "remote_candidates": len(peer.candidates),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.turn is not None and (not args.turn_user or not args.turn_password):
        sys.stderr.write("aioice_peer: error: --turn needs --turn-user/-password\n")
        return 2
    if args.host_ip:
        _use_host_ips(args.host_ip)
    try:
        result = asyncio.run(session(args))
    except PeerError as exc:
        sys.stderr.write(f"aioice_peer: error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"aioice_peer: error: {exc.strerror or exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
