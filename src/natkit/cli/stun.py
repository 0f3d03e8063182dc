"""``natkit stun``: this host's public (mapped) address."""

import sys

import click

from natkit.cli._common import _client_options, _die, _OneLineCommand, _opt_str

_STUN_EPILOG = """\b
Examples:
  natkit stun stun.example.org
  natkit stun 127.0.0.1:3478 --json
  natkit stun [::1]:3478 --transport tcp --timeout 5
  natkit stun stun.example.org --transport tls --cafile ca.pem

Default port: 3478 (udp, tcp), 5349 (tls). Over UDP the request is
retransmitted on the RFC 8489 schedule (RTO 500 ms doubling, 7 sends) and the
client gives up after 39.5 s unless --timeout is shorter.
"""


@click.command("stun", cls=_OneLineCommand, epilog=_STUN_EPILOG)
@click.argument("server", metavar="HOST[:PORT]")
@click.option(
    "--transport",
    type=click.Choice(["udp", "tcp", "tls"]),
    default="udp",
    show_default=True,
    help="Transport to send the Binding request on.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up after this long (default: 39.5 s, the RFC 8489 timers).",
)
@_client_options
def stun(
    server: str,
    transport: str,
    timeout: float | None,
    family: str | None,
    insecure: bool,
    cafile: str | None,
    as_json: bool,
) -> None:
    """Ask a STUN server for this host's public (mapped) address."""
    import asyncio
    import json

    from natkit.net.stun_client import (
        DEFAULT_PORT,
        DEFAULT_TLS_PORT,
        address_family,
        binding,
        parse_server,
        tls_context,
    )
    from natkit.stun.errors import NatkitError
    from natkit.stun.transaction import Transport

    kind = Transport(transport)
    try:
        default_port = DEFAULT_TLS_PORT if kind is Transport.TLS else DEFAULT_PORT
        spec = parse_server(server, default_port=default_port)
        context = None
        if kind is Transport.TLS:
            context = tls_context(insecure=insecure, cafile=cafile)
        result = asyncio.run(
            binding(
                spec.host,
                spec.port,
                transport=kind,
                timeout=timeout,
                family=address_family(family),
                ssl_context=context,
            )
        )
    except NatkitError as exc:
        _die(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)

    rtt_ms = round(result.rtt * 1000.0, 3)
    if as_json:
        data: dict[str, object] = {
            "mapped": str(result.mapped),
            "local": str(result.local),
            "server": str(result.server),
            "rtt_ms": rtt_ms,
            "transport": str(result.transport),
            "transmissions": result.transmissions,
            "response_origin": _opt_str(result.response_origin),
            "other_address": _opt_str(result.other_address),
            "software": result.software,
        }
        click.echo(json.dumps(data))
        return
    click.echo(f"mapped address  {result.mapped}")
    click.echo(f"local address   {result.local}")
    click.echo(f"server          {result.server} ({result.transport})")
    sends = "" if result.transmissions == 1 else f" ({result.transmissions} sends)"
    click.echo(f"rtt             {rtt_ms:.3f} ms{sends}")
    if result.other_address is not None:
        click.echo(f"other address   {result.other_address}")
    if result.software:
        click.echo(f"software        {result.software}")
