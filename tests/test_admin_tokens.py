"""Admin API tokens at rest (natkit.server.tokens): hashed, sealed, shown once."""

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from natkit.security.sealing import Sealer, enable_sealing, load_master_key
from natkit.server.tokens import (
    INITIAL_TOKEN_FILE,
    TOKENS_FILE,
    Role,
    TokenError,
    TokenStore,
    ensure_initial_token,
    new_token,
    parse_token,
    read_token_file,
    token_id_of,
)
from natkit.stun.errors import UsageError


@pytest.fixture
def sealer(tmp_path: Path) -> Sealer:
    master = load_master_key(tmp_path, environ={})
    return enable_sealing(tmp_path, master)


def test_token_shape() -> None:
    token_id, token, digest = new_token()
    assert token == f"natkit.{token_id}.{token.rsplit('.', 1)[1]}"
    parsed = parse_token(token)
    assert parsed is not None and parsed[0] == token_id and len(parsed[1]) == 32
    assert hashlib.sha256(parsed[1]).digest() == digest
    assert token_id_of(token) == token_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "natkit",
        "natkit.1234567.AAAA",
        "natkit.zzzzzzzz." + "A" * 43,
        "other.00000000." + "A" * 43,
        "natkit.00000000." + "A" * 42,
        "natkit.00000000." + "*" * 43,
        "natkit.00000000." + "é" * 43,
    ],
)
def test_malformed_tokens_do_not_parse(text: str) -> None:
    assert parse_token(text) is None


def test_create_verify_revoke(tmp_path: Path) -> None:
    store = TokenStore.open(tmp_path)
    assert not store.exists() and len(store) == 0
    admin = store.create("root", Role.ADMIN)
    ops = store.create("ops", "operator")
    assert store.verify(admin.token) == admin.record
    assert store.verify(ops.token) == ops.record
    assert [r.token_id for r in store.records()] == [
        admin.record.token_id,
        ops.record.token_id,
    ]
    assert store.revoke(ops.record.token_id) == ops.record
    assert store.verify(ops.token) is None
    assert store.revoke(ops.record.token_id) is None
    assert admin.token not in repr(admin)


def test_wrong_secrets_are_refused(tmp_path: Path) -> None:
    store = TokenStore.open(tmp_path)
    issued = store.create("root", Role.ADMIN)
    other = store.create("other", Role.AUDITOR)
    token_id = issued.record.token_id
    # another token's secret under this id
    swapped = f"natkit.{token_id}.{other.token.rsplit('.', 1)[1]}"
    assert store.verify(swapped) is None
    # an unknown id, a malformed token
    assert store.verify("natkit.00000000." + "A" * 43) is None
    assert store.verify("garbage") is None


def test_the_last_admin_stays(tmp_path: Path) -> None:
    store = TokenStore.open(tmp_path)
    admin = store.create("root", Role.ADMIN)
    with pytest.raises(TokenError, match="last admin token"):
        store.revoke(admin.record.token_id)
    second = store.create("root2", Role.ADMIN)
    assert store.revoke(admin.record.token_id) is not None
    assert store.verify(second.token) is not None


@pytest.mark.parametrize("name", ["", "a b", "-x", "x" * 65, "naïve"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="token name"):
        TokenStore.open(tmp_path).create(name, Role.AUDITOR)


def test_bad_role(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="expected one of admin, operator, auditor"):
        TokenStore.open(tmp_path).create("x", "root")


def test_hashed_at_rest(tmp_path: Path) -> None:
    store = TokenStore.open(tmp_path)
    issued = store.create("root", Role.ADMIN)
    data = (tmp_path / TOKENS_FILE).read_bytes()
    secret_text = issued.token.rsplit(".", 1)[1]
    secret = base64.urlsafe_b64decode(secret_text + "=")
    assert issued.token.encode() not in data
    assert secret_text.encode() not in data
    assert secret not in data and secret.hex().encode() not in data
    row = json.loads(data)["tokens"][0]
    assert row["sha256"] == hashlib.sha256(secret).hexdigest()
    assert os.stat(tmp_path / TOKENS_FILE).st_mode & 0o777 == 0o600


def test_sealed_at_rest(tmp_path: Path, sealer: Sealer) -> None:
    store = TokenStore.open(tmp_path, sealer=sealer)
    issued = store.create("root", Role.ADMIN)
    data = (tmp_path / TOKENS_FILE).read_bytes()
    secret = base64.urlsafe_b64decode(issued.token.rsplit(".", 1)[1] + "=")
    assert hashlib.sha256(secret).hexdigest().encode() not in data
    row = json.loads(data)["tokens"][0]
    assert "sha256" not in row and row["sealed_sha256"]

    # another process with the key verifies; one without cannot read it
    assert TokenStore.open(tmp_path, sealer=sealer).verify(issued.token) is not None
    with pytest.raises(TokenError, match="no master key"):
        TokenStore.open(tmp_path)


def test_sealed_digests_cannot_be_swapped(tmp_path: Path, sealer: Sealer) -> None:
    store = TokenStore.open(tmp_path, sealer=sealer)
    store.create("a", Role.ADMIN)
    store.create("b", Role.AUDITOR)
    path = tmp_path / TOKENS_FILE
    document = json.loads(path.read_bytes())
    rows = document["tokens"]
    rows[0]["sealed_sha256"], rows[1]["sealed_sha256"] = (
        rows[1]["sealed_sha256"],
        rows[0]["sealed_sha256"],
    )
    path.write_text(json.dumps(document))
    with pytest.raises(TokenError, match="cannot unseal"):
        TokenStore.open(tmp_path, sealer=sealer)


def test_plain_digests_are_sealed_on_open(tmp_path: Path, sealer: Sealer) -> None:
    issued = TokenStore.open(tmp_path).create("root", Role.ADMIN)
    assert b'"sha256"' in (tmp_path / TOKENS_FILE).read_bytes()
    store = TokenStore.open(tmp_path, sealer=sealer)
    assert b'"sha256"' not in (tmp_path / TOKENS_FILE).read_bytes()
    assert store.verify(issued.token) == issued.record


def test_sealer_of_another_key_is_refused(tmp_path: Path, sealer: Sealer) -> None:
    TokenStore.open(tmp_path, sealer=sealer).create("root", Role.ADMIN)
    other_dir = tmp_path / "other"
    other = enable_sealing(other_dir, load_master_key(other_dir, environ={}))
    with pytest.raises(TokenError, match="master key"):
        TokenStore.open(tmp_path, sealer=other)


def test_changes_on_disk_are_seen(tmp_path: Path) -> None:
    store = TokenStore.open(tmp_path)
    root = store.create("root", Role.ADMIN)
    ops = store.create("ops", Role.OPERATOR)
    other = TokenStore.open(tmp_path)
    other.revoke(ops.record.token_id)
    assert store.verify(ops.token) is None
    assert store.verify(root.token) is not None
    (tmp_path / TOKENS_FILE).unlink()
    assert store.verify(root.token) is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "not valid JSON"),
        (b'{"format": "x"}', "not a natkit admin token file"),
        (b'{"format": "natkit-admin-tokens", "version": 9}', "version 9"),
        (
            b'{"format": "natkit-admin-tokens", "version": 1, "tokens": [{"id": 1}]}',
            "token 0",
        ),
    ],
)
def test_broken_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(TokenError, match=problem):
        TokenStore.open(tmp_path)


def test_a_file_open_to_others_is_refused(tmp_path: Path) -> None:
    TokenStore.open(tmp_path).create("root", Role.ADMIN)
    (tmp_path / TOKENS_FILE).chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        TokenStore.open(tmp_path)


def test_initial_token_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    store = TokenStore.open(tmp_path)
    path = ensure_initial_token(store)
    assert path == tmp_path / INITIAL_TOKEN_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    token = read_token_file(path)
    record = store.verify(token)
    assert record is not None and record.role is Role.ADMIN
    assert str(path) in caplog.text and token not in caplog.text
    secret_text = token.rsplit(".", 1)[1]
    assert secret_text not in caplog.text

    # a second start leaves everything as it is
    caplog.clear()
    assert ensure_initial_token(TokenStore.open(tmp_path)) is None
    assert read_token_file(path) == token
    assert "generated" not in caplog.text


def test_read_token_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="file not found"):
        read_token_file(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.write_text("\n\n")
    with pytest.raises(TokenError, match="is empty"):
        read_token_file(empty)
