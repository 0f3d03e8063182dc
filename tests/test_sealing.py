"""Sealing at rest (NIST SP 800-53 SC-28, IA-5(1)) and the start-up refusals.

AES-256-GCM values under the master key; the REST secrets file and the user
store's keys sealed in a data directory that ``natkit serve`` has started on;
the v1 -> v2 store migration; refusals of secret files open to other users
and of weak secrets, each one clear line.
"""

import asyncio
import base64
import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from natkit.cli import main
from natkit.security.sealing import (
    MARKER_FILE,
    MASTER_KEY_ENV,
    MasterKey,
    Sealer,
    SealError,
    data_dir_sealer,
    enable_sealing,
    load_master_key,
    read_key_file,
)
from natkit.security.secrets import (
    REST_SECRETS_FILE,
    add_rest_secret,
    format_rest_secrets,
    read_rest_secrets,
    seal_rest_secrets,
    weak_secret_reason,
    write_private_file,
)
from natkit.server import store as store_module
from natkit.server.config import ConfigError, load_config
from natkit.server.daemon import StartupError, open_security, serve
from natkit.server.store import DB_FILE, SCHEMA_VERSION, UserStore, key_context
from natkit.stun import integrity
from natkit.stun.constants import PasswordAlgorithm

MD5, SHA256 = PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256
PASSWORD = "carol-long-password"


def master(byte: int = 7) -> MasterKey:
    return MasterKey(bytes([byte]) * 32, "test")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- values ---------------------------------------------------------------------


def test_round_trip_and_context_binding() -> None:
    sealer = Sealer(master())
    sealed = sealer.seal(b"digest bytes", context=b"admin token v1")
    assert sealed.startswith(b"NKS1") and b"digest bytes" not in sealed
    assert sealer.unseal(sealed, context=b"admin token v1") == b"digest bytes"
    # a fresh nonce every time
    assert sealer.seal(b"digest bytes", context=b"x") != sealer.seal(
        b"digest bytes", context=b"x"
    )
    with pytest.raises(SealError, match="changed or belongs elsewhere"):
        sealer.unseal(sealed, context=b"another place")


def test_wrong_key_is_refused() -> None:
    sealed = Sealer(master(1)).seal(b"x", context=b"c")
    with pytest.raises(SealError, match="sealed with master key"):
        Sealer(master(2)).unseal(sealed, context=b"c")


@pytest.mark.parametrize("index", [0, 5, 20, -1])
def test_any_changed_byte_is_refused(index: int) -> None:
    sealer = Sealer(master())
    sealed = bytearray(sealer.seal(b"some secret", context=b"c"))
    sealed[index] ^= 0x01
    with pytest.raises(SealError):
        sealer.unseal(bytes(sealed), context=b"c")


def test_text_form() -> None:
    sealer = Sealer(master())
    line = sealer.seal_text(b"abc", context=b"c")
    assert line.startswith("sealed:")
    assert sealer.unseal_text(line, context=b"c") == b"abc"


# --- the master key -------------------------------------------------------------


def test_generated_key_is_private_and_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="natkit.security.sealing")
    key = load_master_key(tmp_path, environ={})
    assert key.beside_data and key.path == tmp_path / "master.key"
    assert mode(tmp_path / "master.key") == 0o600
    assert "inside the data directory" in caplog.text
    assert base64.b64encode(key.key).decode() not in caplog.text
    assert load_master_key(tmp_path, environ={}).key == key.key


def test_key_from_the_environment_wins(tmp_path: Path) -> None:
    raw = bytes(range(32))
    env = {MASTER_KEY_ENV: base64.b64encode(raw).decode()}
    key = load_master_key(tmp_path, key_file=tmp_path / "nope", environ=env)
    assert key.key == raw and key.source == MASTER_KEY_ENV
    assert not (tmp_path / "master.key").exists()
    with pytest.raises(SealError, match="not a master key"):
        load_master_key(tmp_path, environ={MASTER_KEY_ENV: "c2hvcnQ="})


def test_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(base64.b64encode(bytes(32)) + b"\n")
    path.chmod(0o644)
    with pytest.raises(SealError, match=f"chmod 600 {path}"):
        read_key_file(path)
    path.chmod(0o600)
    assert read_key_file(path).key == bytes(32)
    path.write_bytes(bytes(range(32)))  # 32 raw bytes work too
    assert read_key_file(path).key == bytes(range(32))


def test_marker_refuses_another_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    first = keys / "one.key"
    write_private_file(first, base64.b64encode(bytes(32)))
    enable_sealing(tmp_path, read_key_file(first))
    with pytest.raises(SealError, match="was sealed with master key"):
        enable_sealing(tmp_path, master(9))
    # the CLI finds the key through the marker, and refuses another one
    sealer = data_dir_sealer(tmp_path, environ={})
    assert sealer is not None and sealer.key_id == read_key_file(first).key_id
    env = {MASTER_KEY_ENV: base64.b64encode(bytes([9]) * 32).decode()}
    with pytest.raises(SealError, match="was sealed with master key"):
        data_dir_sealer(tmp_path, environ=env)
    first.unlink()
    with pytest.raises(SealError, match="does not exist"):
        data_dir_sealer(tmp_path, environ={})


def test_unsealed_directory_has_no_sealer(tmp_path: Path) -> None:
    assert data_dir_sealer(tmp_path, environ={}) is None


# --- REST secrets ---------------------------------------------------------------


def test_rest_secrets_sealed_in_a_sealed_directory(tmp_path: Path) -> None:
    secret = b"r" * 24 + b"-rest-secret"
    add_rest_secret(tmp_path, secret)  # plain: the directory is not sealed
    text = (tmp_path / REST_SECRETS_FILE).read_text()
    assert base64.b64encode(secret).decode() in text

    enable_sealing(tmp_path, load_master_key(tmp_path, environ={}))
    assert seal_rest_secrets(tmp_path)
    assert not seal_rest_secrets(tmp_path)  # once
    text = (tmp_path / REST_SECRETS_FILE).read_text()
    assert "sealed:" in text and base64.b64encode(secret).decode() not in text
    assert mode(tmp_path / REST_SECRETS_FILE) == 0o600
    assert read_rest_secrets(tmp_path) == [secret]

    # changes keep it sealed; the CLI reads it through the marker
    second = add_rest_secret(tmp_path)
    assert "sealed:" in (tmp_path / REST_SECRETS_FILE).read_text()
    result = CliRunner().invoke(main, ["secrets", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    assert read_rest_secrets(tmp_path) == [second, secret]


def test_sealed_rest_secrets_without_the_key_are_one_error(tmp_path: Path) -> None:
    enable_sealing(tmp_path, load_master_key(tmp_path, environ={}))
    add_rest_secret(tmp_path, b"s" * 17 + b"xyz")
    (tmp_path / "master.key").unlink()
    result = CliRunner().invoke(
        main, ["credentials", "alice", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "is sealed" in lines[0], result.stderr


# --- the user store -------------------------------------------------------------


def _v1_store(data_dir: Path) -> None:
    """A schema v1 store with plain keys, as natkit wrote before sealing."""
    data_dir.mkdir(mode=0o700, exist_ok=True)
    path = data_dir / DB_FILE
    conn = sqlite3.connect(path)
    path.chmod(0o600)
    store_module._create_v1(conn)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    digest = integrity.userhash("carol", "natkit")
    conn.execute(
        "INSERT INTO users (id, username, realm, userhash, created_at)"
        " VALUES (1, 'carol', 'natkit', ?, 0)",
        (digest,),
    )
    for algorithm in (MD5, SHA256):
        key = integrity.long_term_key("carol", "natkit", PASSWORD, algorithm)
        conn.execute(
            "INSERT INTO user_keys (user_id, algorithm, key) VALUES (1, ?, ?)",
            (int(algorithm), key),
        )
    conn.commit()
    conn.close()


def test_v1_store_is_migrated_and_sealed_on_open(tmp_path: Path) -> None:
    _v1_store(tmp_path)
    plain = integrity.long_term_key("carol", "natkit", PASSWORD, SHA256)
    sealer = enable_sealing(tmp_path, load_master_key(tmp_path, environ={}))
    with UserStore.open(tmp_path) as store:
        assert store.key_for("carol", "natkit", SHA256) == plain
        assert store.sealer is not None
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
        rows = conn.execute("SELECT algorithm, key, sealed FROM user_keys").fetchall()
    assert version == SCHEMA_VERSION == 2
    assert all(sealed == 1 for _, _, sealed in rows)
    for algorithm, value, _ in rows:
        kind = PasswordAlgorithm(algorithm)
        context = key_context("carol", "natkit", kind)
        expected = integrity.long_term_key("carol", "natkit", PASSWORD, kind)
        assert sealer.unseal(bytes(value), context=context) == expected
    for path in tmp_path.iterdir():  # the database and any WAL left behind
        assert plain not in path.read_bytes(), path


def test_new_users_are_sealed_and_a_swapped_key_does_not_unseal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enable_sealing(tmp_path, load_master_key(tmp_path, environ={}))
    with UserStore.open(tmp_path) as store:
        store.add_user("alice", "natkit", "alice-password-1", algorithms=(SHA256,))
        store.add_user("bob", "natkit", "bob-password-22", algorithms=(SHA256,))
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        rows = dict(
            conn.execute(
                "SELECT u.username, k.key FROM users u JOIN user_keys k"
                " ON k.user_id = u.id"
            ).fetchall()
        )
        # an attacker with write access gives bob alice's sealed key
        conn.execute(
            "UPDATE user_keys SET key = ? WHERE user_id ="
            " (SELECT id FROM users WHERE username = 'bob')",
            (rows["alice"],),
        )
    caplog.set_level(logging.WARNING, logger="natkit.server.store")
    with UserStore.open(tmp_path) as store:
        assert store.key_for("alice", "natkit", SHA256) is not None
        assert store.key_for("bob", "natkit", SHA256) is None
    assert "do not unseal" in caplog.text


def test_store_with_another_master_key_is_refused(tmp_path: Path) -> None:
    enable_sealing(tmp_path, load_master_key(tmp_path, environ={}))
    UserStore.open(tmp_path).close()
    (tmp_path / "master.key").unlink()
    write_private_file(tmp_path / "master.key", base64.b64encode(bytes(32)))
    with pytest.raises(Exception, match="was sealed with master key"):
        UserStore.open(tmp_path)


def test_sealed_keys_without_a_marker_are_refused(tmp_path: Path) -> None:
    enable_sealing(tmp_path, load_master_key(tmp_path, environ={}))
    with UserStore.open(tmp_path) as store:
        store.add_user("alice", "natkit", "alice-password-1")
    (tmp_path / MARKER_FILE).unlink()
    with pytest.raises(Exception, match="holds sealed keys"):
        UserStore.open(tmp_path)


# --- start-up refusals ----------------------------------------------------------


def _config(data_dir: Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "listen": ["udp:127.0.0.1:3478"],
        "data_dir": str(data_dir),
        "admin": False,
    }
    settings.update(overrides)
    return load_config(environ={}, overrides=settings)


@pytest.mark.parametrize(
    "name", ["master.key", "audit.key", REST_SECRETS_FILE, DB_FILE, "audit.checkpoint"]
)
def test_start_refuses_secret_files_open_to_others(tmp_path: Path, name: str) -> None:
    data_dir = tmp_path / "data"
    config = _config(data_dir, listen=["udp:127.0.0.1:1"], relay_ip=["127.0.0.1"])
    open_security(config).audit.close()
    UserStore.open(data_dir).close()
    add_rest_secret(data_dir)
    path = data_dir / name
    path.chmod(0o640)

    async def start() -> None:
        await serve(config)

    with pytest.raises(StartupError) as excinfo:
        asyncio.run(start())
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"chmod 600 {path}" in message, message


def test_start_refuses_a_placeholder_rest_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    write_private_file(
        data_dir / REST_SECRETS_FILE, format_rest_secrets([b"changemechangeme"])
    )
    config = _config(data_dir, relay_ip=["127.0.0.1"])

    async def start() -> None:
        await serve(config)

    with pytest.raises(StartupError, match="weak .*placeholder"):
        asyncio.run(start())


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (b"short", "shorter than 16"),
        (b"changemechangeme", "placeholder"),
        (b"Secret-Secret-Secret", "placeholder"),
        (b"PASSWORDPASSWORD", "placeholder"),
        (b"x" * 20, "one character"),
        (b"2a7Rc9-long-and-random-ish", None),
    ],
)
def test_weak_secrets(secret: bytes, reason: str | None) -> None:
    found = weak_secret_reason(secret)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_config_refuses_a_weak_auth_secret() -> None:
    with pytest.raises(ConfigError, match="auth_secret = .*weak REST secret"):
        load_config(environ={}, overrides={"auth_secret": "changemechangeme"})


def test_config_master_key_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="master_key_file .* file not found"):
        load_config(environ={}, overrides={"master_key_file": str(tmp_path / "x")})


def test_server_seals_the_data_directory(tmp_path: Path) -> None:
    """open_security: master key kept apart, marker written, secrets sealed."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key_file = keys / "master.key"
    write_private_file(key_file, base64.b64encode(bytes(range(32))))
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    add_rest_secret(data_dir, b"k" * 10 + b"-plain-before")
    config = _config(data_dir, master_key_file=str(key_file))
    security = open_security(config)
    security.audit.close()
    assert not (data_dir / "master.key").exists()
    assert "sealed:" in (data_dir / REST_SECRETS_FILE).read_text()
    assert security.sealer.key_id == read_key_file(key_file).key_id
    sealer = data_dir_sealer(data_dir, environ={})
    assert sealer is not None and sealer.master.path == key_file.absolute()
