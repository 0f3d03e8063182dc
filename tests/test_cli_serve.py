"""``natkit serve`` as a subprocess: start, answer, stop; bad config exits 2."""

import asyncio
import io
import json
import logging
import os
import queue
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

import natkit
from natkit.server.config import load_config
from natkit.server.daemon import StartupError
from natkit.server.daemon import serve as run_serve
from natkit.server.logging import configure_logging
from natkit.stun.attributes import XorMappedAddress
from natkit.stun.constants import MessageClass, Method
from natkit.stun.message import Message, decode, encode, new_transaction_id

TIMEOUT = 10.0
SRC = str(Path(natkit.__file__).resolve().parent.parent)
COMMAND = [sys.executable, "-c", "from natkit.cli import main; main()"]


def natkit_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_natkit(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        env=env or natkit_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


class Serve:
    """A running ``natkit serve``; a thread collects its stderr lines."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [*COMMAND, "serve", *args],
            env=env or natkit_env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _take(self, timeout: float) -> bool:
        """Move one line into ``lines``; False at end of output."""
        line = self._queue.get(timeout=timeout)
        if line is None:
            return False
        self.lines.append(line)
        return True

    def wait_for(self, text: str, count: int = 1) -> None:
        """Wait until ``count`` stderr lines contain ``text``."""
        deadline = time.monotonic() + TIMEOUT
        while sum(text in line for line in self.lines) < count:
            try:
                more = self._take(max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no {text!r} in time; stderr so far: {self.lines}")
            if not more:
                pytest.fail(f"exited {self.proc.wait()}; stderr: {self.lines}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=TIMEOUT)
        while self._take(TIMEOUT):
            pass
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def ports() -> dict[str, int]:
    return {
        "udp": free_port(socket.SOCK_DGRAM),
        "tcp": free_port(socket.SOCK_STREAM),
        "tls": free_port(socket.SOCK_STREAM),
    }


@pytest.fixture
def serve(tmp_path: Path, ports: dict[str, int]) -> Iterator[Serve]:
    server = Serve(
        "--listen",
        f"udp:127.0.0.1:{ports['udp']}",
        "--listen",
        f"tcp:127.0.0.1:{ports['tcp']}",
        "--listen",
        f"tls:127.0.0.1:{ports['tls']}",
        "--data-dir",
        str(tmp_path / "data"),
        cwd=tmp_path,
    )
    try:
        server.wait_for("listening", 3)
        yield server
    finally:
        server.kill()


def binding() -> tuple[Message, bytes]:
    msg = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
    return msg, encode(msg, fingerprint=True)


def check_reply(reply: bytes, request: Message, local: tuple[str, int]) -> None:
    response = decode(reply)
    assert response.cls is MessageClass.SUCCESS
    assert response.transaction_id == request.transaction_id
    assert response.get(XorMappedAddress) == XorMappedAddress(local[0], local[1])


def test_serve_answers_udp_tcp_tls_and_stops_on_sigterm(
    serve: Serve, ports: dict[str, int], tmp_path: Path
) -> None:
    for proto in ("udp", "tcp", "tls"):
        assert any(
            line.endswith(f"listening {proto} 127.0.0.1:{ports[proto]}")
            for line in serve.lines
        ), serve.lines
    assert sum("generated self-signed TLS certificate" in x for x in serve.lines) == 1

    request, data = binding()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(data, ("127.0.0.1", ports["udp"]))
        check_reply(sock.recv(2048), request, sock.getsockname())

    request, data = binding()
    with socket.create_connection(("127.0.0.1", ports["tcp"]), TIMEOUT) as sock:
        sock.sendall(data)
        check_reply(sock.recv(2048), request, sock.getsockname())

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request, data = binding()
    raw = socket.create_connection(("127.0.0.1", ports["tls"]), TIMEOUT)
    with context.wrap_socket(raw) as sock:
        sock.sendall(data)
        check_reply(sock.recv(2048), request, sock.getsockname())

    assert serve.stop(signal.SIGTERM) == 0
    assert any("SIGTERM received" in line for line in serve.lines)
    assert any("stopped: 3 responses" in line for line in serve.lines)
    assert not any("Traceback" in line for line in serve.lines)

    data_dir = tmp_path / "data"
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("tls-cert.pem", "tls-key.pem"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600


def test_second_start_reuses_the_certificate_and_sigint_stops(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    args = ["--listen", f"tls:127.0.0.1:{ports['tls']}", "--data-dir", "d"]
    for round_ in range(2):
        server = Serve(*args, cwd=tmp_path)
        try:
            server.wait_for("listening tls")
            assert server.stop(signal.SIGINT) == 0
        finally:
            server.kill()
        generated = any("generated self-signed" in x for x in server.lines)
        assert generated == (round_ == 0)


def test_json_log_format_from_the_environment(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    env = natkit_env(
        NATKIT_LOG_FORMAT="json",
        NATKIT_LISTEN=f"udp:127.0.0.1:{ports['udp']}",
    )
    server = Serve("--data-dir", "d", cwd=tmp_path, env=env)
    try:
        server.wait_for("listening")
        assert server.stop() == 0
    finally:
        server.kill()
    records = [json.loads(line) for line in server.lines]
    listening = [r for r in records if r["msg"].startswith("listening")]
    assert listening == [
        {
            "ts": listening[0]["ts"],
            "level": "info",
            "logger": "natkit.server.daemon",
            "msg": f"listening udp 127.0.0.1:{ports['udp']}",
        }
    ]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--listen", "udp:1.2.3.4:99999"],
            {},
            "natkit: config error: listen[0] = 'udp:1.2.3.4:99999': "
            "port must be 1-65535",
        ),
        (
            [],
            {"NATKIT_MAX_CONNECTIONS": "lots"},
            "natkit: config error: max_connections = 'lots': input should be a "
            "valid integer, unable to parse string as an integer",
        ),
        (
            ["--stream-idle-timeout", "-3"],
            {},
            "natkit: config error: stream_idle_timeout = '-3': input should be "
            "greater than 0",
        ),
        (
            ["--log-format", "xml"],
            {},
            "natkit: config error: log_format = 'xml': input should be 'text' or "
            "'json'",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_natkit("serve", *args, env=natkit_env(**env), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [expected]
    assert result.stdout == ""
    assert not (tmp_path / "natkit-data").exists()


def test_unknown_key_in_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "natkit.toml"
    config.write_text('software = "x"\nlisten_on = "udp:0.0.0.0:1"\n')
    result = run_natkit("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "natkit: config error: listen_on = 'udp:0.0.0.0:1': unknown key"
    ]


def test_address_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_natkit(
            "serve",
            "--listen",
            f"udp:127.0.0.1:{port}",
            "--log-level",
            "error",
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"natkit: error: cannot listen on udp:127.0.0.1:{port}: Address already in use"
    ]


def test_help_and_version() -> None:
    result = run_natkit("serve", "--help")
    assert result.returncode == 0
    assert "--listen PROTO:HOST[:PORT]" in result.stdout
    assert "natkit serve --listen udp:0.0.0.0:3478" in result.stdout
    version = run_natkit("--version")
    assert version.stdout.strip() == f"natkit, version {natkit.__version__}"


# --- the daemon in process ---------------------------------------------------------


def test_serve_in_process_reports_bound_ports_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="natkit.server.daemon")
    listen = [f"udp:127.0.0.1:{free_port(socket.SOCK_DGRAM)}"]
    ipv6 = True
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
            listen.append(f"tcp:[::1]:{sock.getsockname()[1]}")
    except OSError:
        ipv6 = False  # no IPv6 loopback here
    config = load_config(
        environ={},
        overrides={"listen": listen, "data_dir": str(tmp_path / "nested" / "data")},
    )
    seen: list[str] = []

    async def main() -> int:
        stop = asyncio.Event()

        def ready(bound: tuple[object, ...]) -> None:
            seen.extend(str(b) for b in bound)
            stop.set()

        stats = await run_serve(config, stop=stop, on_ready=ready)
        return stats.success

    assert asyncio.run(main()) == 0
    assert seen[0] == listen[0]
    messages = [r.getMessage() for r in caplog.records]
    assert f"listening udp {listen[0][4:]}" in messages
    if ipv6:
        assert seen[1] == listen[1]
        assert f"listening tcp {listen[1][4:]}" in messages
    assert stat.S_IMODE((tmp_path / "nested" / "data").stat().st_mode) == 0o700


def test_bad_certificate_is_a_startup_error(tmp_path: Path) -> None:

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("junk")
    key.write_text("junk")
    config = load_config(
        environ={},
        overrides={
            "listen": [f"tls:127.0.0.1:{free_port(socket.SOCK_STREAM)}"],
            "tls_cert": str(cert),
            "tls_key": str(key),
            "data_dir": str(tmp_path / "data"),
        },
    )
    with pytest.raises(StartupError, match="cannot load certificate"):
        asyncio.run(run_serve(config))


# --- log output --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging(fmt: Literal["text", "json"]) -> None:
    stream = io.StringIO()
    handler = configure_logging("warning", fmt, stream=stream)
    try:
        log = logging.getLogger("natkit.server.daemon")
        log.info("not shown")
        log.warning("listening %s %s", "tcp", "[::1]:3478")
        again = configure_logging("warning", fmt, stream=stream)  # replaces
        assert handler not in logging.getLogger("natkit").handlers
        handler = again
    finally:
        logging.getLogger("natkit").removeHandler(handler)
        logging.getLogger("natkit").setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    if fmt == "json":
        record = json.loads(lines[0])
        assert record["level"] == "warning"
        assert record["logger"] == "natkit.server.daemon"
        assert record["msg"] == "listening tcp [::1]:3478"
        assert record["ts"].endswith("Z")
    else:
        assert lines[0].endswith(
            "WARNING natkit.server.daemon: listening tcp [::1]:3478"
        )
