"""The admin API of ``natkit serve``: HTTPS, bearer tokens, roles, metrics.

A listener of its own (``admin_listen``, loopback ``127.0.0.1:8443`` by
default; another address only with ``admin_allow_remote = true``) speaks
HTTPS only: TLS 1.2 or newer with ECDHE key exchange and AEAD ciphers
(NIST SP 800-52r2), with ``admin_cert``/``admin_key``, else the server's
``tls_cert``/``tls_key``, else a generated self-signed ``admin-cert.pem``.

Every request but ``/health``, ``/ready`` and ``/openapi.json`` needs a
bearer token (RFC 6750 §2.1) from :mod:`natkit.server.tokens`. Each endpoint
names the :class:`Permission` it needs and each role holds a fixed set of
them (:data:`ROLE_PERMISSIONS`): auditor reads, operator also revokes
allocations and manages users, admin also manages REST secrets and tokens.
A route without an entry is refused (deny by default, NIST SP 800-53 AC-3,
AC-6). Failed logins are counted per source by
:class:`~natkit.turn.throttle.AuthThrottle`: 401 until the limit, then 429
with Retry-After (AC-7).

Every change (POST, DELETE), every refused token and every denied request
goes to the audit sink with the caller's identity: token id and name, role,
source address. Nothing here logs a token, a password or a secret.

The handlers run on the server's event loop, next to the relay; what may
block (SQLite, files, the inventory) runs in a worker thread, and the TURN
core is only touched from the loop.
"""

import asyncio
import contextvars
import dataclasses
import datetime
import errno
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, ParamSpec, TypeVar

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from natkit import __version__
from natkit.net.listeners import ServiceStats, StunService
from natkit.security.audit import AuditSink, AuditValue, check_event
from natkit.security.certs import TlsFiles, generate_self_signed
from natkit.security.secrets import (
    PrivateFileError,
    RestSecretError,
    add_rest_secret,
    check_private_file,
    read_rest_secrets,
    retire_rest_secret,
    secret_fingerprint,
    write_private_file,
)
from natkit.server.config import AdminAddress, ServerConfig
from natkit.server.metrics import (
    AdminCounters,
    MetricSources,
    build_registry,
    install_event_counters,
)
from natkit.server.openapi import openapi_document
from natkit.server.store import StoreError, UserRecord, UserStore
from natkit.server.tokens import (
    Role,
    Sealer,
    TokenError,
    TokenRecord,
    TokenStore,
    ensure_initial_token,
    token_id_of,
)
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import NatkitError, UsageError
from natkit.turn.allocation import Allocation
from natkit.turn.credentials import RestSecretKeys
from natkit.turn.throttle import AuthThrottle

logger = logging.getLogger(__name__)

ADMIN_CERT_FILE = "admin-cert.pem"
ADMIN_KEY_FILE = "admin-key.pem"
#: NIST SP 800-52r2 §3.3.1: ECDHE with AES-GCM or ChaCha20-Poly1305 (TLS 1.2);
#: TLS 1.3 suites are all AEAD
ADMIN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: the largest request body accepted
MAX_BODY = 64 * 1024
#: the longest Authorization header value looked at
MAX_TOKEN_LENGTH = 256
#: allocations listed per request unless ``limit`` says otherwise, and at most
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
#: failed logins per source before it is blocked (AC-7), and for how long
DEFAULT_MAX_FAILURES = 10
DEFAULT_BLOCK_S = 300.0
#: RFC 6750 §3: the realm in WWW-Authenticate
AUTH_REALM = "natkit-admin"

_M = TypeVar("_M", bound=BaseModel)
_P = ParamSpec("_P")
_R = TypeVar("_R")


class AdminError(NatkitError):
    """The admin API cannot start (listener, certificate, token store)."""


class Permission(StrEnum):
    """One thing a token may do; see :data:`ROLE_PERMISSIONS`."""

    READ = "read"
    METRICS = "metrics"
    REVOKE_ALLOCATIONS = "revoke-allocations"
    MANAGE_USERS = "manage-users"
    MANAGE_SECRETS = "manage-secrets"
    MANAGE_TOKENS = "manage-tokens"


_AUDITOR = frozenset({Permission.READ, Permission.METRICS})
_OPERATOR = _AUDITOR | {Permission.REVOKE_ALLOCATIONS, Permission.MANAGE_USERS}
_ADMIN = _OPERATOR | {Permission.MANAGE_SECRETS, Permission.MANAGE_TOKENS}

#: NIST SP 800-53 AC-6: each role holds only what its job needs
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {Role.AUDITOR: _AUDITOR, Role.OPERATOR: _OPERATOR, Role.ADMIN: _ADMIN}
)


# --- audit -------------------------------------------------------------------


class LoggingAuditSink:
    """Audit records as text lines at INFO, for when no audit trail is open.

    The same call as :class:`natkit.security.audit.AuditSink`.
    """

    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger = logging.getLogger("natkit.audit.admin")

    def emit(self, event_type: str, /, **fields: AuditValue) -> None:
        check_event(event_type, fields)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        self._logger.info("%s %s", event_type, text)


# --- who is asking -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity behind a request: its token and where it came from."""

    token_id: str
    name: str
    role: Role
    source_ip: str

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


class ApiError(Exception):
    """An answer other than success: HTTP status and one line for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: what it needs (None: no token) and its audit action."""

    method: str
    path: str
    permission: Permission | None
    action: str
    handler: Handler

    @property
    def mutating(self) -> bool:
        return self.method not in ("GET", "HEAD")


class AdminState:
    """What the handlers work with; one per admin listener."""

    __slots__ = (
        "config",
        "service",
        "tokens",
        "users",
        "audit",
        "throttle",
        "clock",
        "counters",
        "registry",
        "rest",
        "started",
        "_openapi",
    )

    def __init__(
        self,
        *,
        config: ServerConfig,
        service: StunService,
        tokens: TokenStore,
        users: UserStore | None = None,
        audit: AuditSink | None = None,
        throttle: AuthThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
        counters: AdminCounters | None = None,
        registry: CollectorRegistry | None = None,
        rest: RestSecretKeys | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.tokens = tokens
        self.users = users
        self.audit: AuditSink = audit or LoggingAuditSink()
        self.throttle = throttle or AuthThrottle(
            max_failures=DEFAULT_MAX_FAILURES, block_s=DEFAULT_BLOCK_S
        )
        self.clock = clock
        self.counters = counters or AdminCounters()
        self.registry = registry
        self.rest = rest
        self.started = time.time()
        self._openapi: bytes | None = None

    def openapi(self) -> bytes:
        if self._openapi is None:
            self._openapi = json.dumps(openapi_document()).encode("utf-8")
        return self._openapi


STATE = web.AppKey("natkit_admin_state", AdminState)
_ROUTES = web.AppKey("natkit_admin_routes", dict)
#: the audit fields the running handler adds (what it acted on); one dict per
#: request, set by the guard (each request runs in a task of its own)
_FIELDS: contextvars.ContextVar[dict[str, AuditValue] | None] = contextvars.ContextVar(
    "natkit_admin_audit_fields", default=None
)


def _note(**fields: AuditValue) -> None:
    """Add to the audit record of the change being handled."""
    current = _FIELDS.get()
    if current is not None:
        current.update(fields)


# --- probes, metrics, stats, inventory ---------------------------------------


async def _health(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


async def _ready(request: web.Request) -> web.StreamResponse:
    bound = request.app[STATE].service.bound
    listeners = [str(a) for a in bound]
    if not bound:
        return _json({"status": "not-ready", "listeners": listeners}, status=503)
    return _json({"status": "ready", "listeners": listeners})


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=request.app[STATE].openapi(), content_type="application/json"
    )


async def _metrics(request: web.Request) -> web.StreamResponse:
    registry = request.app[STATE].registry
    if registry is None:
        raise ApiError(404, "metrics are off (metrics = false)")
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _stats(request: web.Request) -> web.StreamResponse:
    return _json(stats_json(request.app[STATE].service.stats()))


def stats_json(stats: ServiceStats) -> dict[str, Any]:
    """The counters of ``stats`` as JSON: stun, streams, turn (or null)."""
    stun = dataclasses.asdict(stats.responder)
    stun.update(
        fast_answered=stats.fast_answered,
        binding_success=stats.success,
        internal_errors=stats.internal_errors,
    )
    streams = {
        "active": stats.active_connections,
        "idle_closed": stats.idle_closed,
        "desync_closed": stats.stream_desync,
        "refused": stats.rejected_connections,
    }
    turn: dict[str, Any] | None = None
    if stats.turn is not None:
        turn = dataclasses.asdict(stats.turn.core)
        turn.update(
            relay_sockets=stats.turn.relay_sockets,
            fast_to_peer=stats.turn.fast_to_peer,
            fast_to_client=stats.turn.fast_to_client,
            send_errors=stats.turn.send_errors,
            bind_failures=stats.turn.bind_failures,
            internal_errors=stats.turn.internal_errors,
            client_drops=stats.client_drops,
        )
    return {"stun": stun, "streams": streams, "turn": turn}


async def _inventory(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    record = await asyncio.to_thread(_inventory_record, state.config)
    return _json(
        {
            "name": "natkit",
            "version": __version__,
            "listeners": [str(a) for a in state.service.bound],
            "admin_listen": str(state.config.admin_listen),
            "record": record,
        }
    )


def _inventory_record(config: ServerConfig) -> dict[str, Any] | None:
    """The supply-chain inventory record, where that module is installed."""
    try:
        from natkit.supply import inventory
    except ImportError:
        return None
    try:
        return inventory.to_json(inventory.build_record(config))
    except NatkitError as exc:
        logger.warning("inventory record unavailable: %s", exc)
        return None


# --- users -------------------------------------------------------------------


class _UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password: str = Field(min_length=1, repr=False)
    realm: str | None = None
    algorithms: tuple[Literal["md5", "sha256"], ...] | None = None
    replace: bool = False


def _user_json(record: UserRecord) -> dict[str, Any]:
    return {
        "username": record.username,
        "realm": record.realm,
        "algorithms": [a.name.lower() for a in record.algorithms],
        "created_at": _iso(record.created_at.timestamp()),
    }


def _users_of(state: AdminState) -> UserStore:
    if state.users is None:
        raise ApiError(409, "the user store is off (user_store = false)")
    return state.users


async def _list_users(request: web.Request) -> web.StreamResponse:
    users = _users_of(request.app[STATE])
    realm = request.query.get("realm")
    records = await _blocking(users.list_users, realm)
    return _json({"users": [_user_json(r) for r in records]})


async def _add_user(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    users = _users_of(state)
    body = await _body(request, _UserCreate)
    realm = body.realm or state.config.realm
    _note(user=body.username, realm=realm)
    algorithms = tuple(
        PasswordAlgorithm[a.upper()] for a in dict.fromkeys(body.algorithms or ())
    )

    def add() -> UserRecord:
        if algorithms:
            return users.add_user(
                body.username,
                realm,
                body.password,
                algorithms=algorithms,
                replace=body.replace,
            )
        return users.add_user(
            body.username,
            body.realm or state.config.realm,
            body.password,
            replace=body.replace,
        )

    record = await _blocking(add)
    _note(user=record.username, realm=record.realm)
    return _json(_user_json(record), status=201)


async def _remove_user(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    users = _users_of(state)
    name = request.match_info["username"]
    realm = request.query.get("realm") or state.config.realm
    _note(user=name, realm=realm)
    if not await _blocking(users.remove_user, name, realm):
        raise ApiError(404, f"no user {name!r} in realm {realm!r}")
    return web.Response(status=204)


# --- REST secrets ------------------------------------------------------------


class _SecretAdd(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str | None = Field(default=None, repr=False)


class _SecretRotate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    retire_others: bool = False


def _secrets_source(config: ServerConfig) -> str:
    if config.auth_secret is not None or config.auth_secret_file is not None:
        return "config"
    return "data_dir"


def _secret_rows(found: list[bytes]) -> list[dict[str, Any]]:
    return [
        {"fingerprint": secret_fingerprint(s), "newest": i == 0}
        for i, s in enumerate(found)
    ]


def _current_secrets(config: ServerConfig) -> list[bytes]:
    from natkit.server.daemon import rest_secrets

    return rest_secrets(config)


async def _list_secrets(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    found = await _blocking(_current_secrets, state.config)
    return _json(
        {"source": _secrets_source(state.config), "secrets": _secret_rows(found)}
    )


def _data_dir_secrets(state: AdminState) -> Path:
    if _secrets_source(state.config) != "data_dir":
        raise ApiError(
            409,
            "the REST secrets come from auth_secret/auth_secret_file; change "
            "them there and restart",
        )
    return state.config.data_dir


async def _secrets_changed(
    state: AdminState, fingerprint: str, status: int
) -> web.StreamResponse:
    """Give the running server the new secrets, answer with the list."""
    found = await _blocking(read_rest_secrets, state.config.data_dir)
    if state.rest is not None:
        state.rest.set_secrets(found)
    _note(fingerprint=fingerprint)
    return _json(
        {"fingerprint": fingerprint, "secrets": _secret_rows(found)}, status=status
    )


async def _add_secret(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    data_dir = _data_dir_secrets(state)
    body = await _body(request, _SecretAdd, optional=True)
    given = None
    if body.secret is not None:
        import base64
        import binascii

        try:
            given = base64.b64decode(body.secret, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "secret: not base64") from None
    added = await _blocking(add_rest_secret, data_dir, given)
    return await _secrets_changed(state, secret_fingerprint(added), 201)


async def _rotate_secrets(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    data_dir = _data_dir_secrets(state)
    body = await _body(request, _SecretRotate, optional=True)

    def rotate() -> bytes:
        added = add_rest_secret(data_dir)
        if body.retire_others:
            for old in read_rest_secrets(data_dir)[1:]:
                retire_rest_secret(data_dir, secret_fingerprint(old))
        return added

    added = await _blocking(rotate)
    return await _secrets_changed(state, secret_fingerprint(added), 201)


async def _retire_secret(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    data_dir = _data_dir_secrets(state)
    prefix = request.match_info["fingerprint"].strip().lower()
    _note(fingerprint=prefix)

    def retire() -> bytes:
        current = read_rest_secrets(data_dir)
        if not any(secret_fingerprint(s).startswith(prefix) for s in current):
            raise ApiError(404, f"no secret with fingerprint {prefix}")
        return retire_rest_secret(data_dir, prefix)

    retired = await _blocking(retire)
    return await _secrets_changed(state, secret_fingerprint(retired), 200)


# --- allocations -------------------------------------------------------------


def allocation_json(alloc: Allocation, now: float, wall: float) -> dict[str, Any]:
    """One allocation; times from the loop clock ``now`` to wall clock ``wall``."""
    client = alloc.client
    return {
        "id": alloc.id,
        "username": alloc.username,
        "transport": str(client.transport),
        "client": _endpoint(client.ip, client.port),
        "server": _endpoint(client.server_ip, client.server_port),
        "relayed": [str(r) for r in alloc.relays],
        "created_at": _iso(wall - (now - alloc.created_at)),
        "expires_at": _iso(wall + (alloc.expires_at - now)),
        "lifetime": alloc.lifetime,
        "permissions": len(alloc.permissions),
        "channels": len(alloc.channels),
        "bytes_to_peer": alloc.bytes_to_peer,
        "packets_to_peer": alloc.packets_to_peer,
        "bytes_to_client": alloc.bytes_to_client,
        "packets_to_client": alloc.packets_to_client,
        "dropped": alloc.dropped,
    }


async def _list_allocations(request: web.Request) -> web.StreamResponse:
    turn = request.app[STATE].service.turn
    limit = _int_query(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    offset = _int_query(request, "offset", 0, 0, 1 << 62)
    if turn is None:
        return _json({"total": 0, "allocations": []})
    allocations = turn.server.allocations()
    now, wall = turn.time(), time.time()
    page = allocations[offset : offset + limit]
    return _json(
        {
            "total": len(allocations),
            "allocations": [allocation_json(a, now, wall) for a in page],
        }
    )


async def _revoke_allocation(request: web.Request) -> web.StreamResponse:
    turn = request.app[STATE].service.turn
    allocation_id = request.match_info["allocation_id"]
    _note(allocation=allocation_id)
    if turn is None:
        raise ApiError(409, "TURN is off (turn = false)")
    if not turn.revoke(allocation_id):
        raise ApiError(404, f"no allocation {allocation_id!r}")
    logger.info("[%s] revoked through the admin API", allocation_id)
    return web.Response(status=204)


# --- tokens ------------------------------------------------------------------


class _TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: Role


def _token_json(record: TokenRecord) -> dict[str, Any]:
    return {
        "id": record.token_id,
        "name": record.name,
        "role": record.role.value,
        "created_at": _iso(record.created_at),
    }


async def _list_tokens(request: web.Request) -> web.StreamResponse:
    tokens = request.app[STATE].tokens
    records = await _blocking(tokens.records)
    return _json({"tokens": [_token_json(r) for r in records]})


async def _create_token(request: web.Request) -> web.StreamResponse:
    tokens = request.app[STATE].tokens
    body = await _body(request, _TokenCreate)
    _note(name=body.name, role=body.role.value)
    issued = await _blocking(tokens.create, body.name, body.role)
    _note(token_id=issued.record.token_id, name=body.name, role=body.role.value)
    return _json({**_token_json(issued.record), "token": issued.token}, status=201)


async def _revoke_token(request: web.Request) -> web.StreamResponse:
    tokens = request.app[STATE].tokens
    token_id = request.match_info["token_id"]
    _note(token_id=token_id)
    if await _blocking(tokens.revoke, token_id) is None:
        raise ApiError(404, f"no token {token_id!r}")
    return web.Response(status=204)


# --- the route table ---------------------------------------------------------

_READ, _METRICS = Permission.READ, Permission.METRICS
_USERS, _SECRETS = Permission.MANAGE_USERS, Permission.MANAGE_SECRETS
_TOKENS = Permission.MANAGE_TOKENS

#: every route of the admin API; anything else is 401 (no token) or 404. The
#: action names the audit record of a change: ``admin.<action>``.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", None, "health", _health),
    Endpoint("GET", "/ready", None, "ready", _ready),
    Endpoint("GET", "/openapi.json", None, "openapi", _openapi),
    Endpoint("GET", "/metrics", _METRICS, "metrics", _metrics),
    Endpoint("GET", "/v1/stats", _READ, "stats", _stats),
    Endpoint("GET", "/v1/inventory", _READ, "inventory", _inventory),
    Endpoint("GET", "/v1/users", _READ, "user_list", _list_users),
    Endpoint("POST", "/v1/users", _USERS, "user_add", _add_user),
    Endpoint("DELETE", "/v1/users/{username}", _USERS, "user_remove", _remove_user),
    Endpoint("GET", "/v1/secrets", _READ, "secret_list", _list_secrets),
    Endpoint("POST", "/v1/secrets", _SECRETS, "secret_add", _add_secret),
    Endpoint("POST", "/v1/secrets/rotate", _SECRETS, "secret_rotate", _rotate_secrets),
    Endpoint(
        "DELETE", "/v1/secrets/{fingerprint}", _SECRETS, "secret_retire", _retire_secret
    ),
    Endpoint("GET", "/v1/allocations", _READ, "allocation_list", _list_allocations),
    Endpoint(
        "DELETE",
        "/v1/allocations/{allocation_id}",
        Permission.REVOKE_ALLOCATIONS,
        "allocation_revoke",
        _revoke_allocation,
    ),
    Endpoint("GET", "/v1/tokens", _TOKENS, "token_list", _list_tokens),
    Endpoint("POST", "/v1/tokens", _TOKENS, "token_create", _create_token),
    Endpoint("DELETE", "/v1/tokens/{token_id}", _TOKENS, "token_revoke", _revoke_token),
)


# --- the guard: authentication, throttling, authorisation, audit -------------


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request passes here; see the module doc for the order of checks."""
    state = request.app[STATE]
    endpoint: Endpoint | None = request.app[_ROUTES].get(request.match_info.route)
    source = _source_ip(request)

    # step 1: what needs no token
    if endpoint is not None and endpoint.permission is None:
        return _finish(await _call(handler, request))
    if (
        endpoint is not None
        and endpoint.permission is Permission.METRICS
        and state.config.metrics_public
        and ipaddress.ip_address(source).is_loopback
    ):
        return _finish(await _call(handler, request))

    # step 2: who is asking (401, then 429 once the source is blocked)
    caller = _authenticate(request, state, source)
    if isinstance(caller, web.StreamResponse):
        return _finish(caller)

    # step 3: no such route; then deny by default
    if endpoint is None:
        error = request.match_info.http_exception
        if error is not None:
            return _finish(_error(error.status, error.reason.lower()))
        return _finish(_error(403, "no permission is defined for this route"))
    needed = endpoint.permission
    if needed is None or not caller.may(needed):
        state.counters.forbidden += 1
        message = f"role {caller.role} may not {endpoint.action} (needs {needed})"
        _audit(state, request, "access_denied", caller, 403, message, {})
        return _finish(_error(403, message))

    # step 4: the handler, and the audit record of a change
    fields: dict[str, AuditValue] = {}
    reset = _FIELDS.set(fields)
    try:
        response = await _call(handler, request)
    finally:
        _FIELDS.reset(reset)
    if endpoint.mutating:
        reason = None
        if response.status >= 400:
            reason = getattr(response, "reason_text", None) or response.reason
        _audit(state, request, endpoint.action, caller, response.status, reason, fields)
    return _finish(response)


def _authenticate(
    request: web.Request, state: AdminState, source: str
) -> Caller | web.StreamResponse:
    """The caller of a valid bearer token, or the 401/429 to answer."""
    now = state.clock()
    if state.throttle.is_blocked(source, now):
        state.counters.throttled += 1
        retry = str(max(1, int(state.throttle.block_s)))
        return _error(
            429,
            "too many failed logins from this address; try again later",
            headers={"Retry-After": retry},
        )
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    record: TokenRecord | None = None
    if scheme.lower() == "bearer" and token and len(token) <= MAX_TOKEN_LENGTH:
        try:
            record = state.tokens.verify(token)
        except TokenError as exc:
            logger.error("admin token store unreadable: %s", exc)
            return _error(500, "the token store cannot be read")
    if record is not None:
        state.throttle.record_success(source)
        return Caller(record.token_id, record.name, record.role, source)

    # a failed login: counted, audited, throttled (NIST SP 800-53 AC-7)
    state.counters.auth_failures += 1
    blocked = state.throttle.record_failure(source, now)
    reason = "no bearer token" if not header else "token not valid"
    _emit(
        state,
        "admin.auth_failure",
        outcome="failure",
        code=401,
        reason=reason,
        source=_source_text(request, source),
        actor=token_id_of(token) if token else None,
        request=f"{request.method} {request.path}",
        blocked=blocked,
    )
    challenge = f'Bearer realm="{AUTH_REALM}"'
    if header:
        challenge += ', error="invalid_token"'
    return _error(401, reason, headers={"WWW-Authenticate": challenge})


async def _call(handler: Handler, request: web.Request) -> web.StreamResponse:
    """The handler's answer, with its errors turned into JSON answers."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason.lower())
    except Exception:
        logger.exception(
            "admin API: internal error in %s %s", request.method, request.path
        )
        return _error(500, "internal error")


def _audit(
    state: AdminState,
    request: web.Request,
    action: str,
    caller: Caller,
    status: int,
    reason: str | None,
    extra: Mapping[str, AuditValue],
) -> None:
    """The record of a change or a refusal: who, from where, what, how it went."""
    fields: dict[str, AuditValue] = {
        "outcome": "success" if status < 400 else "failure",
        "code": status,
        "reason": reason,
        "source": _source_text(request, caller.source_ip),
        "actor": caller.token_id,
        "actor_name": caller.name,
        "actor_role": caller.role.value,
        "request": f"{request.method} {request.path}",
    }
    fields.update(extra)
    _emit(state, f"admin.{action}", **fields)


def _emit(state: AdminState, event_type: str, /, **fields: AuditValue) -> None:
    """Hand one record to the audit sink; a failure there is logged, not raised."""
    try:
        state.audit.emit(event_type, **fields)
    except Exception:
        logger.exception("cannot audit %s", event_type)


def _finish(response: web.StreamResponse) -> web.StreamResponse:
    """Headers for every answer: never cached, never sniffed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _source_ip(request: web.Request) -> str:
    """The peer's address (never a forwarded header: nothing proxies us)."""
    remote = (request.remote or "").partition("%")[0]
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        return "0.0.0.0"


def _source_text(request: web.Request, ip: str) -> str:
    """``ip:port`` of the peer, as the audit trail writes sources."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    port = peer[1] if isinstance(peer, tuple) and len(peer) >= 2 else 0
    return _endpoint(ip, int(port))


# --- helpers -----------------------------------------------------------------


class _ErrorResponse(web.Response):
    """A JSON error answer that remembers its message for the audit record."""

    reason_text: str


def _error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = _ErrorResponse(
        body=json.dumps({"error": message}).encode("utf-8"),
        status=status,
        content_type="application/json",
        headers=headers,
    )
    response.reason_text = message
    return response


def _json(data: object, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
    )


async def _body(request: web.Request, model: type[_M], *, optional: bool = False) -> _M:
    """The JSON body as ``model``; 400 with the first problem (no values)."""
    raw = await request.read()
    if not raw.strip() and optional:
        return model()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        raise ApiError(400, f"{where}: {message}") from None


async def _blocking(func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``func`` in a worker thread; natkit errors become API errors."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except ApiError:
        raise
    except UsageError as exc:
        raise ApiError(400, str(exc)) from None
    except (StoreError, RestSecretError, TokenError) as exc:
        raise ApiError(409, str(exc)) from None
    except NatkitError as exc:
        raise ApiError(500, str(exc)) from None


def _int_query(
    request: web.Request, name: str, default: int, low: int, high: int
) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be an integer {low}-{high}")
    return int(text)


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(timestamp), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --- the application and its listener ----------------------------------------


def build_app(state: AdminState) -> web.Application:
    """The aiohttp application of the admin API (no listener)."""
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[STATE] = state
    routes: dict[AbstractRoute, Endpoint] = {}
    for endpoint in ENDPOINTS:
        route = app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
        routes[route] = endpoint
    app[_ROUTES] = routes
    return app


def admin_context(files: TlsFiles) -> ssl.SSLContext:
    """The admin listener's TLS: 1.2 or newer, ECDHE, AEAD ciphers only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ADMIN_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        context.load_cert_chain(files.cert, files.key)
    except FileNotFoundError as exc:
        raise AdminError(f"cannot read {exc.filename}: file not found") from None
    except (OSError, ssl.SSLError) as exc:
        raise AdminError(
            f"cannot load admin certificate {files.cert} with key {files.key}: {exc}"
        ) from None
    return context


def admin_tls_files(config: ServerConfig) -> TlsFiles:
    """``admin_cert``/``admin_key``, else ``tls_cert``/``tls_key``, else generated.

    The generated pair is ``admin-cert.pem`` and ``admin-key.pem`` in the data
    directory (0600), self-signed for localhost, 127.0.0.1 and ::1; the log
    says so once. ``natkit admin`` trusts that certificate by default.
    """
    if config.admin_cert is not None and config.admin_key is not None:
        return TlsFiles(config.admin_cert, config.admin_key)
    if config.tls_cert is not None and config.tls_key is not None:
        return TlsFiles(config.tls_cert, config.tls_key)
    cert = config.data_dir / ADMIN_CERT_FILE
    key = config.data_dir / ADMIN_KEY_FILE
    try:
        if cert.exists() and key.exists():
            check_private_file(key)
            return TlsFiles(cert, key)
        cert_pem, key_pem = generate_self_signed("natkit-admin")
        write_private_file(key, key_pem)
        write_private_file(cert, cert_pem)
    except PrivateFileError as exc:
        raise AdminError(str(exc)) from None
    logger.info("generated self-signed admin certificate %s (key %s)", cert, key)
    return TlsFiles(cert, key, generated=True)


def _bind(address: AdminAddress) -> socket.socket:
    """A listening-ready TCP socket; OSError as the kernel said."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class AdminServer:
    """The admin API on its HTTPS listener; :meth:`close` stops it."""

    def __init__(self, state: AdminState) -> None:
        self.state = state
        self.app = build_app(state)
        self.address: AdminAddress | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, address: AdminAddress, context: ssl.SSLContext) -> None:
        """Listen on ``address``; raises OSError when it cannot bind."""
        sock = _bind(address)
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        try:
            await runner.setup()
            site = web.SockSite(runner, sock, ssl_context=context)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = sock.getsockname()[:2]
        self.address = AdminAddress(host, port)

    async def close(self) -> None:
        """Stop listening, end open requests, close the admin's user store."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.state.users is not None:
            self.state.users.close()


async def start_admin(
    config: ServerConfig,
    service: StunService,
    *,
    audit: AuditSink | None = None,
    sealer: Sealer | None = None,
) -> AdminServer | None:
    """The admin API of a started ``service``, or None when ``admin = false``.

    First start writes the admin token (``admin-token``) and, if no
    certificate is configured, ``admin-cert.pem``. Raises :class:`AdminError`
    (or another NatkitError) when it cannot start. When the default address
    is taken by another program the server runs on without the admin API,
    with a warning; an address set in the configuration must be free.
    """
    if not config.admin:
        logger.info("admin API off (admin = false)")
        return None
    address = config.admin_listen
    if not address.is_loopback:
        logger.warning(
            "admin API listens on %s, beyond this host (admin_allow_remote = true)",
            address,
        )

    # step 1: tokens (the first admin token on first start) and TLS
    if sealer is None:
        from natkit.security.sealing import data_dir_sealer

        sealer = data_dir_sealer(config.data_dir)
    tokens = TokenStore.open(config.data_dir, sealer=sealer)
    ensure_initial_token(tokens)
    context = admin_context(admin_tls_files(config))

    # step 2: what the handlers and the metrics read
    turn = service.turn
    events = install_event_counters(turn.server) if turn is not None else None
    counters = AdminCounters()
    registry = None
    if config.metrics:
        registry = build_registry(
            MetricSources(
                stats=service.stats,
                allocations=turn.server.allocations if turn is not None else None,
                events=events,
                admin=counters,
            )
        )
    users = UserStore.open(config.data_dir) if config.user_store else None
    state = AdminState(
        config=config,
        service=service,
        tokens=tokens,
        users=users,
        audit=audit,
        counters=counters,
        registry=registry,
        rest=_running_rest_keys(service),
    )

    # step 3: the listener
    server = AdminServer(state)
    try:
        await server.start(address, context)
    except OSError as exc:
        if users is not None:
            users.close()
        reason = exc.strerror or str(exc)
        if (
            exc.errno == errno.EADDRINUSE
            and "admin_listen" not in config.model_fields_set
        ):
            logger.warning(
                "admin API not started: %s is in use (%s); set admin_listen",
                address,
                reason,
            )
            return None
        raise AdminError(f"admin_listen {address}: cannot listen: {reason}") from None
    logger.info(
        "admin API on https://%s (metrics %s)",
        server.address,
        "public on loopback"
        if config.metrics_public
        else "need a token"
        if config.metrics
        else "off",
    )
    return server


def _running_rest_keys(service: StunService) -> RestSecretKeys | None:
    """The REST secrets the running TURN server checks, to update on change."""
    from natkit.server.daemon import ServerKeys

    if service.turn is None:
        return None
    keys = getattr(service.turn.server.authenticator, "keys", None)
    return keys.rest if isinstance(keys, ServerKeys) else None
