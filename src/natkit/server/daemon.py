"""``natkit serve``: configuration, TLS material, listeners and signals, wired.

:func:`serve` runs one server until its stop event is set (SIGINT and SIGTERM
set it when running in the main thread); :func:`run` does so on uvloop when it
is installed, on the plain asyncio loop otherwise.

With ``turn`` on (the default) the listeners also serve TURN (RFC 8656):
:func:`build_turn` puts together the relay addresses, the credentials
(``--user`` users, the user store, REST secrets), the peer policy, the quotas
and the sans-IO :class:`~natkit.turn.server.TurnServer` with its driver.

With ``rfc5780`` on, :func:`build_rfc5780` adds the listeners of the other
three RFC 5780 §6 addresses and the responder that answers Binding on all
four (:mod:`natkit.net.rfc5780`).

Before any listener, :func:`open_security` applies the FedRAMP controls of
``natkit.security`` (docs/security.md): the crypto profile (and
``fips_required``), the master key and sealing at rest, and the audit
trail, which records start and stop, the configuration, and every TURN
event (:class:`~natkit.security.audit.TurnAuditSink`).
"""

import asyncio
import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from natkit import __version__
from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder
from natkit.net.address import ListenAddress, Transport
from natkit.net.listeners import ServiceStats, StreamLimits, StunService
from natkit.net.relay import DONT_FRAGMENT_SUPPORTED, RelayIp, RelayPorts
from natkit.net.rfc5780 import Rfc5780Sockets
from natkit.net.turn_driver import TurnDriver
from natkit.security.audit import (
    AuditLog,
    AuditSettings,
    NullAuditSink,
    TurnAuditSink,
)
from natkit.security.certs import TlsFiles, ensure_self_signed, server_context
from natkit.security.fips import CryptoProfile, fips_status, harden_tls_context
from natkit.security.sealing import Sealer
from natkit.server.config import ServerConfig
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import NatkitError
from natkit.stun.server import BindingResponder
from natkit.turn.auth import (
    InMemoryKeyStore,
    KeyLookup,
    LongTermAuthenticator,
    NonceManager,
)
from natkit.turn.credentials import RestHmac, RestSecretKeys, parse_rest_username
from natkit.turn.events import EventSink, LoggingEventSink
from natkit.turn.policy import PeerPolicy
from natkit.turn.quota import QuotaConfig
from natkit.turn.server import TurnConfig, TurnServer, rest_quota_user
from natkit.turn.throttle import AuthThrottle

if TYPE_CHECKING:
    from natkit.security.audit import AuditSink
    from natkit.server.admin import AdminServer

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupError(NatkitError):
    """The server cannot start: data directory, certificate or listener."""


@dataclass(frozen=True, slots=True)
class Security:
    """The controls one server runs with (see :func:`open_security`)."""

    profile: CryptoProfile
    sealer: Sealer
    audit: AuditLog | NullAuditSink


def crypto_profile(config: ServerConfig) -> CryptoProfile:
    """The crypto profile of ``config`` (NIST SC-13, :mod:`natkit.security.fips`)."""
    from natkit.security.fips import make_profile

    return make_profile(
        fips=config.crypto_profile == "fips",
        allow_legacy_md5=config.allow_legacy_md5,
        rest_hmac=config.rest_hmac,
    )


def open_security(config: ServerConfig) -> Security:
    """Crypto profile, master key and sealing, audit trail; StartupError if not.

    Refuses to start when ``fips_required`` is set and OpenSSL is not in
    FIPS mode, when a key or secret file is open to other users, when the
    master key is not the one the data directory was sealed with, and when
    the audit trail cannot be opened.
    """
    from natkit.security.fips import FipsError, check_start
    from natkit.security.sealing import SealError, enable_sealing, load_master_key
    from natkit.security.secrets import PrivateFileError, seal_rest_secrets

    ensure_data_dir(config.data_dir)
    profile = crypto_profile(config)
    status = fips_status()
    try:
        check_start(profile, status, required=config.fips_required)
        master = load_master_key(config.data_dir, key_file=config.master_key_file)
        sealer = enable_sealing(config.data_dir, master)
        seal_rest_secrets(config.data_dir)
    except (FipsError, SealError, PrivateFileError) as exc:
        raise StartupError(str(exc)) from None
    audit = open_audit(config)
    audit.emit(
        "server.start",
        outcome="success",
        version=__version__,
        crypto_profile=profile.name,
        openssl=status.openssl_version,
        fips_mode=status.enabled,
        master_key_id=sealer.key_id,
        pid=os.getpid(),
    )
    audit.emit("config.load", outcome="success", **config_summary(config))
    if isinstance(audit, AuditLog):
        audit.flush()  # start-up is on disk before anything else happens
    return Security(profile, sealer, audit)


def open_audit(config: ServerConfig) -> AuditLog | NullAuditSink:
    """The audit trail of ``config`` (NullAuditSink with ``audit = false``)."""
    from natkit.security.audit import AuditError

    if not config.audit:
        logger.warning("audit = false: no audit trail is written")
        return NullAuditSink()
    settings = AuditSettings.for_data_dir(
        config.data_dir,
        node=config.node_name or socket.gethostname(),
        max_bytes=config.audit_max_bytes,
        buffer_limit=config.audit_buffer,
        flush_seconds=config.audit_flush_seconds,
        checkpoint_records=config.audit_checkpoint_records,
        checkpoint_seconds=config.audit_checkpoint_seconds,
        **{
            k: v
            for k, v in (
                ("log", config.audit_log),
                ("key_file", config.audit_key_file),
            )
            if v is not None
        },
    )
    try:
        audit = AuditLog.open(settings)
    except AuditError as exc:
        raise StartupError(str(exc)) from None
    logger.info("audit trail %s (key %s)", settings.log, audit.key_id)
    return audit


def config_summary(config: ServerConfig) -> dict[str, str | int | bool | None]:
    """What ``config.load`` records: a digest of the settings, never a secret."""
    import hashlib
    import json

    settings = config.model_dump(mode="json", exclude={"users", "auth_secret"})
    settings["users"] = sorted(u.name for u in config.users)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    return {
        "config_sha256": digest.hexdigest(),
        "data_dir": str(config.data_dir),
        "crypto_profile": config.crypto_profile,
        "turn": config.turn,
        "static_users": len(config.users),
        "auth_secret_set": config.auth_secret is not None,
    }


def close_security(
    security: Security, stats: ServiceStats | None, failure: BaseException | None
) -> None:
    """``server.stop`` (or a failed ``server.start``), then close the trail."""
    audit = security.audit
    if failure is not None:
        reason = str(failure) or type(failure).__name__
        audit.emit("server.start", outcome="failure", reason=reason)
    elif stats is not None:
        turn = stats.turn
        audit.emit(
            "server.stop",
            outcome="success",
            responses=stats.success + stats.responder.errors,
            turn_requests=turn.core.requests if turn else 0,
            turn_errors=turn.core.errors if turn else 0,
        )
    audit.close()


def ensure_data_dir(path: Path) -> Path:
    """Create the data directory with mode 0700 if it is missing.

    An existing directory is kept as it is; a warning says so if others can
    read it.
    """
    if not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True)
            path.chmod(0o700)
        except OSError as exc:
            raise StartupError(
                f"cannot create data directory {path}: {exc.strerror}"
            ) from None
        logger.info("created data directory %s", path)
    elif not path.is_dir():
        raise StartupError(f"data directory {path} is not a directory")
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "data directory %s is open to other users (mode %04o)", path, mode
            )
    return path


def tls_files(config: ServerConfig) -> TlsFiles:
    """The configured certificate, or the generated one in the data directory."""
    if config.tls_cert is not None and config.tls_key is not None:
        return TlsFiles(config.tls_cert, config.tls_key)
    return ensure_self_signed(config.data_dir)


async def serve(
    config: ServerConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[tuple[ListenAddress, ...]], None] | None = None,
) -> ServiceStats:
    """Run the server until ``stop`` is set; return its final counters.

    ``on_ready`` is called with the bound listeners (ports resolved) once all
    are open. Raises :class:`StartupError` when it cannot start.
    """
    listeners = config.listeners()
    stop = stop or asyncio.Event()
    security = open_security(config)
    handled = _install_signals(stop)
    try:
        service = await _start(config, listeners, security)
    except BaseException as exc:
        _remove_signals(handled)
        close_security(security, None, exc)
        raise
    try:
        admin = await _start_admin(config, service, security.audit, security.sealer)
    except BaseException as exc:
        _remove_signals(handled)
        await service.close()
        close_security(security, None, exc)
        raise
    handled.extend(_install_reload(config, service, security))

    # run until told to stop
    try:
        if on_ready is not None:
            on_ready(service.bound)
        await stop.wait()
    finally:
        _remove_signals(handled)
        if admin is not None:
            await admin.close()
        await service.close()
    stats = service.stats()
    close_security(security, stats, None)
    logger.info(
        "stopped: %d responses (%d errors), %d malformed, %d ignored, "
        "%d idle connections closed, %d connections refused",
        stats.success + stats.responder.errors,
        stats.responder.errors,
        stats.malformed,
        stats.responder.ignored,
        stats.idle_closed,
        stats.rejected_connections,
    )
    if stats.turn is not None:
        turn = stats.turn
        logger.info(
            "TURN stopped: %d requests (%d errors), %d ChannelData relayed by the "
            "fast path (%d to peers, %d to clients), %d send errors",
            turn.core.requests,
            turn.core.errors,
            turn.fast_to_peer + turn.fast_to_client,
            turn.fast_to_peer,
            turn.fast_to_client,
            turn.send_errors,
        )
    if service.rfc5780 is not None:
        rfc5780 = service.rfc5780.stats()
        logger.info(
            "RFC 5780 stopped: %d responses (%d errors), %d malformed, "
            "%d not sent (socket closed)",
            rfc5780.responder.requests,
            rfc5780.responder.errors,
            rfc5780.responder.malformed,
            rfc5780.no_socket,
        )
    return stats


async def _start(
    config: ServerConfig, listeners: tuple[ListenAddress, ...], security: Security
) -> StunService:
    """Data directory, TLS material (when needed), then every listener."""
    ensure_data_dir(config.data_dir)

    # step 1: TLS material, only when a TLS listener is asked for; 1.2+, AEAD
    ssl_context = None
    if any(a.transport is Transport.TLS for a in listeners):
        try:
            ssl_context = server_context(tls_files(config))
            harden_tls_context(ssl_context, security.profile)
        except (NatkitError, ssl.SSLError) as exc:
            raise StartupError(str(exc)) from None

    # step 2: RFC 5780, when asked for: listeners on the other addresses
    rfc5780 = build_rfc5780(config)
    if rfc5780 is not None:
        listeners = (*listeners, *rfc5780.extra_listeners(listeners))

    # step 3: TURN, when asked for: relays, credentials, policy, the core
    responder = BindingResponder(config.software)
    turn = None
    if config.turn:
        events = TurnAuditSink(
            security.audit, realm=config.realm, also=LoggingEventSink()
        )
        turn = build_turn(
            config, listeners, responder, events=events, profile=security.profile
        )

    # step 4: the listeners
    service = StunService(
        responder,
        limits=StreamLimits(
            idle_timeout=config.stream_idle_timeout,
            max_connections=config.max_connections,
            max_message_size=config.max_message_size,
        ),
        turn=turn,
        rfc5780=rfc5780,
        udp_buffer_bytes=config.udp_buffer_bytes,
    )
    try:
        bound = await service.start(listeners, ssl_context=ssl_context)
    except NatkitError as exc:
        raise StartupError(str(exc)) from None
    for address in bound:
        logger.info("listening %s %s", address.transport, address.endpoint)
    if turn is not None:
        relays = ", ".join(_relay_text(a) for a in turn.ports.addresses)
        logger.info(
            "TURN relay on %s ports %s, realm %r",
            relays,
            config.relay_ports,
            config.realm,
        )
    if rfc5780 is not None:
        logger.info("%s", rfc5780.describe())
    return service


async def _start_admin(
    config: ServerConfig,
    service: StunService,
    audit: "AuditSink | None" = None,
    sealer: Sealer | None = None,
) -> "AdminServer | None":
    """The admin API and metrics listener (:mod:`natkit.server.admin`), if on.

    ``audit`` receives a record of every admin change and refused login.
    """
    from natkit.server.admin import start_admin

    try:
        return await start_admin(config, service, audit=audit, sealer=sealer)
    except NatkitError as exc:
        raise StartupError(str(exc)) from None


def build_rfc5780(config: ServerConfig) -> Rfc5780Sockets | None:
    """The RFC 5780 §6 responder for the configured addresses, or None."""
    addresses = config.rfc5780_addresses()
    if addresses is None:
        return None
    responder = Rfc5780Responder(
        Endpoint(addresses.primary_ip, addresses.primary_port),
        Endpoint(addresses.alternate_ip, addresses.alternate_port),
        software=config.software,
    )
    return Rfc5780Sockets(responder)


# --- TURN --------------------------------------------------------------------


class ServerKeys:
    """The :class:`~natkit.turn.auth.KeyLookup` of ``natkit serve``.

    A username is looked up in the ``--user`` users, then in the user store,
    and, if it has the REST shape ``EXPIRY:USER``, checked against the REST
    secrets (every secret gives one candidate key, for rotation).
    """

    __slots__ = ("static", "store", "rest")

    def __init__(
        self,
        static: InMemoryKeyStore,
        store: KeyLookup | None,
        rest: RestSecretKeys,
    ) -> None:
        self.static = static
        self.store = store
        self.rest = rest

    def keys_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> tuple[bytes, ...]:
        key = self.static.key_for(username, realm, algorithm)
        if key is None and self.store is not None:
            key = self.store.key_for(username, realm, algorithm)
        if key is not None:
            return (key,)
        if parse_rest_username(username) is not None:
            return self.rest.keys_for(username, realm, algorithm)
        return ()

    def key_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> bytes | None:
        keys = self.keys_for(username, realm, algorithm)
        return keys[0] if keys else None

    def user_for_hash(self, userhash: bytes, realm: str) -> str | None:
        user = self.static.user_for_hash(userhash, realm)
        if user is None and self.store is not None:
            user = self.store.user_for_hash(userhash, realm)
        return user

    def close(self) -> None:
        """Close the user store (lookups then serve what it last loaded)."""
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def build_turn(
    config: ServerConfig,
    listeners: Sequence[ListenAddress],
    responder: BindingResponder,
    *,
    events: EventSink | None = None,
    profile: CryptoProfile | None = None,
) -> TurnDriver:
    """The TURN core and its driver for ``config`` (RFC 8656).

    ``events`` receives the core's events (the audit sink in ``serve``);
    ``profile`` picks the password algorithms and the REST HMAC (by
    default the one ``config`` asks for).

    Raises :class:`StartupError` when a relay address cannot be bound or a
    secret or the user store cannot be read.
    """
    relay_ips = relay_addresses(config, listeners)
    for relay_ip in relay_ips:
        _check_bindable(relay_ip.bind)
    ports = RelayPorts(
        relay_ips,
        config.relay_ports.low,
        config.relay_ports.high,
        buffer_bytes=config.relay_buffer_bytes,
    )

    # who may relay: --user users, the user store, REST credentials
    profile = profile or crypto_profile(config)
    keys = server_keys(config, rest_hmac=profile.rest_hmac)
    authenticator = LongTermAuthenticator(
        config.realm,
        keys,
        NonceManager(secrets.token_bytes(32)),
        algorithms=profile.password_algorithms,
        fips=profile.authenticator_fips,
    )

    # where to: the peer policy, with this server's own addresses denied
    server: TurnServer | None = None

    def is_relayed(ip: str, port: int) -> bool:
        return server is not None and server.is_relayed_address(ip, port)

    policy = PeerPolicy(
        allow=config.allow_peer,
        deny=config.deny_peer,
        server_addresses=server_addresses(listeners, relay_ips),
        relay_addresses_allowed=is_relayed,
    )
    server = TurnServer(
        authenticator=authenticator,
        relays=ports,
        policy=policy,
        config=turn_config(config, ports),
        binding=responder,
        throttle=AuthThrottle(),
        events=events,
    )
    driver = TurnDriver(server, ports)
    driver.on_close(keys.close)
    return driver


def turn_config(config: ServerConfig, ports: RelayPorts) -> TurnConfig:
    """Lifetimes and quotas of the core; 0 in the config means no limit."""
    quota = QuotaConfig(
        max_allocations=config.max_allocations or None,
        max_allocations_per_user=config.user_quota or None,
        max_permissions_per_allocation=config.max_permissions or None,
        max_channels_per_allocation=config.max_channels or None,
        max_bytes_per_second=config.bps_limit or None,
    )
    return TurnConfig(
        software=config.software,
        default_lifetime=config.default_lifetime,
        max_lifetime=config.max_lifetime,
        families=ports.families,
        dont_fragment=DONT_FRAGMENT_SUPPORTED,
        quota=quota,
        quota_user=rest_quota_user,
    )


def server_keys(
    config: ServerConfig, *, rest_hmac: RestHmac = RestHmac.SHA1
) -> ServerKeys:
    """The credentials the server accepts (see :class:`ServerKeys`)."""
    static = InMemoryKeyStore()
    for user in config.users:
        static.add_keys(user.name, config.realm, user.keys)
    store = None
    if config.user_store:
        from natkit.server.store import UserStore

        try:
            store = UserStore.open(config.data_dir)
        except NatkitError as exc:
            raise StartupError(str(exc)) from None
    rest = RestSecretKeys(
        rest_secrets(config), clock=time.time, hmac_algorithm=rest_hmac
    )
    return ServerKeys(static, store, rest)


def rest_secrets(config: ServerConfig) -> list[bytes]:
    """``auth_secret``, then ``auth_secret_file``; else the data directory's."""
    from natkit.security.secrets import (
        check_private_file,
        load_or_create_rest_secret,
        parse_rest_secrets,
        secret_fingerprint,
        weak_secret_reason,
    )

    found: list[bytes] = []
    try:
        if config.auth_secret is not None:
            found.append(config.auth_secret.encode("utf-8"))
        path = config.auth_secret_file
        if path is not None:
            check_private_file(path)
            text = path.read_text(encoding="ascii")
            found.extend(parse_rest_secrets(text, source=str(path)))
            if not found:
                raise StartupError(f"{path} holds no secret")
        if not found:
            found = load_or_create_rest_secret(config.data_dir)
        for secret in found:
            # IA-5(1): a placeholder or trivial secret stops start-up
            weak = weak_secret_reason(secret)
            if weak is not None:
                raise StartupError(
                    f"REST secret {secret_fingerprint(secret)} is weak ({weak}); "
                    "replace it: natkit secrets add, then natkit secrets retire"
                )
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise StartupError(f"cannot read {config.auth_secret_file}: {reason}") from None
    except NatkitError as exc:
        if isinstance(exc, StartupError):
            raise
        raise StartupError(str(exc)) from None
    return found


def relay_addresses(
    config: ServerConfig,
    listeners: Sequence[ListenAddress],
    interfaces: Callable[[], list[str]] | None = None,
) -> tuple[RelayIp, ...]:
    """The relay IPs (``relay_ip`` or derived) and what each advertises.

    Without ``relay_ip``: the PRIVATE side of ``external_ip`` entries, then
    per listener family the first concrete listener address; a wildcard
    listener gives the first address of that family on the host's
    interfaces that is not loopback or link-local (loopback if there is
    none, with a warning). ``external_ip`` then maps each relay IP to the
    address XOR-RELAYED-ADDRESS carries.
    """
    binds = list(config.relay_ip)
    if not binds:
        binds = _default_relay_ips(config, listeners, interfaces or interface_ips)
    result: list[RelayIp] = []
    for ip in binds:
        advertised = ip
        by_family = None
        for external in config.external_ip:
            if external.private == ip:
                advertised = external.public
                break
            if external.private is None and (":" in external.public) == (":" in ip):
                by_family = external.public
        else:
            advertised = by_family or ip
        result.append(RelayIp(ip, advertised))
    return tuple(result)


def _default_relay_ips(
    config: ServerConfig,
    listeners: Sequence[ListenAddress],
    interfaces: Callable[[], list[str]],
) -> list[str]:
    chosen = [e.private for e in config.external_ip if e.private is not None]
    families = {":" in ip for ip in chosen}
    for v6 in (False, True):
        of_family = [a for a in listeners if a.is_ipv6 == v6]
        if not of_family or v6 in families:
            continue
        concrete = [a.host for a in of_family if not _is_wildcard(a.host)]
        if concrete:
            chosen.append(str(ipaddress.ip_address(concrete[0])))
            continue
        picked = _pick_interface(v6, interfaces())
        if picked is not None:
            chosen.append(picked)
        elif not v6 or not chosen:
            loopback = "::1" if v6 else "127.0.0.1"
            logger.warning(
                "no non-loopback address found for the relay; relaying on %s "
                "(set relay_ip)",
                loopback,
            )
            chosen.append(loopback)
        else:
            logger.info("no IPv6 address found for the relay; relaying IPv4 only")
    return chosen


def _pick_interface(v6: bool, addresses: list[str]) -> str | None:
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if (ip.version == 6) != v6:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        return str(ip)
    return None


def interface_ips() -> list[str]:
    """Every IP address on the host's interfaces, in interface order."""
    try:
        import ifaddr
    except ImportError:
        logger.debug("ifaddr not installed: interface addresses unknown")
        return []
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            found.append(text.partition("%")[0])
    return found


def server_addresses(
    listeners: Sequence[ListenAddress], relay_ips: Sequence[RelayIp]
) -> list[str]:
    """This server's own addresses, which peers may not be (unless allowed)."""
    found: list[str] = []
    wildcard = False
    for address in listeners:
        if _is_wildcard(address.host):
            wildcard = True
        else:
            found.append(address.host)
    for relay_ip in relay_ips:
        found.extend((relay_ip.bind, relay_ip.advertised))
    if wildcard:
        found.extend(interface_ips())
    unique: list[str] = []
    for ip in found:
        if ip not in unique:
            unique.append(ip)
    return unique


def _is_wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def _check_bindable(ip: str) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((ip, 0))
        except OSError as exc:
            raise StartupError(
                f"relay_ip {ip}: cannot bind: {exc.strerror or exc}"
            ) from None


def _relay_text(relay_ip: RelayIp) -> str:
    if relay_ip.advertised == relay_ip.bind:
        return relay_ip.bind
    return f"{relay_ip.bind} (advertised as {relay_ip.advertised})"


def _install_reload(
    config: ServerConfig, service: StunService, security: Security
) -> list[signal.Signals]:
    """SIGHUP: :func:`reload` (main thread only)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload, config, service, security)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):
        return []
    return [signal.SIGHUP]


def reload(config: ServerConfig, service: StunService, security: Security) -> None:
    """SIGHUP: REST secrets and the TLS certificate, without dropping anything.

    Allocations, open connections and listeners stay; new TLS handshakes use
    the certificate read now (SC-8: certificates can be renewed in place).
    """
    reload_secrets(config, service, security.audit)
    if service.ssl_context is not None:
        reload_certificate(tls_files(config), service.ssl_context, security.audit)


def reload_certificate(
    files: TlsFiles, context: ssl.SSLContext, audit: "AuditSink"
) -> bool:
    """Load ``files`` into the live ``context``; on failure keep the old one.

    The pair is tried in a scratch context first: a certificate that loads
    with a key that does not match must not leave the live context half
    changed.
    """
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        logger.warning("reload: TLS certificate kept as it was: %s", exc)
        audit.emit("config.reload", outcome="failure", reason=f"certificate: {exc}")
        return False
    logger.info("reload: TLS certificate %s", files.cert)
    audit.emit("config.reload", outcome="success", certificate=str(files.cert))
    return True


def reload_secrets(
    config: ServerConfig, service: StunService, audit: "AuditSink"
) -> bool:
    """Read the REST secrets again and use them (``config.reload``); True if so.

    Run on SIGHUP, e.g. after ``natkit secrets add``. On failure the secrets
    in use stay, and the record and a WARNING say why.
    """
    keys = None
    if service.turn is not None:
        keys = getattr(service.turn.server.authenticator, "keys", None)
    if not isinstance(keys, ServerKeys):
        return False
    try:
        found = rest_secrets(config)
        keys.rest.set_secrets(found)
    except NatkitError as exc:
        logger.warning("reload: REST secrets kept as they were: %s", exc)
        audit.emit("config.reload", outcome="failure", reason=str(exc))
        return False
    logger.info("reload: %d REST secrets in use", len(found))
    audit.emit("config.reload", outcome="success", rest_secret_count=len(found))
    return True


def _install_signals(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or no signal support
        handled.append(sig)
    return handled


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    logger.info("%s received, stopping", sig.name)
    stop.set()


def _remove_signals(handled: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in handled:
        loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> ServiceStats:
    """Run :func:`serve` to completion on uvloop, or plain asyncio without it."""
    logger.info("natkit %s starting, data directory %s", __version__, config.data_dir)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        logger.debug("uvloop not installed, using the asyncio event loop")
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config))
