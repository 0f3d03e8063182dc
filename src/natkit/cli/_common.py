"""Shared pieces of the ``natkit`` commands: one-line errors, options, types."""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import click

# Usage errors are one line on stderr ("natkit: error: ...", exit 2), like
# runtime errors (exit 1).


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

    def invoke(self, ctx: click.Context) -> Any:
        # subcommands of any class: their usage errors become one line too
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, _OneLineUsageError):
            raise
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


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-4/-6, --insecure, --cafile and --json, as natkit stun and turn take them."""
    options = [
        click.option(
            "-4", "--ipv4", "family", flag_value="ipv4", help="Use IPv4 only."
        ),
        click.option(
            "-6", "--ipv6", "family", flag_value="ipv6", help="Use IPv6 only."
        ),
        click.option(
            "--insecure", is_flag=True, help="TLS: do not verify the certificate."
        ),
        click.option(
            "--cafile", metavar="FILE", help="TLS: trust the CAs in this PEM file."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _opt_str(value: object | None) -> str | None:
    return None if value is None else str(value)


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


def _iso_utc(timestamp: float) -> str:
    """ISO 8601 in UTC with a Z, to the second."""
    import datetime

    moment = datetime.datetime.fromtimestamp(int(timestamp), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
