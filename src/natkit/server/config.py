"""The server configuration: one validated model, three sources.

Values come from a TOML file (``--config``), then ``NATKIT_*`` environment
variables, then command-line flags; each source overrides the one before.
Everything is validated once by :class:`ServerConfig`; a bad value becomes a
:class:`ConfigError` that names the key, the value and the reason, in one line.

Every key is described in ``docs/configuration.md``.
"""

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from natkit.net.address import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    ListenAddress,
    Transport,
)
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import NatkitError, UsageError
from natkit.turn.policy import PolicyError, parse_peer_rule

#: RFC 8489 §6.2.2 allows messages up to 64 KiB over streams: 20-byte header plus
#: a length field that is a multiple of 4.
MAX_STUN_MESSAGE = 20 + 0xFFFC
#: RFC 8489 §6.1: the smallest message size every path must carry (IPv4 MTU).
MIN_STUN_MESSAGE = 548

ENV_PREFIX = "NATKIT_"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
CryptoProfileName = Literal["default", "fips"]
RestHmacName = Literal["sha1", "sha256"]
#: audit files rotate at this size unless configured (0: never)
DEFAULT_AUDIT_MAX_BYTES = 64 * 1024 * 1024


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

#: RFC 8656 §7.2: relay ports SHOULD come from the dynamic range
DEFAULT_RELAY_PORTS = "49152-65535"
DEFAULT_REALM = "natkit"


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive port range, written ``LOW-HIGH``."""

    low: int
    high: int

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def __len__(self) -> int:
        return self.high - self.low + 1

    @classmethod
    def parse(cls, text: str) -> "PortRange":
        """``LOW-HIGH`` (or one port); raises ValueError with a short reason."""
        low_text, sep, high_text = text.strip().partition("-")
        if not sep:
            high_text = low_text
        low_text, high_text = low_text.strip(), high_text.strip()
        if not (low_text.isdigit() and high_text.isdigit()):
            raise ValueError("expected LOW-HIGH, e.g. 49152-65535")
        low, high = int(low_text), int(high_text)
        if not (1 <= low <= 0xFFFF and 1 <= high <= 0xFFFF):
            raise ValueError("ports must be 1-65535")
        if low > high:
            raise ValueError("the first port is above the last")
        return cls(low, high)


def _validate_ports(value: object) -> PortRange:
    if isinstance(value, PortRange):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string LOW-HIGH, e.g. 49152-65535")
    return PortRange.parse(value)


PortRangeField = Annotated[
    PortRange,
    PlainValidator(_validate_ports),
    PlainSerializer(str, return_type=str),
]


def _concrete_ip(text: str) -> str:
    """A unicast IP literal in canonical form; ValueError with the reason."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (no host names)") from None
    if ip.is_unspecified:
        raise ValueError("a relay address must be concrete, not a wildcard")
    if ip.is_multicast:
        raise ValueError("a relay address must not be multicast")
    return str(ip)


def _validate_relay_ip(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an IP address string")
    return _concrete_ip(value)


RelayIpField = Annotated[str, PlainValidator(_validate_relay_ip)]


@dataclass(frozen=True, slots=True)
class ExternalIp:
    """``PUBLIC[/PRIVATE]``: advertise PUBLIC for the relay IP PRIVATE (1:1 NAT).

    Without PRIVATE it applies to every relay IP of PUBLIC's family.
    """

    public: str
    private: str | None = None

    def __str__(self) -> str:
        return self.public if self.private is None else f"{self.public}/{self.private}"

    @classmethod
    def parse(cls, text: str) -> "ExternalIp":
        public_text, sep, private_text = text.strip().partition("/")
        public = _concrete_ip(public_text)
        if not sep:
            return cls(public)
        private = _concrete_ip(private_text)
        if (":" in public) != (":" in private):
            raise ValueError("PUBLIC and PRIVATE must be of one IP version")
        return cls(public, private)


def _validate_external_ip(value: object) -> ExternalIp:
    if isinstance(value, ExternalIp):
        return value
    if not isinstance(value, str):
        raise ValueError("expected PUBLIC[/PRIVATE], e.g. 203.0.113.5/10.0.0.5")
    return ExternalIp.parse(value)


ExternalIpField = Annotated[
    ExternalIp,
    PlainValidator(_validate_external_ip),
    PlainSerializer(str, return_type=str),
]


@dataclass(frozen=True, slots=True)
class StaticUser:
    """A ``--user NAME:PASSWORD`` user: its name and derived keys only.

    RFC 8489 §9.2.2: the long-term keys (MD5 and SHA-256) are computed when
    the configuration is validated; the password is not kept.
    """

    name: str
    keys: Mapping[PasswordAlgorithm, bytes] = field(repr=False)


#: the algorithms a --user gets keys for (RFC 8489 §18.5)
STATIC_USER_ALGORITHMS = (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256)


def _derive_user(
    value: object,
    realm: str,
    algorithms: tuple[PasswordAlgorithm, ...] = STATIC_USER_ALGORITHMS,
) -> StaticUser:
    from natkit.server.store import derive_keys, prepare_username

    if isinstance(value, StaticUser):
        return value
    if not isinstance(value, str):
        raise ValueError("expected NAME:PASSWORD")
    name, sep, password = value.partition(":")
    if not sep or not name or not password:
        raise ValueError("expected NAME:PASSWORD, both non-empty")
    try:
        username = prepare_username(name)
        keys = derive_keys(username, realm, password, algorithms)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    return StaticUser(username, keys)


def _mask_user(value: object) -> object:
    """A --user value fit for an error line: the password replaced."""
    if isinstance(value, str):
        name, sep, _ = value.partition(":")
        return f"{name}:***" if sep else value
    if isinstance(value, list | tuple):
        return [_mask_user(v) for v in value]
    return value


def _validate_peer_rule(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR, an address or FIRST-LAST")
    try:
        parse_peer_rule(value)
    except PolicyError as exc:
        raise ValueError(str(exc).partition(": ")[2] or str(exc)) from None
    return value.strip()


PeerRuleField = Annotated[str, PlainValidator(_validate_peer_rule)]


def _validate_alternate_ip(value: object) -> str:
    """RFC 5780 §6: the second IP, a unicast literal of this host."""
    if not isinstance(value, str):
        raise ValueError("expected an IP address string")
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (no host names)") from None
    if ip.is_unspecified:
        raise ValueError("the alternate address must be concrete, not a wildcard")
    if ip.is_multicast:
        raise ValueError("the alternate address must not be multicast")
    return str(ip)


AlternateIpField = Annotated[str, PlainValidator(_validate_alternate_ip)]


#: the admin API's listener unless configured: loopback only, HTTPS
DEFAULT_ADMIN_LISTEN = "127.0.0.1:8443"
DEFAULT_ADMIN_PORT = 8443


@dataclass(frozen=True, slots=True)
class AdminAddress:
    """``HOST[:PORT]`` of the admin API listener; IPv6 in brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    @classmethod
    def parse(cls, text: str) -> "AdminAddress":
        """``127.0.0.1:8443``, ``[::1]:8443`` or a bare IP (port 8443)."""
        text = text.strip()
        port_text = ""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError("expected [IPV6]:PORT")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host = text
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address (no host names)") from None
        port = DEFAULT_ADMIN_PORT
        if port_text:
            if not port_text.isascii() or not port_text.isdigit():
                raise ValueError(f"port {port_text!r} is not a number")
            port = int(port_text)
        if not 1 <= port <= 0xFFFF:
            raise ValueError("port must be 1-65535")
        return cls(str(ip), port)


def _validate_admin_listen(value: object) -> AdminAddress:
    if isinstance(value, AdminAddress):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string HOST:PORT, e.g. 127.0.0.1:8443")
    return AdminAddress.parse(value)


AdminAddressField = Annotated[
    AdminAddress,
    PlainValidator(_validate_admin_listen),
    PlainSerializer(str, return_type=str),
]


@dataclass(frozen=True, slots=True)
class Rfc5780Addresses:
    """The two IPs and two ports of an RFC 5780 server (RFC 5780 §6).

    The primary is a configured UDP listener; the alternate is
    ``alternate_ip`` with ``alternate_port`` (primary port + 1 by default).
    """

    primary_ip: str
    primary_port: int
    alternate_ip: str
    alternate_port: int


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

    # TURN (RFC 8656); see docs/configuration.md
    turn: bool = True
    realm: str = DEFAULT_REALM
    relay_ports: PortRangeField = PortRange.parse(DEFAULT_RELAY_PORTS)
    relay_ip: tuple[RelayIpField, ...] = ()
    external_ip: tuple[ExternalIpField, ...] = ()
    # the crypto profile (NIST SC-13), before users: it picks their keys;
    # see docs/security.md
    crypto_profile: CryptoProfileName = "default"
    allow_legacy_md5: bool = False
    allow_legacy_sha1: bool = False
    rest_hmac: RestHmacName | None = None
    fips_required: bool = False
    users: tuple[StaticUser, ...] = ()
    auth_secret: str | None = Field(default=None, repr=False)
    auth_secret_file: Path | None = None
    user_store: bool = True
    allow_peer: tuple[PeerRuleField, ...] = ()
    deny_peer: tuple[PeerRuleField, ...] = ()
    max_allocations: int = Field(default=0, ge=0, le=10_000_000)
    user_quota: int = Field(default=64, ge=0, le=10_000_000)
    max_permissions: int = Field(default=128, ge=0, le=100_000)
    max_channels: int = Field(default=128, ge=0, le=0x1000)
    bps_limit: int = Field(default=0, ge=0)
    max_lifetime: int = Field(default=3600, ge=1, le=86400)
    default_lifetime: int = Field(default=600, ge=1, le=86400)
    # kernel buffers (SO_RCVBUF, SO_SNDBUF) of UDP listeners and relay
    # sockets, 0: the kernel default; see docs/benchmarks.md
    udp_buffer_bytes: int = Field(default=4 << 20, ge=0, le=1 << 30)
    relay_buffer_bytes: int = Field(default=1 << 20, ge=0, le=1 << 30)

    # RFC 5780 NAT behaviour discovery; see docs/configuration.md
    rfc5780: bool = False
    alternate_ip: AlternateIpField | None = None
    alternate_port: int | None = Field(default=None, ge=1, le=0xFFFF)

    # admin API and metrics (HTTPS, bearer tokens); see docs/configuration.md
    admin: bool = True
    admin_listen: AdminAddressField = AdminAddress.parse(DEFAULT_ADMIN_LISTEN)
    admin_allow_remote: bool = False
    admin_cert: Path | None = None
    admin_key: Path | None = None
    metrics: bool = True
    metrics_public: bool = False

    # audit trail and sealing at rest (NIST AU-*, SC-28); see docs/security.md
    node_name: str | None = None
    audit: bool = True
    audit_log: Path | None = None
    audit_key_file: Path | None = None
    audit_max_bytes: int = Field(default=DEFAULT_AUDIT_MAX_BYTES, ge=0)
    audit_flush_seconds: float = Field(default=1.0, gt=0, le=60)
    audit_buffer: int = Field(default=10_000, ge=100, le=10_000_000)
    audit_checkpoint_records: int = Field(default=1000, ge=0)
    audit_checkpoint_seconds: float = Field(default=300.0, ge=0)
    master_key_file: Path | None = None

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

    @field_validator("realm")
    @classmethod
    def _realm_fits(cls, value: str) -> str:
        from natkit.server.store import prepare_realm

        try:
            return prepare_realm(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    @field_validator(
        "relay_ip", "external_ip", "users", "allow_peer", "deny_peer", mode="before"
    )
    @classmethod
    def _one_item(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("users", mode="before")
    @classmethod
    def _derive_users(cls, value: object, info: ValidationInfo) -> object:
        # the realm is validated first (field order): keys depend on it
        realm = info.data.get("realm")
        if isinstance(value, str):
            value = [value]
        if realm is None or not isinstance(value, list | tuple):
            return value
        algorithms: tuple[PasswordAlgorithm, ...] = STATIC_USER_ALGORITHMS
        if info.data.get("crypto_profile") == "fips" and not info.data.get(
            "allow_legacy_md5"
        ):
            # FIPS 140: no MD5 key is computed (OpenSSL in FIPS mode refuses)
            algorithms = (PasswordAlgorithm.SHA256,)
        users = [_derive_user(v, realm, algorithms) for v in value]
        names = [u.name for u in users]
        if len(set(names)) != len(names):
            raise ValueError("the same user is given twice")
        return users

    @field_validator("auth_secret")
    @classmethod
    def _secret_long_enough(cls, value: str | None) -> str | None:
        from natkit.security.secrets import weak_secret_reason

        if value is not None and len(value.encode()) < 16:
            raise ValueError("a REST secret must be at least 16 bytes")
        weak = None if value is None else weak_secret_reason(value.encode())
        if weak is not None:
            # IA-5(1): default and placeholder secrets are refused
            raise ValueError(f"a weak REST secret: {weak}")
        return value

    @field_validator("master_key_file")
    @classmethod
    def _key_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("file not found (the master key is provisioned apart)")
        return value

    @field_validator("node_name")
    @classmethod
    def _node_name_fits(cls, value: str | None) -> str | None:
        if value is not None and not (
            0 < len(value) <= 253 and value.isprintable() and value.strip() == value
        ):
            raise ValueError("a node name is 1-253 printable characters")
        return value

    @field_validator("auth_secret_file")
    @classmethod
    def _secret_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("file not found")
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

    @field_validator("tls_cert", "tls_key", "admin_cert", "admin_key")
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

    def rfc5780_addresses(self) -> Rfc5780Addresses | None:
        """The RFC 5780 §6 addresses when ``rfc5780`` is on, else None.

        Raises :class:`ConfigError` when there are not two usable addresses
        (see :func:`check_rfc5780`; :func:`load_config` runs it already).
        """
        return check_rfc5780(self) if self.rfc5780 else None


#: keys whose environment value is a list, split on commas and whitespace
_LIST_KEYS = frozenset(
    {"listen", "relay_ip", "external_ip", "users", "allow_peer", "deny_peer"}
)


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
    value = error.get("input")
    if key.startswith("users"):
        value = _mask_user(value)
    if error["type"] == "extra_forbidden":
        reason = "unknown key"
    elif error["type"] == "value_error":
        reason = reason.removeprefix("Value error, ")
    else:
        reason = reason[:1].lower() + reason[1:]
    return ConfigError(key or "config", value, reason)


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
    if config.default_lifetime > config.max_lifetime:
        raise ConfigError(
            "default_lifetime",
            config.default_lifetime,
            f"must not be above max_lifetime ({config.max_lifetime})",
        )
    if len(set(config.relay_ip)) != len(config.relay_ip):
        raise ConfigError(
            "relay_ip", list(config.relay_ip), "an address is given twice"
        )
    _check_external(config)
    check_rfc5780(config)
    _check_admin(config)
    _check_crypto(config)


def check_rfc5780(config: ServerConfig) -> Rfc5780Addresses | None:
    """RFC 5780 §6: two IPs of one family and two ports, or a ConfigError.

    The primary address is the first UDP listener of the alternate IP's
    family; it must be a concrete IP, since responses have to leave from
    exactly the address the client was told about.
    """
    alternate = config.alternate_ip
    if not config.rfc5780:
        if alternate is not None:
            raise ConfigError(
                "alternate_ip", alternate, "has no effect without rfc5780 = true"
            )
        if config.alternate_port is not None:
            raise ConfigError(
                "alternate_port",
                config.alternate_port,
                "has no effect without rfc5780 = true",
            )
        return None
    if alternate is None:
        raise ConfigError(
            "rfc5780",
            True,
            "needs a second IP of this host in alternate_ip (--alternate-ip): "
            "with one address CHANGE-REQUEST cannot be answered (RFC 5780 §6)",
        )

    # step 1: the primary, the first UDP listener of the alternate's family
    listeners = config.listeners()
    udp = [(i, a) for i, a in enumerate(listeners) if a.transport is Transport.UDP]
    if not udp:
        raise ConfigError(
            "rfc5780", True, "needs a UDP listener (--listen udp:IP:PORT)"
        )
    v6 = ":" in alternate
    same_family = [(i, a) for i, a in udp if a.is_ipv6 == v6]
    if not same_family:
        family = "IPv6" if v6 else "IPv4"
        raise ConfigError(
            "alternate_ip",
            alternate,
            f"is {family}, but no UDP listener is (first: {udp[0][1]}); the two "
            "addresses must be of one family",
        )
    index, primary = same_family[0]
    where = f"listen[{index}]" if config.listen is not None else "listen"
    primary_ip = ipaddress.ip_address(primary.host)
    if primary_ip.is_unspecified:
        raise ConfigError(
            where,
            str(primary),
            "rfc5780 needs a concrete listen IP (--listen udp:IP:PORT), not a "
            "wildcard: responses must leave from the advertised addresses",
        )
    if str(primary_ip) == alternate:
        raise ConfigError(
            "alternate_ip",
            alternate,
            f"must differ from the primary listen IP {primary_ip} (RFC 5780 §6)",
        )

    # step 2: the alternate port, primary + 1 unless given
    port = config.alternate_port
    if port is None:
        if primary.port >= 0xFFFF:
            raise ConfigError(
                "alternate_port",
                None,
                f"the primary port is {primary.port}, so there is no port + 1; "
                "set alternate_port",
            )
        port = primary.port + 1
    elif port == primary.port:
        raise ConfigError(
            "alternate_port",
            port,
            f"must differ from the primary port {primary.port} (RFC 5780 §6)",
        )
    return Rfc5780Addresses(str(primary_ip), primary.port, alternate, port)


def _check_external(config: ServerConfig) -> None:
    """external_ip: one mapping per private address (and per family without)."""
    seen: set[str] = set()
    for index, external in enumerate(config.external_ip):
        key = f"external_ip[{index}]"
        private = external.private
        target = private or ("v6" if ":" in external.public else "v4")
        if target in seen:
            raise ConfigError(key, str(external), "a second mapping for one address")
        seen.add(target)
        if private is not None and config.relay_ip and private not in config.relay_ip:
            raise ConfigError(key, str(external), "PRIVATE is not one of relay_ip")


def _check_admin(config: ServerConfig) -> None:
    """The admin API: its own certificate pair, loopback unless allowed."""
    if (config.admin_cert is None) != (config.admin_key is None):
        key = "admin_key" if config.admin_key is None else "admin_cert"
        raise ConfigError(key, None, "admin_cert and admin_key must be given together")
    if config.admin and not config.admin_listen.is_loopback:
        if not config.admin_allow_remote:
            raise ConfigError(
                "admin_listen",
                str(config.admin_listen),
                "not a loopback address; set admin_allow_remote = true to "
                "expose the admin API beyond this host",
            )


def _check_crypto(config: ServerConfig) -> None:
    """The crypto profile (NIST SC-13): legacy switches only where they apply."""
    fips = config.crypto_profile == "fips"
    for key in ("allow_legacy_md5", "allow_legacy_sha1"):
        if getattr(config, key) and not fips:
            raise ConfigError(
                key, True, "has no effect without crypto_profile = 'fips'"
            )
    if fips and config.rest_hmac == "sha1" and not config.allow_legacy_sha1:
        raise ConfigError(
            "rest_hmac",
            "sha1",
            "the fips profile uses sha256 (set allow_legacy_sha1 = true to keep sha1)",
        )
