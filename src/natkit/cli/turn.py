"""``natkit turn``: allocate a TURN relay and test it end to end."""

import sys
from typing import Any

import click

from natkit.cli._common import _client_options, _die, _OneLineCommand, _opt_str

_TURN_EPILOG = """\b
Examples:
  natkit turn 127.0.0.1:3478 --user alice --password secret
  natkit turn 127.0.0.1:3478 --user alice --password secret --echo --json
  natkit turn turn.example.org --user alice --password secret \\
      --peer 198.51.100.7:5000 --count 20 --interval 50
  natkit turn turn.example.org --transport tls --cafile ca.pem --user u --password p

Allocates a relay (answering the 401 challenge: SHA-256 when the server
offers it, else MD5), then with --peer or --echo creates a permission, binds
a channel and sends --count payloads that the peer is expected to echo.
--echo starts a UDP echo peer on 127.0.0.1 (random port). natkit serve denies
loopback peers by default: start it with --allow-peer 127.0.0.1/32 (coturn:
--allow-loopback-peers). Loss is in percent; RTTs in milliseconds.
"""


def _parse_peer(text: str) -> Any:
    """``IP:PORT`` or ``[IPV6]:PORT`` as a peer Address (raises NatkitError)."""
    from natkit.net.stun_client import parse_server
    from natkit.stun.errors import UsageError
    from natkit.turn.client import peer_address

    spec = parse_server(text, default_port=0)
    if spec.port == 0:
        raise UsageError(f"peer {text!r} needs a port (IP:PORT)")
    return peer_address(spec.host, spec.port)


def _peer_refused_hint(peer: Any) -> str:
    import ipaddress

    if peer is not None and ipaddress.ip_address(peer.ip).is_loopback:
        return (
            "; natkit serve denies loopback peers by default (SSRF protection): "
            "start it with --allow-peer 127.0.0.1/32 (coturn: --allow-loopback-peers)"
        )
    return f"; the server's peer policy does not allow relaying to {peer}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@click.command("turn", cls=_OneLineCommand, epilog=_TURN_EPILOG)
@click.argument("server", metavar="HOST[:PORT]")
@click.option("--user", "username", required=True, help="Long-term username.")
@click.option("--password", required=True, help="Long-term password.")
@click.option("--realm", help="Expected realm (fail if the server names another).")
@click.option(
    "--transport",
    type=click.Choice(["udp", "tcp", "tls"]),
    default="udp",
    show_default=True,
    help="Transport to the server (the relay itself is always UDP).",
)
@click.option("--peer", metavar="IP:PORT", help="A UDP peer that echoes.")
@click.option("--echo", is_flag=True, help="Start an echo peer on 127.0.0.1.")
@click.option(
    "--count",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Payloads to send to the peer.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0, 10_000),
    default=100.0,
    show_default=True,
    metavar="MS",
    help="Milliseconds between payloads.",
)
@click.option(
    "--size",
    type=click.IntRange(16, 8192),
    default=64,
    show_default=True,
    metavar="BYTES",
    help="Payload size.",
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 60),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for echoes after the last payload.",
)
@click.option(
    "--no-channel", is_flag=True, help="Use Send/Data indications, not a channel."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up on a request after this long (default: 39.5 s, RFC 8489).",
)
@_client_options
def turn(
    server: str,
    username: str,
    password: str,
    realm: str | None,
    transport: str,
    peer: str | None,
    echo: bool,
    count: int,
    interval: float,
    size: int,
    wait: float,
    no_channel: bool,
    timeout: float | None,
    family: str | None,
    insecure: bool,
    cafile: str | None,
    as_json: bool,
) -> None:
    """Allocate a TURN relay and test it end to end (RFC 8656)."""
    import asyncio
    import json

    from natkit.net.stun_client import (
        DEFAULT_PORT,
        DEFAULT_TLS_PORT,
        address_family,
        parse_server,
    )
    from natkit.net.turn_client import (
        ProbeReport,
        TurnClient,
        TurnRequestError,
        probe,
        start_echo_peer,
    )
    from natkit.stun.constants import ErrorCode, Method
    from natkit.stun.errors import NatkitError, UsageError
    from natkit.stun.transaction import Transport

    if peer is not None and echo:
        _die("give --peer or --echo, not both", 2)
    kind = Transport(transport)
    target: Any = None

    async def go() -> ProbeReport:
        nonlocal target
        default_port = DEFAULT_TLS_PORT if kind is Transport.TLS else DEFAULT_PORT
        spec = parse_server(server, default_port=default_port)
        target = _parse_peer(peer) if peer is not None else None
        echo_transport = None
        if echo:
            echo_transport, target = await start_echo_peer("127.0.0.1")
        client = TurnClient(
            spec.host,
            spec.port,
            username=username,
            password=password,
            realm=realm,
            transport=kind,
            insecure=insecure,
            cafile=cafile,
            family=address_family(family),
            timeout=timeout,
        )
        try:
            async with client:
                return await probe(
                    client,
                    target,
                    count=count,
                    interval=interval / 1000.0,
                    size=size,
                    wait=wait,
                    channel=not no_channel,
                )
        finally:
            if echo_transport is not None:
                echo_transport.close()

    try:
        report = asyncio.run(go())
    except TurnRequestError as exc:
        refused_peer = exc.code == ErrorCode.FORBIDDEN and exc.method in (
            Method.CREATE_PERMISSION,
            Method.CHANNEL_BIND,
        )
        _die(str(exc) + (_peer_refused_hint(target) if refused_peer else ""))
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"network error: {exc.strerror or exc}")
    except KeyboardInterrupt:
        sys.exit(130)

    info = report.info
    rtt = {
        "min": _ms(report.rtt(0.0)),
        "p50": _ms(report.rtt(0.5)),
        "max": _ms(report.rtt(1.0)),
    }
    if as_json:
        data: dict[str, object] = {
            "relayed": str(info.relayed),
            "mapped": _opt_str(info.mapped),
            "lifetime": info.lifetime,
            "server": str(info.server),
            "transport": str(info.transport),
            "local": str(info.local),
            "realm": report.realm,
            "algorithm": report.algorithm,
            "peer": _opt_str(report.peer),
            "channel": report.channel,
            "sent": report.sent,
            "received": report.received,
            "loss": report.loss_pct,
            "rtt_ms": rtt,
        }
        click.echo(json.dumps(data))
    else:
        auth = f"realm {report.realm!r}, {report.algorithm}" if report.realm else ""
        click.echo(f"relayed address  {info.relayed}")
        click.echo(f"mapped address   {_opt_str(info.mapped) or '-'}")
        click.echo(f"lifetime         {info.lifetime} s")
        click.echo(f"server           {info.server} ({info.transport}) {auth}".rstrip())
        if report.peer is not None:
            how = (
                f"channel 0x{report.channel:04x}"
                if report.channel is not None
                else "Send/Data indications"
            )
            click.echo(f"peer             {report.peer} ({how})")
            click.echo(
                f"sent/received    {report.sent}/{report.received} "
                f"(loss {report.loss_pct:.1f} %)"
            )

            def show(value: float | None) -> str:
                return "-" if value is None else f"{value:.3f}"

            click.echo(
                f"rtt ms           min {show(rtt['min'])}  p50 {show(rtt['p50'])}  "
                f"max {show(rtt['max'])}"
            )
    if report.peer is not None and report.received == 0:
        _die(f"no echoes from {report.peer} ({report.sent} sent through the relay)")
