"""``natkit credentials`` and ``natkit secrets``: minted credentials verify."""

import datetime
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import natkit
from natkit import cli
from natkit.security.secrets import (
    REST_SECRETS_FILE,
    add_rest_secret,
    load_or_create_rest_secret,
    read_rest_secrets,
    secret_fingerprint,
)
from natkit.stun import integrity
from natkit.stun.constants import PasswordAlgorithm
from natkit.turn.credentials import RestHmac, RestSecretKeys, verify_password

SRC = str(Path(natkit.__file__).resolve().parent.parent)
COMMAND = [sys.executable, "-c", "from natkit.cli import main; main()"]
TIMEOUT = 20.0
REALM = "natkit"


@pytest.fixture(autouse=True)
def _no_natkit_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NATKIT_"):
            monkeypatch.delenv(name)


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=input, prog_name="natkit")


def mint_json(*args: str) -> dict[str, object]:
    result = run("credentials", *args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("natkit: error: ")
    return lines[0]


def accepted(
    username: str,
    password: str,
    secrets: list[bytes],
    now: float,
    hmac_algorithm: RestHmac = RestHmac.SHA1,
) -> bool:
    """What the server does: RestSecretKeys keys vs the client's own key."""
    keys = RestSecretKeys(secrets, clock=lambda: now, hmac_algorithm=hmac_algorithm)
    client_key = integrity.long_term_key(
        username, REALM, password, PasswordAlgorithm.SHA256
    )
    return client_key in keys.keys_for(username, REALM, PasswordAlgorithm.SHA256)


# --- minting -----------------------------------------------------------------


def test_minted_password_is_accepted_until_expiry(tmp_path: Path) -> None:
    before = time.time()
    data = mint_json("alice", "--ttl", "10m", "--data-dir", str(tmp_path))
    secrets = read_rest_secrets(tmp_path)

    username, password = str(data["username"]), str(data["password"])
    expires, user = username.split(":", 1)
    assert user == "alice"
    assert int(before) + 600 <= int(expires) <= int(time.time()) + 600
    assert data["ttl"] == 600
    moment = datetime.datetime.fromtimestamp(int(expires), datetime.UTC)
    assert data["expires_at"] == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert set(data) == {"username", "password", "ttl", "expires_at"}

    now = int(expires) - 1
    assert accepted(username, password, secrets, now)
    assert verify_password(username, password, secrets, now)
    # an injected clock past the expiry refuses it
    assert not accepted(username, password, secrets, int(expires))
    assert not verify_password(username, password, secrets, int(expires) + 1)
    # another secret refuses it
    assert not accepted(username, password, [b"x" * 32], now)


def test_secret_option_is_text_like_coturn(tmp_path: Path) -> None:
    data = mint_json("bob", "--secret", "north-pole-secret")
    username, password = str(data["username"]), str(data["password"])
    now = time.time()
    assert verify_password(username, password, [b"north-pole-secret"], now)
    assert accepted(username, password, [b"north-pole-secret"], now)


def test_sha256_variant(tmp_path: Path) -> None:
    data = mint_json("carol", "--sha256", "--secret", "s" * 20)
    username, password = str(data["username"]), str(data["password"])
    now = time.time()
    assert accepted(username, password, [b"s" * 20], now, RestHmac.SHA256)
    assert not accepted(username, password, [b"s" * 20], now, RestHmac.SHA1)


def test_uses_the_newest_secret(tmp_path: Path) -> None:
    old = load_or_create_rest_secret(tmp_path)[0]
    new = add_rest_secret(tmp_path)
    data = mint_json("dave", "--data-dir", str(tmp_path))
    username, password = str(data["username"]), str(data["password"])
    now = time.time()
    assert verify_password(username, password, [new], now)
    assert not verify_password(username, password, [old], now)
    # the server, holding both, accepts it
    assert accepted(username, password, [new, old], now)


def test_human_output(tmp_path: Path) -> None:
    result = run("credentials", "alice", "--secret", "s" * 16)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("username  ") and lines[0].endswith(":alice")
    assert lines[1].startswith("password  ")
    assert lines[2].startswith("expires   ")


def test_first_use_generates_the_secret_and_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "natkit-data"
    result = run("credentials", "alice", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    path = data_dir / REST_SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = read_rest_secrets(data_dir)[0]
    assert f"generated REST secret {secret_fingerprint(secret)}" in result.stderr
    assert secret.hex() not in result.output

    again = run("credentials", "alice", "--data-dir", str(data_dir))
    assert again.exit_code == 0
    assert "generated" not in again.stderr
    assert read_rest_secrets(data_dir) == [secret]


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("2d", 172800),
        ("90", 90),
        ("7d", 604800),
    ],
)
def test_ttl_forms(ttl: str, seconds: int) -> None:
    assert mint_json("a", "--ttl", ttl, "--secret", "k" * 16)["ttl"] == seconds


@pytest.mark.parametrize(
    ("ttl", "words"),
    [
        ("0", "1s to 7d"),
        ("8d", "1s to 7d"),
        ("604801", "1s to 7d"),
        ("5x", "expected a duration"),
        ("1h30m", "expected a duration"),
        ("-5", "expected a duration"),
        ("", "expected a duration"),
    ],
)
def test_bad_ttl_is_a_usage_error(ttl: str, words: str) -> None:
    result = run("credentials", "a", "--ttl", ttl, "--secret", "k" * 16)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "--ttl" in line and words in line


def test_secret_and_data_dir_exclude_each_other(tmp_path: Path) -> None:
    result = run("credentials", "a", "--secret", "k", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "not both" in one_error_line(result)


def test_bad_user_is_a_usage_error() -> None:
    result = run("credentials", "a\x01", "--secret", "k" * 16)
    assert result.exit_code == 2
    assert "U+0001" in one_error_line(result)
    result = run("credentials", "x" * 600, "--secret", "k" * 16)
    assert result.exit_code == 2
    assert "508 bytes" in one_error_line(result)


def test_secrets_file_open_to_others_is_refused(tmp_path: Path) -> None:
    load_or_create_rest_secret(tmp_path)
    path = tmp_path / REST_SECRETS_FILE
    path.chmod(0o644)
    result = run("credentials", "a", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert f"run: chmod 600 {path}" in one_error_line(result)


def test_help_has_an_example() -> None:
    result = run("credentials", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "natkit credentials alice" in result.stdout


# --- secrets -------------------------------------------------------------------


def test_secrets_rotation_commands(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    result = run("secrets", "list", *data)
    assert result.exit_code == 1
    assert "no REST secrets" in one_error_line(result)

    first = load_or_create_rest_secret(tmp_path)[0]
    result = run("secrets", "add", *data)
    assert result.exit_code == 0, result.output
    second = read_rest_secrets(tmp_path)[0]
    assert secret_fingerprint(second) in result.stdout

    result = run("secrets", "list", "--json", *data)
    assert json.loads(result.stdout) == [
        {"fingerprint": secret_fingerprint(second), "mints": True},
        {"fingerprint": secret_fingerprint(first), "mints": False},
    ]
    listing = run("secrets", "list", *data).stdout
    assert listing.splitlines()[0].startswith(secret_fingerprint(second))
    for secret in (first, second):
        assert secret.hex() not in listing

    result = run("secrets", "retire", secret_fingerprint(first), *data)
    assert result.exit_code == 0, result.output
    assert read_rest_secrets(tmp_path) == [second]

    result = run("secrets", "retire", "--oldest", *data)
    assert result.exit_code == 1
    assert "only secret" in one_error_line(result)
    result = run("secrets", "retire", *data)
    assert result.exit_code == 2
    assert "FINGERPRINT or --oldest" in one_error_line(result)


def test_secrets_add_from_stdin(tmp_path: Path) -> None:
    text = "a shared secret from the web service"
    result = run("secrets", "add", "--stdin", "--data-dir", str(tmp_path), input=text)
    assert result.exit_code == 0, result.output
    assert read_rest_secrets(tmp_path) == [text.encode()]

    # credentials minted from the file verify with the same text secret
    data = mint_json("alice", "--data-dir", str(tmp_path))
    assert verify_password(
        str(data["username"]), str(data["password"]), [text], time.time()
    )

    result = run("secrets", "add", "--stdin", "--data-dir", str(tmp_path), input="x")
    assert result.exit_code == 2
    assert "at least 16 bytes" in one_error_line(result)


@pytest.mark.parametrize("command", ["add", "list", "retire"])
def test_secrets_help_has_an_example(command: str) -> None:
    result = run("secrets", command, "--help")
    assert result.exit_code == 0
    assert f"natkit secrets {command}" in result.stdout


# --- as a real process -------------------------------------------------------


def test_subprocess_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [*COMMAND, "credentials", "alice", "--ttl", "1h", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    secrets = read_rest_secrets(tmp_path / "natkit-data")
    assert "generated REST secret" in proc.stderr
    assert accepted(data["username"], data["password"], secrets, time.time())

    bad = subprocess.run(
        [*COMMAND, "credentials", "alice", "--ttl", "forever"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("natkit: error: ")


# --- the server's secret, from its config ----------------------------------


def test_config_auth_secret_is_used(tmp_path: Path) -> None:
    config = tmp_path / "natkit.toml"
    config.write_text(
        f'auth_secret = "configured-secret-0123456789"\ndata_dir = "{tmp_path / "d"}"\n'
    )
    data = mint_json("alice", "--config", str(config))
    secret = b"configured-secret-0123456789"
    assert accepted(str(data["username"]), str(data["password"]), [secret], time.time())
    assert not (tmp_path / "d" / REST_SECRETS_FILE).exists()


def test_config_auth_secret_file_is_used(tmp_path: Path) -> None:
    source = tmp_path / "other"
    first = add_rest_secret(source)
    config = tmp_path / "natkit.toml"
    config.write_text(f'auth_secret_file = "{source / REST_SECRETS_FILE}"\n')
    data = mint_json("alice", "--config", str(config))
    assert accepted(str(data["username"]), str(data["password"]), [first], time.time())


def test_config_with_secret_option_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "natkit.toml"
    config.write_text("")
    result = run("credentials", "a", "--secret", "k" * 16, "--config", str(config))
    assert result.exit_code == 2
    assert "not both" in one_error_line(result)
