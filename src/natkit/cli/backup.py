"""``natkit backup``: encrypted backups of the data directory (NIST CP-9, CP-10)."""

from pathlib import Path
from typing import TYPE_CHECKING

import click

from natkit.cli._common import _config_option, _data_dir_option, _die, _OneLineGroup

if TYPE_CHECKING:
    from natkit.security.backup import BackupInfo, BackupKey
    from natkit.server.config import ServerConfig


@click.group("backup", cls=_OneLineGroup)
def backup_group() -> None:
    """Back up, verify and restore a data directory (AES-256-GCM archive).

    The master key and the audit key are never in a backup: keep them
    apart, a restore needs them. See docs/security.md.
    """


def _passphrase_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--passphrase-file",
        metavar="FILE",
        help="Encrypt with this passphrase (PBKDF2) instead of the master key.",
    )(func)


def _master_key_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--master-key-file",
        metavar="FILE",
        help="The master key [default: NATKIT_MASTER_KEY(_FILE), the config's].",
    )(func)


_CREATE_EPILOG = """\b
Examples:
  natkit backup create /backup/natkit-$(date +%F).nkb
  natkit backup create out.nkb --data-dir /var/lib/natkit --config /etc/natkit.toml
  natkit backup create out.nkb --passphrase-file /run/secrets/backup-pass

Works while the server runs: the user store is copied with SQLite's online
backup API, the audit trail under its lock. Without --passphrase-file the
archive key is derived from the master key (HKDF-SHA-256).
"""


@backup_group.command("create", epilog=_CREATE_EPILOG)
@click.argument("out", metavar="OUT")
@_data_dir_option
@_config_option
@_passphrase_option
@_master_key_option
@click.option(
    "--no-audit-log",
    is_flag=True,
    help="Leave the audit log out (its checkpoint still goes in).",
)
def backup_create(
    out: str,
    data_dir: str | None,
    config_file: str | None,
    passphrase_file: str | None,
    master_key_file: str | None,
    no_audit_log: bool,
) -> None:
    """Write an encrypted backup of the data directory to OUT."""
    import hashlib

    from natkit.security.audit import record_change
    from natkit.security.backup import BackupError, create_backup

    config = _config(config_file, data_dir)
    key = _key(passphrase_file, master_key_file, config, config.data_dir)
    exclude = [p for p in (config.master_key_file, config.audit_key_file) if p]
    try:
        info = create_backup(
            config.data_dir,
            Path(out),
            key,
            config_file=Path(config_file) if config_file is not None else None,
            exclude=exclude,
            audit_log=config.audit_log,
            include_audit_log=not no_audit_log,
        )
    except BackupError as exc:
        _die(str(exc))
    digest = hashlib.sha256(Path(out).read_bytes()).hexdigest()
    record_change(
        config.data_dir,
        "backup.create",
        outcome="success",
        file=str(Path(out).absolute()),
        files=len(info.files),
        archive_sha256=digest,
        key_derivation=info.key_derivation,
    )
    click.echo(_summary(out, info))
    click.echo(
        "natkit: note: the master key and the audit key are not in the backup; "
        "keep them apart, restore needs them",
        err=True,
    )


_VERIFY_EPILOG = """\b
Examples:
  natkit backup verify out.nkb                 # master key of the data dir
  natkit backup verify out.nkb --master-key-file /run/keys/master.key
  natkit backup verify out.nkb --passphrase-file pass.txt

Decrypts the archive and checks every file against the manifest's SHA-256.
Exit 1 with the reason when anything was changed.
"""


@backup_group.command("verify", epilog=_VERIFY_EPILOG)
@click.argument("file", metavar="FILE")
@_passphrase_option
@_master_key_option
@_data_dir_option
@_config_option
def backup_verify(
    file: str,
    passphrase_file: str | None,
    master_key_file: str | None,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Check that backup FILE decrypts and that every file in it is intact."""
    from natkit.security.backup import BackupError, verify_backup

    config = _config(config_file, data_dir)
    key = _key(passphrase_file, master_key_file, config, config.data_dir)
    try:
        info = verify_backup(Path(file), key)
    except BackupError as exc:
        _die(str(exc))
    click.echo(f"ok: {_summary(file, info)}")


_RESTORE_EPILOG = """\b
Examples:
  natkit backup restore out.nkb --data-dir /var/lib/natkit-new \\
      --master-key-file /run/keys/master.key

DIR must be new or empty. Every file is checked before any is written;
files get mode 0600, directories 0700. A configuration file in the backup
comes back as DIR/config/NAME. Start the server on DIR with the same
master key (master_key_file) and audit key (audit_key_file).
"""


@backup_group.command("restore", epilog=_RESTORE_EPILOG)
@click.argument("file", metavar="FILE")
@click.option("--data-dir", metavar="DIR", required=True, help="New, empty directory.")
@_passphrase_option
@_master_key_option
def backup_restore(
    file: str, data_dir: str, passphrase_file: str | None, master_key_file: str | None
) -> None:
    """Restore backup FILE into the empty directory DIR."""
    from natkit.security.backup import BackupError, restore_backup

    key = _key(passphrase_file, master_key_file, None, None)
    try:
        info = restore_backup(Path(file), Path(data_dir), key)
    except BackupError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot write {data_dir}: {exc.strerror or exc}")
    click.echo(f"restored {len(info.files)} files into {data_dir}")


def _summary(path: str, info: "BackupInfo") -> str:
    return (
        f"{path}: {len(info.files)} files, {info.size} bytes, created "
        f"{info.created} ({info.key_derivation})"
    )


def _config(config_file: str | None, data_dir: str | None) -> "ServerConfig":
    from natkit.server.config import ConfigError, load_config

    try:
        return load_config(
            config_file=Path(config_file) if config_file is not None else None,
            overrides={"data_dir": data_dir},
        )
    except ConfigError as exc:
        _die(f"config: {exc}", 2)


def _key(
    passphrase_file: str | None,
    master_key_file: str | None,
    config: "ServerConfig | None",
    data_dir: Path | None,
) -> "BackupKey":
    """The passphrase, or the master key: flag, environment, config, data dir."""
    import os

    from natkit.security.backup import BackupError, BackupKey
    from natkit.security.sealing import (
        MASTER_KEY_ENV,
        MASTER_KEY_FILE_ENV,
        SealError,
        data_dir_sealer,
        load_master_key,
        read_key_file,
    )
    from natkit.security.secrets import PrivateFileError, check_private_file

    if passphrase_file is not None and master_key_file is not None:
        _die("give --passphrase-file or --master-key-file, not both", 2)
    try:
        if passphrase_file is not None:
            path = Path(passphrase_file)
            check_private_file(path)
            text = path.read_bytes().removesuffix(b"\n").removesuffix(b"\r")
            return BackupKey.from_passphrase(text)
        if master_key_file is not None:
            return BackupKey(master=read_key_file(Path(master_key_file)))
        if os.environ.get(MASTER_KEY_ENV):
            return BackupKey(master=load_master_key(Path("."), create=False))
        named = os.environ.get(MASTER_KEY_FILE_ENV)
        if named:
            return BackupKey(master=read_key_file(Path(named)))
        if config is not None and config.master_key_file is not None:
            return BackupKey(master=read_key_file(config.master_key_file))
        sealer = data_dir_sealer(data_dir) if data_dir is not None else None
    except (SealError, BackupError, PrivateFileError) as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot read {passphrase_file}: {exc.strerror or exc}")
    if sealer is None:
        _die(
            "no key: give --passphrase-file or --master-key-file (or set "
            f"{MASTER_KEY_ENV}); the data directory has no master key yet",
            2,
        )
    return BackupKey(master=sealer.master)
