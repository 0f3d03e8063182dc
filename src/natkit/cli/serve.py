"""``natkit serve``: the STUN/TURN server."""

import sys
from pathlib import Path

import click

from natkit.cli._common import _OneLineCommand

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


@click.command("serve", cls=_OneLineCommand, epilog=_SERVE_EPILOG)
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
    "--fips",
    "crypto_profile",
    flag_value="fips",
    default=None,
    help="FIPS crypto profile: SHA-256 passwords only, AEAD TLS (crypto_profile).",
)
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
