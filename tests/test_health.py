"""``natkit health``: one STUN Binding request to a local server (RFC 8489 §6.2.1).

A small responder thread on a loopback UDP socket plays the server: it answers
as told (success, error, a stray transaction first, or silence).
"""

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from natkit.cli import main
from natkit.health import HealthError, check
from natkit.stun.attributes import ErrorCodeAttr, XorMappedAddress
from natkit.stun.constants import MessageClass
from natkit.stun.message import Message, decode, encode, new_transaction_id

Reply = Callable[[Message, tuple[str, int]], list[bytes]]


def _success(request: Message, peer: tuple[str, int]) -> list[bytes]:
    attrs = (XorMappedAddress(peer[0], peer[1]),)
    return [encode(request.reply(MessageClass.SUCCESS, attrs), fingerprint=True)]


def _error(request: Message, peer: tuple[str, int]) -> list[bytes]:
    attrs = (ErrorCodeAttr(400, "Bad Request"),)
    return [encode(request.reply(MessageClass.ERROR, attrs))]


def _stray_then_success(request: Message, peer: tuple[str, int]) -> list[bytes]:
    stray = Message(request.method, MessageClass.SUCCESS, new_transaction_id())
    return [b"not stun at all", encode(stray), *_success(request, peer)]


def _no_mapped_address(request: Message, peer: tuple[str, int]) -> list[bytes]:
    return [encode(request.reply(MessageClass.SUCCESS))]


def _silent(request: Message, peer: tuple[str, int]) -> list[bytes]:
    return []


class Responder:
    """Answers Binding requests on 127.0.0.1 until closed; counts requests."""

    def __init__(self, reply: Reply) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.reply = reply
        self.requests = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.requests += 1
            for answer in self.reply(decode(data), peer):
                self.sock.sendto(answer, peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def responder(request: pytest.FixtureRequest) -> Iterator[Responder]:
    server = Responder(request.param)
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("responder", [_success], indirect=True)
def test_success_response_passes(responder: Responder) -> None:
    result = check("127.0.0.1", responder.port, timeout=2)
    assert result.server == f"127.0.0.1:{responder.port}"
    assert result.mapped_ip == "127.0.0.1"
    assert 0 < result.rtt < 2


@pytest.mark.parametrize("responder", [_stray_then_success], indirect=True)
def test_strays_are_ignored(responder: Responder) -> None:
    assert check("127.0.0.1", responder.port, timeout=2).mapped_ip == "127.0.0.1"


@pytest.mark.parametrize("responder", [_error], indirect=True)
def test_error_response_fails(responder: Responder) -> None:
    with pytest.raises(HealthError, match="error response 400 Bad Request"):
        check("127.0.0.1", responder.port, timeout=2)


@pytest.mark.parametrize("responder", [_no_mapped_address], indirect=True)
def test_success_without_mapped_address_fails(responder: Responder) -> None:
    with pytest.raises(HealthError, match="without XOR-MAPPED-ADDRESS"):
        check("127.0.0.1", responder.port, timeout=2)


@pytest.mark.parametrize("responder", [_silent], indirect=True)
def test_silence_times_out_after_retransmissions(responder: Responder) -> None:
    started = time.monotonic()
    with pytest.raises(HealthError, match="no STUN answer .* within 0.5 s"):
        check("127.0.0.1", responder.port, timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert responder.requests >= 2  # 0 ms, 100 ms, 300 ms


def test_nothing_listening_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(HealthError, match="nothing listens on udp 127.0.0.1:"):
        check("127.0.0.1", _closed_port(), timeout=5)
    assert time.monotonic() - started < 2


def test_unresolvable_host() -> None:
    with pytest.raises(HealthError, match="cannot resolve"):
        check("no such host.invalid", 3478, timeout=1)


@pytest.mark.parametrize("responder", [_success], indirect=True)
def test_command_exit_0_and_one_line(responder: Responder) -> None:
    result = CliRunner().invoke(main, ["health", "--port", str(responder.port)])
    assert result.exit_code == 0
    assert result.output.startswith(f"ok: 127.0.0.1:{responder.port} answered in ")
    assert result.output.count("\n") == 1


def test_command_exit_1_with_one_error_line() -> None:
    port = str(_closed_port())
    result = CliRunner().invoke(main, ["health", "--port", port, "--timeout", "1"])
    assert result.exit_code == 1
    assert (
        result.output
        == f"natkit: error: health: nothing listens on udp 127.0.0.1:{port}\n"
    )


@pytest.mark.parametrize(
    "args", [["--port", "0"], ["--port", "x"], ["--timeout", "0"], ["--timeout", "-1"]]
)
def test_command_bad_options(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["health", *args])
    assert result.exit_code == 2
    assert result.output.startswith("natkit: error: ")
    assert "Traceback" not in result.output
