"""The crypto profile (NIST SP 800-53 SC-8, SC-13): ``crypto_profile = "fips"``.

Over loopback: in the fips profile a 401 offers SHA-256 alone in
PASSWORD-ALGORITHMS (RFC 8489 §14.11), a request signed with the MD5 key and
no PASSWORD-ALGORITHM (the RFC 5389 way, MD5 implied) is refused, a SHA-256
client allocates; REST credentials use HMAC-SHA-256. The TLS listener takes
TLS 1.2 and newer with AEAD suites only; an old-version or CBC handshake
fails. ``fips_required`` refuses to start on an OpenSSL outside FIPS mode.
"""

import asyncio
import logging
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from natkit.net.address import Transport
from natkit.net.turn_client import AuthenticationError, TurnClient
from natkit.security.fips import (
    DEFAULT_TLS12_CIPHERS,
    FIPS_TLS12_CIPHERS,
    FipsStatus,
    fips_status,
    harden_tls_context,
    make_profile,
)
from natkit.security.secrets import read_rest_secrets
from natkit.server.config import ConfigError, ServerConfig, load_config
from natkit.server.daemon import StartupError
from natkit.stun import integrity
from natkit.stun.attributes import (
    ErrorCodeAttr,
    Nonce,
    PasswordAlgorithms,
    Realm,
    RequestedTransport,
    Username,
)
from natkit.stun.constants import MessageClass, Method, PasswordAlgorithm
from natkit.stun.message import Message, decode, encode, new_transaction_id
from natkit.turn.credentials import RestHmac, mint
from ports import pick_block
from serve_thread import serving

REALM = "fips.test"
USER, PASSWORD = "frank", "frank-fips-password"
TIMEOUT = 5.0
MD5, SHA256 = PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256


# --- a server on loopback ---------------------------------------------------------


def server_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    base = pick_block(12)
    settings: dict[str, Any] = {
        "listen": [f"udp:127.0.0.1:{base}", f"tls:127.0.0.1:{base + 1}"],
        "data_dir": str(data_dir),
        "realm": REALM,
        "users": [f"{USER}:{PASSWORD}"],
        "relay_ip": ["127.0.0.1"],
        "relay_ports": f"{base + 2}-{base + 11}",
        "admin": False,
        "crypto_profile": "fips",
    }
    settings.update(overrides)
    return load_config(environ={}, overrides=settings)


@asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[dict[Transport, int]]:
    """``serve(config)`` on this loop; yields the port of each transport."""
    async with serving(config, timeout=TIMEOUT) as bound:
        yield {a.transport: a.port for a in bound}


def _allocate_raw(port: int, key: bytes | None) -> tuple[Message, Message | None]:
    """An Allocate; with ``key``, the RFC 5389 way: MD5 implied, no algorithm.

    Returns the 401 challenge and the answer to the signed request.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        transport = RequestedTransport(17)
        tid = new_transaction_id()
        sock.send(
            encode(Message(Method.ALLOCATE, MessageClass.REQUEST, tid, (transport,)))
        )
        challenge = decode(sock.recv(2048))
        if key is None:
            return challenge, None
        nonce = challenge.get(Nonce)
        assert nonce is not None
        signed = Message(
            Method.ALLOCATE,
            MessageClass.REQUEST,
            new_transaction_id(),
            (transport, Username(USER), Realm(REALM), nonce),
        )
        sock.send(encode(signed, key=key))
        return challenge, decode(sock.recv(2048))


def _offered(challenge: Message) -> list[int]:
    offered = challenge.get(PasswordAlgorithms)
    assert offered is not None
    return [entry.algorithm for entry in offered.algorithms]


def _code(message: Message | None) -> int | None:
    assert message is not None
    error = message.get(ErrorCodeAttr)
    return None if error is None else error.code


# --- long-term credentials ---------------------------------------------------------


async def test_fips_offers_sha256_only_and_refuses_an_md5_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="natkit.security.fips")
    config = server_config(tmp_path / "data")
    md5_key = integrity.long_term_key(USER, REALM, PASSWORD, MD5)
    async with running(config) as ports:
        udp = ports[Transport.UDP]
        challenge, answer = await asyncio.to_thread(_allocate_raw, udp, md5_key)
        assert _code(challenge) == 401
        assert _offered(challenge) == [int(SHA256)]
        assert answer is not None and answer.cls is MessageClass.ERROR
        assert _code(answer) == 400  # RFC 8489 §9.2.4: MD5 implied, not offered

        # a SHA-256 client is fine
        async with TurnClient(
            "127.0.0.1", udp, username=USER, password=PASSWORD, timeout=TIMEOUT
        ) as client:
            info = await client.allocate()
            assert info.relayed.ip == "127.0.0.1"
    assert "crypto profile fips: OpenSSL" in caplog.text
    assert "FIPS mode" in caplog.text


async def test_default_profile_offers_both_and_takes_md5(tmp_path: Path) -> None:
    config = server_config(tmp_path / "data", crypto_profile="default")
    md5_key = integrity.long_term_key(USER, REALM, PASSWORD, MD5)
    async with running(config) as ports:
        challenge, answer = await asyncio.to_thread(
            _allocate_raw, ports[Transport.UDP], md5_key
        )
    assert _offered(challenge) == [int(SHA256), int(MD5)]
    assert answer is not None and answer.cls is MessageClass.SUCCESS


async def test_allow_legacy_md5_keeps_md5_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="natkit.security.fips")
    config = server_config(tmp_path / "data", allow_legacy_md5=True)
    md5_key = integrity.long_term_key(USER, REALM, PASSWORD, MD5)
    async with running(config) as ports:
        challenge, answer = await asyncio.to_thread(
            _allocate_raw, ports[Transport.UDP], md5_key
        )
    assert _offered(challenge) == [int(SHA256), int(MD5)]
    assert answer is not None and answer.cls is MessageClass.SUCCESS
    assert "allow_legacy_md5 = true" in caplog.text


def test_fips_users_get_no_md5_key(tmp_path: Path) -> None:
    fips = server_config(tmp_path)
    assert set(fips.users[0].keys) == {SHA256}
    legacy = server_config(tmp_path, allow_legacy_md5=True)
    assert set(legacy.users[0].keys) == {SHA256, MD5}


# --- REST credentials --------------------------------------------------------------


async def test_fips_rest_credentials_use_hmac_sha256(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = server_config(data_dir)
    async with running(config) as ports:
        secret = read_rest_secrets(data_dir)[0]
        udp = ports[Transport.UDP]
        good = mint("gina", 600, secret, time.time(), hmac_algorithm=RestHmac.SHA256)
        async with TurnClient(
            "127.0.0.1",
            udp,
            username=good.username,
            password=good.password,
            timeout=TIMEOUT,
        ) as client:
            await client.allocate()
        legacy = mint("gina", 600, secret, time.time(), hmac_algorithm=RestHmac.SHA1)
        sha1_client = TurnClient(
            "127.0.0.1",
            udp,
            username=legacy.username,
            password=legacy.password,
            timeout=TIMEOUT,
        )
        with pytest.raises(AuthenticationError):
            await sha1_client.allocate()
        await sha1_client.close()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"rest_hmac": "sha1"}, "rest_hmac = 'sha1': the fips profile uses sha256"),
        (
            {"crypto_profile": "default", "allow_legacy_md5": True},
            "allow_legacy_md5 = True: has no effect without crypto_profile",
        ),
        ({"crypto_profile": "fisp"}, "crypto_profile = 'fisp'"),
    ],
)
def test_config_checks(tmp_path: Path, overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        server_config(tmp_path, **overrides)
    assert words in str(excinfo.value)


def test_profiles() -> None:
    fips = make_profile(fips=True)
    assert fips.password_algorithms == (SHA256,) and fips.authenticator_fips
    assert fips.rest_hmac is RestHmac.SHA256
    assert "CHACHA20" not in fips.tls12_ciphers
    default = make_profile(fips=False)
    assert default.password_algorithms == (SHA256, MD5)
    assert default.rest_hmac is RestHmac.SHA1
    legacy = make_profile(fips=True, allow_legacy_md5=True, rest_hmac="sha1")
    assert legacy.password_algorithms == (SHA256, MD5)
    assert not legacy.authenticator_fips and legacy.rest_hmac is RestHmac.SHA1


# --- TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fips", "ciphers"), [(True, FIPS_TLS12_CIPHERS), (False, DEFAULT_TLS12_CIPHERS)]
)
def test_tls_context_is_tls12_plus_and_aead_only(fips: bool, ciphers: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden_tls_context(context, make_profile(fips=fips))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    suites = context.get_ciphers()
    assert suites
    for suite in suites:
        assert suite["aead"], suite["name"]
        if suite["protocol"] == "TLSv1.2":
            assert suite["kea"] == "kx-ecdhe", suite["name"]
        if fips and suite["protocol"] == "TLSv1.2":
            # the TLS 1.3 suites cannot be chosen from Python's ssl; an
            # OpenSSL in FIPS mode leaves ChaCha20 out of them by itself
            assert "CHACHA20" not in suite["name"]


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return str(tls.version())


def _client(**settings: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, value in settings.items():
            if name == "ciphers":
                context.set_ciphers(value)
            else:
                setattr(context, name, value)
    return context


async def test_tls_listener_refuses_old_versions_and_cbc(tmp_path: Path) -> None:
    config = server_config(tmp_path / "data")
    async with running(config) as ports:
        port = ports[Transport.TLS]

        # a modern client: TLS 1.3 (or 1.2), fine
        version = await asyncio.to_thread(_handshake, port, _client())
        assert version in ("TLSv1.3", "TLSv1.2")

        # TLS 1.2 with AES-GCM: fine
        aead = _client(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE+AESGCM")
        assert await asyncio.to_thread(_handshake, port, aead) == "TLSv1.2"

        # TLS 1.2 with CBC suites only: refused
        cbc = _client(
            maximum_version=ssl.TLSVersion.TLSv1_2,
            ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
            "ECDHE-ECDSA-AES128-SHA256",
        )
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_handshake, port, cbc)

        # TLS 1.0/1.1 forced (the client's OpenSSL may not even offer them;
        # either way the handshake fails)
        old = _client(
            minimum_version=ssl.TLSVersion.TLSv1,
            maximum_version=ssl.TLSVersion.TLSv1_1,
            ciphers="ALL:@SECLEVEL=0",
        )
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_handshake, port, old)


# --- FIPS mode of the libraries ----------------------------------------------------


def test_status_describes_both_libraries() -> None:
    status = fips_status()
    text = status.describe()
    assert ssl.OPENSSL_VERSION in text
    assert "cryptography with" in text
    assert status.enabled == (status.openssl_fips and status.cryptography_fips)


async def test_fips_required_refuses_to_start_outside_fips_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = FipsStatus("OpenSSL 3.0.0", False, "OpenSSL 3.0.0", False, None)
    monkeypatch.setattr("natkit.server.daemon.fips_status", lambda: off)
    config = server_config(tmp_path / "data", fips_required=True)
    with pytest.raises(StartupError) as excinfo:
        async with running(config):
            pass
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("fips_required = true, but OpenSSL is not in FIPS mode")

    # the same host in FIPS mode starts
    on = FipsStatus("OpenSSL 3.0.0", True, "OpenSSL 3.0.0", True, True)
    monkeypatch.setattr("natkit.server.daemon.fips_status", lambda: on)
    async with running(server_config(tmp_path / "data2", fips_required=True)):
        pass


def test_serve_fips_flag_selects_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from natkit.cli import main
    from natkit.server import daemon
    from natkit.server import logging as server_logging

    seen: list[ServerConfig] = []
    monkeypatch.setattr(daemon, "run", seen.append)
    # serve configures logging for the whole process: not in a test
    monkeypatch.setattr(server_logging, "configure_logging", lambda *a, **k: None)
    monkeypatch.delenv("NATKIT_CRYPTO_PROFILE", raising=False)
    args = ["serve", "--data-dir", str(tmp_path / "data")]
    for extra, profile in (([], "default"), (["--fips"], "fips")):
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code == 0, result.output
        assert seen.pop().crypto_profile == profile
