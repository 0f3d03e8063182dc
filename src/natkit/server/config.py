"""The server configuration: one validated model, three sources.

Values come from a TOML file (``--config``), then ``NATKIT_*`` environment
variables, then command-line flags; each source overrides the one before.
Everything is validated once by :class:`ServerConfig`; a bad value becomes a
:class:`ConfigError` that names the key, the value and the reason, in one line.

Every key is described in ``docs/configuration.md``.
"""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
)

from natkit.net.address import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    ListenAddress,
    Transport,
)
from natkit.stun.errors import NatkitError

#: RFC 8489 §6.2.2 allows messages up to 64 KiB over streams: 20-byte header plus
#: a length field that is a multiple of 4.
MAX_STUN_MESSAGE = 20 + 0xFFFC
#: RFC 8489 §6.1: the smallest message size every path must carry (IPv4 MTU).
MIN_STUN_MESSAGE = 548

ENV_PREFIX = "NATKIT_"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


class ConfigError(NatkitError):
    """A configuration value that stops start-up.

    ``str(error)`` is the one line shown to the operator:
    ``listen[0] = 'udp:1.2.3.4:99999': port must be 1-65535``.
    """

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key} = {value!r}: {reason}")


def _validate_listen(value: object) -> ListenAddress:
    if isinstance(value, ListenAddress):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string PROTO:HOST[:PORT]")
    return ListenAddress.parse(value)


ListenField = Annotated[
    ListenAddress,
    PlainValidator(_validate_listen),
    PlainSerializer(str, return_type=str),
]


class ServerConfig(BaseModel):
    """Everything ``natkit serve`` can be told. See docs/configuration.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: tuple[ListenField, ...] | None = None
    data_dir: Path = Path("natkit-data")
    software: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_generate: bool = True
    stream_idle_timeout: float = Field(default=30.0, gt=0, le=86400)
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    max_message_size: int = Field(
        default=MAX_STUN_MESSAGE, ge=MIN_STUN_MESSAGE, le=MAX_STUN_MESSAGE
    )
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"

    @field_validator("listen", mode="before")
    @classmethod
    def _one_listener(cls, value: object) -> object:
        # a single "udp:0.0.0.0:3478" is a list of one
        return [value] if isinstance(value, str) else value

    @field_validator("listen")
    @classmethod
    def _listen_not_empty(
        cls, value: tuple[ListenAddress, ...] | None
    ) -> tuple[ListenAddress, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("at least one listener is needed")
            if len(set(value)) != len(value):
                raise ValueError("the same listener is given twice")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("software")
    @classmethod
    def _software_fits(cls, value: str | None) -> str | None:
        # RFC 8489 §14.14: fewer than 128 characters, at most 763 bytes
        if value is not None and (len(value) >= 128 or len(value.encode()) > 763):
            raise ValueError("SOFTWARE must be under 128 characters (RFC 8489 §14.14)")
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("file not found")
        return value

    @property
    def tls_available(self) -> bool:
        """A certificate is configured, or may be generated on first start."""
        return self.tls_cert is not None or self.tls_generate

    def listeners(self) -> tuple[ListenAddress, ...]:
        """The configured listeners, or the defaults (RFC 8489 §9 ports)."""
        if self.listen is not None:
            return self.listen
        defaults = [
            ListenAddress(Transport.UDP, "0.0.0.0", DEFAULT_PORT),
            ListenAddress(Transport.TCP, "0.0.0.0", DEFAULT_PORT),
        ]
        if self.tls_available:
            defaults.append(ListenAddress(Transport.TLS, "0.0.0.0", DEFAULT_TLS_PORT))
        return tuple(defaults)


#: keys whose environment value is a list, split on commas and whitespace
_LIST_KEYS = frozenset({"listen"})


def env_name(key: str) -> str:
    """The environment variable for a config key: ``NATKIT_DATA_DIR``."""
    return ENV_PREFIX + key.upper()


def load_config(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Merge file < environment < overrides and validate once.

    ``overrides`` holds the command-line flags that were given (None values are
    skipped). Raises :class:`ConfigError` for any bad key or value.
    """
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_toml(config_file))
    merged.update(from_environ(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = ServerConfig.model_validate(merged)
    except ValidationError as exc:
        raise _first_error(exc) from None
    _cross_check(config)
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML config file."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError("--config", str(path), exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"invalid TOML: {exc}") from None


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Config values from ``NATKIT_<KEY>`` variables, for known keys only.

    Other ``NATKIT_*`` variables are left alone: other natkit commands may use
    them.
    """
    values: dict[str, Any] = {}
    for key in ServerConfig.model_fields:
        raw = environ.get(env_name(key))
        if raw is None:
            continue
        values[key] = raw.replace(",", " ").split() if key in _LIST_KEYS else raw
    return values


def _first_error(exc: ValidationError) -> ConfigError:
    """The first validation error as a ConfigError naming key, value, reason."""
    error = exc.errors()[0]
    key = ""
    for part in error["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    reason = error["msg"]
    if error["type"] == "extra_forbidden":
        reason = "unknown key"
    elif error["type"] == "value_error":
        reason = reason.removeprefix("Value error, ")
    else:
        reason = reason[:1].lower() + reason[1:]
    return ConfigError(key or "config", error.get("input"), reason)


def _cross_check(config: ServerConfig) -> None:
    """Checks that involve more than one key."""
    if (config.tls_cert is None) != (config.tls_key is None):
        key = "tls_key" if config.tls_key is None else "tls_cert"
        raise ConfigError(key, None, "tls_cert and tls_key must be given together")
    for index, address in enumerate(config.listen or ()):
        if address.transport is Transport.TLS and not config.tls_available:
            raise ConfigError(
                f"listen[{index}]",
                str(address),
                "TLS listener needs tls_cert/tls_key or tls_generate = true",
            )
