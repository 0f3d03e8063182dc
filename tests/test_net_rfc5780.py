"""``natkit serve --rfc5780`` on loopback: four addresses (RFC 5780 §6).

The server answers from 127.0.0.1 and 127.0.0.2 (both on ``lo``, which
carries 127.0.0.0/8 on Linux), on ports P and P + 1. It runs
:func:`natkit.server.daemon.serve` on its own event loop in a thread
(asyncio and uvloop); the tests are blocking sockets built with the natkit
codec, so every check is on the wire: which source address a response came
from, where it went, how big it is.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import natkit
from natkit.nat.endpoint import Endpoint
from natkit.nat.server import Rfc5780Responder
from natkit.net.address import ListenAddress, Transport
from natkit.net.listeners import ServiceStats
from natkit.net.rfc5780 import Rfc5780Sockets
from natkit.server.config import ConfigError, ServerConfig, load_config
from natkit.server.daemon import StartupError, serve
from natkit.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCodeAttr,
    MappedAddress,
    Nonce,
    OtherAddress,
    Padding,
    Realm,
    RequestedTransport,
    ResponseOrigin,
    ResponsePort,
    XorMappedAddress,
)
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, decode, encode, new_transaction_id

TIMEOUT = 5.0
A1 = "127.0.0.1"
A2 = "127.0.0.2"
SRC = str(Path(natkit.__file__).resolve().parent.parent)


def _bindable(ip: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def second_loopback() -> bool:
    """Whether 127.0.0.2 can be bound (Linux puts all of 127/8 on lo)."""
    return _bindable(A2, 0, socket.SOCK_DGRAM)


needs_two_loopback_ips = pytest.mark.skipif(
    not second_loopback(), reason="127.0.0.2 cannot be bound on this machine"
)
pytestmark = needs_two_loopback_ips


def free_ports(attempts: int = 100) -> int:
    """A port P with P and P + 1 free for UDP and TCP on 127.0.0.1 and .2."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((A1, 0))
            port = int(sock.getsockname()[1])
        if port >= 0xFFFF:
            continue
        if all(
            _bindable(ip, p, kind)
            for ip in (A1, A2)
            for p in (port, port + 1)
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        ):
            return port
    raise RuntimeError("no free pair of ports on 127.0.0.1 and 127.0.0.2")


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        factories.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip))
    else:
        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


class Server:
    """``natkit serve --rfc5780`` (the daemon) on its own loop in a thread."""

    def __init__(
        self,
        data_dir: Path,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        **overrides: Any,
    ) -> None:
        self.port = free_ports()
        self.alt_port = self.port + 1
        settings: dict[str, Any] = {
            "listen": [f"udp:{A1}:{self.port}", f"tcp:{A1}:{self.port}"],
            "data_dir": str(data_dir),
            "rfc5780": True,
            "alternate_ip": A2,
            "relay_ip": [A1],
            "users": ["alice:secret"],
        }
        settings.update(overrides)
        self.config = load_config(environ={}, overrides=settings)
        self.bound: tuple[ListenAddress, ...] = ()
        self.stats: ServiceStats | None = None
        self.loop = loop_factory()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("server did not start")
        if self._error is not None:
            raise self._error

    @property
    def addresses(self) -> tuple[Endpoint, ...]:
        """A1:P1, A1:P2, A2:P1, A2:P2."""
        p1, p2 = self.port, self.alt_port
        return (Endpoint(A1, p1), Endpoint(A1, p2), Endpoint(A2, p1), Endpoint(A2, p2))

    def _run(self) -> None:
        def ready(bound: tuple[ListenAddress, ...]) -> None:
            self.bound = bound
            self._ready.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            self.stats = await serve(self.config, stop=self._stop, on_ready=ready)

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    def stop(self) -> None:
        stop = self._stop
        if stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(stop.set)
        self._thread.join(TIMEOUT)
        if self._error is not None:
            raise self._error


@pytest.fixture(scope="module", params=_loop_factories())
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    started = Server(tmp_path_factory.mktemp("rfc5780"), loop_factory=request.param)
    yield started
    started.stop()


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((A1, 0))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def binding(*attributes: Attribute, method: int = Method.BINDING) -> Message:
    return Message(method, MessageClass.REQUEST, new_transaction_id(), attributes)


def exchange(
    sock: socket.socket, request: Message, to: Endpoint, *, fingerprint: bool = False
) -> tuple[Message, Endpoint, int]:
    """Send ``request``; the response, where it came from, and its size."""
    sock.sendto(encode(request, fingerprint=fingerprint), (to.ip, to.port))
    return receive(sock, request)


def receive(sock: socket.socket, request: Message) -> tuple[Message, Endpoint, int]:
    while True:
        data, addr = sock.recvfrom(0xFFFF)
        response = decode(data)
        if response.transaction_id == request.transaction_id:
            return response, Endpoint(addr[0], addr[1]), len(data)


def local_of(sock: socket.socket) -> Endpoint:
    ip, port = sock.getsockname()[:2]
    return Endpoint(ip, port)


def other_of(local: Endpoint, server: Server) -> Endpoint:
    """RFC 5780 §6.1: the other IP and the other port."""
    ip = A2 if local.ip == A1 else A1
    port = server.alt_port if local.port == server.port else server.port
    return Endpoint(ip, port)


# --- the listeners -----------------------------------------------------------


def test_extra_listeners_are_the_other_three_addresses() -> None:
    sockets = Rfc5780Sockets(Rfc5780Responder(Endpoint(A1, 3478), Endpoint(A2, 3479)))
    udp_only = sockets.extra_listeners([ListenAddress(Transport.UDP, A1, 3478)])
    assert [str(a) for a in udp_only] == [
        "udp:127.0.0.1:3479",
        "udp:127.0.0.2:3478",
        "udp:127.0.0.2:3479",
    ]
    both = sockets.extra_listeners(
        [
            ListenAddress(Transport.UDP, A1, 3478),
            ListenAddress(Transport.TCP, A1, 3478),
            ListenAddress(Transport.UDP, A2, 3478),  # configured already
        ]
    )
    assert [str(a) for a in both] == [
        "udp:127.0.0.1:3479",
        "udp:127.0.0.2:3479",
        "tcp:127.0.0.1:3479",
        "tcp:127.0.0.2:3478",
        "tcp:127.0.0.2:3479",
    ]


def test_server_listens_on_all_four_addresses(server: Server) -> None:
    bound = {(a.transport, Endpoint(a.host, a.port)) for a in server.bound}
    for transport in (Transport.UDP, Transport.TCP):
        for address in server.addresses:
            assert (transport, address) in bound


# --- Binding: RFC 5780 §6.1 ----------------------------------------------------


@pytest.mark.parametrize("index", range(4))
def test_binding_carries_response_origin_and_other_address(
    server: Server, client: socket.socket, index: int
) -> None:
    local = server.addresses[index]
    response, source, _ = exchange(client, binding(), local)

    assert response.cls is MessageClass.SUCCESS
    assert source == local
    assert response.get(XorMappedAddress) == XorMappedAddress(*_ip_port(client))
    assert response.get(ResponseOrigin) == ResponseOrigin(local.ip, local.port)
    other = other_of(local, server)
    assert response.get(OtherAddress) == OtherAddress(other.ip, other.port)


def _ip_port(sock: socket.socket) -> tuple[str, int]:
    local = local_of(sock)
    return local.ip, local.port


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize(
    ("change_ip", "change_port"),
    [(False, False), (True, False), (False, True), (True, True)],
)
def test_change_request_answered_from_table_1_address(
    server: Server,
    client: socket.socket,
    index: int,
    change_ip: bool,
    change_port: bool,
) -> None:
    """RFC 5780 §6.1 Table 1: the flags pick the IP and port of the source."""
    local = server.addresses[index]
    other = other_of(local, server)
    expected = Endpoint(
        other.ip if change_ip else local.ip,
        other.port if change_port else local.port,
    )

    request = binding(ChangeRequest(change_ip=change_ip, change_port=change_port))
    response, source, _ = exchange(client, request, local, fingerprint=True)

    assert response.cls is MessageClass.SUCCESS
    assert source == expected
    assert response.get(ResponseOrigin) == ResponseOrigin(expected.ip, expected.port)
    # OTHER-ADDRESS is relative to where the request arrived, whatever the flags
    assert response.get(OtherAddress) == OtherAddress(other.ip, other.port)
    assert response.has_fingerprint


def test_response_port_redirects_to_another_local_port(
    server: Server, client: socket.socket
) -> None:
    """RFC 5780 §7.5: the response goes to the source IP and RESPONSE-PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind((A1, 0))
        other.settimeout(TIMEOUT)
        target = local_of(other)
        request = binding(ResponsePort(target.port))
        client.sendto(encode(request), (A1, server.port))

        response, source, _ = receive(other, request)
        assert source == Endpoint(A1, server.port)
        # the mapping reported is the one of the socket that asked
        assert response.get(XorMappedAddress) == XorMappedAddress(*_ip_port(client))

        # and nothing came back to the asking socket
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recvfrom(0xFFFF)


def test_response_port_with_change_request(
    server: Server, client: socket.socket
) -> None:
    """RFC 5780 §4.6 and §6.1 combined: another port, from another address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind((A1, 0))
        other.settimeout(TIMEOUT)
        request = binding(
            ChangeRequest(change_ip=True, change_port=True),
            ResponsePort(local_of(other).port),
        )
        client.sendto(encode(request), (A1, server.port))
        _, source, _ = receive(other, request)
    assert source == Endpoint(A2, server.alt_port)


@pytest.mark.parametrize("size", [0, 16, 200, 1400])
def test_padding_never_makes_the_response_bigger_than_the_request(
    server: Server, client: socket.socket, size: int
) -> None:
    """RFC 5780 §7.6, without amplification: PADDING adds at most the
    request's own size; a padded request gets a response just as big."""
    to = Endpoint(A1, server.port)
    _, _, plain_size = exchange(client, binding(), to, fingerprint=True)

    request = binding(Padding(bytes(size)))
    request_size = len(encode(request, fingerprint=True))
    response, _, response_size = exchange(client, request, to, fingerprint=True)

    assert response.cls is MessageClass.SUCCESS
    assert response.get(Padding) is not None
    assert response_size <= max(request_size, plain_size + 4)
    if request_size > plain_size + 4:
        # padded up to the request's size (within one 4-byte step)
        assert request_size - 4 < response_size <= request_size


def test_padding_with_response_port_is_refused(
    server: Server, client: socket.socket
) -> None:
    """RFC 5780 §6.1: PADDING and RESPONSE-PORT together are a 400, sent
    back to the source from the address the request arrived on."""
    request = binding(Padding(bytes(64)), ResponsePort(local_of(client).port + 1))
    response, source, _ = exchange(client, request, Endpoint(A2, server.alt_port))
    assert response.cls is MessageClass.ERROR
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 400
    assert source == Endpoint(A2, server.alt_port)


def test_rfc3489_request_gets_mapped_address(
    server: Server, client: socket.socket
) -> None:
    """RFC 8489 §12.2: no magic cookie, MAPPED-ADDRESS only."""
    request = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        os.urandom(12),
        (ChangeRequest(change_ip=False, change_port=True),),
        cookie=struct.unpack("!I", os.urandom(4))[0] | 1,
    )
    response, source, _ = exchange(client, request, Endpoint(A1, server.port))
    assert source == Endpoint(A1, server.alt_port)
    assert response.get(MappedAddress) == MappedAddress(*_ip_port(client))
    assert response.get(XorMappedAddress) is None


# --- TCP: RFC 5780 §3 --------------------------------------------------------


def _tcp_exchange(to: Endpoint, request: Message) -> Message:
    with socket.create_connection((to.ip, to.port), timeout=TIMEOUT) as sock:
        sock.sendall(encode(request))
        header = _read(sock, 20)
        length = struct.unpack("!H", header[2:4])[0]
        return decode(header + _read(sock, length))


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@pytest.mark.parametrize("index", [0, 3])
def test_tcp_binding_carries_other_address(server: Server, index: int) -> None:
    local = server.addresses[index]
    response = _tcp_exchange(local, binding())
    assert response.cls is MessageClass.SUCCESS
    assert response.get(ResponseOrigin) == ResponseOrigin(local.ip, local.port)
    other = other_of(local, server)
    assert response.get(OtherAddress) == OtherAddress(other.ip, other.port)


def test_tcp_change_request_is_refused(server: Server) -> None:
    """RFC 5780 §3: no other address can answer on a TCP connection."""
    request = binding(ChangeRequest(change_ip=True, change_port=False))
    response = _tcp_exchange(Endpoint(A1, server.port), request)
    assert response.cls is MessageClass.ERROR
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 400


# --- TURN on the same listeners ------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_turn_still_answers_on_the_primary_listener(
    server: Server, client: socket.socket, transport: str
) -> None:
    """RFC 8656 §7.2: an unauthenticated Allocate gets 401 with REALM and
    NONCE from the TURN server, not a 400 from the Binding responder."""
    request = binding(RequestedTransport(17), method=Method.ALLOCATE)
    primary = Endpoint(A1, server.port)
    if transport == "udp":
        response, source, _ = exchange(client, request, primary)
        assert source == primary
    else:
        response = _tcp_exchange(primary, request)
    assert response.cls is MessageClass.ERROR
    error = response.get(ErrorCodeAttr)
    assert error is not None and error.code == 401
    assert response.get(Realm) is not None and response.get(Nonce) is not None


# --- start-up refusals ---------------------------------------------------------


def config_error(**settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=settings)
    return str(info.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"listen": "udp:127.0.0.1:3478", "rfc5780": True},
            "rfc5780 = True: needs a second IP of this host in alternate_ip",
        ),
        (
            {"listen": "udp:127.0.0.1:3478", "rfc5780": True, "alternate_ip": A1},
            "alternate_ip = '127.0.0.1': must differ from the primary listen IP",
        ),
        (
            {"rfc5780": True, "alternate_ip": A2},
            "listen = 'udp:0.0.0.0:3478': rfc5780 needs a concrete listen IP",
        ),
        (
            {"listen": ["udp:0.0.0.0:3478"], "rfc5780": True, "alternate_ip": A2},
            "listen[0] = 'udp:0.0.0.0:3478': rfc5780 needs a concrete listen IP",
        ),
        (
            {"listen": "udp:127.0.0.1:3478", "rfc5780": True, "alternate_ip": "::2"},
            "alternate_ip = '::2': is IPv6, but no UDP listener is",
        ),
        (
            {"listen": "tcp:127.0.0.1:3478", "rfc5780": True, "alternate_ip": A2},
            "rfc5780 = True: needs a UDP listener",
        ),
        (
            {
                "listen": "udp:127.0.0.1:3478",
                "rfc5780": True,
                "alternate_ip": "0.0.0.0",
            },
            "alternate_ip = '0.0.0.0': the alternate address must be concrete",
        ),
        (
            {
                "listen": "udp:127.0.0.1:3478",
                "rfc5780": True,
                "alternate_ip": A2,
                "alternate_port": "3478",
            },
            "alternate_port = 3478: must differ from the primary port 3478",
        ),
        (
            {"listen": "udp:127.0.0.1:65535", "rfc5780": True, "alternate_ip": A2},
            "alternate_port = None: the primary port is 65535",
        ),
        (
            {"listen": "udp:127.0.0.1:3478", "alternate_ip": A2},
            "alternate_ip = '127.0.0.2': has no effect without rfc5780 = true",
        ),
    ],
)
def test_config_refuses_a_server_with_one_address(
    settings: dict[str, Any], expected: str
) -> None:
    assert expected in config_error(**settings)


def test_config_picks_the_primary_of_the_alternate_family() -> None:
    config = load_config(
        environ={},
        overrides={
            "listen": ["udp:[::1]:4000", "udp:127.0.0.1:3478", "tcp:127.0.0.1:3478"],
            "rfc5780": True,
            "alternate_ip": A2,
        },
    )
    addresses = config.rfc5780_addresses()
    assert addresses is not None
    assert (addresses.primary_ip, addresses.primary_port) == (A1, 3478)
    assert (addresses.alternate_ip, addresses.alternate_port) == (A2, 3479)


def test_rfc5780_is_off_by_default() -> None:
    config = ServerConfig()
    assert config.rfc5780 is False
    assert config.rfc5780_addresses() is None


def test_environment_turns_it_on() -> None:
    config = load_config(
        environ={
            "NATKIT_LISTEN": "udp:127.0.0.1:3478",
            "NATKIT_RFC5780": "true",
            "NATKIT_ALTERNATE_IP": A2,
            "NATKIT_ALTERNATE_PORT": "4000",
        }
    )
    addresses = config.rfc5780_addresses()
    assert addresses is not None and addresses.alternate_port == 4000


def _natkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", "from natkit.cli import main; main()", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--rfc5780"], "needs a second IP"),
        (["--rfc5780", "--alternate-ip", A2], "not a wildcard"),
        (
            ["--listen", "udp:127.0.0.1:3478", "--rfc5780", "--alternate-ip", A1],
            "must differ from the primary listen IP",
        ),
        (
            ["--listen", "udp:127.0.0.1:3478", "--rfc5780", "--alternate-ip", "::1"],
            "must be of one family",
        ),
    ],
)
def test_serve_refuses_with_one_line_and_exit_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    done = _natkit("serve", "--data-dir", str(tmp_path / "data"), *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("natkit: config error: ")
    assert expected in lines[0]
    assert done.stdout == ""


async def test_an_alternate_ip_not_on_this_host_stops_start_up(
    tmp_path: Path,
) -> None:
    """Binding 192.0.2.1 (TEST-NET-1) fails: the listener error names it.

    Only a bind is tried; nothing is sent.
    """
    if _bindable("192.0.2.1", 0, socket.SOCK_DGRAM):
        pytest.skip("192.0.2.1 is an address of this machine")
    config = load_config(
        environ={},
        overrides={
            "listen": f"udp:{A1}:{free_ports()}",
            "rfc5780": True,
            "alternate_ip": "192.0.2.1",
            "turn": False,
            "data_dir": str(tmp_path / "data"),
        },
    )
    with pytest.raises(StartupError, match=r"cannot listen on udp:192\.0\.2\.1:"):
        await serve(config, stop=asyncio.Event())
