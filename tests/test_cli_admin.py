"""``natkit admin``: the CLI against the admin API of a live server.

The server runs in a thread (test_admin_api.ServerThread); the CLI runs in
click's CliRunner and finds the token and the certificate in the server's
data directory, as an operator on the same host would.
"""

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from natkit import cli
from natkit.net.turn_client import TurnClient, TurnRequestError
from natkit.server.config import ServerConfig
from natkit.stun.constants import ErrorCode
from test_admin_api import PASSWORD, USER, ServerThread, make_config


@pytest.fixture(autouse=True)
def _no_natkit_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NATKIT_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = make_config(tmp_path_factory.mktemp("cli-admin") / "data")
    with ServerThread(config) as running:
        yield running


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), input=input, prog_name="natkit")


def admin(config: ServerConfig, *args: str, input: str | None = None) -> Result:
    """``natkit admin --data-dir D --url URL ARGS``."""
    return run(
        "admin",
        "--data-dir",
        str(config.data_dir),
        "--url",
        f"https://{config.admin_listen}",
        *args,
        input=input,
    )


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("natkit: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_help() -> None:
    result = run("admin", "--help")
    assert result.exit_code == 0
    assert "natkit admin stats" in result.output


def test_stats_table_and_json(server: ServerThread) -> None:
    table = admin(server.config, "stats")
    assert table.exit_code == 0, table.output
    assert "turn.allocations 0" in table.stdout
    data = json.loads(admin(server.config, "stats", "--json").stdout)
    assert set(data) == {"stun", "streams", "turn"}


def test_health_inventory_metrics(server: ServerThread) -> None:
    health = admin(server.config, "health")
    assert health.exit_code == 0 and health.stdout.startswith("ready: udp:")
    inventory = admin(server.config, "inventory", "--json")
    assert json.loads(inventory.stdout)["name"] == "natkit"
    metrics = admin(server.config, "metrics")
    assert metrics.exit_code == 0 and "natkit_info" in metrics.stdout


def test_users_add_list_remove(server: ServerThread) -> None:
    added = admin(
        server.config, "users", "add", "dave", "--password-stdin", input="pw\n"
    )
    assert added.exit_code == 0, added.output
    assert "added user 'dave'" in added.stdout
    listed = json.loads(admin(server.config, "users", "list", "--json").stdout)
    assert [u["username"] for u in listed] == ["dave"]
    table = admin(server.config, "users", "list")
    assert table.stdout.splitlines()[0].split() == [
        "USERNAME",
        "REALM",
        "ALGORITHMS",
        "CREATED",
    ]
    assert admin(server.config, "users", "remove", "dave").exit_code == 0
    missing = admin(server.config, "users", "remove", "dave")
    assert missing.exit_code == 1
    assert one_error_line(missing).startswith("natkit: error: 404 no user 'dave'")


def test_tokens_and_an_auditor_refused(server: ServerThread, tmp_path: Path) -> None:
    created = admin(
        server.config, "tokens", "create", "--role", "auditor", "--name", "ci"
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("natkit.") and "\n" not in token
    assert "not shown again" in created.stderr
    listed = admin(server.config, "tokens", "list")
    assert "ci" in listed.stdout and token not in listed.stdout

    token_file = tmp_path / "auditor-token"
    token_file.write_text(token + "\n")
    base = [
        "admin",
        "--data-dir",
        str(server.config.data_dir),
        "--url",
        f"https://{server.config.admin_listen}",
        "--token-file",
        str(token_file),
    ]
    assert run(*base, "stats").exit_code == 0
    refused = run(*base, "users", "add", "eve", "--password", "pw")
    assert refused.exit_code == 1
    line = one_error_line(refused)
    assert line.startswith("natkit: error: 403 role auditor may not user_add")


def test_token_from_the_environment(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NATKIT_ADMIN_TOKEN", server.admin_token)
    monkeypatch.setenv("NATKIT_ADMIN_URL", f"https://{server.config.admin_listen}")
    cafile = str(server.config.data_dir / "admin-cert.pem")
    result = run("admin", "--data-dir", str(tmp_path), "--cafile", cafile, "stats")
    assert result.exit_code == 0, result.output


def test_secrets_rotate_and_retire(server: ServerThread) -> None:
    rotated = admin(server.config, "secrets", "rotate", "--json")
    assert rotated.exit_code == 0, rotated.output
    data = json.loads(rotated.stdout)
    oldest = data["secrets"][-1]["fingerprint"]
    retired = admin(server.config, "secrets", "retire", oldest)
    assert retired.exit_code == 0 and f"retired REST secret {oldest}" in retired.stdout
    listed = admin(server.config, "secrets", "list")
    assert oldest not in listed.stdout


def test_allocations_list_and_revoke(server: ServerThread) -> None:
    async def scenario() -> None:
        async with TurnClient(
            "127.0.0.1",
            server.stun_port,
            username=USER,
            password=PASSWORD,
            timeout=5,
        ) as client:
            await client.allocate()
            listed = await asyncio.to_thread(
                admin, server.config, "allocations", "list", "--json"
            )
            allocations = json.loads(listed.stdout)["allocations"]
            assert len(allocations) == 1
            table = await asyncio.to_thread(admin, server.config, "allocations", "list")
            assert allocations[0]["id"] in table.stdout
            revoked = await asyncio.to_thread(
                admin, server.config, "allocations", "revoke", allocations[0]["id"]
            )
            assert revoked.exit_code == 0, revoked.output
            with pytest.raises(TurnRequestError) as error:
                await client.refresh()
            assert error.value.code == ErrorCode.ALLOCATION_MISMATCH

    asyncio.run(scenario())
    unknown = admin(server.config, "allocations", "revoke", "00000000")
    assert unknown.exit_code == 1
    assert "404" in one_error_line(unknown)


# --- one-line errors -------------------------------------------------------------


def test_http_url_is_a_usage_error(server: ServerThread) -> None:
    result = run("admin", "--url", "http://127.0.0.1:8443", "stats")
    assert result.exit_code == 2
    assert "HTTPS only" in one_error_line(result)


def test_no_token_is_a_usage_error(tmp_path: Path) -> None:
    result = run("admin", "--data-dir", str(tmp_path), "stats")
    assert result.exit_code == 2
    assert "no token" in one_error_line(result)


def test_cafile_and_insecure_exclude_each_other() -> None:
    result = run("admin", "--cafile", "x.pem", "--insecure", "stats")
    assert result.exit_code == 2
    one_error_line(result)


def test_untrusted_certificate(server: ServerThread, tmp_path: Path) -> None:
    from natkit.security.certs import generate_self_signed

    other = tmp_path / "other.pem"
    other.write_bytes(generate_self_signed("someone-else")[0])
    result = admin(server.config, "--cafile", str(other), "stats")
    assert result.exit_code == 1
    assert "certificate not trusted" in one_error_line(result)
    assert admin(server.config, "--insecure", "stats").exit_code == 0


def test_bad_token_is_one_line(server: ServerThread, tmp_path: Path) -> None:
    token_file = tmp_path / "t"
    token_file.write_text("natkit.00000000." + "A" * 43)
    result = run(
        "admin",
        "--data-dir",
        str(server.config.data_dir),
        "--url",
        f"https://{server.config.admin_listen}",
        "--token-file",
        str(token_file),
        "stats",
    )
    assert result.exit_code == 1
    assert one_error_line(result) == "natkit: error: 401 token not valid"


def test_server_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token_file = tmp_path / "t"
    token_file.write_text("natkit.00000000." + "A" * 43)
    result = run(
        "admin",
        "--url",
        f"https://127.0.0.1:{port}",
        "--token-file",
        str(token_file),
        "--insecure",
        "stats",
    )
    assert result.exit_code == 1
    assert "cannot reach" in one_error_line(result)
