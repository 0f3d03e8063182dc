"""``natkit users``: long-term TURN users in the data directory's store."""

import sys

import click

from natkit.cli._common import (
    _config_option,
    _data_dir_option,
    _die,
    _iso_utc,
    _OneLineGroup,
    _realm_option,
    _store_settings,
)


@click.group("users", cls=_OneLineGroup)
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
