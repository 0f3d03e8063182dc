"""Server configuration: validation messages and file < env < flag precedence."""

from pathlib import Path

import pytest

from natkit.net.address import ListenAddress, Transport
from natkit.server.config import (
    MAX_STUN_MESSAGE,
    ConfigError,
    ServerConfig,
    env_name,
    load_config,
)


def load(
    toml: str | None = None,
    tmp_path: Path | None = None,
    env: dict[str, str] | None = None,
    **flags: object,
) -> ServerConfig:
    config_file = None
    if toml is not None:
        assert tmp_path is not None
        config_file = tmp_path / "natkit.toml"
        config_file.write_text(toml)
    return load_config(config_file=config_file, environ=env or {}, overrides=flags)


def error_of(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


# --- listen syntax ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:0.0.0.0:3478", ListenAddress(Transport.UDP, "0.0.0.0", 3478)),
        ("tcp:[::]:3478", ListenAddress(Transport.TCP, "::", 3478)),
        ("tls:127.0.0.1:5349", ListenAddress(Transport.TLS, "127.0.0.1", 5349)),
        ("TLS:[::1]", ListenAddress(Transport.TLS, "::1", 5349)),
        ("udp:192.0.2.1", ListenAddress(Transport.UDP, "192.0.2.1", 3478)),
        ("tcp:[2001:db8::1]:80", ListenAddress(Transport.TCP, "2001:db8::1", 80)),
    ],
)
def test_listen_syntax(text: str, expected: ListenAddress) -> None:
    assert ListenAddress.parse(text) == expected


def test_listen_formats_ipv6_in_brackets() -> None:
    address = ListenAddress(Transport.TCP, "::1", 3478)
    assert str(address) == "tcp:[::1]:3478"
    assert address.endpoint == "[::1]:3478"
    assert ListenAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("udp:1.2.3.4:99999", "port must be 1-65535"),
        ("udp:1.2.3.4:0", "port must be 1-65535"),
        ("udp:1.2.3.4:x", "port must be 1-65535"),
        ("sctp:1.2.3.4:3478", "unknown transport 'sctp' (expected udp, tcp or tls)"),
        ("0.0.0.0:3478", "unknown transport '0.0.0.0'"),
        ("udp", "expected PROTO:HOST[:PORT], e.g. udp:0.0.0.0:3478"),
        ("udp:::1:3478", "IPv6 addresses need brackets, e.g. tcp:[::]:3478"),
        ("tcp:[::1:3478", "missing ']' after IPv6 address"),
        ("tcp:[1.2.3.4]:3478", "'1.2.3.4' is not an IPv6 address"),
        ("udp:stun.example.org:3478", "is not an IPv4 address (no host names)"),
    ],
)
def test_listen_errors_name_key_value_and_reason(text: str, reason: str) -> None:
    message = error_of(listen=["udp:127.0.0.1:3478", text])
    assert message.startswith(f"listen[1] = {text!r}: ")
    assert reason in message


def test_the_issue_example_message() -> None:
    message = error_of(listen=["udp:1.2.3.4:99999"])
    assert message == "listen[0] = 'udp:1.2.3.4:99999': port must be 1-65535"


def test_listen_duplicates_and_empty_are_refused() -> None:
    assert "twice" in error_of(listen=["udp:127.0.0.1:1", "udp:127.0.0.1:1"])
    assert "at least one listener" in error_of(listen=[])


# --- other keys -----------------------------------------------------------------


def test_defaults() -> None:
    config = load()
    assert config.data_dir == Path("natkit-data")
    assert config.software is None
    assert config.stream_idle_timeout == 30.0
    assert config.max_connections == 1024
    assert config.max_message_size == MAX_STUN_MESSAGE
    assert config.log_level == "info"
    assert config.log_format == "text"
    assert [str(a) for a in config.listeners()] == [
        "udp:0.0.0.0:3478",
        "tcp:0.0.0.0:3478",
        "tls:0.0.0.0:5349",
    ]


def test_default_listeners_without_tls() -> None:
    config = load(tls_generate="false")
    assert [str(a) for a in config.listeners()] == [
        "udp:0.0.0.0:3478",
        "tcp:0.0.0.0:3478",
    ]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"stream_idle_timeout": "0"}, "stream_idle_timeout = '0': input should be"),
        ({"stream_idle_timeout": "soon"}, "stream_idle_timeout = 'soon': input should"),
        ({"max_connections": "0"}, "max_connections = '0': input should be greater"),
        ({"max_connections": "1.5"}, "max_connections = '1.5': input should be a"),
        ({"max_message_size": "100"}, "max_message_size = '100': input should be"),
        ({"log_level": "loud"}, "log_level = 'loud': input should be 'debug'"),
        ({"log_format": "xml"}, "log_format = 'xml': input should be 'text'"),
        ({"tls_generate": "maybe"}, "tls_generate = 'maybe': input should be a"),
        ({"software": "x" * 200}, "software = 'xxx"),
        ({"tls_cert": "/nonexistent/cert.pem"}, "tls_cert = '/nonexistent/cert.pem'"),
    ],
)
def test_bad_values_name_key_value_and_reason(
    flags: dict[str, object], expected: str
) -> None:
    message = error_of(**flags)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_software_too_long_says_why() -> None:
    assert "under 128 characters" in error_of(software="x" * 200)


def test_missing_cert_file_says_why() -> None:
    assert error_of(tls_cert="/nonexistent/cert.pem").endswith(": file not found")


def test_cert_without_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    message = error_of(tls_cert=str(cert))
    assert message == "tls_key = None: tls_cert and tls_key must be given together"


def test_tls_listener_without_certificate() -> None:
    message = error_of(listen=["udp:127.0.0.1:1", "tls:127.0.0.1:2"], tls_generate="no")
    assert message.startswith("listen[1] = 'tls:127.0.0.1:2': TLS listener needs")


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    message = error_of(toml='colour = "red"\n', tmp_path=tmp_path)
    assert message == "colour = 'red': unknown key"


def test_wrong_type_in_file(tmp_path: Path) -> None:
    message = error_of(toml="max_connections = 1.5\n", tmp_path=tmp_path)
    assert message.startswith("max_connections = 1.5: input should be a valid integer")
    message = error_of(toml="listen = [5]\n", tmp_path=tmp_path)
    assert message == "listen[0] = 5: expected a string PROTO:HOST[:PORT]"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    message = error_of(toml="listen = [\n", tmp_path=tmp_path)
    assert message.startswith("--config = ")
    assert "invalid TOML" in message
    with pytest.raises(ConfigError, match="file not found"):
        load_config(config_file=tmp_path / "missing.toml", environ={})


# --- precedence -------------------------------------------------------------------


TOML = """
listen = ["udp:127.0.0.1:4000"]
software = "from file"
stream_idle_timeout = 5
max_connections = 10
"""


def test_file_values(tmp_path: Path) -> None:
    config = load(TOML, tmp_path)
    assert config.listen == (ListenAddress(Transport.UDP, "127.0.0.1", 4000),)
    assert config.software == "from file"
    assert config.stream_idle_timeout == 5.0
    assert config.max_connections == 10


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "NATKIT_SOFTWARE": "from env",
        "NATKIT_LISTEN": "udp:127.0.0.1:5000, tcp:[::1]:5000",
        "NATKIT_MAX_CONNECTIONS": "20",
        "NATKIT_UNRELATED": "ignored",
    }
    config = load(TOML, tmp_path, env)
    assert config.software == "from env"
    assert [str(a) for a in config.listeners()] == [
        "udp:127.0.0.1:5000",
        "tcp:[::1]:5000",
    ]
    assert config.max_connections == 20
    assert config.stream_idle_timeout == 5.0  # from the file still


def test_flags_override_env_and_file(tmp_path: Path) -> None:
    env = {"NATKIT_SOFTWARE": "from env", "NATKIT_MAX_CONNECTIONS": "20"}
    config = load(
        TOML,
        tmp_path,
        env,
        software="from flag",
        listen=["tcp:127.0.0.1:6000"],
        max_connections=None,  # a flag not given
    )
    assert config.software == "from flag"
    assert config.listen == (ListenAddress(Transport.TCP, "127.0.0.1", 6000),)
    assert config.max_connections == 20


def test_bad_env_value_is_reported_like_a_file_value() -> None:
    message = error_of(env={"NATKIT_STREAM_IDLE_TIMEOUT": "-1"})
    assert message.startswith("stream_idle_timeout = '-1': input should be greater")


def test_env_names() -> None:
    assert env_name("data_dir") == "NATKIT_DATA_DIR"
    assert env_name("stream_idle_timeout") == "NATKIT_STREAM_IDLE_TIMEOUT"


def test_log_level_is_case_insensitive() -> None:
    assert load(log_level="DEBUG", log_format="JSON").log_level == "debug"


def test_config_is_frozen() -> None:
    config = load()
    with pytest.raises(ValueError):
        config.software = "changed"  # type: ignore[misc]


def test_single_listen_string_is_a_list_of_one(tmp_path: Path) -> None:
    config = load('listen = "tcp:127.0.0.1:7000"\n', tmp_path)
    assert config.listen == (ListenAddress(Transport.TCP, "127.0.0.1", 7000),)


# --- TURN keys -----------------------------------------------------------------


def test_turn_defaults() -> None:
    config = load()
    assert config.turn is True
    assert config.realm == "natkit"
    assert str(config.relay_ports) == "49152-65535"
    assert (config.relay_ip, config.external_ip, config.users) == ((), (), ())
    assert (config.max_lifetime, config.default_lifetime) == (3600, 600)
    assert (config.user_quota, config.max_permissions, config.max_channels) == (
        64,
        128,
        128,
    )
    assert (config.max_allocations, config.bps_limit) == (0, 0)


def test_users_keep_derived_keys_only() -> None:
    from natkit.stun import integrity
    from natkit.stun.constants import PasswordAlgorithm

    config = load(users=["alice:s3cret"], realm="example.org")
    (user,) = config.users
    assert user.name == "alice"
    assert user.keys[PasswordAlgorithm.MD5] == integrity.long_term_key(
        "alice", "example.org", "s3cret"
    )
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"users": ["alice"]}, "users = ['alice']: expected NAME:PASSWORD"),
        ({"users": ["a:x", "a:y"]}, "users = ['a:***', 'a:***']: the same user"),
        ({"relay_ports": "60000-50000"}, "relay_ports = '60000-50000': the first"),
        ({"relay_ports": "1-70000"}, "relay_ports = '1-70000': ports must be"),
        ({"relay_ip": ["0.0.0.0"]}, "relay_ip[0] = '0.0.0.0': a relay address"),
        ({"relay_ip": ["relay.example"]}, "relay_ip[0] = 'relay.example': 'relay"),
        ({"external_ip": ["1.2.3.4/::1"]}, "external_ip[0] = '1.2.3.4/::1': PUBLIC"),
        ({"allow_peer": ["10.0.0.1/8"]}, "allow_peer[0] = '10.0.0.1/8': host bits"),
        ({"deny_peer": ["nonsense"]}, "deny_peer[0] = 'nonsense': not a CIDR"),
        ({"default_lifetime": 7200}, "default_lifetime = 7200: must not be above"),
        ({"max_channels": -1}, "max_channels = -1: input should be greater"),
        ({"auth_secret": "short"}, "auth_secret = 'short': a REST secret must"),
        ({"realm": ""}, "realm = '': realm must not be empty"),
    ],
)
def test_turn_errors_name_key_value_and_reason(
    flags: dict[str, object], expected: str
) -> None:
    assert error_of(**flags).startswith(expected)


def test_a_bad_password_is_never_echoed() -> None:
    message = error_of(users=["bob:\u0007bell"])
    assert "bell" not in message and message.startswith("users = ['bob:***']")


def test_external_ip_private_must_be_a_relay_ip() -> None:
    message = error_of(relay_ip=["192.0.2.10"], external_ip=["203.0.113.5/10.0.0.5"])
    assert message.startswith("external_ip[0] = '203.0.113.5/10.0.0.5': PRIVATE")


def test_turn_lists_from_env_and_file(tmp_path: Path) -> None:
    env = {
        "NATKIT_ALLOW_PEER": "127.0.0.1/32, 10.0.0.0/8",
        "NATKIT_RELAY_IP": "192.0.2.10 2001:db8::10",
        "NATKIT_TURN": "false",
    }
    config = load('relay_ports = "50000-50100"\nusers = "u:p"\n', tmp_path, env)
    assert config.allow_peer == ("127.0.0.1/32", "10.0.0.0/8")
    assert config.relay_ip == ("192.0.2.10", "2001:db8::10")
    assert config.turn is False
    assert (config.relay_ports.low, config.relay_ports.high) == (50000, 50100)
    assert [u.name for u in config.users] == ["u"]
