"""``natkit probe``: RFC 5780 NAT behaviour discovery."""

import sys

import click

from natkit.cli._common import _die, _OneLineCommand

_PROBE_EPILOG = """\b
Examples:
  natkit probe stun.example.org
  natkit probe 192.0.2.1:3478 --json
  natkit probe stun.example.org --lifetime --lifetime-max 300
  natkit probe stun1.example.org --server stun2.example.net:3478

The server should support RFC 5780 (natkit serve --rfc5780, coturn with two
listening IPs); without it (no OTHER-ADDRESS) filtering stays undetermined
and mapping is judged by comparing the --server servers. Each test waits
--timeout seconds (default 3, five sends). A server that never answers is a
result (udp-blocked, exit 0), not an error. --lifetime (RFC 5780 §4.6) idles
up to --lifetime-max seconds per trial (default 120, at most 900) and can take
several times that in all.
"""

#: RFC 5780 §4.6 search bounds of natkit probe: default and hard cap, seconds
_LIFETIME_DEFAULT = 120.0
_LIFETIME_CAP = 900.0


@click.command("probe", cls=_OneLineCommand, epilog=_PROBE_EPILOG)
@click.argument("server", metavar="HOST[:PORT]")
@click.option(
    "--server",
    "extra_servers",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Another STUN server to compare mappings with, repeatable.",
)
@click.option("--lifetime", is_flag=True, help="Measure the binding lifetime.")
@click.option(
    "--lifetime-max",
    type=click.FloatRange(min=1, max=_LIFETIME_CAP),
    metavar="SECONDS",
    help="Longest idle time tried (default 120, at most 900); implies --lifetime.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60),
    default=3.0,
    show_default=True,
    metavar="SECONDS",
    help="How long each test waits for its response.",
)
@click.option(
    "--local", "local_ip", metavar="IP", help="Local IP to probe from (default: route)."
)
@click.option("-4", "--ipv4", "family", flag_value="ipv4", help="Use IPv4 only.")
@click.option("-6", "--ipv6", "family", flag_value="ipv6", help="Use IPv6 only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="List every test that was run.")
def probe(
    server: str,
    extra_servers: tuple[str, ...],
    lifetime: bool,
    lifetime_max: float | None,
    timeout: float,
    local_ip: str | None,
    family: str | None,
    as_json: bool,
    verbose: bool,
) -> None:
    """What kind of NAT is this host behind? (RFC 5780 behaviour discovery)"""
    import asyncio
    import json

    from natkit.nat.discovery import ProbeConfig
    from natkit.net.probe import format_result, lifetime_estimate, probe_policy
    from natkit.net.probe import probe as run_probe
    from natkit.net.stun_client import AddressError, address_family, parse_server
    from natkit.stun.errors import NatkitError, UsageError

    try:
        spec = parse_server(server)
        extras = [parse_server(s) for s in extra_servers]
        if lifetime or lifetime_max is not None:
            lifetime_max = lifetime_max or _LIFETIME_DEFAULT
        config = ProbeConfig(policy=probe_policy(timeout), lifetime_max=lifetime_max)
        if local_ip is not None:
            local_ip = _probe_local_ip(local_ip)
    except (AddressError, UsageError) as exc:
        _die(str(exc), 2)
    estimate = lifetime_estimate(config)
    if estimate is not None:
        took = f"{estimate:.0f} s" if estimate < 120 else f"{estimate / 60:.0f} min"
        click.echo(
            f"natkit: measuring the binding lifetime may take about {took}", err=True
        )
    try:
        result = asyncio.run(
            run_probe(
                spec,
                extra_servers=extras,
                family=address_family(family),
                config=config,
                local_ip=local_ip,
            )
        )
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"network error: {exc.strerror or exc}")
    except KeyboardInterrupt:
        sys.exit(130)

    if as_json:
        click.echo(json.dumps(result.to_json(verbose=verbose)))
        return
    for line in format_result(result, verbose=verbose):
        click.echo(line)


def _probe_local_ip(text: str) -> str:
    import ipaddress

    from natkit.stun.errors import UsageError

    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise UsageError(f"--local {text!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise UsageError(f"--local {text!r}: give this host's own unicast IP")
    return str(ip)
