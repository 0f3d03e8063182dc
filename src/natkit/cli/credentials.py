"""``natkit credentials`` and ``natkit secrets``: REST shared-secret credentials."""

import sys

import click

from natkit.cli._common import (
    _config_option,
    _data_dir_option,
    _die,
    _Duration,
    _iso_utc,
    _OneLineCommand,
    _OneLineGroup,
    _store_settings,
)

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


@click.command("credentials", cls=_OneLineCommand, epilog=_CREDENTIALS_EPILOG)
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


# secrets ----------------------------------------------------------------------


@click.group("secrets", cls=_OneLineGroup)
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
