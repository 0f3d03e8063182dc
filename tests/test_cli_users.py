"""``natkit users add|list|remove``: CliRunner, and once each as a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import natkit
from natkit import cli
from natkit.server.store import DB_FILE, UserStore
from natkit.stun import integrity
from natkit.stun.constants import PasswordAlgorithm

SRC = str(Path(natkit.__file__).resolve().parent.parent)
COMMAND = [sys.executable, "-c", "from natkit.cli import main; main()"]
TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def _no_natkit_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NATKIT_"):
            monkeypatch.delenv(name)


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=input, prog_name="natkit")


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_natkit(
    *args: str, cwd: Path, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        env=subprocess_env(),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("natkit: error: ")
    assert "Traceback" not in result.output
    return lines[0]


# --- add ---------------------------------------------------------------------


def test_add_with_password_stores_derived_keys(tmp_path: Path) -> None:
    result = run(
        "users", "add", "alice", "--password", "pw1", "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert "alice" in result.stdout and "natkit" in result.stdout

    with UserStore.open(tmp_path) as store:
        for algorithm in PasswordAlgorithm:
            expected = integrity.long_term_key("alice", "natkit", "pw1", algorithm)
            assert store.key_for("alice", "natkit", algorithm) == expected


def test_add_password_stdin_realm_and_algorithm(tmp_path: Path) -> None:
    result = run(
        "users",
        "add",
        "bob",
        "--password-stdin",
        "--realm",
        "example.org",
        "--algorithm",
        "sha256",
        "--data-dir",
        str(tmp_path),
        input="from stdin\n",
    )
    assert result.exit_code == 0, result.output
    with UserStore.open(tmp_path) as store:
        key = store.key_for("bob", "example.org", PasswordAlgorithm.SHA256)
        assert key == integrity.long_term_key(
            "bob", "example.org", "from stdin", PasswordAlgorithm.SHA256
        )
        assert store.key_for("bob", "example.org", PasswordAlgorithm.MD5) is None


def test_add_prompts_twice_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.users, "_stdin_is_tty", lambda: True)
    result = run(
        "users", "add", "carol", "--data-dir", str(tmp_path), input="s3cret\ns3cret\n"
    )
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    with UserStore.open(tmp_path) as store:
        key = store.key_for("carol", "natkit", PasswordAlgorithm.MD5)
    assert key == integrity.long_term_key("carol", "natkit", "s3cret")


def test_add_without_password_off_a_terminal_is_a_usage_error(tmp_path: Path) -> None:
    result = run("users", "add", "dave", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--password-stdin" in one_error_line(result)
    assert not (tmp_path / DB_FILE).exists()


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["--password", ""], None, "must not be empty"),
        (["--password-stdin"], "\n", "must not be empty"),
        (["--password", "a", "--password-stdin"], "b", "not both"),
        (["--password", "bell\x07"], None, "U+0007"),
        (["--algorithm", "sha1", "--password", "x"], None, "--algorithm"),
        (["--realm", "", "--password", "x"], None, "realm"),
    ],
)
def test_add_usage_errors(
    tmp_path: Path, args: list[str], stdin: str | None, words: str
) -> None:
    result = run(
        "users", "add", "erin", *args, "--data-dir", str(tmp_path), input=stdin
    )
    assert result.exit_code == 2, result.output
    assert words in one_error_line(result)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("a\x01b", "U+0001"),
        ("1700000000:bob", "REST"),
        ("x" * 509, "508"),
    ],
)
def test_add_bad_names(tmp_path: Path, name: str, words: str) -> None:
    result = run("users", "add", name, "--password", "pw", "--data-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert words in one_error_line(result)


def test_add_twice_needs_replace(tmp_path: Path) -> None:
    base = ["users", "add", "alice", "--data-dir", str(tmp_path)]
    assert run(*base, "--password", "one").exit_code == 0
    result = run(*base, "--password", "two")
    assert result.exit_code == 1
    assert "already exists" in one_error_line(result)
    assert run(*base, "--password", "two", "--replace").exit_code == 0
    with UserStore.open(tmp_path) as store:
        key = store.key_for("alice", "natkit", PasswordAlgorithm.SHA256)
    assert key == integrity.long_term_key(
        "alice", "natkit", "two", PasswordAlgorithm.SHA256
    )


def test_missing_argument_is_one_line(tmp_path: Path) -> None:
    result = run("users", "add", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "missing argument 'NAME'" in line
    assert "natkit users add --help" in line


def test_realm_from_the_server_config(tmp_path: Path) -> None:
    """The realm default follows the config model when it has a realm key."""
    from natkit.server.config import ServerConfig

    if "realm" not in ServerConfig.model_fields:
        pytest.skip("natkit.server.config has no realm key yet")
    config = tmp_path / "natkit.toml"
    config.write_text(f'realm = "config.example"\ndata_dir = "{tmp_path / "d"}"\n')
    result = run("users", "add", "alice", "--password", "pw", "--config", str(config))
    assert result.exit_code == 0, result.output
    with UserStore.open(tmp_path / "d") as store:
        assert [r.realm for r in store.list_users()] == ["config.example"]


def test_data_dir_from_the_server_config(tmp_path: Path) -> None:
    config = tmp_path / "natkit.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-config"}"\n')
    result = run("users", "add", "alice", "--password", "pw", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-config" / DB_FILE).exists()


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    result = run("users", "list", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2
    assert "file not found" in one_error_line(result)


# --- list --------------------------------------------------------------------


def test_list_human_and_json(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    run("users", "add", "alice", "--password", "a", *data)
    run("users", "add", "bob", "--password", "b", "--realm", "ex.org", *data)
    run("users", "add", "carol", "--password", "c", "--algorithm", "sha256", *data)

    result = run("users", "list", *data)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "REALM", "ALGORITHMS", "CREATED"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["bob", "ex.org", "md5,sha256"],
        ["alice", "natkit", "md5,sha256"],
        ["carol", "natkit", "sha256"],
    ]

    result = run("users", "list", "--realm", "natkit", "--json", *data)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["username"] for row in rows] == ["alice", "carol"]
    assert rows[1]["algorithms"] == ["sha256"]
    assert rows[0]["realm"] == "natkit"
    assert rows[0]["created_at"].endswith("Z")
    assert set(rows[0]) == {"username", "realm", "algorithms", "created_at"}


def test_list_of_a_new_data_dir_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    result = run("users", "list", "--json", "--data-dir", str(missing))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert not missing.exists()
    result = run("users", "list", "--data-dir", str(missing))
    assert result.exit_code == 0 and result.stdout == ""
    assert "no users" in result.stderr


def test_list_refuses_a_store_open_to_others(tmp_path: Path) -> None:
    run("users", "add", "alice", "--password", "a", "--data-dir", str(tmp_path))
    (tmp_path / DB_FILE).chmod(0o644)
    result = run("users", "list", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "chmod 600" in one_error_line(result)


# --- remove ------------------------------------------------------------------


def test_remove(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    run("users", "add", "alice", "--password", "a", *data)
    result = run("users", "remove", "alice", "--realm", "other", *data)
    assert result.exit_code == 1
    assert "no user 'alice' in realm 'other'" in one_error_line(result)

    result = run("users", "remove", "alice", *data)
    assert result.exit_code == 0, result.output
    with UserStore.open(tmp_path) as store:
        assert store.list_users() == []

    result = run("users", "remove", "alice", *data)
    assert result.exit_code == 1
    assert "no user 'alice'" in one_error_line(result)


def test_remove_without_a_store(tmp_path: Path) -> None:
    result = run("users", "remove", "alice", "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert "no user" in one_error_line(result)
    assert not (tmp_path / "none").exists()


# --- help ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["add", "list", "remove"])
def test_help_has_an_example(command: str) -> None:
    result = run("users", command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert f"natkit users {command}" in result.stdout


def test_unknown_subcommand_is_one_line() -> None:
    result = run("users", "frobnicate")
    assert result.exit_code == 2
    assert "frobnicate" in one_error_line(result)


# --- as a real process -------------------------------------------------------


def test_subprocess_add(tmp_path: Path) -> None:
    proc = run_natkit(
        "users", "add", "alice", "--password-stdin", cwd=tmp_path, input="pw\n"
    )
    assert proc.returncode == 0, proc.stderr
    # default data directory: ./natkit-data
    with UserStore.open(tmp_path / "natkit-data") as store:
        assert store.key_for("alice", "natkit", PasswordAlgorithm.MD5) is not None


def test_subprocess_list(tmp_path: Path) -> None:
    with UserStore.open(tmp_path / "natkit-data") as store:
        store.add_user("alice", "natkit", "pw")
    proc = run_natkit("users", "list", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [row["username"] for row in json.loads(proc.stdout)] == ["alice"]


def test_subprocess_remove_absent_user(tmp_path: Path) -> None:
    UserStore.open(tmp_path / "natkit-data").close()
    proc = run_natkit("users", "remove", "ghost", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "natkit: error: no user 'ghost' in realm 'natkit'"
    ]


def test_subprocess_usage_error_has_no_traceback(tmp_path: Path) -> None:
    proc = run_natkit("users", "add", "bad\tname", "--password", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("natkit: error: ")


def test_add_notes_a_disabled_user_store(tmp_path: Path) -> None:
    config = tmp_path / "natkit.toml"
    config.write_text(f'user_store = false\ndata_dir = "{tmp_path / "d"}"\n')
    result = run("users", "add", "alice", "--password", "pw", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "user_store = false" in result.stderr
