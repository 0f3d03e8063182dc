"""Helpers for the interop tests: free ports, server processes, client output.

Everything here talks to loopback only. Servers run as subprocesses whose
output goes to a log file in a temporary directory; :class:`ServerProcess`
polls them until they answer a STUN Binding request and always stops them
(SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from natkit.bench.cpu import coturn_base_options
from natkit.stun.constants import HEADER_LENGTH, MAGIC_COOKIE_BYTES, Method

#: how long a server may take from exec to answering STUN
START_TIMEOUT = 15.0
#: how long a server may take to exit after SIGTERM before it is killed
STOP_TIMEOUT = 5.0
#: an upper bound for one client run (none of them should need more than ~2 s)
CLIENT_TIMEOUT = 10.0

#: the long-term credentials (RFC 8489 §9.2) every TURN server fixture accepts
TURN_USER = "interop"
TURN_PASSWORD = "interop-secret"
TURN_REALM = "natkit.interop"
#: how many relay ports a TURN server fixture gets
RELAY_WINDOW = 400

#: RFC 8489 §5: a success response to Binding has type 0x0101, an error 0x0111
_BINDING_SUCCESS = 0x0101
_BINDING_ERROR = 0x0111


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP literal and port; ``str()`` gives ``ip:port`` or ``[ip]:port``."""

    ip: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET

    def __str__(self) -> str:
        return (
            f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"
        )


#: how long aioice may take to delete its TURN allocations after close()
AIOICE_CLOSE_TIMEOUT = 5.0


def _runs_aioice(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}aioice{os.sep}" in code.co_filename


async def close_aioice(*connections: Any) -> None:
    """Close aioice Connections and wait for the tasks they leave running.

    aioice's TURN transport deletes its allocation (Refresh 0) in a task
    that ``close()`` does not wait for, and closes its TCP or TLS socket only
    after that. If the event loop ends first, the task is cancelled and the
    socket stays open until garbage collection, which pytest then reports
    as an unraisable ResourceWarning in whichever test happens to be running.
    """
    for connection in connections:
        await connection.close()
    pending = [task for task in asyncio.all_tasks() if _runs_aioice(task)]
    if pending:
        await asyncio.wait(pending, timeout=AIOICE_CLOSE_TIMEOUT)
    # closed transports call connection_lost (and close the socket) one
    # loop iteration later
    await asyncio.sleep(0.01)


def coturn_argv(
    binary: str, endpoint: Endpoint, workdir: Path, *options: str
) -> list[str]:
    """``turnserver`` on ``endpoint`` (UDP and TCP) with ``options``: command
    line only (``-n``), no TLS, DTLS or CLI, every file in ``workdir``."""
    return [
        binary,
        "-n",
        "--listening-ip",
        endpoint.ip,
        "--relay-ip",
        endpoint.ip,
        "--listening-port",
        str(endpoint.port),
        *coturn_base_options(workdir),
        *options,
    ]


def coturn_long_term(
    user: str, password: str, realm: str, ports: tuple[int, int]
) -> list[str]:
    """coturn options for one long-term user, loopback peers and a relay port range."""
    low, high = ports
    return [
        "--lt-cred-mech",
        "--user",
        f"{user}:{password}",
        "--realm",
        realm,
        "--allow-loopback-peers",
        "--min-port",
        str(low),
        "--max-port",
        str(high),
    ]


def require_binary(name: str, package: str) -> str:
    """The path of an installed program, or skip the test saying why."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} not installed (Debian package {package}); .ci/run installs it"
        )
    return path


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound on this machine (containers may lack IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- free ports -------------------------------------------------------------


def _bindable(ip: str, port: int, kind: socket.SocketKind) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def free_udp_port(ip: str = "127.0.0.1") -> int:
    """A port the kernel says is free for UDP on ``ip``."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
    return port


def free_port(ip: str = "127.0.0.1", *, attempts: int = 50) -> int:
    """A port free for both UDP and TCP on ``ip`` (STUN uses one for both).

    There is a small window between this check and the server binding the
    port; the server fixtures fail with the server's log if it loses the race.
    """
    for _ in range(attempts):
        port = free_udp_port(ip)
        if _bindable(ip, port, socket.SOCK_STREAM):
            return port
    raise RuntimeError(f"no port free for UDP and TCP on {ip} in {attempts} tries")


def free_udp_port_pair(ip: str = "0.0.0.0", *, attempts: int = 50) -> int:
    """A port P with P and P+1 both free for UDP (the RFC 3489 client opens two)."""
    for _ in range(attempts):
        port = free_udp_port(ip)
        if port < 65535 and _bindable(ip, port + 1, socket.SOCK_DGRAM):
            return port
    raise RuntimeError(f"no free pair of UDP ports on {ip} in {attempts} tries")


def relay_port_window(size: int = RELAY_WINDOW) -> tuple[int, int]:
    """A random ``size``-port range in 50000-59999 for a TURN server's relays.

    Both servers skip relay ports that another program holds, so the range
    need not be free; a random one keeps parallel runs apart.
    """
    low = 50000 + secrets.randbelow(10000 - size)
    return low, low + size - 1


# -- readiness probes -------------------------------------------------------


def binding_request(transaction_id: bytes) -> bytes:
    """RFC 8489 §6.1: a Binding request with no attributes."""
    kind = int(Method.BINDING).to_bytes(2, "big")
    return kind + b"\x00\x00" + MAGIC_COOKIE_BYTES + transaction_id


def is_binding_answer(data: bytes, transaction_id: bytes) -> bool:
    """A Binding success or error response to the request with this id."""
    if len(data) < HEADER_LENGTH:
        return False
    kind = int.from_bytes(data[0:2], "big")
    return kind in (_BINDING_SUCCESS, _BINDING_ERROR) and data[8:20] == transaction_id


def udp_answers(server: Endpoint, *, wait: float = 0.2) -> bool:
    """Whether a Binding request over UDP gets an answer within ``wait`` s."""
    transaction_id = os.urandom(12)
    with socket.socket(server.family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        try:
            sock.sendto(binding_request(transaction_id), (server.ip, server.port))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                data = sock.recv(2048)
                if is_binding_answer(data, transaction_id):
                    return True
        except OSError:  # timeout, or ICMP port unreachable while starting
            return False
    return False


def udp_echoes(peer: Endpoint, *, wait: float = 0.2) -> bool:
    """Whether a UDP datagram to ``peer`` comes back unchanged within ``wait`` s
    (the readiness probe of an echo peer such as ``turnutils_peer``)."""
    payload = b"natkit-echo-probe " + os.urandom(8)
    with socket.socket(peer.family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        try:
            sock.sendto(payload, (peer.ip, peer.port))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if sock.recv(2048) == payload:
                    return True
        except OSError:
            return False
    return False


def tcp_accepts(server: Endpoint, *, wait: float = 0.2) -> bool:
    """Whether a TCP connection to ``server`` is accepted within ``wait`` s."""
    try:
        with socket.create_connection((server.ip, server.port), timeout=wait):
            return True
    except OSError:
        return False


# -- server processes -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listener:
    """One endpoint a server should serve, and whether it is UDP or a stream.

    A UDP listener is ready when it answers a STUN Binding request, or, with
    ``echo``, when it sends a datagram back unchanged (an echo peer).
    """

    endpoint: Endpoint
    udp: bool
    echo: bool = False

    def ready(self) -> bool:
        if self.udp:
            if self.echo:
                return udp_echoes(self.endpoint)
            return udp_answers(self.endpoint)
        return tcp_accepts(self.endpoint)


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """A server started by a fixture: its process, where it listens, its log."""

    name: str
    process: subprocess.Popen[bytes]
    endpoint: Endpoint
    log_path: Path
    workdir: Path
    tls_endpoint: Endpoint | None = None

    def log_text(self) -> str:
        """The server's output so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL; reaps the process in every case."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def running_server(
    name: str,
    argv: Sequence[str],
    *,
    workdir: Path,
    listeners: Sequence[Listener],
    env: Mapping[str, str] | None = None,
    tls_endpoint: Endpoint | None = None,
) -> Iterator[ServerProcess]:
    """Start ``argv`` in ``workdir``, wait until every listener answers, stop it.

    Fails the test with the server's log if it exits early or is not ready in
    :data:`START_TIMEOUT` seconds.
    """
    log_path = workdir / f"{name}.out"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=workdir,
            env=dict(os.environ if env is None else env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(
        name=name,
        process=process,
        endpoint=listeners[0].endpoint,
        log_path=log_path,
        workdir=workdir,
        tls_endpoint=tls_endpoint,
    )
    try:
        _wait_ready(server, listeners)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: ServerProcess, listeners: Sequence[Listener]) -> None:
    pending = list(listeners)
    deadline = time.monotonic() + START_TIMEOUT
    while pending:
        code = server.process.poll()
        if code is not None:
            pytest.fail(
                f"{server.name} exited with {code} before it was ready:\n"
                f"{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            waiting = ", ".join(str(item.endpoint) for item in pending)
            pytest.fail(
                f"{server.name} not answering on {waiting} after {START_TIMEOUT} s:\n"
                f"{server.log_tail()}"
            )
        pending = [item for item in pending if not item.ready()]
        if pending:
            time.sleep(0.05)


# -- clients ----------------------------------------------------------------


def run_client(argv: Sequence[str], *, timeout: float = CLIENT_TIMEOUT) -> Completed:
    """Run a client to completion; fail (not hang) if it takes too long.

    ``turnutils_stunclient`` waits forever when no answer comes, so every
    client run has a time limit.
    """
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        pytest.fail(f"{argv[0]} gave no result in {timeout} s; output:\n{out}")
    return Completed(
        argv=tuple(argv),
        returncode=done.returncode,
        stdout=_text(done.stdout),
        stderr=_text(done.stderr),
    )


def run_clients_together(
    argvs: Mapping[str, Sequence[str]], *, timeout: float = CLIENT_TIMEOUT
) -> dict[str, Completed]:
    """Start every client at once and wait for all: their runs overlap.

    For clients such as ``turnutils_uclient`` that spend seconds waiting
    whatever they do. Output goes to temporary files (no pipe can fill up).
    A client still running after ``timeout`` seconds is killed (SIGKILL, so
    its return code is -9) and its ``stderr`` says so.
    """
    started: dict[str, _Started] = {}
    try:
        for name, argv in argvs.items():
            started[name] = _start_to_files(argv)
        deadline = time.monotonic() + timeout
        return {name: _collect(run, timeout, deadline) for name, run in started.items()}
    finally:
        for run in started.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
            run.out.close()
            run.err.close()


@dataclass(frozen=True, slots=True)
class _Started:
    """A client started by :func:`run_clients_together` and its output files."""

    argv: tuple[str, ...]
    process: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]


def _start_to_files(argv: Sequence[str]) -> _Started:
    out: IO[bytes] = tempfile.TemporaryFile()
    err: IO[bytes] = tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
    except OSError:
        out.close()
        err.close()
        raise
    return _Started(tuple(argv), process, out, err)


def _collect(run: _Started, timeout: float, deadline: float) -> Completed:
    note = ""
    try:
        code = run.process.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        run.process.kill()
        code = run.process.wait()
        note = f"\n(killed: no result in {timeout} s)\n"
    run.out.seek(0)
    run.err.seek(0)
    return Completed(
        argv=run.argv,
        returncode=code,
        stdout=_text(run.out.read()),
        stderr=_text(run.err.read()) + note,
    )


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished client run, with its output as text."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """Everything about the run, for assertion messages."""
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


# turnutils_stunclient (coturn 4.6.1) prints, on stdout and again through its
# logger, one line per answer:
#   0: : IPv4. UDP reflexive addr: 127.0.0.1:42142
# It exits 0 whatever happens; failures are only visible as other lines:
#   "Cannot read the response"   (no XOR-MAPPED-ADDRESS in the response)
#   "The response is an error 400 (Bad Request)"
_REFLEXIVE = re.compile(r"IPv[46]\. UDP reflexive addr: (\S+):(\d+)\s*$", re.M)
TURNUTILS_FAILURES = ("Cannot read the response", "The response is an error")


def turnutils_reflexive(output: str) -> list[Endpoint]:
    """The reflexive addresses ``turnutils_stunclient`` reported."""
    return [Endpoint(ip, int(port)) for ip, port in _REFLEXIVE.findall(output)]


# Debian's `stun` (stun-client 0.97, RFC 3489) with -v writes its trace to
# stderr; each decoded response shows `MappedAddress = IP:PORT`. Its first
# request ("test I") comes from the -p source port, so the first
# MappedAddress line is that port's mapping.
_MAPPED_3489 = re.compile(r"^MappedAddress = (\S+):(\d+)\s*$", re.M)
_PRIMARY = re.compile(r"^Primary: (.*?)\s*$", re.M)
_TEST_RESULT = re.compile(r"^test (I|II|III|I\(2\)) = ([01])\s*$", re.M)


def rfc3489_mapped(trace: str) -> list[Endpoint]:
    """Every MAPPED-ADDRESS the RFC 3489 client decoded, in order."""
    return [Endpoint(ip, int(port)) for ip, port in _MAPPED_3489.findall(trace)]


def rfc3489_primary(stdout: str) -> str | None:
    """The NAT type line (``Open``, ``Firewall``, ``Blocked or could not...``)."""
    match = _PRIMARY.search(stdout)
    return match.group(1) if match else None


def rfc3489_test_answered(trace: str, name: str) -> bool:
    """Whether the client's RFC 3489 §10.1 test ``name`` ("I", "II", "III",
    "I(2)") got a response, from its ``test I = 1`` summary line."""
    for test, flag in _TEST_RESULT.findall(trace):
        if test == name:
            return bool(flag == "1")
    return False


# turnutils_uclient (coturn 4.6.1) ends with a summary, one line each, after a
# "SECONDS: : " prefix:
#   start_mclient: tot_send_msgs=40, tot_recv_msgs=40
#   start_mclient: tot_send_bytes ~ 4800, tot_recv_bytes ~ 4800
#   Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
# (progress lines before them also say tot_send_msgs, after "msz=N, "). It
# exits 0 when it got that far, 255 after an error such as
#   channel bind: error 403 (Forbidden)
_UCLIENT_MSGS = re.compile(
    r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.M
)
_UCLIENT_LOST = re.compile(
    r"Total lost packets (\d+) \(([\d.]+)%\), total send dropped (\d+)", re.M
)
_UCLIENT_ERROR = re.compile(r"error (\d{3}) \(([^)]*)\)")


@dataclass(frozen=True, slots=True)
class UclientSummary:
    """The totals ``turnutils_uclient`` printed at the end of a run."""

    sent: int
    received: int
    lost: int
    send_dropped: int


def uclient_summary(output: str) -> UclientSummary | None:
    """The final totals of a ``turnutils_uclient`` run; None if it printed
    none (it stopped at an error)."""
    msgs = _UCLIENT_MSGS.findall(output)
    lost = _UCLIENT_LOST.findall(output)
    if not msgs or not lost:
        return None
    sent, received = msgs[-1]
    lost_packets, _, dropped = lost[-1]
    return UclientSummary(int(sent), int(received), int(lost_packets), int(dropped))


def uclient_errors(output: str) -> list[int]:
    """The STUN error codes ``turnutils_uclient`` reported (``error 403 (...)``)."""
    return [int(code) for code, _ in _UCLIENT_ERROR.findall(output)]


def json_output(done: Completed) -> object:
    """The JSON a ``--json`` command printed on stdout."""
    try:
        parsed: object = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not JSON ({exc}):\n{done.describe()}")
    return parsed
