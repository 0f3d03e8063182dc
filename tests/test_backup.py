"""Backups (NIST SP 800-53 CP-9, CP-10): create while serving, verify, restore.

The full round trip: a server with its master and audit keys kept apart, a
store user and REST secrets; ``natkit backup create`` while it runs;
``natkit backup restore`` into a fresh directory; ``natkit serve`` on it with
the same keys; authenticated TURN allocations with the restored credentials;
the audit chain still verifies. And every changed byte is refused.
"""

import asyncio
import base64
import json
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from natkit.cli import main
from natkit.net.turn_client import TurnClient
from natkit.security.backup import (
    MAGIC,
    BackupError,
    BackupKey,
    create_backup,
    restore_backup,
    verify_backup,
)
from natkit.security.sealing import MasterKey, read_key_file
from natkit.security.secrets import read_rest_secrets, write_private_file
from natkit.server.config import ServerConfig, load_config
from natkit.server.store import UserStore
from natkit.turn.credentials import mint
from ports import pick_block
from serve_thread import serving

REALM = "backup.test"
USER, PASSWORD = "dave", "dave-restored-password"
TIMEOUT = 5.0
PASSPHRASE = b"correct horse battery staple 42"


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def one_error(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("natkit: error: ")
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a server on loopback ---------------------------------------------------------


def server_config(data_dir: Path, keys: Path, **overrides: Any) -> ServerConfig:
    base = pick_block(12)
    settings: dict[str, Any] = {
        "listen": [f"udp:127.0.0.1:{base}"],
        "data_dir": str(data_dir),
        "realm": REALM,
        "relay_ip": ["127.0.0.1"],
        "relay_ports": f"{base + 2}-{base + 11}",
        "admin": False,
        "master_key_file": str(keys / "master.key"),
        "audit_key_file": str(keys / "audit.key"),
        "audit_flush_seconds": 0.05,
    }
    settings.update(overrides)
    return load_config(environ={}, overrides=settings)


@asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[int]:
    """``serve(config)`` on this loop; yields the UDP port."""
    async with serving(config, timeout=TIMEOUT) as bound:
        yield bound[0].port


def make_keys(tmp_path: Path) -> Path:
    """The master key on its own "volume"; the audit key is made on first start."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    write_private_file(
        keys / "master.key", base64.b64encode(bytes(range(1, 33))) + b"\n"
    )
    return keys


async def allocate(port: int, username: str, password: str) -> None:
    async with TurnClient(
        "127.0.0.1", port, username=username, password=password, timeout=TIMEOUT
    ) as client:
        info = await client.allocate()
        assert info.relayed.ip == "127.0.0.1"


# --- the round trip -----------------------------------------------------------------


async def test_backup_restore_serve_allocate_and_the_chain_verifies(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    data = tmp_path / "data"
    config = server_config(data, keys)
    archive = tmp_path / "natkit.nkb"
    config_file = tmp_path / "natkit.toml"
    config_file.write_text(f'realm = "{REALM}"\n')

    # step 1: a running server, a store user added, a backup taken online
    async with running(config) as port:
        added = await asyncio.to_thread(
            run,
            "users",
            "add",
            USER,
            "--password-stdin",
            "--realm",
            REALM,
            "--data-dir",
            str(data),
            stdin=PASSWORD,
        )
        assert added.exit_code == 0, added.output
        await asyncio.sleep(1.2)  # the server's store looks again each second
        await allocate(port, USER, PASSWORD)
        created = await asyncio.to_thread(
            run,
            "backup",
            "create",
            str(archive),
            "--data-dir",
            str(data),
            "--config",
            str(config_file),
        )
        assert created.exit_code == 0, created.output
        assert "not in the backup" in created.stderr
    rest_secret = read_rest_secrets(data)[0]
    assert mode(archive) == 0o600
    raw = archive.read_bytes()
    assert raw.startswith(MAGIC)
    assert PASSWORD.encode() not in raw and rest_secret not in raw

    # step 2: verify, then restore into a fresh directory
    verified = run("backup", "verify", str(archive), "--data-dir", str(data))
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith("ok: ")
    restored = tmp_path / "restored"
    result = run(
        "backup",
        "restore",
        str(archive),
        "--data-dir",
        str(restored),
        "--master-key-file",
        str(keys / "master.key"),
    )
    assert result.exit_code == 0, result.output
    assert mode(restored) == 0o700
    names = {p.name for p in restored.rglob("*") if p.is_file()}
    assert {"natkit.db", "rest-secrets", "audit.log", "audit.checkpoint"} <= names
    assert {"sealing.json", "tls-cert.pem"} & names == {"sealing.json"}
    assert "master.key" not in names and "audit.key" not in names
    for path in restored.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert (restored / "config" / "natkit.toml").read_text() == config_file.read_text()

    # step 3: serve the restored directory with the same keys; both kinds of
    # credentials work
    again = server_config(restored, keys)
    credential = mint("erin", 600, rest_secret, time.time())
    async with running(again) as port:
        await allocate(port, USER, PASSWORD)
        await allocate(port, credential.username, credential.password)

    # step 4: the chain of the restored trail, with the appended records
    checked = run(
        "audit",
        "verify",
        "--data-dir",
        str(restored),
        "--key",
        str(keys / "audit.key"),
    )
    assert checked.exit_code == 0, checked.output
    log = (restored / "audit.log").read_text()
    kinds = [json.loads(line)["type"] for line in log.splitlines()]
    assert kinds.count("server.start") == 2
    assert "user.add" in kinds and kinds[-1] in ("server.stop", "audit.checkpoint")
    # the original went on after the backup; it verifies on its own
    assert run("audit", "verify", "--data-dir", str(data)).exit_code == 0
    original = (data / "audit.log").read_text()
    assert "backup.create" in original


async def test_restore_without_the_audit_log_continues_the_chain(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    data = tmp_path / "data"
    async with running(server_config(data, keys)):
        pass
    archive = tmp_path / "b.nkb"
    # the log as the backup's checkpoint knows it (backup.create comes after)
    old_log = tmp_path / "old-audit.log"
    old_log.write_bytes((data / "audit.log").read_bytes())
    created = run(
        "backup", "create", str(archive), "--data-dir", str(data), "--no-audit-log"
    )
    assert created.exit_code == 0, created.output
    restored = tmp_path / "restored"
    key = BackupKey(master=read_key_file(keys / "master.key"))
    restore_backup(archive, restored, key)
    assert not (restored / "audit.log").exists()
    assert (restored / "audit.checkpoint").exists()
    async with running(server_config(restored, keys)):
        pass
    first = json.loads((restored / "audit.log").read_text().splitlines()[0])
    assert first["type"] == "audit.init"
    assert first["reason"] == "continued from the checkpoint"
    checked = run(
        "audit",
        "verify",
        str(old_log),
        str(restored / "audit.log"),
        "--key",
        str(keys / "audit.key"),
        "--checkpoint",
        str(restored / "audit.checkpoint"),
    )
    # the old log and the new one are one chain
    assert checked.exit_code == 0, checked.output
    alone = run(
        "audit",
        "verify",
        str(restored / "audit.log"),
        "--key",
        str(keys / "audit.key"),
    )
    assert alone.exit_code == 0, alone.output


# --- tampering and refusals ---------------------------------------------------


@pytest.fixture
def small_backup(tmp_path: Path) -> tuple[Path, BackupKey]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with UserStore.open(data) as store:
        store.add_user("alice", "natkit", "alice-password-1")
    write_private_file(data / "notes.txt", b"hello")
    archive = tmp_path / "small.nkb"
    key = BackupKey.from_passphrase(PASSPHRASE)
    create_backup(data, archive, key)
    return archive, key


@pytest.mark.parametrize("where", ["magic", "length", "header", "body", "tag"])
def test_any_flipped_byte_is_refused(
    tmp_path: Path, small_backup: tuple[Path, BackupKey], where: str
) -> None:
    archive, key = small_backup
    data = bytearray(archive.read_bytes())
    header_length = int.from_bytes(data[8:12], "big")
    index = {
        "magic": 2,
        "length": 11,
        "header": 12 + header_length // 2,
        "body": 12 + header_length + (len(data) - 12 - header_length - 16) // 2,
        "tag": len(data) - 3,
    }[where]
    data[index] ^= 0x40
    archive.write_bytes(bytes(data))
    with pytest.raises(BackupError):
        verify_backup(archive, key)

    passphrase = tmp_path / "pass"
    write_private_file(passphrase, PASSPHRASE)
    result = run("backup", "verify", str(archive), "--passphrase-file", str(passphrase))
    assert result.exit_code == 1
    one_error(result)
    target = tmp_path / "target"
    result = run(
        "backup",
        "restore",
        str(archive),
        "--data-dir",
        str(target),
        "--passphrase-file",
        str(passphrase),
    )
    assert result.exit_code == 1
    one_error(result)
    assert not target.exists() or not any(target.iterdir())


def test_truncated_archive_is_refused(small_backup: tuple[Path, BackupKey]) -> None:
    archive, key = small_backup
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(BackupError, match="integrity check"):
        verify_backup(archive, key)


def test_wrong_passphrase_and_wrong_master_key(
    tmp_path: Path, small_backup: tuple[Path, BackupKey]
) -> None:
    archive, _ = small_backup
    with pytest.raises(BackupError, match="integrity check"):
        verify_backup(archive, BackupKey.from_passphrase(b"another passphrase 123"))
    with pytest.raises(BackupError, match="encrypted with a passphrase"):
        verify_backup(archive, BackupKey(master=MasterKey(bytes(32), "test")))

    data = tmp_path / "data"
    other = tmp_path / "other.nkb"
    create_backup(data, other, BackupKey(master=MasterKey(bytes(32), "test")))
    with pytest.raises(BackupError, match="encrypted with master key"):
        verify_backup(other, BackupKey(master=MasterKey(b"\x01" * 32, "test")))


def test_restore_refuses_a_non_empty_directory(
    tmp_path: Path, small_backup: tuple[Path, BackupKey]
) -> None:
    archive, key = small_backup
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(archive, target, key)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_restored_files_and_modes(
    tmp_path: Path, small_backup: tuple[Path, BackupKey]
) -> None:
    archive, key = small_backup
    target = tmp_path / "new"
    info = restore_backup(archive, target, key)
    assert (target / "notes.txt").read_bytes() == b"hello"
    assert mode(target) == 0o700 and mode(target / "natkit.db") == 0o600
    with UserStore.open(target) as store:
        assert [u.username for u in store.list_users()] == ["alice"]
    assert {e.path for e in info.files} == {
        "data/natkit.db",
        "data/notes.txt",
        "data/audit.log",  # the user.add record
        "data/audit.checkpoint",
    }
    assert all(len(e.sha256) == 64 for e in info.files)


def test_weak_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="passphrase refused"):
        BackupKey.from_passphrase(b"changeme")
    passphrase = tmp_path / "pass"
    write_private_file(passphrase, b"short")
    result = run(
        "backup",
        "create",
        str(tmp_path / "x.nkb"),
        "--data-dir",
        str(tmp_path),
        "--passphrase-file",
        str(passphrase),
    )
    assert result.exit_code == 1
    assert "passphrase refused" in one_error(result)


def test_create_needs_a_key_and_a_new_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    result = run("backup", "create", str(tmp_path / "x.nkb"), "--data-dir", str(data))
    assert result.exit_code == 2
    assert "no key" in one_error(result)
    key = BackupKey.from_passphrase(PASSPHRASE)
    (tmp_path / "exists.nkb").write_bytes(b"")
    with pytest.raises(BackupError, match="exists"):
        create_backup(data, tmp_path / "exists.nkb", key)


def test_not_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "x.nkb"
    path.write_bytes(b"hello world, not a backup")
    with pytest.raises(BackupError, match="not a natkit backup"):
        verify_backup(path, BackupKey.from_passphrase(PASSPHRASE))
