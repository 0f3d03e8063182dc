"""``natkit ice offer|answer``: an ICE peer (RFC 8445), for tests and diagnostics.

Two peers swap one JSON description each (RFC 8839 candidate lines and the
ICE credentials) through files, stdin/stdout or the small HTTP rendezvous of
``natkit ice rendezvous`` (:mod:`natkit.net.rendezvous`), connect, say hello
over the selected pair and report it.

The description, one line of JSON::

    {"natkit_ice": 1, "ufrag": "...", "pwd": "...", "controlling": true,
     "candidates": ["candidate:... typ host", ...], "offer_ufrag": "..."}

``offer_ufrag`` is in answers only (the ufrag of the offer answered), so an
offerer never takes a stale answer left in a file from an earlier run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from natkit.cli._common import _die, _OneLineCommand, _OneLineGroup

if TYPE_CHECKING:
    from natkit.ice.events import SelectedPair
    from natkit.net.ice_driver import Agent

#: the format marker and version of a description
_FORMAT = "natkit_ice"
_VERSION = 1
#: how often a --peer file is looked at while waiting for it
_POLL = 0.05
#: hello datagrams go out this often until the peer acknowledges one
_HELLO_EVERY = 0.2
#: hellos that must be acknowledged (the report gives the fastest)
_PINGS = 3
#: after the hellos, keep answering the peer's for this long
_LINGER = 0.3
_HELLO = b"natkit-ice hello "
_ACK = b"natkit-ice ack "

_ICE_EPILOG = """\b
Examples (two terminals, or two hosts sharing a directory):
  natkit ice offer  --out offer.json --peer answer.json --stun stun.example.org
  natkit ice answer --peer offer.json --out answer.json --stun stun.example.org
\b
  natkit ice offer --loopback --host-ip 127.0.0.1 --out o.json --peer a.json --json
  natkit ice answer --loopback --host-ip 127.0.0.1 --peer o.json --out a.json --json
\b
  natkit ice offer --turn 127.0.0.1:3478 --turn-user alice --turn-password secret \\
      --relay-only --out o.json --peer a.json
\b
  natkit ice rendezvous --listen 127.0.0.1:8765
  natkit ice offer  --out http://127.0.0.1:8765/demo/offer \\
      --peer http://127.0.0.1:8765/demo/answer
  natkit ice answer --peer http://127.0.0.1:8765/demo/offer \\
      --out http://127.0.0.1:8765/demo/answer
\b
With --out - (the default) the description is printed as one JSON line on
stdout; with --peer - (the default) the peer's is read as one line from
stdin. A --peer file or URL is waited for (until --timeout); files are
written atomically; an http:// --out is stored with PUT, an http:// --peer
fetched with GET. The offerer is the controlling agent unless --controlled.
Reported: the selected pair's candidate types and addresses, the time from
the peer's description to the selected pair (connected_ms), the RTT of the
last connectivity or consent check, and of a data hello over the pair.
"""


@dataclass(frozen=True, slots=True)
class _Options:
    stun: tuple[str, ...]
    turn: str | None
    turn_user: str | None
    turn_password: str | None
    turn_transport: str
    turn_cafile: str | None
    turn_insecure: bool
    loopback: bool
    host_ips: tuple[str, ...]
    family: str | None
    relay_only: bool
    timeout: float
    out: str
    peer: str
    as_json: bool
    verbose: bool


@dataclass(frozen=True, slots=True)
class _Description:
    """A peer's ICE description (the JSON blob)."""

    ufrag: str
    pwd: str
    candidates: tuple[str, ...]
    controlling: bool | None
    offer_ufrag: str | None


def _common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--out",
            default="-",
            show_default=True,
            metavar="FILE",
            help="Where to write our description (- is stdout).",
        ),
        click.option(
            "--peer",
            default="-",
            show_default=True,
            metavar="FILE",
            help="Where to read the peer's description (- is stdin).",
        ),
        click.option(
            "--stun",
            multiple=True,
            metavar="HOST[:PORT]",
            help="STUN server for server-reflexive candidates (repeatable).",
        ),
        click.option(
            "--turn", metavar="HOST[:PORT]", help="TURN server for a relayed candidate."
        ),
        click.option("--turn-user", metavar="USER", help="TURN long-term username."),
        click.option(
            "--turn-password", metavar="PASSWORD", help="TURN long-term password."
        ),
        click.option(
            "--turn-transport",
            type=click.Choice(["udp", "tcp", "tls"]),
            default="udp",
            show_default=True,
            help="How to reach the TURN server.",
        ),
        click.option("--turn-cafile", metavar="FILE", help="TLS: trust these CAs."),
        click.option(
            "--turn-insecure", is_flag=True, help="TLS: do not verify the certificate."
        ),
        click.option(
            "--loopback", is_flag=True, help="Also gather loopback host candidates."
        ),
        click.option(
            "--host-ip",
            "host_ips",
            multiple=True,
            metavar="IP",
            help="Host candidates on exactly these addresses (repeatable).",
        ),
        click.option("-4", "--ipv4", "family", flag_value="ipv4", help="IPv4 only."),
        click.option("-6", "--ipv6", "family", flag_value="ipv6", help="IPv6 only."),
        click.option(
            "--relay-only", is_flag=True, help="Relayed candidates only (needs --turn)."
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            metavar="SECONDS",
            help="Give up on the peer and the connection after this long.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
        click.option(
            "-v", "--verbose", is_flag=True, help="Debug log of the agent on stderr."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("ice", cls=_OneLineGroup, epilog=_ICE_EPILOG)
def ice() -> None:
    """ICE peer (RFC 8445): swap descriptions, connect, report the pair."""


@ice.command("offer", cls=_OneLineCommand, epilog=_ICE_EPILOG)
@_common_options
@click.option(
    "--controlled", is_flag=True, help="Be the controlled agent (default: control)."
)
def offer(controlled: bool, **kwargs: Any) -> None:
    """Write our description, read the answer, connect and report."""
    _run(_Options(**kwargs), offering=True, controlling=not controlled)


@ice.command("answer", cls=_OneLineCommand, epilog=_ICE_EPILOG)
@_common_options
def answer(**kwargs: Any) -> None:
    """Read the offer, write our answer, connect and report."""
    _run(_Options(**kwargs), offering=False, controlling=False)


@ice.command("rendezvous", cls=_OneLineCommand, epilog=_ICE_EPILOG)
@click.option(
    "--listen",
    default="127.0.0.1:8765",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to serve (plain HTTP: keep it on loopback or a trusted network).",
)
def rendezvous(listen: str) -> None:
    """Serve PUT/GET /ROOM/offer and /ROOM/answer until interrupted."""
    import asyncio

    from natkit.net.stun_client import parse_server
    from natkit.stun.errors import NatkitError

    try:
        spec = parse_server(listen)
    except NatkitError as exc:
        _die(f"--listen: {exc}", 2)
    try:
        asyncio.run(_serve_rendezvous(spec.host, spec.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _die(f"cannot listen on {listen}: {exc.strerror or exc}")


async def _serve_rendezvous(host: str, port: int) -> None:
    import asyncio
    import signal

    from aiohttp import web

    from natkit.net.rendezvous import RendezvousStore, make_app

    runner = web.AppRunner(make_app(RendezvousStore()), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"natkit ice rendezvous on http://{shown}:{port}/", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


# --- the run -----------------------------------------------------------------


def _run(options: _Options, *, offering: bool, controlling: bool) -> None:
    import asyncio
    import logging

    from natkit.net.ice_driver import IceError
    from natkit.stun.errors import NatkitError

    if options.verbose:
        logging.basicConfig(
            level=logging.DEBUG,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    try:
        settings = _agent_settings(options)
    except NatkitError as exc:
        _die(str(exc), 2)
    try:
        report = asyncio.run(
            _session(options, settings, offering=offering, controlling=controlling)
        )
    except KeyboardInterrupt:
        _die("interrupted", 130)
    except IceError as exc:
        _die(str(exc))
    except NatkitError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"{exc.strerror or exc}")
    _print_report(report, options.as_json)


def _agent_settings(options: _Options) -> dict[str, Any]:
    """Keyword arguments of :class:`Agent` from the command line."""
    import ipaddress

    from natkit.net.ice_driver import TurnServerConfig
    from natkit.net.stun_client import (
        DEFAULT_PORT,
        DEFAULT_TLS_PORT,
        parse_server,
    )
    from natkit.stun.errors import UsageError
    from natkit.stun.transaction import Transport

    stun = [parse_server(text) for text in options.stun]
    turn: list[TurnServerConfig] = []
    if options.turn is not None:
        if not options.turn_user or not options.turn_password:
            raise UsageError("--turn needs --turn-user and --turn-password")
        transport = Transport(options.turn_transport)
        port = DEFAULT_TLS_PORT if transport is Transport.TLS else DEFAULT_PORT
        spec = parse_server(options.turn, default_port=port)
        turn.append(
            TurnServerConfig(
                spec.host,
                spec.port,
                options.turn_user,
                options.turn_password,
                transport,
                cafile=options.turn_cafile,
                insecure=options.turn_insecure,
            )
        )
    elif options.turn_user or options.turn_password:
        raise UsageError("--turn-user and --turn-password need --turn")
    if options.relay_only and not turn:
        raise UsageError("--relay-only needs --turn")
    for ip in options.host_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"--host-ip {ip!r} is not an IP address") from None
    return {
        "stun_servers": stun,
        "turn_servers": turn,
        "use_loopback": options.loopback,
        "use_ipv4": options.family != "ipv6",
        "use_ipv6": options.family != "ipv4",
        "host_ips": list(options.host_ips) or None,
        "relay_only": options.relay_only,
    }


async def _session(
    options: _Options, settings: dict[str, Any], *, offering: bool, controlling: bool
) -> dict[str, Any]:
    import asyncio

    from natkit.net.ice_driver import DEFAULT_GATHER_TIMEOUT, Agent

    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout

    # step 1: the answerer learns its role from the offer
    peer: _Description | None = None
    if not offering:
        peer = await _read_description(options.peer, deadline, expect_offer=None)
        controlling = not peer.controlling if peer.controlling is not None else False

    gather_timeout = min(DEFAULT_GATHER_TIMEOUT, options.timeout)
    async with Agent(controlling, gather_timeout=gather_timeout, **settings) as agent:
        # step 2: gather and publish our description
        lines = await agent.gather()
        for problem in agent.gather_errors:
            click.echo(f"natkit: warning: {problem}", err=True)
        credentials = agent.local_credentials
        blob: dict[str, Any] = {
            _FORMAT: _VERSION,
            "ufrag": credentials.ufrag,
            "pwd": credentials.pwd,
            "controlling": agent.controlling,
            "candidates": lines,
        }
        if peer is not None:
            blob["offer_ufrag"] = peer.ufrag
        await _publish(options.out, blob, max(0.1, deadline - loop.time()))

        # step 3: the offerer waits for the answer to this offer
        if peer is None:
            peer = await _read_description(
                options.peer, deadline, expect_offer=credentials.ufrag
            )
        agent.set_remote_credentials(peer.ufrag, peer.pwd)
        for line in peer.candidates:
            agent.add_remote_candidate(line)
        agent.add_remote_candidate(None)

        # step 4: connect, say hello both ways, report
        pair = await agent.connect(timeout=max(0.1, deadline - loop.time()))
        data_rtt = await _hello(agent, max(1.0, deadline - loop.time()))
        return _report(agent, pair, len(peer.candidates), data_rtt)


# --- descriptions ---------------------------------------------------------------


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


async def _publish(target: str, blob: dict[str, Any], budget: float) -> None:
    """Our description to ``target``: stdout, a file or a rendezvous URL."""
    if _is_url(target):
        import json

        from natkit.net.rendezvous import publish_description

        text = json.dumps(blob, separators=(",", ":"))
        await publish_description(target, text, timeout=budget)
        return
    _write_description(target, blob)


def _write_description(target: str, blob: dict[str, Any]) -> None:
    import json
    import os

    text = json.dumps(blob, separators=(",", ":")) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as exc:
        from natkit.stun.errors import NatkitError

        temporary.unlink(missing_ok=True)
        raise NatkitError(f"cannot write {target}: {exc.strerror or exc}") from None


async def _read_description(
    source: str, deadline: float, *, expect_offer: str | None
) -> _Description:
    """The peer's description from ``source`` (a file, waited for, or stdin)."""
    import asyncio

    from natkit.net.ice_driver import IceTimeoutError
    from natkit.stun.errors import NatkitError

    loop = asyncio.get_running_loop()
    if source == "-":
        line = await asyncio.wait_for(_stdin_line(), max(0.1, deadline - loop.time()))
        if not line.strip():
            raise NatkitError("no peer description on stdin")
        return _parse_description(line, "stdin")

    problem = f"no peer description in {source}"

    def usable(text: str) -> _Description | None:
        """The description in ``text`` if it parses and answers us."""
        nonlocal problem
        try:
            found = _parse_description(text, source)
        except NatkitError as exc:
            problem = str(exc)
            return None
        if expect_offer is None or found.offer_ufrag == expect_offer:
            return found
        problem = f"{source} answers another offer"
        return None

    if _is_url(source):
        from natkit.net.rendezvous import fetch_description

        found = await fetch_description(source, deadline, accept=usable)
        if found is not None:
            return found
        raise IceTimeoutError(f"{problem} (waited the --timeout)")

    # a file: wait until it is there, parses, and (for an offerer) answers us
    path = Path(source)
    while loop.time() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise NatkitError(f"cannot read {source}: {exc.strerror or exc}") from None
        if text.strip() and (found := usable(text)) is not None:
            return found
        await asyncio.sleep(_POLL)
    raise IceTimeoutError(f"{problem} (waited the --timeout)")


async def _stdin_line() -> str:
    """One line of stdin, read in a daemon thread (a blocked read must not
    keep the process alive after a timeout, as an executor thread would)."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def deliver(line: str) -> None:
        if not future.done():
            future.set_result(line)

    def read() -> None:
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            line = ""
        loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=read, name="natkit-ice-stdin", daemon=True).start()
    return await future


def _parse_description(text: str, where: str) -> _Description:
    import json

    from natkit.stun.errors import NatkitError

    def bad(why: str) -> NatkitError:
        return NatkitError(f"peer description ({where}): {why}")

    try:
        blob = json.loads(text)
    except ValueError as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(blob, dict):
        raise bad("not a JSON object")
    ufrag, pwd = blob.get("ufrag"), blob.get("pwd")
    if not isinstance(ufrag, str) or not isinstance(pwd, str):
        raise bad("needs ufrag and pwd strings")
    candidates = blob.get("candidates", [])
    if not isinstance(candidates, list) or not all(
        isinstance(c, str) for c in candidates
    ):
        raise bad("candidates must be a list of candidate lines")
    controlling = blob.get("controlling")
    if controlling is not None and not isinstance(controlling, bool):
        raise bad("controlling must be true or false")
    offer_ufrag = blob.get("offer_ufrag")
    if offer_ufrag is not None and not isinstance(offer_ufrag, str):
        raise bad("offer_ufrag must be a string")
    from natkit.ice.credentials import Credentials
    from natkit.ice.sdp import CandidateSyntaxError, parse_candidate
    from natkit.stun.errors import UsageError

    try:
        Credentials(ufrag, pwd)
        for line in candidates:
            parse_candidate(line)
    except (UsageError, CandidateSyntaxError) as exc:
        raise bad(str(exc)) from None
    return _Description(ufrag, pwd, tuple(candidates), controlling, offer_ufrag)


# --- hello over the pair, and the report -------------------------------------------


async def _hello(agent: Agent, budget: float) -> float | None:
    """Hellos over the pair until :data:`_PINGS` are acknowledged and we have
    acknowledged one of the peer's; returns the smallest round trip (s)."""
    import asyncio
    import contextlib

    from natkit.net.ice_driver import IceTimeoutError

    loop = asyncio.get_running_loop()
    sent: dict[int, float] = {}
    rtts: list[float] = []
    answered = asyncio.Event()  # we acknowledged a hello of the peer
    acked = asyncio.Event()  # the peer acknowledged our latest hello

    async def listen() -> None:
        while True:
            data = await agent.recv()
            if data.startswith(_HELLO):
                agent.send(_ACK + data[len(_HELLO) :])
                answered.set()
                continue
            number = data.removeprefix(_ACK)
            if data.startswith(_ACK) and number.isdigit():
                sent_at = sent.pop(int(number), None)
                if sent_at is not None:
                    rtts.append(loop.time() - sent_at)
                    acked.set()

    async def one_round(number: int) -> None:
        acked.clear()
        sent[number] = loop.time()
        agent.send(_HELLO + str(number).encode())
        waiting = asyncio.create_task(acked.wait())
        done, _ = await asyncio.wait(
            (waiting, listener), timeout=_HELLO_EVERY, return_when="FIRST_COMPLETED"
        )
        waiting.cancel()
        if listener in done:
            listener.result()  # raises what ended it (consent lost...)

    listener = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(budget):
            number = 0
            while len(rtts) < _PINGS:
                await one_round(number)
                number += 1
            await answered.wait()
        # the peer may still be sending hellos whose answer got lost
        await asyncio.sleep(_LINGER)
        if listener.done():
            listener.result()
    except TimeoutError:
        raise IceTimeoutError(
            "connected, but no hello came back over the pair"
        ) from None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
    return min(rtts, default=None)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _report(
    agent: Agent, pair: SelectedPair, remote_count: int, data_rtt: float | None
) -> dict[str, Any]:
    return {
        "role": "controlling" if agent.controlling else "controlled",
        "local": {"type": pair.local.type.value, "address": str(pair.local.address)},
        "remote": {"type": pair.remote.type.value, "address": str(pair.remote.address)},
        "relayed": pair.is_relayed,
        "connected_ms": _ms(agent.time_to_connected),
        "rtt_ms": _ms(agent.rtt),
        "data_rtt_ms": _ms(data_rtt),
        "local_candidates": len(agent.local_candidates),
        "remote_candidates": remote_count,
    }


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    import json

    if as_json:
        click.echo(json.dumps(report))
        return
    local, remote = report["local"], report["remote"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    rows = [
        (
            "selected pair",
            f"{local['type']} {local['address']} -> {remote['type']} "
            f"{remote['address']}",
        ),
        ("role", report["role"]),
        ("connected in", ms(report["connected_ms"])),
        ("check rtt", ms(report["rtt_ms"])),
        ("data rtt", ms(report["data_rtt_ms"])),
        (
            "candidates",
            f"{report['local_candidates']} local, {report['remote_candidates']} remote",
        ),
    ]
    for name, value in rows:
        click.echo(f"{name:<15} {value}")
