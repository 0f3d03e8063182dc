"""Private files and the REST secrets file: generation, permissions, rotation."""

import base64
import hashlib
import logging
import stat
from pathlib import Path

import pytest

from natkit.security.secrets import (
    GENERATED_SECRET_BYTES,
    REST_SECRETS_FILE,
    PrivateFileError,
    RestSecretError,
    add_rest_secret,
    check_private_file,
    create_private_file,
    ensure_rest_secrets,
    load_or_create_rest_secret,
    parse_rest_secrets,
    read_rest_secrets,
    retire_rest_secret,
    secret_fingerprint,
    write_private_file,
)
from natkit.stun.errors import UsageError

LOGGER = "natkit.security.secrets"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- private files -----------------------------------------------------------


def test_write_private_file_is_0600_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_private_file(path, b"one")
    assert mode(path) == 0o600
    write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temp left


def test_write_private_file_tightens_a_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert mode(path) == 0o600


def test_create_private_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert create_private_file(path, b"first")
    assert not create_private_file(path, b"second")
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize(
    ("file_mode", "word"),
    [
        (0o644, "readable"),
        (0o640, "readable"),
        (0o604, "readable"),
        (0o620, "writable"),
    ],
)
def test_check_private_file_refuses_open_modes(
    tmp_path: Path, file_mode: int, word: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    path.chmod(file_mode)
    with pytest.raises(PrivateFileError) as info:
        check_private_file(path)
    assert word in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


def test_check_private_file_accepts_0600_and_0400(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    for ok in (0o600, 0o400):
        path.chmod(ok)
        check_private_file(path)


def test_check_private_file_other_problems(tmp_path: Path) -> None:
    with pytest.raises(PrivateFileError, match="does not exist"):
        check_private_file(tmp_path / "missing")
    with pytest.raises(PrivateFileError, match="not a regular file"):
        check_private_file(tmp_path)


# --- the REST secrets file ---------------------------------------------------


def test_first_use_generates_once_and_logs_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    data_dir = tmp_path / "natkit-data"

    first = load_or_create_rest_secret(data_dir)
    path = data_dir / REST_SECRETS_FILE
    assert len(first) == 1 and len(first[0]) == GENERATED_SECRET_BYTES
    assert mode(path) == 0o600
    assert mode(data_dir) == 0o700
    generated = [
        r for r in caplog.records if r.name == LOGGER and "generated" in r.getMessage()
    ]
    assert len(generated) == 1
    assert str(path) in generated[0].getMessage()
    assert secret_fingerprint(first[0]) in generated[0].getMessage()
    for record in caplog.records:
        text = record.getMessage()
        assert base64.b64encode(first[0]).decode() not in text
        assert first[0].hex() not in text

    caplog.clear()
    assert load_or_create_rest_secret(data_dir) == first
    assert not [r for r in caplog.records if "generated" in r.getMessage()]
    assert not ensure_rest_secrets(data_dir).generated


def test_file_format_is_base64_lines_newest_first(tmp_path: Path) -> None:
    old, new = b"o" * 32, b"n" * 32
    add_rest_secret(tmp_path, old)
    add_rest_secret(tmp_path, new)
    text = (tmp_path / REST_SECRETS_FILE).read_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [base64.b64encode(new).decode(), base64.b64encode(old).decode()]
    assert read_rest_secrets(tmp_path) == [new, old]


def test_hand_written_file_with_comments(tmp_path: Path) -> None:
    secret = b"s" * 20
    path = tmp_path / REST_SECRETS_FILE
    path.write_text(f"# mine\n\n  {base64.b64encode(secret).decode()}  \n")
    path.chmod(0o600)
    assert load_or_create_rest_secret(tmp_path) == [secret]


def test_refuses_group_or_world_readable_file(tmp_path: Path) -> None:
    load_or_create_rest_secret(tmp_path)
    path = tmp_path / REST_SECRETS_FILE
    path.chmod(0o644)
    with pytest.raises(PrivateFileError, match=f"chmod 600 {path}"):
        load_or_create_rest_secret(tmp_path)
    path.chmod(0o640)
    with pytest.raises(PrivateFileError, match="readable by other users"):
        read_rest_secrets(tmp_path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not base64!\n", "line 1: not base64"),
        (
            "# c\n" + base64.b64encode(b"short").decode() + "\n",
            "line 2: secret shorter",
        ),
        (
            (base64.b64encode(b"d" * 16).decode() + "\n") * 2,
            "line 2: duplicate",
        ),
    ],
)
def test_malformed_file_names_the_line(text: str, reason: str) -> None:
    with pytest.raises(PrivateFileError, match=reason):
        parse_rest_secrets(text)


def test_empty_file_is_an_error_not_regenerated(tmp_path: Path) -> None:
    path = tmp_path / REST_SECRETS_FILE
    write_private_file(path, b"# nothing here\n")
    with pytest.raises(PrivateFileError, match="holds no secret"):
        load_or_create_rest_secret(tmp_path)
    assert path.read_bytes() == b"# nothing here\n"


def test_rotation(tmp_path: Path) -> None:
    first = load_or_create_rest_secret(tmp_path)[0]
    second = add_rest_secret(tmp_path)
    third = add_rest_secret(tmp_path, b"t" * 16)
    assert read_rest_secrets(tmp_path) == [third, second, first]

    # by default the oldest goes; by fingerprint (or a prefix of it) any one
    assert retire_rest_secret(tmp_path) == first
    assert retire_rest_secret(tmp_path, secret_fingerprint(third)[:5]) == third
    assert read_rest_secrets(tmp_path) == [second]
    assert mode(tmp_path / REST_SECRETS_FILE) == 0o600

    with pytest.raises(RestSecretError, match="only secret"):
        retire_rest_secret(tmp_path)
    with pytest.raises(RestSecretError, match="no secret with fingerprint"):
        other = "f" if secret_fingerprint(second).startswith("0") else "0"
        retire_rest_secret(tmp_path, other * 8)
    with pytest.raises(UsageError, match="hex"):
        retire_rest_secret(tmp_path, "xyz")
    with pytest.raises(RestSecretError, match="already"):
        add_rest_secret(tmp_path, second)
    with pytest.raises(UsageError, match="at least 16 bytes"):
        add_rest_secret(tmp_path, b"short")
    assert read_rest_secrets(tmp_path) == [second]


def test_add_to_a_missing_file_creates_it(tmp_path: Path) -> None:
    secret = add_rest_secret(tmp_path / "new")
    assert read_rest_secrets(tmp_path / "new") == [secret]


def test_fingerprint_is_sha256_prefix() -> None:
    secret = b"k" * 32
    assert secret_fingerprint(secret) == hashlib.sha256(secret).hexdigest()[:8]
