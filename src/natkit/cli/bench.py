"""``natkit bench stun|turn``: load generators against any STUN/TURN server."""

import json
import sys
from collections.abc import Iterable, Mapping

import click

from natkit.cli._common import _die, _OneLineCommand, _OneLineGroup


@click.group("bench", cls=_OneLineGroup)
def bench() -> None:
    """Load generators that work against any STUN/TURN server (coturn too)."""


_BENCH_STUN_EPILOG = """\b
Examples:
  natkit bench stun 127.0.0.1:3478 --duration 10
  natkit bench stun 127.0.0.1:3478 --duration 30 --rate 5000 --json

Keeps --window Binding requests in flight over UDP, spread over --sockets
source ports, matched by transaction id; a request unanswered after 1 s is
lost. Sends only to the one address given; stops by itself after --duration
(at most 300 s). Bench only servers you run or may load.
"""


@bench.command("stun", epilog=_BENCH_STUN_EPILOG)
@click.argument("server", metavar="HOST[:PORT]")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, max=300, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to send (at most 300).",
)
@click.option(
    "--window",
    type=click.IntRange(1, 10_000),
    default=64,
    show_default=True,
    help="Requests in flight at most.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, max=1_000_000, min_open=True),
    metavar="PER_SECOND",
    help="Requests per second at most (default: as fast as answered).",
)
@click.option(
    "--sockets",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="UDP source ports to spread the load over.",
)
@click.option("-4", "--ipv4", "family", flag_value="ipv4", help="Use IPv4 only.")
@click.option("-6", "--ipv6", "family", flag_value="ipv6", help="Use IPv6 only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_stun(
    server: str,
    duration: float,
    window: int,
    rate: float | None,
    sockets: int,
    family: str | None,
    as_json: bool,
) -> None:
    """Load a STUN server with Binding requests over UDP and report."""

    from natkit.bench.stun import (
        BenchConfig,
        BenchReport,
        format_report,
        run_bench,
        run_on_fast_loop,
    )
    from natkit.net.stun_client import address_family, parse_server, resolve
    from natkit.stun.errors import NatkitError
    from natkit.stun.transaction import Transport

    async def go() -> BenchReport:
        spec = parse_server(server)
        address = await resolve(
            spec, transport=Transport.UDP, family=address_family(family)
        )
        config = BenchConfig(
            duration=duration, window=window, rate=rate, sockets=sockets
        )
        return await run_bench(address.ip, address.port, config)

    try:
        report = run_on_fast_loop(go())
    except NatkitError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot send to {server}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        sys.exit(130)

    _print_report(report.to_dict(), format_report(report), as_json=as_json)
    if report.received == 0:
        _die(f"no Binding success responses from {report.target}")


_BENCH_TURN_EPILOG = """\b
Examples:
  natkit bench turn 127.0.0.1:3478 --user u --password p
  natkit bench turn 127.0.0.1:3478 --user u --password p \\
      --allocations 100 --duration 30 --rate 20000 --json

Sets up --allocations TURN allocations over UDP (each on its own socket,
answering the 401 challenge), binds a channel from each to a UDP echo peer on
127.0.0.1 that runs in a child process, and relays ChannelData round-robin at
--rate packets/s in total for --duration seconds. Reports allocations/s,
relayed packets/s, loss and latency p50/p99. The server must relay to
loopback peers (natkit serve --allow-peer 127.0.0.1/32, coturn
--allow-loopback-peers). At most 1000 allocations, 300 s, 200000 pps.
"""


@bench.command("turn", cls=_OneLineCommand, epilog=_BENCH_TURN_EPILOG)
@click.argument("server", metavar="HOST[:PORT]")
@click.option("--user", "username", required=True, help="Long-term username.")
@click.option("--password", required=True, help="Long-term password.")
@click.option("--realm", help="Expected realm.")
@click.option(
    "--allocations",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Allocations to set up (at most 1000).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, max=300, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to relay (at most 300).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, max=200_000, min_open=True),
    default=20_000.0,
    show_default=True,
    metavar="PPS",
    help="ChannelData packets per second, all allocations together.",
)
@click.option(
    "--size",
    type=click.IntRange(16, 1200),
    default=100,
    show_default=True,
    metavar="BYTES",
    help="Payload size.",
)
@click.option(
    "--echo-peers",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="UDP echo sockets in the echo process.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_turn(
    server: str,
    username: str,
    password: str,
    realm: str | None,
    allocations: int,
    duration: float,
    rate: float,
    size: int,
    echo_peers: int,
    as_json: bool,
) -> None:
    """Load a TURN server: allocations, then ChannelData through each relay."""

    from natkit.bench.stun import run_on_fast_loop
    from natkit.bench.turn import (
        TurnBenchConfig,
        TurnBenchReport,
        format_report,
        run_bench,
    )
    from natkit.net.stun_client import parse_server, resolve
    from natkit.stun.errors import NatkitError, UsageError
    from natkit.stun.transaction import Transport

    async def go() -> TurnBenchReport:
        spec = parse_server(server)
        address = await resolve(spec, transport=Transport.UDP)
        config = TurnBenchConfig(
            username=username,
            password=password,
            realm=realm,
            allocations=allocations,
            duration=duration,
            rate=rate,
            size=size,
            echo_peers=echo_peers,
        )
        return await run_bench(address.ip, address.port, config)

    try:
        report = run_on_fast_loop(go())
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))
    except TimeoutError:
        _die(f"setting up the allocations on {server} took too long")
    except OSError as exc:
        _die(f"network error: {exc.strerror or exc}")
    except KeyboardInterrupt:
        sys.exit(130)

    _print_report(report.to_dict(), format_report(report), as_json=as_json)
    if report.received == 0:
        _die(f"nothing came back through the relays of {report.target}")


def _print_report(
    record: Mapping[str, object], lines: Iterable[str], *, as_json: bool
) -> None:
    """A bench report: one JSON object, or its human lines."""
    if as_json:
        click.echo(json.dumps(record))
    else:
        for line in lines:
            click.echo(line)
