"""The admin API of ``natkit serve`` over HTTPS on loopback.

A real server (``natkit.server.daemon.serve``) runs in a thread on its own
event loop; requests go to it with ``http.client`` over TLS, trusting the
``admin-cert.pem`` the server generated. Roles are checked against every
mutating endpoint, bad and missing tokens against the 401/429 path, the TLS
listener against TLS 1.1 and non-AEAD suites, and allocation revocation
against a TURN client (natkit.net.turn_client) whose next Refresh must get
437 (RFC 8656 §7.3).
"""

import asyncio
import http.client
import json
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from natkit.net.listeners import StunService
from natkit.net.turn_client import TurnClient, TurnRequestError
from natkit.security.audit import CollectingAuditSink
from natkit.server.admin import ENDPOINTS, ROLE_PERMISSIONS, Permission, start_admin
from natkit.server.config import ConfigError, ServerConfig, load_config
from natkit.server.daemon import build_turn, serve
from natkit.server.openapi import openapi_document
from natkit.server.tokens import INITIAL_TOKEN_FILE, TOKENS_FILE, Role
from natkit.stun.constants import ErrorCode
from natkit.stun.server import BindingResponder
from ports import pick_block

REALM = "natkit.test"
USER, PASSWORD = "alice", "alice-secret"
RELAY_PORTS = 6
TIMEOUT = 10.0


# --- ports and the server ------------------------------------------------------


def make_config(data_dir: Path, **extra: Any) -> ServerConfig:
    """A TURN server on loopback UDP+TCP, its admin API on a free port."""
    base = pick_block(3 + RELAY_PORTS)
    overrides: dict[str, Any] = {
        "data_dir": str(data_dir),
        "listen": [f"udp:127.0.0.1:{base}", f"tcp:127.0.0.1:{base}"],
        "relay_ip": ["127.0.0.1"],
        "relay_ports": f"{base + 3}-{base + 2 + RELAY_PORTS}",
        "allow_peer": ["127.0.0.1"],
        "users": [f"{USER}:{PASSWORD}"],
        "realm": REALM,
        "admin_listen": f"127.0.0.1:{base + 1}",
    }
    overrides.update(extra)
    return load_config(environ={}, overrides=overrides)


class ServerThread:
    """``serve(config)`` on its own event loop in a thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await serve(self.config, stop=self._stop, on_ready=lambda _: self._ready.set())

    @property
    def stun_port(self) -> int:
        listeners = self.config.listen or ()
        return listeners[0].port

    @property
    def admin_token(self) -> str:
        path = self.config.data_dir / INITIAL_TOKEN_FILE
        return path.read_text(encoding="ascii").strip()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def client_context(config: ServerConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(config.data_dir / "admin-cert.pem"))


def call(
    config: ServerConfig,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTPS request to the admin API (blocking)."""
    address = config.admin_listen
    conn = http.client.HTTPSConnection(
        address.host, address.port, context=client_context(config), timeout=TIMEOUT
    )
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Live:
    server: ServerThread
    tokens: dict[Role, str]

    @property
    def config(self) -> ServerConfig:
        return self.server.config


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    config = make_config(tmp_path_factory.mktemp("admin") / "data")
    with ServerThread(config) as server:
        tokens = {Role.ADMIN: server.admin_token}
        for role in (Role.OPERATOR, Role.AUDITOR):
            answer = call(
                config,
                "POST",
                "/v1/tokens",
                token=server.admin_token,
                body={"name": f"test-{role}", "role": role.value},
            )
            assert answer.status == 201, answer.body
            tokens[role] = answer.json()["token"]
        yield Live(server, tokens)


# --- configuration -----------------------------------------------------------


def test_admin_listen_defaults_to_loopback() -> None:
    config = load_config(environ={})
    assert config.admin is True
    assert str(config.admin_listen) == "127.0.0.1:8443"
    assert config.metrics is True and config.metrics_public is False


@pytest.mark.parametrize("value", ["0.0.0.0:8443", "192.0.2.1:8443", "[::]:8443"])
def test_remote_admin_listen_is_refused_unless_allowed(value: str) -> None:
    with pytest.raises(ConfigError, match="admin_allow_remote"):
        load_config(environ={"NATKIT_ADMIN_LISTEN": value})
    allowed = load_config(
        environ={"NATKIT_ADMIN_LISTEN": value, "NATKIT_ADMIN_ALLOW_REMOTE": "true"}
    )
    assert not allowed.admin_listen.is_loopback


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("localhost:8443", "not an IP address"),
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1:x", "not a number"),
        ("[::1", "expected"),
    ],
)
def test_bad_admin_listen(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(environ={"NATKIT_ADMIN_LISTEN": value})
    assert str(info.value).startswith("admin_listen = ")


def test_admin_cert_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="admin_cert and admin_key"):
        load_config(environ={}, overrides={"admin_cert": str(cert)})


# --- first start -------------------------------------------------------------


def test_first_start_writes_a_private_token_file(live: Live) -> None:
    data_dir = live.config.data_dir
    for name in (INITIAL_TOKEN_FILE, TOKENS_FILE, "admin-cert.pem", "admin-key.pem"):
        mode = os.stat(data_dir / name).st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))
    assert live.server.admin_token.startswith("natkit.")


def test_tokens_are_hashed_at_rest(live: Live) -> None:
    import base64

    data_dir = live.config.data_dir
    store = (data_dir / TOKENS_FILE).read_bytes()
    for role, token in live.tokens.items():
        secret_text = token.rsplit(".", 1)[1]
        secret = base64.urlsafe_b64decode(secret_text + "=")
        assert token.encode() not in store, role
        assert secret_text.encode() not in store, role
        assert secret not in store and secret.hex().encode() not in store, role
    # nothing else in the data directory holds a created token either
    for path in data_dir.iterdir():
        if path.is_file():
            data = path.read_bytes()
            for role in (Role.OPERATOR, Role.AUDITOR):
                assert live.tokens[role].encode() not in data, (path, role)


# --- probes and the document -------------------------------------------------


def test_health_and_ready_need_no_token(live: Live) -> None:
    health = call(live.config, "GET", "/health")
    assert health.status == 200 and health.json() == {"status": "ok"}
    ready = call(live.config, "GET", "/ready")
    assert ready.status == 200
    assert ready.json()["status"] == "ready"
    assert f"udp:127.0.0.1:{live.server.stun_port}" in ready.json()["listeners"]
    assert health.headers["cache-control"] == "no-store"


def test_openapi_document_describes_every_route(live: Live) -> None:
    answer = call(live.config, "GET", "/openapi.json")
    assert answer.status == 200
    document = answer.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
    }
    assert described == {(e.method, e.path) for e in ENDPOINTS}
    for endpoint in ENDPOINTS:
        op = document["paths"][endpoint.path][endpoint.method.lower()]
        public = op.get("security") == []
        assert public == (endpoint.permission is None), endpoint.path
        if not public:
            assert "401" in op["responses"] and "403" in op["responses"]


def test_openapi_document_is_valid() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(openapi_document())


# --- authentication ------------------------------------------------------------


def test_no_token_is_401_with_a_challenge(live: Live) -> None:
    answer = call(live.config, "GET", "/v1/stats")
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer realm=")
    assert answer.json() == {"error": "no bearer token"}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer natkit.00000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Bearer nonsense",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer " + "x" * 1000,
    ],
)
def test_bad_token_is_401(live: Live, header: str) -> None:
    answer = call(live.config, "GET", "/v1/stats", headers={"Authorization": header})
    assert answer.status == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    # a good token right after resets the source's failure count
    assert (
        call(live.config, "GET", "/v1/stats", token=live.tokens[Role.AUDITOR]).status
        == 200
    )


def test_a_tampered_token_is_401(live: Live) -> None:
    token = live.tokens[Role.ADMIN]
    # change a character inside the secret: the last base64url character may
    # carry padding bits only, so changing it need not change the bytes
    middle = len(token) - 8
    other = "A" if token[middle] != "A" else "B"
    tampered = token[:middle] + other + token[middle + 1 :]
    answer = call(live.config, "GET", "/v1/stats", token=tampered)
    assert answer.status == 401


def test_unknown_route_is_401_without_token_and_404_with(live: Live) -> None:
    assert call(live.config, "GET", "/v1/nothing").status == 401
    answer = call(live.config, "GET", "/v1/nothing", token=live.tokens[Role.AUDITOR])
    assert answer.status == 404
    wrong = call(live.config, "PUT", "/v1/stats", token=live.tokens[Role.AUDITOR])
    assert wrong.status == 405


def test_failed_logins_are_throttled(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    with ServerThread(config) as server:
        statuses = [
            call(config, "GET", "/v1/stats", token="natkit.bad").status
            for _ in range(10)
        ]
        assert statuses == [401] * 10
        blocked = call(config, "GET", "/v1/stats", token="natkit.bad")
        assert blocked.status == 429
        assert int(blocked.headers["retry-after"]) > 0
        # once blocked, even a good token waits: the source is refused unchecked
        assert call(config, "GET", "/v1/stats", token=server.admin_token).status == 429
        # probes stay open
        assert call(config, "GET", "/health").status == 200


# --- roles ---------------------------------------------------------------------

#: every mutating endpoint (and the admin-only read), what it needs
_GUARDED: tuple[tuple[str, str, object, Permission], ...] = (
    (
        "POST",
        "/v1/users",
        {"username": "zed", "password": "pw"},
        Permission.MANAGE_USERS,
    ),
    ("DELETE", "/v1/users/zed", None, Permission.MANAGE_USERS),
    ("DELETE", "/v1/allocations/00000000", None, Permission.REVOKE_ALLOCATIONS),
    ("POST", "/v1/secrets", {}, Permission.MANAGE_SECRETS),
    ("POST", "/v1/secrets/rotate", {}, Permission.MANAGE_SECRETS),
    ("DELETE", "/v1/secrets/ffffffff", None, Permission.MANAGE_SECRETS),
    ("POST", "/v1/tokens", {"name": "t", "role": "auditor"}, Permission.MANAGE_TOKENS),
    ("DELETE", "/v1/tokens/00000000", None, Permission.MANAGE_TOKENS),
    ("GET", "/v1/tokens", None, Permission.MANAGE_TOKENS),
)


def test_role_matrix() -> None:
    assert ROLE_PERMISSIONS[Role.AUDITOR] == {Permission.READ, Permission.METRICS}
    assert ROLE_PERMISSIONS[Role.OPERATOR] == ROLE_PERMISSIONS[Role.AUDITOR] | {
        Permission.REVOKE_ALLOCATIONS,
        Permission.MANAGE_USERS,
    }
    assert ROLE_PERMISSIONS[Role.ADMIN] == set(Permission)
    # every mutating route needs a permission beyond reading
    for endpoint in ENDPOINTS:
        if endpoint.mutating:
            assert endpoint.permission not in (None, Permission.READ), endpoint.path


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    ("method", "path", "body", "needed"),
    _GUARDED,
    ids=[f"{m} {p}" for m, p, _, _ in _GUARDED],
)
def test_roles_are_denied_what_they_may_not_do(
    live: Live, role: Role, method: str, path: str, body: object, needed: Permission
) -> None:
    answer = call(live.config, method, path, token=live.tokens[role], body=body)
    if needed in ROLE_PERMISSIONS[role]:
        assert answer.status not in (401, 403), answer.body
    else:
        assert answer.status == 403, answer.body
        assert f"role {role}" in answer.json()["error"]


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    "path",
    ["/v1/stats", "/v1/users", "/v1/secrets", "/v1/allocations", "/v1/inventory"],
)
def test_every_role_reads(live: Live, role: Role, path: str) -> None:
    answer = call(live.config, "GET", path, token=live.tokens[role])
    assert answer.status == 200, answer.body


# --- endpoints ------------------------------------------------------------


def test_users_add_list_remove_never_show_keys(live: Live) -> None:
    token = live.tokens[Role.OPERATOR]
    added = call(
        live.config,
        "POST",
        "/v1/users",
        token=token,
        body={"username": "bob", "password": "bob-pw", "algorithms": ["sha256"]},
    )
    assert added.status == 201, added.body
    assert added.json()["algorithms"] == ["sha256"]
    assert added.json()["realm"] == REALM
    again = call(
        live.config,
        "POST",
        "/v1/users",
        token=token,
        body={"username": "bob", "password": "x"},
    )
    assert again.status == 409
    listed = call(live.config, "GET", "/v1/users", token=token)
    assert [u["username"] for u in listed.json()["users"]] == ["bob"]
    assert b"bob-pw" not in listed.body and b"key" not in listed.body
    assert call(live.config, "DELETE", "/v1/users/bob", token=token).status == 204
    assert call(live.config, "DELETE", "/v1/users/bob", token=token).status == 404


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"username": "x"}, "password"),
        ({"username": "x", "password": "p", "colour": 1}, "unknown field"),
        ({"username": "x", "password": "p", "algorithms": ["sha1"]}, "algorithms"),
        ({"username": "1700000000:x", "password": "p"}, "REST"),
    ],
)
def test_bad_user_bodies_are_400(live: Live, body: object, problem: str) -> None:
    answer = call(
        live.config, "POST", "/v1/users", token=live.tokens[Role.ADMIN], body=body
    )
    assert answer.status == 400
    assert problem in answer.json()["error"]
    assert b'"p"' not in answer.body  # no value echoed back


def test_secrets_rotate_and_retire(live: Live) -> None:
    token = live.tokens[Role.ADMIN]
    before = call(live.config, "GET", "/v1/secrets", token=token).json()
    assert before["source"] == "data_dir"
    rotated = call(live.config, "POST", "/v1/secrets/rotate", token=token, body={})
    assert rotated.status == 201
    fingerprint = rotated.json()["fingerprint"]
    assert rotated.json()["secrets"][0] == {"fingerprint": fingerprint, "newest": True}
    oldest = rotated.json()["secrets"][-1]["fingerprint"]
    retired = call(live.config, "DELETE", f"/v1/secrets/{oldest}", token=token)
    assert retired.status == 200 and retired.json()["fingerprint"] == oldest
    after = call(live.config, "GET", "/v1/secrets", token=token).json()
    assert oldest not in [s["fingerprint"] for s in after["secrets"]]
    assert b'secret":' not in retired.body.replace(b'"secrets":', b"")
    # the last secret is never retired
    while len(after["secrets"]) > 1:
        victim = after["secrets"][-1]["fingerprint"]
        call(live.config, "DELETE", f"/v1/secrets/{victim}", token=token)
        after = call(live.config, "GET", "/v1/secrets", token=token).json()
    last = after["secrets"][0]["fingerprint"]
    refused = call(live.config, "DELETE", f"/v1/secrets/{last}", token=token)
    assert refused.status == 409


def test_tokens_create_list_revoke(live: Live) -> None:
    token = live.tokens[Role.ADMIN]
    created = call(
        live.config,
        "POST",
        "/v1/tokens",
        token=token,
        body={"name": "ci", "role": "operator"},
    )
    assert created.status == 201
    new = created.json()
    assert call(live.config, "GET", "/v1/stats", token=new["token"]).status == 200
    listed = call(live.config, "GET", "/v1/tokens", token=token).json()["tokens"]
    assert new["id"] in [t["id"] for t in listed]
    assert all("token" not in t for t in listed)
    assert (
        call(live.config, "DELETE", f"/v1/tokens/{new['id']}", token=token).status
        == 204
    )
    assert call(live.config, "GET", "/v1/stats", token=new["token"]).status == 401
    bad = call(
        live.config,
        "POST",
        "/v1/tokens",
        token=token,
        body={"name": "x", "role": "root"},
    )
    assert bad.status == 400


def test_the_last_admin_token_cannot_be_revoked(live: Live) -> None:
    token = live.tokens[Role.ADMIN]
    admins = [
        t
        for t in call(live.config, "GET", "/v1/tokens", token=token).json()["tokens"]
        if t["role"] == "admin"
    ]
    assert len(admins) == 1
    answer = call(live.config, "DELETE", f"/v1/tokens/{admins[0]['id']}", token=token)
    assert answer.status == 409
    assert "last admin token" in answer.json()["error"]


def test_stats_and_inventory(live: Live) -> None:
    token = live.tokens[Role.AUDITOR]
    stats = call(live.config, "GET", "/v1/stats", token=token).json()
    assert set(stats) == {"stun", "streams", "turn"}
    assert stats["turn"]["allocations"] >= 0
    inventory = call(live.config, "GET", "/v1/inventory", token=token).json()
    assert inventory["name"] == "natkit"
    assert inventory["admin_listen"] == str(live.config.admin_listen)


def test_allocations_list_checks_its_query(live: Live) -> None:
    token = live.tokens[Role.AUDITOR]
    for query in ("limit=0", "limit=x", "offset=-1", "limit=100000"):
        answer = call(live.config, "GET", f"/v1/allocations?{query}", token=token)
        assert answer.status == 400, query


# --- TLS ------------------------------------------------------------------


def _handshake(config: ServerConfig, context: ssl.SSLContext) -> str:
    address = config.admin_listen
    with socket.create_connection((address.host, address.port), TIMEOUT) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


def _legacy_context(version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers(ciphers)
    return context


def test_tls_1_1_is_refused(live: Live) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = _legacy_context(ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _handshake(live.config, context)


def test_tls_1_2_without_aead_is_refused(live: Live) -> None:
    context = _legacy_context(
        ssl.TLSVersion.TLSv1_2,
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256:AES128-SHA:@SECLEVEL=0",
    )
    with pytest.raises(ssl.SSLError):
        _handshake(live.config, context)


def test_tls_1_2_and_1_3_with_aead_work(live: Live) -> None:
    context = client_context(live.config)
    assert _handshake(live.config, context) in ("TLSv1.2", "TLSv1.3")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(live.config, context) == "TLSv1.2"


def test_plain_http_gets_no_answer(live: Live) -> None:
    address = live.config.admin_listen
    conn = http.client.HTTPConnection(address.host, address.port, timeout=TIMEOUT)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/health")
            conn.getresponse()
    finally:
        conn.close()


# --- revoking an allocation ------------------------------------------------


async def test_revoke_frees_the_allocation(live: Live) -> None:
    operator = live.tokens[Role.OPERATOR]
    client = TurnClient(
        "127.0.0.1",
        live.server.stun_port,
        username=USER,
        password=PASSWORD,
        timeout=5.0,
    )
    try:
        info = await client.allocate()
        listed = await asyncio.to_thread(
            call, live.config, "GET", "/v1/allocations", token=operator
        )
        mine = [
            a
            for a in listed.json()["allocations"]
            if a["relayed"] == [f"{info.relayed.ip}:{info.relayed.port}"]
        ]
        assert len(mine) == 1
        entry = mine[0]
        assert entry["username"] == USER and entry["transport"] == "udp"
        assert entry["client"].startswith("127.0.0.1:")

        revoked = await asyncio.to_thread(
            call,
            live.config,
            "DELETE",
            f"/v1/allocations/{entry['id']}",
            token=operator,
        )
        assert revoked.status == 204

        # RFC 8656 §7.3: no allocation on the 5-tuple any more
        with pytest.raises(TurnRequestError) as error:
            await client.refresh()
        assert error.value.code == ErrorCode.ALLOCATION_MISMATCH
    finally:
        await client.close()

    # the relay port is free again: nothing listens there
    after = await asyncio.to_thread(
        call, live.config, "GET", "/v1/allocations", token=operator
    )
    assert entry["id"] not in [a["id"] for a in after.json()["allocations"]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", info.relayed.port))
    again = await asyncio.to_thread(
        call, live.config, "DELETE", f"/v1/allocations/{entry['id']}", token=operator
    )
    assert again.status == 404


# --- the audit trail ------------------------------------------------------


async def test_admin_actions_are_audited_with_the_callers_identity(
    tmp_path: Path,
) -> None:
    import aiohttp

    config = make_config(tmp_path / "data")
    listeners = config.listeners()
    responder = BindingResponder(None)
    turn = build_turn(config, listeners, responder)
    service = StunService(responder, turn=turn)
    await service.start(listeners)
    audit = CollectingAuditSink()
    admin = await start_admin(config, service, audit=audit)
    assert admin is not None and admin.address is not None
    token = (config.data_dir / INITIAL_TOKEN_FILE).read_text().strip()
    url = f"https://{admin.address}"
    context = client_context(config)
    try:
        async with aiohttp.ClientSession() as session:
            auth = {"Authorization": f"Bearer {token}"}
            async with session.post(
                f"{url}/v1/tokens",
                json={"name": "aud", "role": "auditor"},
                headers=auth,
                ssl=context,
            ) as response:
                assert response.status == 201
                auditor = (await response.json())["token"]
            async with session.post(
                f"{url}/v1/users",
                json={"username": "eve", "password": "pw"},
                headers={"Authorization": f"Bearer {auditor}"},
                ssl=context,
            ) as response:
                assert response.status == 403
            async with session.get(
                f"{url}/v1/stats", headers={"Authorization": "Bearer x"}, ssl=context
            ) as response:
                assert response.status == 401
            async with session.get(f"{url}/v1/stats", headers=auth, ssl=context):
                pass
    finally:
        await admin.close()
        await service.close()

    created = audit.of_type("admin.token_create")
    assert len(created) == 1
    assert created[0]["outcome"] == "success"
    assert created[0]["actor_role"] == "admin"
    assert created[0]["actor_name"] == "initial-admin"
    assert created[0]["role"] == "auditor"
    assert str(created[0]["source"]).startswith("127.0.0.1:")
    denied = audit.of_type("admin.access_denied")
    assert len(denied) == 1
    assert denied[0]["actor_role"] == "auditor" and denied[0]["code"] == 403
    assert denied[0]["request"] == "POST /v1/users"
    failed = audit.of_type("admin.auth_failure")
    assert len(failed) == 1 and failed[0]["code"] == 401
    # reads are not audited, and no record holds a token
    assert not [e for e in audit.events if e.type.endswith("stats")]
    for event in audit.events:
        for value in event.fields.values():
            assert token not in str(value) and auditor not in str(value)


async def test_admin_off_opens_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", admin=False)
    service = StunService(BindingResponder(None))
    assert await start_admin(config, service) is None
    assert not (config.data_dir / TOKENS_FILE).exists()


async def test_an_explicit_busy_admin_listen_stops_start_up(tmp_path: Path) -> None:
    from natkit.server.admin import AdminError

    config = make_config(tmp_path / "data")
    address = config.admin_listen
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((address.host, address.port))
        holder.listen()
        service = StunService(BindingResponder(None))
        with pytest.raises(AdminError, match="admin_listen 127.0.0.1:"):
            await start_admin(config, service)
