"""The ``natkit`` command: one subcommand per job."""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from natkit import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="natkit")
def main() -> None:
    """natkit: NAT traversal toolkit (STUN, TURN, RFC 5780, ICE) and server."""


# --- serve -------------------------------------------------------------------

# Values are taken as text and validated by the config model, so a bad flag is
# reported like a bad file or environment value: key, value, reason.
_SERVE_EPILOG = """\b
Examples:
  natkit serve
  natkit serve --listen udp:0.0.0.0:3478 --listen tcp:[::]:3478
  natkit serve --config /etc/natkit/natkit.toml --log-format json
  natkit serve --user alice:secret --realm example.org --relay-ip 192.0.2.10
  natkit serve --external-ip 203.0.113.5/10.0.0.5 --relay-ports 50000-50999
  natkit serve --no-turn
  natkit serve --listen udp:192.0.2.1:3478 --rfc5780 --alternate-ip 192.0.2.2

Every option is also a config key (--data-dir is data_dir) and an
environment variable (NATKIT_DATA_DIR). Flags override the environment,
which overrides the file. See docs/configuration.md.
"""


@main.command(epilog=_SERVE_EPILOG)
@click.option("--config", "config_file", metavar="FILE", help="TOML config file.")
@click.option(
    "--listen",
    multiple=True,
    metavar="PROTO:HOST[:PORT]",
    help="Listener, repeatable: udp:0.0.0.0:3478, tcp:[::]:3478, tls:0.0.0.0:5349.",
)
@click.option("--data-dir", metavar="DIR", help="Where the server writes files.")
@click.option("--software", metavar="TEXT", help="SOFTWARE attribute to send.")
@click.option("--tls-cert", metavar="FILE", help="PEM certificate chain for TLS.")
@click.option("--tls-key", metavar="FILE", help="PEM private key for TLS.")
@click.option(
    "--tls-generate/--no-tls-generate",
    default=None,
    help="Generate a self-signed certificate when none is configured.",
)
@click.option("--stream-idle-timeout", metavar="SECONDS", help="TCP/TLS idle limit.")
@click.option("--max-connections", metavar="N", help="TCP/TLS connection limit.")
@click.option("--max-message-size", metavar="BYTES", help="Largest stream message.")
@click.option("--log-level", metavar="LEVEL", help="debug, info, warning, error.")
@click.option("--log-format", metavar="FORMAT", help="text or json.")
@click.option(
    "--turn/--no-turn", default=None, help="Serve TURN too (default), or STUN only."
)
@click.option("--realm", metavar="REALM", help="TURN realm (default natkit).")
@click.option("--relay-ports", metavar="LOW-HIGH", help="Relay port range.")
@click.option(
    "--relay-ip",
    multiple=True,
    metavar="IP",
    help="Address relay sockets bind to, repeatable (IPv4 and/or IPv6).",
)
@click.option(
    "--external-ip",
    multiple=True,
    metavar="PUBLIC[/PRIVATE]",
    help="Public address to advertise for a relay IP (1:1 NAT), repeatable.",
)
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME:PASSWORD",
    help="Long-term TURN user held in memory, repeatable (quick start).",
)
@click.option(
    "--auth-secret-file", metavar="FILE", help="REST shared secrets, base64 lines."
)
@click.option(
    "--user-store/--no-user-store",
    default=None,
    help="Use the users of the data directory's store (default on).",
)
@click.option(
    "--allow-peer", multiple=True, metavar="CIDR", help="Peers allowed, repeatable."
)
@click.option(
    "--deny-peer", multiple=True, metavar="CIDR", help="Peers denied, repeatable."
)
@click.option("--max-allocations", metavar="N", help="Allocations in total (0: any).")
@click.option("--user-quota", metavar="N", help="Allocations per user (0: any).")
@click.option("--max-permissions", metavar="N", help="Permissions per allocation.")
@click.option("--max-channels", metavar="N", help="Channels per allocation.")
@click.option("--bps-limit", metavar="BYTES", help="Bytes/s per allocation (0: any).")
@click.option("--max-lifetime", metavar="SECONDS", help="Longest allocation lifetime.")
@click.option("--default-lifetime", metavar="SECONDS", help="Default lifetime.")
@click.option(
    "--rfc5780/--no-rfc5780",
    default=None,
    help="NAT behaviour discovery (RFC 5780): needs --alternate-ip.",
)
@click.option("--alternate-ip", metavar="IP", help="RFC 5780 second IP of this host.")
@click.option(
    "--alternate-port", metavar="PORT", help="RFC 5780 second port (default port+1)."
)
def serve(config_file: str | None, listen: tuple[str, ...], **flags: object) -> None:
    """Run the STUN/TURN server (RFC 8489, RFC 8656) over UDP, TCP and TLS."""
    from natkit.server.config import ConfigError, load_config
    from natkit.server.daemon import StartupError, run
    from natkit.server.logging import configure_logging

    if listen:
        flags["listen"] = list(listen)
    for key in ("relay_ip", "external_ip", "users", "allow_peer", "deny_peer"):
        # repeatable flags: given means they replace the file and environment
        value = flags.pop(key)
        if isinstance(value, tuple) and value:
            flags[key] = list(value)
    try:
        config = load_config(
            config_file=Path(config_file) if config_file is not None else None,
            overrides=flags,
        )
    except ConfigError as exc:
        click.echo(f"natkit: config error: {exc}", err=True)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    try:
        run(config)
    except StartupError as exc:
        click.echo(f"natkit: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)  # interrupted before the signal handlers were in place


# --- stun --------------------------------------------------------------------

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


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"natkit: error: {message}", err=True)
    sys.exit(code)


@main.command(epilog=_STUN_EPILOG)
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
@click.option("-4", "--ipv4", "family", flag_value="ipv4", help="Use IPv4 only.")
@click.option("-6", "--ipv6", "family", flag_value="ipv6", help="Use IPv6 only.")
@click.option("--insecure", is_flag=True, help="TLS: do not verify the certificate.")
@click.option("--cafile", metavar="FILE", help="TLS: trust the CAs in this PEM file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
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
        _fail(str(exc))
        return
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


def _opt_str(value: object | None) -> str | None:
    return None if value is None else str(value)


# --- bench -------------------------------------------------------------------


@main.group()
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
    import json

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
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot send to {server}: {exc.strerror or exc}")
        return
    except KeyboardInterrupt:
        sys.exit(130)

    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for line in format_report(report):
            click.echo(line)
    if report.received == 0:
        _fail(f"no Binding success responses from {report.target}")


# --- users, credentials, secrets ---------------------------------------------
#
# Usage errors of these commands are one line on stderr ("natkit: error: ...",
# exit 2), like their runtime errors (exit 1).


class _OneLineUsageError(click.UsageError):
    """A click usage error shown as one ``natkit: error:`` line."""

    def show(self, file: IO[Any] | None = None) -> None:
        message = self.format_message().rstrip(".")
        message = message[:1].lower() + message[1:]
        hint = f" (see: {self.ctx.command_path} --help)" if self.ctx else ""
        click.echo(f"natkit: error: {message}{hint}", err=True)


class _OneLineCommand(click.Command):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), exc.ctx) from None


class _OneLineGroup(click.Group):
    command_class = _OneLineCommand

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), exc.ctx) from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), exc.ctx) from None


def _die(message: str, code: int = 1) -> NoReturn:
    """One error line on stderr; exit 2 for usage errors, 1 for the rest."""
    click.echo(f"natkit: error: {message}", err=True)
    sys.exit(code)


@dataclass(frozen=True, slots=True)
class _StoreSettings:
    """What ``natkit serve`` would use: data directory, realm, REST secrets."""

    data_dir: Path
    realm: str
    auth_secret: str | None = field(default=None, repr=False)
    auth_secret_file: Path | None = None
    user_store: bool = True


def _store_settings(
    config_file: str | None, data_dir: str | None, realm: str | None
) -> _StoreSettings:
    """Flags, then the server config (--config file, NATKIT_* environment)."""
    from natkit.server.config import ConfigError, load_config

    try:
        config = load_config(
            config_file=Path(config_file) if config_file is not None else None,
            overrides={"data_dir": data_dir},
        )
    except ConfigError as exc:
        _die(f"config: {exc}", 2)
    return _StoreSettings(
        config.data_dir,
        config.realm if realm is None else realm,
        config.auth_secret,
        config.auth_secret_file,
        config.user_store,
    )


def _data_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        metavar="DIR",
        help="Data directory [default: ./natkit-data, or the config's data_dir].",
    )(func)


def _config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_file",
        metavar="FILE",
        help="Server TOML config to take data_dir (and realm) from.",
    )(func)


def _realm_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--realm",
        metavar="REALM",
        help="Realm [default: the server config's realm, natkit].",
    )(func)


@main.group("users", cls=_OneLineGroup)
def users_group() -> None:
    """Manage long-term TURN users (RFC 8489 §9.2) in the data directory.

    Only derived keys are stored (MD5 and/or SHA-256, and the USERHASH),
    never the password. Changes reach a running server within a second.
    """


_USERS_ADD_EPILOG = """\b
Examples:
  natkit users add alice                      # asks for the password twice
  printf '%s' "$PW" | natkit users add alice --password-stdin
  natkit users add bob --realm example.org --algorithm sha256
  natkit users add alice --replace            # new password

--password puts the password in the process list and shell history;
prefer the prompt or --password-stdin. Give --algorithm sha256 alone for a
FIPS 140 deployment (no MD5 key is derived then).
"""


@users_group.command("add", epilog=_USERS_ADD_EPILOG)
@click.argument("name")
@click.option("--password", metavar="P", help="The password (see below).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_realm_option
@click.option(
    "--algorithm",
    "algorithms",
    type=click.Choice(["md5", "sha256"], case_sensitive=False),
    multiple=True,
    help="Key to derive, repeatable [default: md5 and sha256].",
)
@click.option("--replace", is_flag=True, help="Replace an existing user.")
@_data_dir_option
@_config_option
def users_add(
    name: str,
    password: str | None,
    password_stdin: bool,
    realm: str | None,
    algorithms: tuple[str, ...],
    replace: bool,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Add user NAME with a password; only its derived keys are stored."""
    from natkit.server.store import DEFAULT_ALGORITHMS, UserStore
    from natkit.stun.constants import PasswordAlgorithm
    from natkit.stun.errors import NatkitError, UsageError

    settings = _store_settings(config_file, data_dir, realm)
    secret = _read_password(password, password_stdin)
    chosen = tuple(PasswordAlgorithm[a.upper()] for a in dict.fromkeys(algorithms))
    try:
        with UserStore.open(settings.data_dir) as store:
            record = store.add_user(
                name,
                settings.realm,
                secret,
                algorithms=chosen or DEFAULT_ALGORITHMS,
                replace=replace,
            )
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))
    algs = ", ".join(a.name.lower() for a in record.algorithms)
    click.echo(f"added user {record.username!r} in realm {record.realm!r} ({algs})")
    if not settings.user_store:
        click.echo("natkit: note: user_store = false: the server ignores it", err=True)


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def _read_password(password: str | None, from_stdin: bool) -> str:
    """From --password, from stdin, or prompted twice on a terminal."""
    if password is not None and from_stdin:
        _die("give either --password or --password-stdin, not both", 2)
    if from_stdin:
        text = sys.stdin.read()
        password = text.removesuffix("\n").removesuffix("\r")
    elif password is None:
        if not _stdin_is_tty():
            _die("no password: give --password-stdin or run on a terminal", 2)
        password = str(
            click.prompt("Password", hide_input=True, confirmation_prompt=True)
        )
    if not password:
        _die("the password must not be empty", 2)
    return password


_USERS_LIST_EPILOG = """\b
Examples:
  natkit users list
  natkit users list --realm example.org --json
"""


@users_group.command("list", epilog=_USERS_LIST_EPILOG)
@click.option("--realm", metavar="REALM", help="Only users of this realm.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@_data_dir_option
@_config_option
def users_list(
    realm: str | None, as_json: bool, data_dir: str | None, config_file: str | None
) -> None:
    """List the users: name, realm, key algorithms, creation time (UTC)."""
    import json

    from natkit.server.store import DB_FILE, UserRecord, UserStore
    from natkit.stun.errors import NatkitError

    settings = _store_settings(config_file, data_dir, realm)
    records: list[UserRecord] = []
    if (settings.data_dir / DB_FILE).exists():
        try:
            with UserStore.open(settings.data_dir, create=False) as store:
                records = store.list_users(realm)
        except NatkitError as exc:
            _die(str(exc))
    elif not as_json:
        click.echo(f"no users ({settings.data_dir / DB_FILE} does not exist)", err=True)

    rows = [
        {
            "username": r.username,
            "realm": r.realm,
            "algorithms": [a.name.lower() for a in r.algorithms],
            "created_at": _iso_utc(r.created_at.timestamp()),
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        return
    table = [("USERNAME", "REALM", "ALGORITHMS", "CREATED")] + [
        (
            str(row["username"]),
            str(row["realm"]),
            ",".join(r.name.lower() for r in rec.algorithms),
            str(row["created_at"]),
        )
        for row, rec in zip(rows, records, strict=True)
    ]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        click.echo("  ".join([*cells, line[3]]))


_USERS_REMOVE_EPILOG = """\b
Examples:
  natkit users remove alice
  natkit users remove bob --realm example.org

Exits 1 when there is no such user.
"""


@users_group.command("remove", epilog=_USERS_REMOVE_EPILOG)
@click.argument("name")
@_realm_option
@_data_dir_option
@_config_option
def users_remove(
    name: str, realm: str | None, data_dir: str | None, config_file: str | None
) -> None:
    """Remove user NAME; a running server refuses it within a second."""
    from natkit.server.store import DB_FILE, UserStore
    from natkit.stun.errors import NatkitError

    settings = _store_settings(config_file, data_dir, realm)
    if not (settings.data_dir / DB_FILE).exists():
        _die(f"no user {name!r} in realm {settings.realm!r} (no user store yet)")
    try:
        with UserStore.open(settings.data_dir, create=False) as store:
            removed = store.remove_user(name, settings.realm)
    except NatkitError as exc:
        _die(str(exc))
    if not removed:
        _die(f"no user {name!r} in realm {settings.realm!r}")
    click.echo(f"removed user {name!r} from realm {settings.realm!r}")


# credentials ------------------------------------------------------------------

#: the longest --ttl accepted
_MAX_TTL_S = 7 * 86400
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic in new click
    """``30s``, ``10m``, ``1h``, ``2d`` or plain seconds, 1 s to 7 days."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            seconds = value
        else:
            text = str(value).strip().lower()
            number, unit = text.rstrip("smhd"), text[len(text.rstrip("smhd")) :]
            if not number.isascii() or not number.isdigit() or len(unit) > 1:
                self.fail(
                    f"{value!r}: expected a duration like 30s, 10m, 1h, 2d or "
                    "plain seconds",
                    param,
                    ctx,
                )
            seconds = int(number) * _TTL_UNITS[unit]
        if not 1 <= seconds <= _MAX_TTL_S:
            self.fail(f"{value!r}: must be from 1s to 7d", param, ctx)
        return seconds


_CREDENTIALS_EPILOG = """\b
Examples:
  natkit credentials alice
  natkit credentials alice --ttl 10m --json
  natkit credentials alice --secret "$TURN_SECRET" --ttl 2d

Mints time-limited TURN credentials from a shared secret, the scheme coturn
calls use-auth-secret: username "EXPIRY:USER" (unix time), password
base64(HMAC-SHA1(secret, username)). The secret is the one the server
mints with: the config's auth_secret or first auth_secret_file entry, else
the newest in the data directory's rest-secrets file (created on first
use); or --secret, taken as text like coturn's static-auth-secret.
TTL: 30s, 10m, 1h, 2d or seconds, at most 7d.
"""


@main.command(cls=_OneLineCommand, epilog=_CREDENTIALS_EPILOG)
@click.argument("user")
@click.option(
    "--ttl",
    type=_Duration(),
    default="1h",
    show_default=True,
    help="How long the credentials are valid.",
)
@click.option("--secret", metavar="S", help="Shared secret (text) instead of the file.")
@_data_dir_option
@_config_option
@click.option("--sha256", is_flag=True, help="HMAC-SHA256 instead of HMAC-SHA1.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def credentials(
    user: str,
    ttl: int,
    secret: str | None,
    data_dir: str | None,
    config_file: str | None,
    sha256: bool,
    as_json: bool,
) -> None:
    """Mint time-limited TURN credentials (TURN REST API) for USER."""
    import json
    import time

    from natkit.stun.errors import NatkitError, UsageError
    from natkit.turn.credentials import RestHmac, mint

    if secret is not None and (data_dir is not None or config_file is not None):
        _die("give either --secret or --data-dir/--config, not both", 2)
    if secret == "":
        _die("--secret must not be empty", 2)
    key = secret.encode("utf-8") if secret is not None else None
    if key is None:
        key = _newest_rest_secret(config_file, data_dir)
    try:
        _check_rest_user(user)
        credential = mint(
            user,
            ttl,
            key,
            time.time(),
            hmac_algorithm=RestHmac.SHA256 if sha256 else RestHmac.SHA1,
        )
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))

    expires = _iso_utc(credential.expires_at)
    if as_json:
        data = {
            "username": credential.username,
            "password": credential.password,
            "ttl": credential.ttl,
            "expires_at": expires,
        }
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    click.echo(f"username  {credential.username}")
    click.echo(f"password  {credential.password}")
    click.echo(f"expires   {expires}")


def _check_rest_user(user: str) -> None:
    """The user part must survive OpaqueString, as clients prepare USERNAME."""
    from natkit.stun.errors import UsageError
    from natkit.stun.integrity import opaque_string

    if user and opaque_string(user) != user:
        raise UsageError(f"user {user!r} is not in OpaqueString form (NFC)")


def _newest_rest_secret(config_file: str | None, data_dir: str | None) -> bytes:
    """The secret the server mints with, as ``natkit serve`` picks it.

    The config's auth_secret, else the first in its auth_secret_file, else
    the first in the data directory's rest-secrets (generated if missing).
    """
    from natkit.security.secrets import (
        check_private_file,
        ensure_rest_secrets,
        parse_rest_secrets,
        secret_fingerprint,
    )
    from natkit.stun.errors import NatkitError

    settings = _store_settings(config_file, data_dir, None)
    if settings.auth_secret:
        return settings.auth_secret.encode("utf-8")
    try:
        path = settings.auth_secret_file
        if path is not None:
            check_private_file(path)
            found = parse_rest_secrets(path.read_text("ascii"), source=str(path))
            if not found:
                _die(f"{path} holds no secret")
            return found[0]
        secrets = ensure_rest_secrets(settings.data_dir)
    except NatkitError as exc:
        _die(str(exc))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        _die(f"cannot read {settings.auth_secret_file}: {reason or exc}")
    if secrets.generated:
        click.echo(
            f"natkit: generated REST secret {secret_fingerprint(secrets.newest)} "
            f"in {secrets.path}",
            err=True,
        )
    return secrets.newest


def _iso_utc(timestamp: float) -> str:
    """ISO 8601 in UTC with a Z, to the second."""
    import datetime

    moment = datetime.datetime.fromtimestamp(int(timestamp), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# secrets ----------------------------------------------------------------------


@main.group("secrets", cls=_OneLineGroup)
def secrets_group() -> None:
    """Rotate the REST shared secrets (rest-secrets in the data directory).

    Several secrets are valid at once: the newest mints credentials, every
    one is accepted. Rotate with add, wait the longest TTL, then retire.
    """


_SECRETS_LIST_EPILOG = """\b
Examples:
  natkit secrets list
  natkit secrets list --json

Shows fingerprints (first 8 hex digits of SHA-256), never a secret.
"""


@secrets_group.command("list", epilog=_SECRETS_LIST_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@_data_dir_option
@_config_option
def secrets_list(as_json: bool, data_dir: str | None, config_file: str | None) -> None:
    """List the REST secrets by fingerprint, newest first."""
    import json

    from natkit.security.secrets import (
        read_rest_secrets,
        rest_secrets_path,
        secret_fingerprint,
    )
    from natkit.stun.errors import NatkitError

    settings = _store_settings(config_file, data_dir, None)
    if not rest_secrets_path(settings.data_dir).exists():
        _die(
            f"no REST secrets in {settings.data_dir} yet "
            "(natkit secrets add or natkit credentials creates one)"
        )
    try:
        found = read_rest_secrets(settings.data_dir)
    except NatkitError as exc:
        _die(str(exc))
    prints = [secret_fingerprint(s) for s in found]
    if as_json:
        rows = [{"fingerprint": p, "mints": i == 0} for i, p in enumerate(prints)]
        click.echo(json.dumps(rows))
        return
    for index, fingerprint in enumerate(prints):
        click.echo(f"{fingerprint}  {'mints, accepted' if index == 0 else 'accepted'}")


_SECRETS_ADD_EPILOG = """\b
Examples:
  natkit secrets add                          # a new random 32-byte secret
  printf '%s' "$SECRET" | natkit secrets add --stdin

The new secret goes first: it mints from now on; older ones stay accepted.
With --stdin the text read (one trailing newline dropped) is the secret, as
coturn's static-auth-secret; at least 16 bytes.
"""


@secrets_group.command("add", epilog=_SECRETS_ADD_EPILOG)
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the secret text.")
@_data_dir_option
@_config_option
def secrets_add(
    from_stdin: bool, data_dir: str | None, config_file: str | None
) -> None:
    """Add a REST secret (random by default) as the newest."""
    from natkit.security.secrets import add_rest_secret, secret_fingerprint
    from natkit.stun.errors import NatkitError, UsageError

    settings = _store_settings(config_file, data_dir, None)
    given = None
    if from_stdin:
        given = sys.stdin.read().removesuffix("\n").removesuffix("\r").encode()
    try:
        added = add_rest_secret(settings.data_dir, given)
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))
    click.echo(f"added REST secret {secret_fingerprint(added)} (now minting)")


_SECRETS_RETIRE_EPILOG = """\b
Examples:
  natkit secrets retire 3f9a01c2
  natkit secrets retire --oldest

Credentials minted with a retired secret stop working at once. The last
secret cannot be retired.
"""


@secrets_group.command("retire", epilog=_SECRETS_RETIRE_EPILOG)
@click.argument("fingerprint", required=False)
@click.option("--oldest", is_flag=True, help="Retire the oldest secret.")
@_data_dir_option
@_config_option
def secrets_retire(
    fingerprint: str | None,
    oldest: bool,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Retire the REST secret with FINGERPRINT (or --oldest)."""
    from natkit.security.secrets import (
        rest_secrets_path,
        retire_rest_secret,
        secret_fingerprint,
    )
    from natkit.stun.errors import NatkitError, UsageError

    if (fingerprint is None) == (not oldest):
        _die("give a FINGERPRINT or --oldest", 2)
    settings = _store_settings(config_file, data_dir, None)
    if not rest_secrets_path(settings.data_dir).exists():
        _die(f"no REST secrets in {settings.data_dir}")
    try:
        retired = retire_rest_secret(settings.data_dir, fingerprint)
    except UsageError as exc:
        _die(str(exc), 2)
    except NatkitError as exc:
        _die(str(exc))
    click.echo(f"retired REST secret {secret_fingerprint(retired)}")


# --- turn, bench turn ----------------------------------------------------------

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


@main.command("turn", cls=_OneLineCommand, epilog=_TURN_EPILOG)
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
@click.option("-4", "--ipv4", "family", flag_value="ipv4", help="Use IPv4 only.")
@click.option("-6", "--ipv6", "family", flag_value="ipv6", help="Use IPv6 only.")
@click.option("--insecure", is_flag=True, help="TLS: do not verify the certificate.")
@click.option("--cafile", metavar="FILE", help="TLS: trust the CAs in this PEM file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
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
    import json

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

    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for line in format_report(report):
            click.echo(line)
    if report.received == 0:
        _die(f"nothing came back through the relays of {report.target}")


# --- probe -------------------------------------------------------------------

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


@main.command("probe", cls=_OneLineCommand, epilog=_PROBE_EPILOG)
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


from natkit.cli_lab import lab as _lab_group  # noqa: E402

main.add_command(_lab_group)
