"""``natkit admin``: the client of the admin API of a running ``natkit serve``.

It speaks HTTPS (stdlib ``http.client``, TLS 1.2 or newer) with a bearer
token. Without options it finds what it needs the way the server wrote it:
the URL from the config's ``admin_listen``, the token from
``DATA_DIR/admin-token``, the CA from ``DATA_DIR/admin-cert.pem``.
"""

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from natkit.cli._common import _die, _OneLineGroup

TOKEN_ENV = "NATKIT_ADMIN_TOKEN"
URL_ENV = "NATKIT_ADMIN_URL"
#: seconds to wait for the server
TIMEOUT = 10.0


class _ApiFailure(Exception):
    """One line for the user: what failed, and how."""


@dataclass(frozen=True, slots=True)
class _Client:
    """Where the admin API is and how to reach it."""

    host: str
    port: int
    token: str = field(repr=False)
    cafile: str | None
    insecure: bool
    as_json: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> Any:
        """The JSON answer (None for 204); raises _ApiFailure."""
        import json

        status, data = self.raw(method, path, body)
        if status == 204 or not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise _ApiFailure(f"{self.url}{path}: the answer is not JSON") from None

    def raw(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, bytes]:
        import http.client
        import json
        import ssl

        headers = {"Authorization": f"Bearer {self.token}", "Accept": "*/*"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self._context(), timeout=TIMEOUT
        )
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except ssl.SSLCertVerificationError as exc:
            raise _ApiFailure(
                f"{self.url}: certificate not trusted ({exc.verify_message}); give "
                "--cafile FILE (the server's admin-cert.pem) or --insecure"
            ) from None
        except ssl.SSLError as exc:
            raise _ApiFailure(f"{self.url}: TLS failed: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise _ApiFailure(f"cannot reach {self.url}: {reason}") from None
        finally:
            connection.close()
        if response.status >= 400:
            raise _ApiFailure(_error_line(response.status, response.reason, data))
        return response.status, data

    def _context(self) -> Any:
        import ssl

        if self.insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            try:
                context = ssl.create_default_context(cafile=self.cafile)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise _ApiFailure(
                    f"cannot load --cafile {self.cafile}: {reason}"
                ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _error_line(status: int, reason: str, data: bytes) -> str:
    import json

    message = reason
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        message = parsed["error"]
    return f"{status} {message}"


# --- the group: where the server is, which token ----------------------------

_ADMIN_EPILOG = """\b
Examples:
  natkit admin stats
  natkit admin allocations list
  natkit admin allocations revoke 3f9a01c2
  natkit admin users add alice --password-stdin < pw.txt
  natkit admin tokens create --role auditor --name grafana
  natkit admin --url https://10.0.0.5:8443 --cafile admin-cert.pem \\
      --token-file ~/.natkit-token secrets rotate

Defaults, as natkit serve wrote them: the URL from the config's
admin_listen (https://127.0.0.1:8443), the token from --token-file, else
$NATKIT_ADMIN_TOKEN, else DATA_DIR/admin-token; the certificate is checked
against --cafile, else DATA_DIR/admin-cert.pem when it exists, else the
system CAs.
"""


@click.group("admin", cls=_OneLineGroup, epilog=_ADMIN_EPILOG)
@click.option("--url", metavar="URL", help="https://HOST:PORT of the admin API.")
@click.option("--token-file", metavar="FILE", help="File holding the bearer token.")
@click.option("--cafile", metavar="FILE", help="PEM CA (or certificate) to trust.")
@click.option("--insecure", is_flag=True, help="Do not check the certificate.")
@click.option("--data-dir", metavar="DIR", help="The server's data directory.")
@click.option("--config", "config_file", metavar="FILE", help="Server TOML config.")
@click.pass_context
def admin_group(
    ctx: click.Context,
    url: str | None,
    token_file: str | None,
    cafile: str | None,
    insecure: bool,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Ask a running natkit serve: stats, users, allocations, secrets, tokens."""
    if cafile is not None and insecure:
        _die("give either --cafile or --insecure, not both", 2)
    ctx.obj = _Settings(url, token_file, cafile, insecure, data_dir, config_file)


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str | None
    token_file: str | None
    cafile: str | None
    insecure: bool
    data_dir: str | None
    config_file: str | None


def _client(ctx: click.Context, as_json: bool = False) -> _Client:
    """The client for the group's options, or one error line."""
    from natkit.server.config import ConfigError, load_config
    from natkit.server.tokens import INITIAL_TOKEN_FILE, TokenError, read_token_file

    settings: _Settings = ctx.find_object(_Settings) or _Settings(
        None, None, None, False, None, None
    )
    try:
        config = load_config(
            config_file=Path(settings.config_file) if settings.config_file else None,
            overrides={"data_dir": settings.data_dir},
        )
    except ConfigError as exc:
        _die(f"config: {exc}", 2)
    host, port = _parse_url(
        settings.url or os.environ.get(URL_ENV) or f"https://{config.admin_listen}"
    )

    # the token: --token-file, the environment, the server's first token
    token = os.environ.get(TOKEN_ENV, "").strip() if not settings.token_file else ""
    try:
        if settings.token_file:
            token = read_token_file(Path(settings.token_file))
        elif not token:
            default = config.data_dir / INITIAL_TOKEN_FILE
            if not default.exists():
                _die(
                    f"no token: give --token-file FILE or set {TOKEN_ENV} "
                    f"({default} does not exist)",
                    2,
                )
            token = read_token_file(default)
    except TokenError as exc:
        _die(str(exc), 2)

    # the CA: --cafile, else the server's generated certificate
    cafile = settings.cafile
    if cafile is None and not settings.insecure:
        from natkit.server.admin import ADMIN_CERT_FILE

        generated = config.data_dir / ADMIN_CERT_FILE
        cafile = str(generated) if generated.exists() else None
    return _Client(host, port, token, cafile, settings.insecure, as_json)


def _parse_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or 8443
    except ValueError as exc:
        _die(f"--url {url!r}: {exc}", 2)
    if parts.scheme != "https":
        _die(f"--url {url!r}: the admin API speaks HTTPS only (https://HOST:PORT)", 2)
    if not parts.hostname or parts.path not in ("", "/"):
        _die(f"--url {url!r}: expected https://HOST:PORT", 2)
    return parts.hostname, port


def _run(ctx: click.Context, as_json: bool, work: Callable[[_Client], None]) -> None:
    client = _client(ctx, as_json)
    try:
        work(client)
    except _ApiFailure as exc:
        _die(str(exc))


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, ensure_ascii=False, indent=None))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell; the last one is not padded."""
    lines = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line[:-1], widths[:-1], strict=True)]
        click.echo("  ".join([*cells, line[-1]]).rstrip())


# --- stats, inventory, metrics, health ---------------------------------------


@admin_group.command("stats")
@_json_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Server counters (STUN, streams, TURN)."""

    def work(client: _Client) -> None:
        data = client.call("GET", "/v1/stats")
        if as_json:
            _print_json(data)
            return
        for section in ("stun", "streams", "turn"):
            values = data.get(section)
            if not isinstance(values, dict):
                click.echo(f"{section}: off")
                continue
            for key, value in values.items():
                click.echo(f"{section}.{key} {value}")

    _run(ctx, as_json, work)


@admin_group.command("inventory")
@_json_option
@click.pass_context
def inventory(ctx: click.Context, as_json: bool) -> None:
    """Name, version, listeners and the inventory record."""

    def work(client: _Client) -> None:
        data = client.call("GET", "/v1/inventory")
        if as_json:
            _print_json(data)
            return
        click.echo(f"{data['name']} {data['version']}")
        click.echo(f"admin API: https://{data.get('admin_listen')}")
        for listener in data.get("listeners", []):
            click.echo(f"listening {listener}")

    _run(ctx, as_json, work)


@admin_group.command("metrics")
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """The Prometheus metrics, as a scraper sees them."""

    def work(client: _Client) -> None:
        _, data = client.raw("GET", "/metrics")
        click.echo(data.decode("utf-8", "replace"), nl=False)

    _run(ctx, False, work)


@admin_group.command("health")
@click.pass_context
def health(ctx: click.Context) -> None:
    """Is the server ready? Exit 0 when every listener is open."""

    def work(client: _Client) -> None:
        data = client.call("GET", "/ready")
        click.echo(f"{data['status']}: {', '.join(data.get('listeners', []))}")

    _run(ctx, False, work)


# --- users -------------------------------------------------------------------


@admin_group.group("users", cls=_OneLineGroup)
def users() -> None:
    """Long-term TURN users of the server's store."""


@users.command("list")
@click.option("--realm", metavar="REALM", help="Only this realm.")
@_json_option
@click.pass_context
def users_list(ctx: click.Context, realm: str | None, as_json: bool) -> None:
    """List the users (never their keys)."""
    from urllib.parse import quote

    def work(client: _Client) -> None:
        path = "/v1/users" + (f"?realm={quote(realm)}" if realm else "")
        data = client.call("GET", path)
        if as_json:
            _print_json(data["users"])
            return
        _table(
            ("USERNAME", "REALM", "ALGORITHMS", "CREATED"),
            [
                (u["username"], u["realm"], ",".join(u["algorithms"]), u["created_at"])
                for u in data["users"]
            ],
        )

    _run(ctx, as_json, work)


@users.command("add")
@click.argument("name")
@click.option("--password", metavar="P", help="The password (visible to ps).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--realm", metavar="REALM", help="Realm [default: the server's].")
@click.option(
    "--algorithm",
    "algorithms",
    type=click.Choice(["md5", "sha256"], case_sensitive=False),
    multiple=True,
    help="Key to derive, repeatable [default: md5 and sha256].",
)
@click.option("--replace", is_flag=True, help="Replace an existing user.")
@_json_option
@click.pass_context
def users_add(
    ctx: click.Context,
    name: str,
    password: str | None,
    password_stdin: bool,
    realm: str | None,
    algorithms: tuple[str, ...],
    replace: bool,
    as_json: bool,
) -> None:
    """Add user NAME; the server stores only derived keys."""
    from natkit.cli.users import _read_password

    secret = _read_password(password, password_stdin)
    body: dict[str, Any] = {"username": name, "password": secret, "replace": replace}
    if realm:
        body["realm"] = realm
    if algorithms:
        body["algorithms"] = [a.lower() for a in algorithms]

    def work(client: _Client) -> None:
        data = client.call("POST", "/v1/users", body)
        if as_json:
            _print_json(data)
            return
        algs = ", ".join(data["algorithms"])
        click.echo(
            f"added user {data['username']!r} in realm {data['realm']!r} ({algs})"
        )

    _run(ctx, as_json, work)


@users.command("remove")
@click.argument("name")
@click.option("--realm", metavar="REALM", help="Realm [default: the server's].")
@click.pass_context
def users_remove(ctx: click.Context, name: str, realm: str | None) -> None:
    """Remove user NAME."""
    from urllib.parse import quote

    def work(client: _Client) -> None:
        path = f"/v1/users/{quote(name, safe='')}"
        if realm:
            path += f"?realm={quote(realm)}"
        client.call("DELETE", path)
        click.echo(f"removed user {name!r}")

    _run(ctx, False, work)


# --- allocations -------------------------------------------------------------


@admin_group.group("allocations", cls=_OneLineGroup)
def allocations() -> None:
    """Live TURN allocations."""


@allocations.command("list")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True
)
@_json_option
@click.pass_context
def allocations_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List allocations: id, user, client, relayed addresses, traffic."""

    def work(client: _Client) -> None:
        data = client.call("GET", f"/v1/allocations?limit={limit}")
        if as_json:
            _print_json(data)
            return
        _table(
            ("ID", "USER", "TRANSPORT", "CLIENT", "RELAYED", "EXPIRES", "TRAFFIC"),
            [
                (
                    a["id"],
                    a["username"],
                    a["transport"],
                    a["client"],
                    ",".join(a["relayed"]),
                    a["expires_at"],
                    f"{a['bytes_to_peer']}B/{a['bytes_to_client']}B",
                )
                for a in data["allocations"]
            ],
        )
        shown = len(data["allocations"])
        if shown < data["total"]:
            click.echo(f"({shown} of {data['total']}; see --limit)", err=True)

    _run(ctx, as_json, work)


@allocations.command("revoke")
@click.argument("allocation_id", metavar="ID")
@click.pass_context
def allocations_revoke(ctx: click.Context, allocation_id: str) -> None:
    """Delete allocation ID now and close its relay."""
    from urllib.parse import quote

    def work(client: _Client) -> None:
        client.call("DELETE", f"/v1/allocations/{quote(allocation_id, safe='')}")
        click.echo(f"revoked allocation {allocation_id}")

    _run(ctx, False, work)


# --- secrets -----------------------------------------------------------------


@admin_group.group("secrets", cls=_OneLineGroup)
def secrets_group() -> None:
    """REST shared secrets of the running server (fingerprints only)."""


def _print_secrets(data: Mapping[str, Any], as_json: bool, line: str | None) -> None:
    if as_json:
        _print_json(data)
        return
    if line:
        click.echo(line)
    _table(
        ("FINGERPRINT", "MINTS"),
        [(s["fingerprint"], "yes" if s["newest"] else "") for s in data["secrets"]],
    )


@secrets_group.command("list")
@_json_option
@click.pass_context
def secrets_list(ctx: click.Context, as_json: bool) -> None:
    """List the secrets, newest (the one that mints) first."""

    def work(client: _Client) -> None:
        _print_secrets(client.call("GET", "/v1/secrets"), as_json, None)

    _run(ctx, as_json, work)


@secrets_group.command("rotate")
@click.option("--retire-others", is_flag=True, help="Retire every older secret too.")
@_json_option
@click.pass_context
def secrets_rotate(ctx: click.Context, retire_others: bool, as_json: bool) -> None:
    """Add a new random secret in front; older ones stay valid unless retired."""

    def work(client: _Client) -> None:
        data = client.call(
            "POST", "/v1/secrets/rotate", {"retire_others": retire_others}
        )
        _print_secrets(data, as_json, f"added REST secret {data['fingerprint']}")

    _run(ctx, as_json, work)


@secrets_group.command("retire")
@click.argument("fingerprint")
@_json_option
@click.pass_context
def secrets_retire(ctx: click.Context, fingerprint: str, as_json: bool) -> None:
    """Retire the secret FINGERPRINT (a prefix is enough)."""
    from urllib.parse import quote

    def work(client: _Client) -> None:
        data = client.call("DELETE", f"/v1/secrets/{quote(fingerprint, safe='')}")
        _print_secrets(data, as_json, f"retired REST secret {data['fingerprint']}")

    _run(ctx, as_json, work)


# --- tokens ------------------------------------------------------------------


@admin_group.group("tokens", cls=_OneLineGroup)
def tokens() -> None:
    """Admin API tokens (role admin only)."""


@tokens.command("list")
@_json_option
@click.pass_context
def tokens_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens: id, name, role, creation time."""

    def work(client: _Client) -> None:
        data = client.call("GET", "/v1/tokens")
        if as_json:
            _print_json(data["tokens"])
            return
        _table(
            ("ID", "NAME", "ROLE", "CREATED"),
            [(t["id"], t["name"], t["role"], t["created_at"]) for t in data["tokens"]],
        )

    _run(ctx, as_json, work)


@tokens.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["admin", "operator", "auditor"], case_sensitive=False),
    help="What the token may do.",
)
@click.option("--name", metavar="NAME", help="A name for listings [default: ROLE].")
@_json_option
@click.pass_context
def tokens_create(
    ctx: click.Context, role: str, name: str | None, as_json: bool
) -> None:
    """Create a token; it is printed once, on stdout."""

    def work(client: _Client) -> None:
        body = {"role": role.lower(), "name": name or role.lower()}
        data = client.call("POST", "/v1/tokens", body)
        if as_json:
            _print_json(data)
            return
        click.echo(
            f"created token {data['id']} {data['name']!r} (role {data['role']}); "
            "store it now, it is not shown again:",
            err=True,
        )
        click.echo(data["token"])

    _run(ctx, as_json, work)


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke token ID (not the last admin token)."""
    from urllib.parse import quote

    def work(client: _Client) -> None:
        client.call("DELETE", f"/v1/tokens/{quote(token_id, safe='')}")
        click.echo(f"revoked token {token_id}")

    _run(ctx, False, work)
