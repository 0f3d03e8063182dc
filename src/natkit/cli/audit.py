"""``natkit audit``: check the audit trail's hash chain (NIST AU-9)."""

from pathlib import Path
from typing import TYPE_CHECKING

import click

from natkit.cli._common import _config_option, _data_dir_option, _die, _OneLineGroup

if TYPE_CHECKING:
    from natkit.server.config import ServerConfig


@click.group("audit", cls=_OneLineGroup)
def audit_group() -> None:
    """The audit trail: JSON records chained with HMAC-SHA-256.

    See docs/security.md for the record format and the checkpoint.
    """


_VERIFY_EPILOG = """\b
Examples:
  natkit audit verify                          # the data directory's trail
  natkit audit verify --data-dir /var/lib/natkit
  natkit audit verify audit.log.1 audit.log.2 audit.log --key /run/keys/audit.key
  natkit audit verify audit.log --checkpoint /backup/audit.checkpoint

FILEs are checked in the order given, as one chain (oldest first). The key
is --key, else NATKIT_AUDIT_KEY_FILE, else the one the checkpoint names,
else audit.key next to the files. The checkpoint (audit.checkpoint next to
the files, or --checkpoint) shows whether records were cut off the end.
Exit 0 with "ok: N records, chain intact"; exit 1 naming the first
modified, deleted, reordered or truncated record (file, line, seq).
"""


@audit_group.command("verify", epilog=_VERIFY_EPILOG)
@click.argument("files", nargs=-1, metavar="[FILE]...")
@click.option("--key", "key_file", metavar="FILE", help="The audit key file.")
@click.option("--checkpoint", metavar="FILE", help="The checkpoint to check against.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_data_dir_option
@_config_option
def audit_verify(
    files: tuple[str, ...],
    key_file: str | None,
    checkpoint: str | None,
    as_json: bool,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Verify the audit chain of FILEs (or of the data directory)."""
    import json
    import os

    from natkit.security.audit import (
        CHECKPOINT_FILE,
        KEY_FILE,
        KEY_FILE_ENV,
        AuditError,
        Checkpoint,
        chain_files,
        checkpoint_applies,
        load_audit_key,
        read_checkpoint,
        read_checkpoint_unverified,
        settings_for_data_dir,
        verify_chain,
    )

    # step 1: the files, the checkpoint and the key
    if files and data_dir is not None:
        _die("give FILEs or --data-dir, not both", 2)
    point_path = Path(checkpoint) if checkpoint is not None else None
    key_path = Path(key_file) if key_file is not None else None
    if files:
        paths = [Path(f) for f in files]
        for path in paths:
            if not path.is_file():
                _die(f"{path}: no such file", 2)
        if point_path is None:
            near = paths[-1].parent / CHECKPOINT_FILE
            point_path = near if near.exists() else None
        if key_path is None and os.environ.get(KEY_FILE_ENV):
            key_path = Path(os.environ[KEY_FILE_ENV])
        if key_path is None and point_path is not None:
            try:
                named = read_checkpoint_unverified(point_path).key_file
            except AuditError:
                named = None
            if named is not None:
                key_path = named if named.is_absolute() else point_path.parent / named
        key_path = key_path or paths[-1].parent / KEY_FILE
    else:
        config = _config(config_file, data_dir)
        settings = settings_for_data_dir(config.data_dir)
        log = config.audit_log or settings.log
        paths = chain_files(log)
        if not paths:
            _die(f"no audit log in {config.data_dir} ({log} does not exist)")
        key_path = key_path or config.audit_key_file or settings.key_file
        if point_path is None and settings.checkpoint.exists():
            point_path = settings.checkpoint

    # step 2: verify
    try:
        key = load_audit_key(key_path).key
        point: Checkpoint | None = None
        if point_path is not None:
            point = read_checkpoint(point_path, key)
            explicit = checkpoint is not None or not files
            if not explicit and not checkpoint_applies(point, point_path, paths[-1]):
                point = None
        report = verify_chain(paths, key, checkpoint=point)
    except AuditError as exc:
        _die(str(exc))

    # step 3: say so
    problem = report.problem
    if as_json:
        data: dict[str, object] = {
            "ok": report.ok,
            "records": report.records,
            "files": report.files,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "checkpoint_seq": report.checkpoint_seq,
            "problem": None
            if problem is None
            else {
                "kind": str(problem.kind),
                "file": str(problem.file),
                "line": problem.line,
                "seq": problem.seq,
                "detail": problem.detail,
            },
        }
        click.echo(json.dumps(data))
        if problem is not None:
            raise SystemExit(1)
        return
    if problem is not None:
        _die(str(problem))
    click.echo(f"ok: {report.records} records, chain intact")
    if report.checkpoint_seq is None:
        click.echo(
            "natkit: note: no checkpoint: records cut off the end would not show",
            err=True,
        )


def _config(config_file: str | None, data_dir: str | None) -> "ServerConfig":
    from natkit.server.config import ConfigError, load_config

    try:
        config = load_config(
            config_file=Path(config_file) if config_file is not None else None,
            overrides={"data_dir": data_dir},
        )
    except ConfigError as exc:
        _die(f"config: {exc}", 2)
    return config
