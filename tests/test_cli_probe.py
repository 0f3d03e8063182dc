"""``natkit probe`` against ``natkit serve --rfc5780`` on loopback.

The server is a real ``natkit serve`` process on 127.0.0.1 with the
alternate address 127.0.0.2 (both on ``lo``); the probe runs in-process
through click's runner, and once as a real process. Loopback has no NAT:
the answer is "open", endpoint-independent mapping and filtering.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import natkit
from natkit.cli import main
from natkit.stun.constants import MessageClass
from natkit.stun.message import decode, encode
from natkit.stun.transaction import binding_request

A1 = "127.0.0.1"
A2 = "127.0.0.2"
SRC = str(Path(natkit.__file__).resolve().parent.parent)
COMMAND = [sys.executable, "-c", "from natkit.cli import main; main()"]
START_TIMEOUT = 15.0


def _bindable(ip: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


pytestmark = pytest.mark.skipif(
    not _bindable(A2, 0, socket.SOCK_DGRAM),
    reason="127.0.0.2 cannot be bound on this machine",
)


def free_port(attempts: int = 100) -> int:
    """A port P with P and P + 1 free for UDP and TCP on 127.0.0.1 and .2."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((A1, 0))
            port = int(sock.getsockname()[1])
        if port < 0xFFFF and all(
            _bindable(ip, p, kind)
            for ip in (A1, A2)
            for p in (port, port + 1)
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        ):
            return port
    raise RuntimeError("no free pair of ports on 127.0.0.1 and 127.0.0.2")


def natkit_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATKIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def answers(ip: str, port: int) -> bool:
    request = binding_request()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(encode(request), (ip, port))
            response = decode(sock.recv(2048))
        except OSError:
            return False
    return response.cls is MessageClass.SUCCESS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``natkit serve --rfc5780`` on 127.0.0.1:P, alternate 127.0.0.2:P+1."""
    workdir = tmp_path_factory.mktemp("probe-serve")
    port = free_port()
    argv = [
        *COMMAND,
        "serve",
        "--listen",
        f"udp:{A1}:{port}",
        "--listen",
        f"tcp:{A1}:{port}",
        "--rfc5780",
        "--alternate-ip",
        A2,
        "--data-dir",
        str(workdir / "data"),
        "--no-turn",
    ]
    log = (workdir / "serve.out").open("wb")
    process = subprocess.Popen(
        argv,
        cwd=workdir,
        env=natkit_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (answers(A1, port) and answers(A2, port + 1)):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = (workdir / "serve.out").read_text(errors="replace")
                pytest.fail(f"natkit serve --rfc5780 did not start:\n{output}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((A1, 0))
    yield sock.getsockname()[1]
    sock.close()


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _assert_one_error_line(
    code: int, out: str, err: str, expected: str, *, exit_code: int
) -> None:
    assert code == exit_code, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("natkit: error: ")
    assert expected in lines[0]


# --- results -------------------------------------------------------------------


def test_human_summary(server: int) -> None:
    code, out, err = _run("probe", f"{A1}:{server}", "--timeout", "1")
    assert code == 0, err
    for line in (
        "NAT type          open (no NAT)",
        "mapping           endpoint-independent",
        "filtering         endpoint-independent",
        "mapped address    127.0.0.1:",
        f"server            {A1}:{server} (other address {A2}:{server + 1})",
        "hairpinning       yes",
        "port allocation   preserving",
        "binding lifetime  not measured (--lifetime)",
        "keepalive         not needed",
        "notes",
    ):
        assert line in out
    assert err == ""


def test_json(server: int) -> None:
    code, out, err = _run("probe", f"{A1}:{server}", "--json", "-4")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    assert data["mapping"] == "endpoint-independent"
    assert data["filtering"] == "endpoint-independent"
    assert data["nat_type"] == "open"
    assert data["mapped"] == data["local"]
    assert data["hairpinning"] is True
    assert data["port_allocation"] == "preserving"
    assert data["binding_lifetime_s"] is None
    assert data["other_address"] == f"{A2}:{server + 1}"
    assert data["server"] == f"{A1}:{server}"
    assert "tests" not in data


def test_json_verbose_lists_the_tests(server: int) -> None:
    code, out, err = _run("probe", f"{A1}:{server}", "--json", "--verbose")
    assert code == 0, err
    names = [t["name"] for t in json.loads(out)["tests"]]
    assert names[:3] == ["test I", "filtering test II", "filtering test III"]
    assert "hairpinning" in names


def test_lifetime(server: int) -> None:
    code, out, err = _run(
        "probe", f"{A1}:{server}", "--json", "--lifetime-max", "1", "--timeout", "1"
    )
    assert code == 0, err
    assert json.loads(out)["binding_lifetime_s"] == 1.0
    assert "measuring the binding lifetime may take about" in err


def test_no_response_is_a_result(silent_port: int) -> None:
    code, out, err = _run("probe", f"{A1}:{silent_port}", "--timeout", "0.3")
    assert code == 0, err
    assert "NAT type          UDP blocked (no response)" in out
    assert "udp-blocked: no response from" in out


def test_extra_server_flag(server: int, silent_port: int) -> None:
    code, out, err = _run(
        "probe",
        f"{A1}:{silent_port}",
        "--server",
        f"{A1}:{server}",
        "--timeout",
        "0.3",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["nat_type"] == "undetermined"
    assert any(f"{A1}:{server} answered" in note for note in data["notes"])


# --- errors: one line, non-zero ------------------------------------------------------


@pytest.mark.parametrize("address", ["[::1", "127.0.0.1:99999", "host:port", ":3478"])
def test_malformed_address(address: str) -> None:
    code, out, err = _run("probe", address)
    _assert_one_error_line(code, out, err, "malformed address", exit_code=2)


def test_malformed_extra_server() -> None:
    code, out, err = _run("probe", "127.0.0.1", "--server", "a b")
    _assert_one_error_line(code, out, err, "malformed address", exit_code=2)


def test_unresolvable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    code, out, err = _run("probe", "stun.example:3478")
    _assert_one_error_line(code, out, err, "cannot resolve 'stun.example'", exit_code=1)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lifetime-max", "5000"], "invalid value for '--lifetime-max'"),
        (["--lifetime-max", "0"], "invalid value for '--lifetime-max'"),
        (["--timeout", "0"], "invalid value for '--timeout'"),
        (["--local", "0.0.0.0"], "give this host's own unicast IP"),
        (["--local", "nowhere"], "is not an IP address"),
        (["--frobnicate"], "no such option"),
    ],
)
def test_bad_options(args: list[str], expected: str) -> None:
    code, out, err = _run("probe", "127.0.0.1", *args)
    _assert_one_error_line(code, out, err, expected, exit_code=2)


def test_help_has_an_example() -> None:
    code, out, _ = _run("probe", "--help")
    assert code == 0
    assert "Examples:" in out
    assert "natkit probe 192.0.2.1:3478 --json" in out
    assert "--lifetime-max" in out


def test_real_process(server: int, silent_port: int) -> None:
    """Through a real interpreter: JSON on stdout, nothing on stderr."""
    done = subprocess.run(
        [*COMMAND, "probe", f"{A1}:{server}", "--json"],
        env=natkit_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["nat_type"] == "open"

    bad = subprocess.run(
        [*COMMAND, "probe", "127.0.0.1:0"],
        env=natkit_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _assert_one_error_line(
        bad.returncode, bad.stdout, bad.stderr, "bad port '0'", exit_code=2
    )
