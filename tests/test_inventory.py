"""``natkit inventory``: asset identifier, ports, configuration hash, workbook CSV."""

import csv
import datetime
import hashlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from natkit.cli.supply import inventory as inventory_command
from natkit.server.config import ServerConfig, load_config
from natkit.supply import inventory as inv

DIGEST = "sha256:" + hashlib.sha256(b"natkit test image").hexdigest()
MACHINE_ID = "0123456789abcdef0123456789abcdef"
MOMENT = datetime.datetime(2099, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
# REST secrets that pass the config's strength checks (made up for the tests)
SECRET_A = "vQ7-tX2p_Lm9wRz4kB8n"
SECRET_B = "Hc3^yN6qJ1fT5sW0eD9u"


def config(**values: object) -> ServerConfig:
    return load_config(environ={}, overrides=values)


def identity(tmp_path: Path, **environ: str) -> inv.AssetIdentity:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text(MACHINE_ID + "\n")
    return inv.asset_identity(
        environ=environ,
        digest_file=tmp_path / "image-digest",
        machine_id_files=[machine_id],
    )


# --- the unique asset identifier ----------------------------------------------


def test_image_digest_from_the_environment(tmp_path: Path) -> None:
    found = identity(tmp_path, NATKIT_IMAGE_DIGEST=DIGEST)
    assert found.asset_id == f"natkit@{DIGEST}"
    assert found.source is inv.IdSource.DIGEST_ENV
    assert found.in_image


def test_image_digest_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "image-digest").write_text(DIGEST + "\n")
    found = identity(tmp_path)
    assert found.asset_id == f"natkit@{DIGEST}"
    assert found.source is inv.IdSource.DIGEST_FILE


def test_bad_image_digest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(inv.InventoryError, match="NATKIT_IMAGE_DIGEST = 'sha256:1'"):
        identity(tmp_path, NATKIT_IMAGE_DIGEST="sha256:1")


def test_host_id_is_stable_and_hides_the_machine_id(tmp_path: Path) -> None:
    first, second = identity(tmp_path), identity(tmp_path)
    assert first == second
    assert first.source is inv.IdSource.MACHINE_ID
    assert not first.in_image
    prefix, token, suffix = first.asset_id.split(":")
    assert (prefix, suffix, len(token)) == ("host", "natkit", 32)
    assert MACHINE_ID not in first.asset_id


def test_host_name_when_there_is_no_machine_id(tmp_path: Path) -> None:
    found = inv.asset_identity(
        environ={},
        digest_file=tmp_path / "none",
        machine_id_files=[tmp_path / "none"],
        hostname="turn-1",
    )
    assert found.source is inv.IdSource.HOSTNAME
    assert found.asset_id.startswith("host:") and "turn-1" not in found.asset_id


# --- ports and addresses --------------------------------------------------------


def service_ports(cfg: ServerConfig) -> list[inv.ListeningPort]:
    """The ports but the admin API's (tested on its own below)."""
    return [p for p in inv.listening_ports(cfg) if not p.purpose.startswith("admin")]


def test_default_ports() -> None:
    ports = [str(p) for p in service_ports(config())]
    assert ports == [
        "udp 0.0.0.0:3478",
        "tcp 0.0.0.0:3478",
        "tls 0.0.0.0:5349",
        "udp *:49152-65535",
    ]


def test_admin_listener_is_listed() -> None:
    if "admin_listen" not in ServerConfig.model_fields:
        pytest.skip("this configuration model has no admin listener")
    admin = [p for p in inv.listening_ports(config()) if p.purpose.startswith("admin")]
    assert [str(p) for p in admin] == ["tcp 127.0.0.1:8443"]
    off = inv.listening_ports(config(admin=False))
    assert not [p for p in off if p.purpose.startswith("admin")]


def test_ports_with_relay_ip_and_rfc5780() -> None:
    cfg = config(
        listen=["udp:192.0.2.1:3478"],
        relay_ip=["192.0.2.1"],
        relay_ports="50000-50009",
        rfc5780=True,
        alternate_ip="192.0.2.2",
    )
    ports = service_ports(cfg)
    assert [(str(p), p.purpose) for p in ports] == [
        ("udp 192.0.2.1:3478", "STUN/TURN"),
        ("udp 192.0.2.1:3479", "RFC 5780 alternate"),
        ("udp 192.0.2.2:3478", "RFC 5780 alternate"),
        ("udp 192.0.2.2:3479", "RFC 5780 alternate"),
        ("udp 192.0.2.1:50000-50009", "TURN relay"),
    ]
    assert inv.asset_addresses(cfg) == ("192.0.2.1", "192.0.2.2")


def test_no_relay_ports_without_turn() -> None:
    ports = inv.listening_ports(config(turn=False))
    assert all(p.purpose != "TURN relay" for p in ports)


# --- the configuration hash -----------------------------------------------------


def fingerprint(**values: object) -> str:
    return inv.config_fingerprint(config(**values))


def test_config_hash_is_stable_and_canonical() -> None:
    assert fingerprint() == fingerprint()
    assert len(fingerprint()) == 64
    # the defaults, written out, are the same configuration
    explicit = fingerprint(
        listen=["udp:0.0.0.0:3478", "tcp:0.0.0.0:3478", "tls:0.0.0.0:5349"]
    )
    assert explicit == fingerprint()


def test_config_hash_leaves_secrets_out() -> None:
    assert fingerprint(auth_secret=SECRET_A) == fingerprint(auth_secret=SECRET_B)
    assert fingerprint(users=["alice:one-password"]) == fingerprint(
        users=["alice:another-password"]
    )


def test_config_hash_follows_the_settings() -> None:
    assert fingerprint(relay_ports="50000-50009") != fingerprint()
    assert fingerprint(users=["alice:pw"]) != fingerprint(users=["bob:pw"])


def test_config_hash_is_sha256_of_the_documented_json() -> None:
    cfg = config(users=["alice:pw"], auth_secret=SECRET_A)
    data = cfg.model_dump(mode="json", exclude={"auth_secret", "users"})
    data["listen"] = [str(a) for a in cfg.listeners()]
    data["users"] = ["alice"]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert SECRET_A not in text
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert inv.config_fingerprint(cfg) == expected


# --- the record and the workbook ---------------------------------------------


def record(tmp_path: Path, **environ: str) -> inv.AssetRecord:
    return inv.build_record(
        config(listen=["udp:192.0.2.1:3478"]),
        identity=identity(tmp_path, **environ),
        components=(inv.Component("click", "8.5.1"), inv.Component("rich", "15.0.0")),
        now=MOMENT,
    )


def test_workbook_columns() -> None:
    assert len(inv.WORKBOOK_COLUMNS) == 25
    assert inv.WORKBOOK_COLUMNS[0] == "UNIQUE ASSET IDENTIFIER"
    assert inv.WORKBOOK_COLUMNS[-1] == "End-of-Life"
    assert len(set(inv.WORKBOOK_COLUMNS)) == 25


def test_csv_rows(tmp_path: Path) -> None:
    rows = list(
        csv.DictReader(
            io.StringIO(inv.to_csv(record(tmp_path, NATKIT_IMAGE_DIGEST=DIGEST)))
        )
    )
    assert len(rows) == 3
    asset, click_, _ = rows
    assert list(asset) == list(inv.WORKBOOK_COLUMNS)
    assert asset["UNIQUE ASSET IDENTIFIER"] == f"natkit@{DIGEST}"
    assert asset["IPv4 or IPv6 Address"] == "192.0.2.1"
    assert asset["Virtual"] == "Yes"
    assert asset["Asset Type"] == "Container"
    assert asset["Software/Database Name & Version"].startswith("natkit ")
    assert "udp 192.0.2.1:3478 (STUN/TURN)" in asset["Comments"]
    assert "configuration sha256:" in asset["Comments"]
    assert click_["UNIQUE ASSET IDENTIFIER"] == f"natkit@{DIGEST}"
    assert click_["Software/Database Name & Version"] == "click 8.5.1"
    assert click_["Software/Database Vendor"] == "Open Source"


def test_json_record(tmp_path: Path) -> None:
    data = inv.to_json(record(tmp_path))
    assert data["unique_asset_identifier"].startswith("host:")
    assert data["image_digest"] is None
    assert data["generated"] == "2099-01-02T03:04:05Z"
    assert data["listening_ports"][0] == {
        "transport": "udp",
        "host": "192.0.2.1",
        "port": 3478,
        "end_port": None,
        "purpose": "STUN/TURN",
    }
    assert data["components"] == [
        {"name": "click", "version": "8.5.1"},
        {"name": "rich", "version": "15.0.0"},
    ]


def test_installed_components_include_natkits_dependencies() -> None:
    names = {c.name.lower() for c in inv.installed_components()}
    assert {"click", "pydantic"} <= names


# --- the command ----------------------------------------------------------------


def run(*args: str, **env: str) -> Result:
    return CliRunner().invoke(
        inventory_command, list(args), prog_name="natkit inventory", env=env
    )


def test_command_json_with_config(tmp_path: Path) -> None:
    path = tmp_path / "natkit.toml"
    path.write_text('listen = ["udp:192.0.2.1:3478"]\nrelay_ports = "50000-50009"\n')
    result = run("--json", "--config", str(path), NATKIT_IMAGE_DIGEST=DIGEST)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["unique_asset_identifier"] == f"natkit@{DIGEST}"
    assert data["configuration"]["file"] == str(path)
    relay = data["listening_ports"][-1]
    assert (relay["port"], relay["end_port"]) == (50000, 50009)


def test_command_csv() -> None:
    result = run("--csv", NATKIT_IMAGE_DIGEST=DIGEST)
    assert result.exit_code == 0, result.output
    header = next(csv.reader(io.StringIO(result.stdout)))
    assert tuple(header) == inv.WORKBOOK_COLUMNS


def test_command_text() -> None:
    result = run(NATKIT_IMAGE_DIGEST=DIGEST)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"asset:       natkit@{DIGEST}")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--json", "--csv"), {}, "--json and --csv exclude each other"),
        (("--config", "missing.toml"), {}, "file not found"),
        ((), {"NATKIT_IMAGE_DIGEST": "latest"}, "expected an image digest"),
        ((), {"NATKIT_RELAY_PORTS": "9-1"}, "relay_ports"),
    ],
)
def test_command_bad_input_is_one_line(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run(*args, **env)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr
