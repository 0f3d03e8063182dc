"""``natkit probe`` (RFC 5780) against the kernel NATs of the lab.

One lab has a host behind each of the five NAT types (h1..h5) and a sixth
host (h6) behind a port-restricted cone whose UDP binding timeout is 30 s.
``natkit serve --rfc5780`` runs in the internet namespace on both server
addresses; ``natkit probe`` on each host must name the NAT the lab built and
report the mapping and filtering behaviour that NatType expects.

The binding lifetime search (RFC 5780 §4.6) idles for minutes, so it starts
in the background on h6 as soon as the lab is up, when its test is selected,
and its test (the last one) collects the result.

The interop tests run coturn's ``turnserver`` (two listening IPs: RFC 5780 on)
in the same internet namespace on ports 3480/3481, and compare coturn's
``turnutils_natdiscovery -m -f`` with ``natkit probe`` on the same host against
the same coturn.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from natkit.lab.nat_rules import Behaviour, NatSpec, NatType
from natkit.lab.topology import Lab, LabHost

from .conftest import prefix

#: h1..h5 in this order; h6 is the lifetime host.
TYPES = (
    NatType.OPEN,
    NatType.FULL_CONE,
    NatType.RESTRICTED_CONE,
    NatType.PORT_RESTRICTED_CONE,
    NatType.SYMMETRIC,
)
LIFETIME_TYPE = NatType.PORT_RESTRICTED_CONE
LIFETIME_TIMEOUT = 30
LIFETIME_MAX = 45
LIFETIME_TEST = "test_binding_lifetime"

NATKIT_PORT = 3478  # natkit serve; alternate port 3479
COTURN_PORT = 3480  # coturn turnserver; alternate port 3481

#: Sends a STUN Binding request until something answers (at most 10 s).
STUN_PING = r"""
import os, socket, struct, sys, time
dest = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
end = time.monotonic() + 10.0
while time.monotonic() < end:
    s.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12), dest)
    try:
        s.recvfrom(2048)
        sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"""


def natkit_argv(*args: str) -> list[str]:
    """``natkit ARGS`` with the Python running the tests."""
    return [sys.executable, "-m", "natkit", *args]


def wait_stun(lab: Lab, endpoints: Sequence[tuple[str, int]]) -> bool:
    """True once each ``(ip, port)`` answers a Binding request from inet."""
    for ip, port in endpoints:
        ping = lab.exec("inet", [sys.executable, "-c", STUN_PING, ip, str(port)])
        if ping.returncode != 0:
            return False
    return True


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


@dataclass(frozen=True, slots=True)
class LifetimeRun:
    """The background ``natkit probe --lifetime`` on the lifetime host."""

    proc: subprocess.Popen[str]
    out: IO[str]
    started: float


@dataclass(frozen=True, slots=True)
class ProbeLab:
    """The lab, its natkit server, and the lifetime run if one was started."""

    lab: Lab
    workdir: Path
    lifetime: LifetimeRun | None

    def host_of(self, nat: NatType) -> LabHost:
        return self.lab.host(TYPES.index(nat) + 1)


@pytest.fixture(scope="module")
def probe_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProbeLab]:
    """The lab with ``natkit serve --rfc5780`` in the internet namespace."""
    workdir = tmp_path_factory.mktemp("probe-lab")
    nats: list[NatType | NatSpec] = [*TYPES]
    nats.append(NatSpec(type=LIFETIME_TYPE, udp_timeout=LIFETIME_TIMEOUT))
    with Lab(nats, name_prefix=prefix("probe")) as lab:
        s1, s2 = lab.server_ips
        serve = natkit_argv(
            "serve",
            "--rfc5780",
            "--listen",
            f"udp:{s1}:{NATKIT_PORT}",
            "--alternate-ip",
            s2,
            "--no-turn",
            "--data-dir",
            str(workdir / "data"),
        )
        log = workdir / "serve.log"
        with log.open("w") as sink:
            server = lab.popen(
                "inet",
                serve,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=lab.python_env(),
                cwd=workdir,
            )
        ports = (NATKIT_PORT, NATKIT_PORT + 1)
        if not wait_stun(lab, [(ip, p) for ip in (s1, s2) for p in ports]):
            server.kill()
            pytest.fail(f"natkit serve --rfc5780 did not answer:\n{tail(log)}")

        lifetime = None
        if any(item.name == LIFETIME_TEST for item in request.session.items):
            lifetime = start_lifetime(lab, workdir)
        yield ProbeLab(lab=lab, workdir=workdir, lifetime=lifetime)
        if lifetime is not None:
            lifetime.out.close()


def start_lifetime(lab: Lab, workdir: Path) -> LifetimeRun:
    """Start ``natkit probe --lifetime`` on the lifetime host (h6)."""
    host = lab.host(len(TYPES) + 1)
    argv = natkit_argv(
        "probe",
        lab.server_ips[0],
        "--json",
        "--lifetime",
        "--lifetime-max",
        str(LIFETIME_MAX),
        "--timeout",  # the lab answers in < 1 ms; expired trials wait this long
        "1",
    )
    out = (workdir / "lifetime.json").open("w+")
    proc = lab.popen(
        host,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.PIPE,
        text=True,
        env=lab.python_env(),
    )
    return LifetimeRun(proc=proc, out=out, started=time.monotonic())


def probe_all(
    lab: Lab, targets: Sequence[tuple[LabHost, list[str]]], timeout: float = 60.0
) -> list[tuple[int, str, str]]:
    """Run each ``(host, argv)`` at the same time; (exit status, stdout, stderr)."""
    procs = [
        lab.popen(
            host,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lab.python_env(),
        )
        for host, argv in targets
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(killed after {timeout:g} s)"
        results.append((proc.returncode, out, err))
    return results


def parse_probe(status: int, out: str, err: str) -> dict[str, Any]:
    """The JSON object of one ``natkit probe --json`` run."""
    if status != 0:
        pytest.fail(f"natkit probe exited {status}: {err.strip()}")
    try:
        data: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"natkit probe printed no JSON: {out!r} {err.strip()}")
    return data


def check_behaviour(nat: NatType, host: LabHost, result: dict[str, Any]) -> None:
    """``result`` (natkit probe JSON) describes the NAT ``nat`` of ``host``."""
    context = f"{nat} on {host.name}: {result}"
    assert result["nat_type"] == nat, context
    assert result["filtering"] == nat.filtering, context
    assert str(result["mapped"]).rpartition(":")[0] == host.public_ip, context
    if nat.mapping is None:
        # no NAT: the server sees the host's own address (which maps, trivially,
        # independently of the endpoint)
        assert result["mapped"] == result["local"], context
        assert result["mapping"] == Behaviour.ENDPOINT_INDEPENDENT, context
    else:
        assert result["mapping"] == nat.mapping, context
    if nat.port_allocation is not None and nat is not NatType.SYMMETRIC:
        assert result["port_allocation"] == nat.port_allocation, context


# --- natkit probe against natkit serve --rfc5780 ------------------------------


@pytest.fixture(scope="module")
def natkit_results(probe_lab: ProbeLab) -> dict[NatType, dict[str, Any]]:
    """``natkit probe S1 --json`` on h1..h5, all at once."""
    lab = probe_lab.lab
    argv = natkit_argv("probe", lab.server_ips[0], "--json")
    hosts = [probe_lab.host_of(nat) for nat in TYPES]
    runs = probe_all(lab, [(host, argv) for host in hosts])
    return {nat: parse_probe(*run) for nat, run in zip(TYPES, runs, strict=True)}


@pytest.mark.root
@pytest.mark.parametrize("nat", TYPES, ids=str)
def test_probe_classifies_kernel_nat(
    probe_lab: ProbeLab, natkit_results: dict[NatType, dict[str, Any]], nat: NatType
) -> None:
    """RFC 5780 §4.3/§4.4 on a real NAT: natkit's verdict is the NAT built."""
    result = natkit_results[nat]
    check_behaviour(nat, probe_lab.host_of(nat), result)
    assert result["other_address"] is not None


# --- interop: coturn turnserver and turnutils_natdiscovery --------------------

_NATDISCOVERY_VERDICT = re.compile(
    r"NAT with (Endpoint Independent|Address Dependent|Address and Port Dependent) "
    r"(Mapping|Filtering)!"
)


def parse_natdiscovery(text: str) -> dict[str, str]:
    """{"mapping": ..., "filtering": ...} from natdiscovery's verdict lines."""
    verdicts: dict[str, str] = {}
    for behaviour, kind in _NATDISCOVERY_VERDICT.findall(text):
        verdicts[kind.lower()] = behaviour.lower().replace(" ", "-")
    return verdicts


@pytest.fixture(scope="module")
def coturn(probe_lab: ProbeLab) -> Iterator[int]:
    """coturn ``turnserver`` with both server IPs (RFC 5780) in inet; its port."""
    for tool in ("turnserver", "turnutils_natdiscovery"):
        if shutil.which(tool) is None:
            pytest.skip(f"coturn's '{tool}' is not installed")
    lab, workdir = probe_lab.lab, probe_lab.workdir / "coturn"
    workdir.mkdir()
    s1, s2 = lab.server_ips
    argv = ["turnserver", "-n", "--listening-ip", s1, "--listening-ip", s2]
    argv += ["--listening-port", str(COTURN_PORT)]
    argv += ["--alt-listening-port", str(COTURN_PORT + 1), "--relay-ip", s1]
    argv += ["--no-tls", "--no-dtls", "--no-cli", "--stun-only", "--no-auth"]
    argv += ["--log-file", str(workdir / "turn.log"), "--simple-log"]
    argv += ["--no-stdout-log", "--userdb", str(workdir / "turndb")]
    argv += ["--pidfile", str(workdir / "turnserver.pid")]
    server = lab.popen(
        "inet",
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    ports = (COTURN_PORT, COTURN_PORT + 1)
    if not wait_stun(lab, [(ip, p) for ip in (s1, s2) for p in ports]):
        server.kill()
        pytest.fail(f"coturn did not answer:\n{tail(workdir / 'turn.log')}")
    yield COTURN_PORT
    server.terminate()
    server.wait(timeout=5)


@dataclass(frozen=True, slots=True)
class InteropResult:
    natkit: dict[str, Any]
    natdiscovery: dict[str, str]
    natdiscovery_output: str


@pytest.fixture(scope="module")
def interop_results(probe_lab: ProbeLab, coturn: int) -> dict[NatType, InteropResult]:
    """natdiscovery -m -f and natkit probe against coturn on h1..h5, all at once."""
    lab = probe_lab.lab
    server = lab.server_ips[0]
    discovery = ["turnutils_natdiscovery", "-m", "-f", "-p", str(coturn), server]
    probe = natkit_argv("probe", f"{server}:{coturn}", "--json")
    hosts = [probe_lab.host_of(nat) for nat in TYPES]
    runs = probe_all(lab, [(h, discovery) for h in hosts] + [(h, probe) for h in hosts])
    results: dict[NatType, InteropResult] = {}
    for index, nat in enumerate(TYPES):
        status, out, err = runs[index]
        results[nat] = InteropResult(
            natkit=parse_probe(*runs[len(TYPES) + index]),
            natdiscovery=parse_natdiscovery(out),
            natdiscovery_output=f"exit {status}\n{out}\n{err}",
        )
    return results


@pytest.mark.root
@pytest.mark.interop
@pytest.mark.parametrize("nat", TYPES, ids=str)
def test_natdiscovery_agrees_with_natkit_probe(
    probe_lab: ProbeLab, interop_results: dict[NatType, InteropResult], nat: NatType
) -> None:
    """coturn's natdiscovery and natkit probe, same host, same coturn: same NAT."""
    result = interop_results[nat]
    seen = result.natdiscovery
    assert set(seen) == {"mapping", "filtering"}, result.natdiscovery_output
    assert seen["mapping"] == result.natkit["mapping"], result
    assert seen["filtering"] == result.natkit["filtering"], result
    # and both are right about the NAT the lab built
    check_behaviour(nat, probe_lab.host_of(nat), result.natkit)


def test_parse_natdiscovery() -> None:
    """The verdict lines of turnutils_natdiscovery (coturn 4.6) are read."""
    text = (
        "NAT with Endpoint Independent Mapping!\n=====\n"
        "STUN receive timeout..\nNAT with Address and Port Dependent Filtering!\n"
    )
    assert parse_natdiscovery(text) == {
        "mapping": "endpoint-independent",
        "filtering": "address-and-port-dependent",
    }
    assert parse_natdiscovery("") == {}


# --- binding lifetime (RFC 5780 §4.6), last: it collects the background run ---


@pytest.mark.root
@pytest.mark.slow
def test_binding_lifetime(probe_lab: ProbeLab) -> None:
    """A 30 s UDP binding timeout is measured as 30 s ± 5 s (--lifetime-max 45)."""
    run = probe_lab.lifetime
    assert run is not None, "the lifetime probe was not started"
    try:
        _, err = run.proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        pytest.fail("natkit probe --lifetime took more than 10 minutes")
    took = time.monotonic() - run.started
    run.out.seek(0)
    result = parse_probe(run.proc.returncode, run.out.read(), err)
    host = probe_lab.lab.host(len(TYPES) + 1)
    print(f"natkit probe --lifetime: {result['binding_lifetime_s']} s in {took:.0f} s")
    check_behaviour(LIFETIME_TYPE, host, result)
    lifetime = result["binding_lifetime_s"]
    assert lifetime is not None, result["notes"]
    assert abs(lifetime - LIFETIME_TIMEOUT) <= 5, result["notes"]
