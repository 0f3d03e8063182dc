"""``natkit stun``: output, --json, and one clear error line on bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from natkit.cli import main
from natkit.stun.attributes import XorMappedAddress
from natkit.stun.constants import MessageClass
from natkit.stun.errors import DecodeError
from natkit.stun.message import decode, encode


class ThreadResponder:
    """A blocking UDP Binding responder in a thread, on loopback."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                request = decode(data)
            except DecodeError:
                continue
            mapped = XorMappedAddress(addr[0], addr[1])
            self.sock.sendto(
                encode(request.reply(MessageClass.SUCCESS, (mapped,))), addr
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[ThreadResponder]:
    r = ThreadResponder()
    yield r
    r.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _assert_one_error_line(code: int, out: str, err: str, expected: str) -> None:
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("natkit: error: ")
    assert expected in lines[0]


def test_human_output(responder: ThreadResponder) -> None:
    code, out, err = _run("stun", f"127.0.0.1:{responder.port}", "--timeout", "2")
    assert code == 0, err
    assert "mapped address  127.0.0.1:" in out
    assert "local address   127.0.0.1:" in out
    assert f"server          127.0.0.1:{responder.port} (udp)" in out
    assert " ms" in out


def test_json_output(responder: ThreadResponder) -> None:
    code, out, err = _run("stun", f"127.0.0.1:{responder.port}", "--json", "-4")
    assert code == 0, err
    data = json.loads(out)
    assert {"mapped", "local", "server", "rtt_ms", "transport"} <= data.keys()
    assert data["mapped"] == data["local"]
    assert data["server"] == f"127.0.0.1:{responder.port}"
    assert data["transport"] == "udp"
    assert isinstance(data["rtt_ms"], float)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_literal_in_brackets() -> None:
    r = ThreadResponder(socket.AF_INET6, "::1")
    try:
        code, out, err = _run("stun", f"[::1]:{r.port}", "--json", "--ipv6")
    finally:
        r.close()
    assert code == 0, err
    data = json.loads(out)
    assert data["server"] == f"[::1]:{r.port}"
    assert data["mapped"].startswith("[::1]:")


def test_timeout_is_one_line(silent_port: int) -> None:
    code, out, err = _run("stun", f"127.0.0.1:{silent_port}", "--timeout", "0.2")
    _assert_one_error_line(
        code, out, err, f"no STUN response from 127.0.0.1:{silent_port} after 0.2 s"
    )


def test_unresolvable_name_is_one_line() -> None:
    code, out, err = _run("stun", "nonexistent.invalid", "--timeout", "5")
    _assert_one_error_line(code, out, err, "cannot resolve 'nonexistent.invalid'")


@pytest.mark.parametrize(
    "address", ["[::1", "127.0.0.1:99999", "host:port", "[x]:1", "a b", ":3478"]
)
def test_malformed_address_is_one_line(address: str) -> None:
    code, out, err = _run("stun", address)
    _assert_one_error_line(code, out, err, "malformed address")


def test_bad_cafile_is_one_line() -> None:
    code, out, err = _run(
        "stun", "127.0.0.1:1", "--transport", "tls", "--cafile", "/nonexistent.pem"
    )
    _assert_one_error_line(code, out, err, "cannot load CA file")


def test_tcp_refused_is_one_line() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code, out, err = _run("stun", f"127.0.0.1:{port}", "--transport", "tcp")
    _assert_one_error_line(code, out, err, "connection refused")


def test_help_has_an_example() -> None:
    code, out, _ = _run("stun", "--help")
    assert code == 0
    assert "Examples:" in out
    assert "natkit stun 127.0.0.1:3478 --json" in out


def test_real_process_prints_no_traceback(silent_port: int) -> None:
    """The same, through a real interpreter and its real stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from natkit.cli import main; main()",
            "stun",
            f"127.0.0.1:{silent_port}",
            "--timeout",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    _assert_one_error_line(done.returncode, done.stdout, done.stderr, "after 0.1 s")
