"""Server CPU and memory: natkit serve against coturn, in the same run.

Run as ``python -m natkit.bench.cpu``. Three modes:

``--mode stun`` (the default)
    Server CPU per STUN Binding response. It starts ``natkit serve`` (on
    uvloop) and coturn's ``turnserver``, each on its own free UDP port on
    127.0.0.1, drives each in turn with the same ``natkit bench stun`` load
    (a separate process) for the same duration, and reads the server's CPU
    time (utime + stime of the process, its threads and its children, from
    ``/proc/PID/stat``) before and after each run. The result is server CPU
    microseconds per Binding response received by the client.
``--mode turn``
    Server CPU per relayed datagram, loss and latency of the TURN relay.
    Both servers run TURN with long-term credentials and relay to loopback
    peers; each run is one ``natkit bench turn`` process (allocations, one
    channel each to a UDP echo peer, paced ChannelData). Every echo is two
    relayed datagrams (ChannelData in, UDP to the peer; UDP from the peer,
    ChannelData out), so CPU per relayed datagram is server CPU divided by
    twice the echoes received.
``--mode turn-memory``
    Resident memory per allocation: each server is started afresh, its
    VmRSS read, ``--allocations`` allocations (each with a permission and a
    channel) set up by as many ``natkit bench turn`` processes as needed (at
    most 1000 allocations each), and VmRSS read again while all are held.

Runs alternate (natkit, coturn, natkit, ...) so that drift of the shared
machine hits both alike, and the medians over the runs and their ratio are
reported. On a machine with two or more CPUs the servers are pinned to the
last CPU and the load generator to the others. ``--contend PCT`` also runs
a busy loop on the servers' CPU for PCT % of every 20 ms, to compare how
each rides out losing its CPU for a while. Everything is bounded: at most
20 runs of at most 60 s each, only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from natkit import __version__

HOST = "127.0.0.1"
MAX_RUNS = 20
MAX_DURATION = 60.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("natkit", "coturn")

#: the long-term user both servers get in the TURN modes (loopback only)
TURN_USER = "bench"
TURN_PASSWORD = "bench-password"
TURN_REALM = "natkit-bench"
#: relay ports per server while both run at once (disjoint halves)
RELAY_PORTS = {"natkit": (49152, 57343), "coturn": (57344, 65535)}
#: relay ports in the memory mode (one server at a time): below Linux's
#: ephemeral range (32768-60999), where the load's own sockets take ports
ALL_RELAY_PORTS = (20000, 31999)
#: what one ``natkit bench turn`` process sets up at most
MAX_TURN_ALLOCATIONS = 1000
#: the most allocations the memory mode holds
MAX_MEMORY_ALLOCATIONS = 10_000
#: the default period of the ``--contend`` busy loop, seconds
CONTEND_PERIOD = 0.02


@dataclass(frozen=True, slots=True)
class RunResult:
    """One bench run against one server."""

    server: str
    responses: int
    sent: int
    lost: int
    responses_per_s: float
    cpu_s: float
    cpu_us_per_response: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None


def _median(results: Sequence[Any], server: str, name: str) -> float | None:
    values = [
        float(getattr(r, name))
        for r in results
        if r.server == server and getattr(r, name) is not None
    ]
    return statistics.median(values) if values else None


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians per server and the natkit/coturn ratio of CPU per response."""

    duration_s: float
    runs: int
    rate: float | None
    window: int
    sockets: int
    results: list[RunResult] = field(default_factory=list)
    #: server CPU milliseconds per second with no load, measured once
    idle_cpu_ms_per_s: dict[str, float] = field(default_factory=dict)

    def median(self, server: str, name: str) -> float | None:
        return _median(self.results, server, name)

    def ratio(self) -> float | None:
        natkit = self.median("natkit", "cpu_us_per_response")
        coturn = self.median("coturn", "cpu_us_per_response")
        if natkit is None or not coturn:
            return None
        return natkit / coturn


@dataclass(frozen=True, slots=True)
class TurnRunResult:
    """One ``natkit bench turn`` run against one server."""

    server: str
    allocations: int
    allocations_per_s: float
    sent: int
    received: int
    lost: int
    loss_pct: float
    relayed_per_s: float
    cpu_s: float
    #: server CPU (utime + stime) per relayed datagram
    cpu_us_per_relayed: float
    #: busy time of the servers' CPU (softirq included) per relayed datagram
    core_us_per_relayed: float | None
    #: time the server's threads were runnable but not running
    runqueue_wait_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    #: server CPU of the whole run per allocation (set-up, channel, delete):
    #: meaningful in runs that relay little
    cpu_us_per_allocation: float | None = None


@dataclass(frozen=True, slots=True)
class TurnSummary:
    """Medians of the TURN runs per server, and natkit/coturn ratios."""

    duration_s: float
    runs: int
    rate: float
    allocations: int
    size: int
    contend_pct: float
    results: list[TurnRunResult] = field(default_factory=list)
    contend_period_s: float = CONTEND_PERIOD

    def median(self, server: str, name: str) -> float | None:
        return _median(self.results, server, name)

    def ratio(self, name: str = "cpu_us_per_relayed") -> float | None:
        natkit = self.median("natkit", name)
        coturn = self.median("coturn", name)
        if natkit is None or not coturn:
            return None
        return natkit / coturn


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """Resident memory of one server before and while holding allocations."""

    server: str
    allocations: int
    allocated: int
    rss_before_kib: int
    rss_held_kib: int
    kib_per_allocation: float | None


@dataclass(frozen=True, slots=True)
class MemorySummary:
    """Memory per allocation, per server, median over the runs."""

    allocations: int
    runs: int
    results: list[MemoryResult] = field(default_factory=list)

    def median(self, server: str, name: str) -> float | None:
        return _median(self.results, server, name)

    def ratio(self) -> float | None:
        natkit = self.median("natkit", "kib_per_allocation")
        coturn = self.median("coturn", "kib_per_allocation")
        if natkit is None or not coturn:
            return None
        return natkit / coturn


# --- processes ---------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every live descendant, in seconds."""
    total = 0
    for each in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            # fields after the command: state(0) ppid(1) ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of ``pid`` spent runnable but not running (schedstat)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def cpu_busy_seconds(cpus: Sequence[int]) -> float | None:
    """Non-idle time of ``cpus`` from /proc/stat (user .. softirq), seconds."""
    if not cpus:
        return None
    wanted = {f"cpu{n}" for n in cpus}
    total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, _, rest = line.partition(" ")
            if name in wanted:
                # user nice system idle iowait irq softirq steal ...
                values = [int(v) for v in rest.split()]
                total += sum(values[0:3]) + values[5] + values[6]
    return total / _CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 when it cannot be read)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _split_cpus() -> tuple[list[int], list[int]]:
    """(server CPUs, load CPUs): the last CPU and the others, if two or more."""
    cpus = _cpus()
    if len(cpus) < 2:
        return [], []
    return cpus[-1:], cpus[:-1]


def _pin(cpus: Sequence[int], *, realtime: bool = False) -> Callable[[], None]:
    """A ``preexec_fn`` that runs the child on ``cpus`` only (if any).

    It also raises the child's open-file limit to the hard limit (a server
    holding thousands of relay sockets needs it) and, with ``realtime``,
    runs the child under SCHED_RR priority 1, so that other programs on a
    shared machine do not take its CPU (the kernel still keeps 5 % of each
    second for them).
    """
    wanted = set(cpus)

    def setup() -> None:
        if wanted:
            os.sched_setaffinity(0, wanted)
        _raise_file_limit()
        if realtime:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))

    return setup


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _natkit_command() -> list[str]:
    exe = Path(sys.executable).with_name("natkit")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from natkit.cli import main; main()"]


def _server_env(name: str, natkit_src: str | None) -> dict[str, str] | None:
    """The environment of a server: ``--natkit-src`` goes first on its path."""
    if name != "natkit" or not natkit_src:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (natkit_src, env.get("PYTHONPATH", "")) if p
    )
    return env


@contextlib.contextmanager
def started(
    name: str,
    argv: list[str],
    port: int,
    cpus: Sequence[int],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    realtime: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until it answers Binding, stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(cpus, realtime=realtime),
            env=env,
        )
    try:
        _wait_ready(name, proc, port, log)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_ready(name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    argv = [*_natkit_command(), "stun", f"{HOST}:{port}", "--timeout", "0.5"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{tail}")
        check = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        if check.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{name} did not answer Binding on {HOST}:{port} within 15 s")


@contextlib.contextmanager
def contention(
    pct: float,
    cpus: Sequence[int],
    lifetime: float,
    *,
    period: float = CONTEND_PERIOD,
    realtime: bool = False,
) -> Iterator[None]:
    """A busy loop on ``cpus`` for ``pct`` % of every ``period`` seconds.

    It stands for another program wanting the servers' CPU now and then; it
    stops by itself after ``lifetime`` seconds or when its parent goes.
    With ``realtime`` it runs at the servers' SCHED_RR priority, so it
    holds the CPU for all of its busy time.
    """
    if pct <= 0 or not cpus:
        yield
        return
    busy = period * pct / 100.0
    code = (
        "import os,time\n"
        f"end=time.monotonic()+{lifetime:g}; parent=os.getppid()\n"
        "while time.monotonic()<end and os.getppid()==parent:\n"
        f"    t=time.monotonic()+{busy:g}\n"
        "    while time.monotonic()<t: pass\n"
        f"    time.sleep({period - busy:g})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        preexec_fn=_pin(cpus, realtime=realtime),
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --- STUN ----------------------------------------------------------------------


def bench_once(
    name: str,
    pid: int,
    port: int,
    args: argparse.Namespace,
    cpus: Sequence[int],
) -> RunResult:
    """One load run against the server ``pid`` listening on ``port``."""
    argv = [
        *_natkit_command(),
        "bench",
        "stun",
        f"{HOST}:{port}",
        "--duration",
        f"{args.duration:g}",
        "--window",
        str(args.window),
        "--sockets",
        str(args.sockets),
        "--json",
    ]
    if args.rate:
        argv += ["--rate", f"{args.rate:g}"]
    before = process_cpu_seconds(pid)
    done = subprocess.run(
        argv,
        capture_output=True,
        timeout=args.duration + 30,
        check=False,
        preexec_fn=_pin(cpus),
    )
    after = process_cpu_seconds(pid)
    if not done.stdout.strip():
        raise SystemExit(f"bench against {name} failed: {done.stderr.decode()}")
    report = json.loads(done.stdout)
    responses = int(report["received"])
    cpu = after - before
    return RunResult(
        server=name,
        responses=responses,
        sent=int(report["sent"]),
        lost=int(report["lost"]),
        responses_per_s=float(report["responses_per_s"]),
        cpu_s=round(cpu, 3),
        cpu_us_per_response=round(cpu * 1e6 / responses, 3) if responses else 0.0,
        latency_p50_ms=report["latency_p50_ms"],
        latency_p99_ms=report["latency_p99_ms"],
    )


def coturn_argv(port: int, workdir: Path) -> list[str]:
    """coturn as a bare STUN responder: UDP only, no auth, no TURN, no TLS."""
    return [
        _turnserver(),
        "-n",
        "--listening-ip",
        HOST,
        "--listening-port",
        str(port),
        "--stun-only",
        "--no-auth",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-software-attribute",
        "--log-file",
        "stdout",
        "--pidfile",
        str(workdir / "turnserver.pid"),
    ]


def natkit_argv(port: int, workdir: Path) -> list[str]:
    """natkit serve on one UDP listener (it runs on uvloop when installed)."""
    return [
        *_natkit_command(),
        "serve",
        "--listen",
        f"udp:{HOST}:{port}",
        "--data-dir",
        str(workdir / "natkit-data"),
        "--log-level",
        "warning",
    ]


def _turnserver() -> str:
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise SystemExit("turnserver not found: install the coturn package")
    return turnserver


# --- TURN ------------------------------------------------------------------------


def coturn_base_options(workdir: Path) -> list[str]:
    """turnserver flags every test and bench run shares: no TLS, DTLS or CLI;
    log, user database and pid file in ``workdir`` (not under /var)."""
    return [
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file",
        str(workdir / "turn.log"),
        "--simple-log",
        "--no-stdout-log",
        "--userdb",
        str(workdir / "turndb"),
        "--pidfile",
        str(workdir / "turnserver.pid"),
    ]


def coturn_turn_argv(port: int, workdir: Path, ports: tuple[int, int]) -> list[str]:
    """coturn as a TURN server: long-term credentials, loopback peers allowed."""
    workdir.mkdir(parents=True, exist_ok=True)
    return [
        _turnserver(),
        "-n",
        "--listening-ip",
        HOST,
        "--relay-ip",
        HOST,
        "--listening-port",
        str(port),
        "--min-port",
        str(ports[0]),
        "--max-port",
        str(ports[1]),
        "--lt-cred-mech",
        "--user",
        f"{TURN_USER}:{TURN_PASSWORD}",
        "--realm",
        TURN_REALM,
        "--allow-loopback-peers",
        *coturn_base_options(workdir),
    ]


def natkit_turn_argv(port: int, workdir: Path, ports: tuple[int, int]) -> list[str]:
    """natkit serve as a TURN server, no quotas, loopback peers allowed."""
    return [
        *_natkit_command(),
        "serve",
        "--listen",
        f"udp:{HOST}:{port}",
        "--relay-ip",
        HOST,
        "--relay-ports",
        f"{ports[0]}-{ports[1]}",
        "--user",
        f"{TURN_USER}:{TURN_PASSWORD}",
        "--realm",
        TURN_REALM,
        "--allow-peer",
        f"{HOST}/32",
        "--user-quota",
        "0",
        "--max-allocations",
        "0",
        "--data-dir",
        str(workdir / "natkit-data"),
        "--log-level",
        "warning",
    ]


TURN_ARGV = {"natkit": natkit_turn_argv, "coturn": coturn_turn_argv}


def _bench_turn_argv(
    port: int, *, allocations: int, duration: float, rate: float, size: int
) -> list[str]:
    return [
        *_natkit_command(),
        "bench",
        "turn",
        f"{HOST}:{port}",
        "--user",
        TURN_USER,
        "--password",
        TURN_PASSWORD,
        "--realm",
        TURN_REALM,
        "--allocations",
        str(allocations),
        "--duration",
        f"{duration:g}",
        "--rate",
        f"{rate:g}",
        "--size",
        str(size),
        "--json",
    ]


def turn_once(
    name: str,
    pid: int,
    port: int,
    args: argparse.Namespace,
    server_cpus: Sequence[int],
    load_cpus: Sequence[int],
) -> TurnRunResult:
    """One ``natkit bench turn`` run against the server ``pid`` on ``port``."""
    argv = _bench_turn_argv(
        port,
        allocations=args.allocations,
        duration=args.duration,
        rate=args.rate,
        size=args.size,
    )
    cpu_before = process_cpu_seconds(pid)
    wait_before = runqueue_wait_seconds(pid)
    core_before = cpu_busy_seconds(server_cpus)
    done = subprocess.run(
        argv,
        capture_output=True,
        timeout=args.duration + 150,
        check=False,
        preexec_fn=_pin(load_cpus, realtime=args.realtime),
    )
    cpu = process_cpu_seconds(pid) - cpu_before
    wait = runqueue_wait_seconds(pid) - wait_before
    core_after = cpu_busy_seconds(server_cpus)
    if not done.stdout.strip():
        raise SystemExit(f"bench against {name} failed: {done.stderr.decode()}")
    report = json.loads(done.stdout)
    received = int(report["received"])
    relayed = 2 * received
    allocated = int(report["allocated"])
    core = None
    if core_before is not None and core_after is not None and relayed:
        core = round((core_after - core_before) * 1e6 / relayed, 3)
    return TurnRunResult(
        server=name,
        allocations=allocated,
        allocations_per_s=float(report["allocations_per_s"]),
        sent=int(report["sent"]),
        received=received,
        lost=int(report["lost"]),
        loss_pct=float(report["loss_pct"]),
        relayed_per_s=float(report["relayed_per_s"]),
        cpu_s=round(cpu, 3),
        cpu_us_per_relayed=round(cpu * 1e6 / relayed, 3) if relayed else 0.0,
        core_us_per_relayed=core,
        runqueue_wait_s=round(wait, 3),
        latency_p50_ms=report["latency_p50_ms"],
        latency_p99_ms=report["latency_p99_ms"],
        cpu_us_per_allocation=round(cpu * 1e6 / allocated, 1) if allocated else None,
    )


def run_turn(args: argparse.Namespace) -> TurnSummary:
    """Both servers at once; runs alternate between them."""
    server_cpus, load_cpus = _split_cpus()
    summary = TurnSummary(
        duration_s=args.duration,
        runs=args.runs,
        rate=args.rate,
        allocations=args.allocations,
        size=args.size,
        contend_pct=args.contend,
        contend_period_s=args.contend_period,
    )
    with tempfile.TemporaryDirectory(prefix="natkit-cpu-") as tmp:
        workdir = Path(tmp)
        ports = {name: free_udp_port() for name in SERVERS}
        with contextlib.ExitStack() as stack:
            procs = {
                name: stack.enter_context(
                    started(
                        name,
                        TURN_ARGV[name](ports[name], workdir / name, RELAY_PORTS[name]),
                        ports[name],
                        server_cpus,
                        workdir / f"{name}.log",
                        _server_env(name, args.natkit_src),
                        realtime=args.realtime,
                    )
                )
                for name in SERVERS
            }
            lifetime = args.runs * 2 * (args.duration + 160)
            stack.enter_context(
                contention(
                    args.contend,
                    server_cpus,
                    lifetime,
                    period=args.contend_period,
                    realtime=args.realtime,
                )
            )
            for i in range(args.runs):
                for name in SERVERS if i % 2 == 0 else SERVERS[::-1]:
                    result = turn_once(
                        name,
                        procs[name].pid,
                        ports[name],
                        args,
                        server_cpus,
                        load_cpus,
                    )
                    summary.results.append(result)
                    _say(
                        f"run {i + 1}/{args.runs} {name}: "
                        f"{result.relayed_per_s:.0f} echoes/s, "
                        f"loss {result.loss_pct:.2f} %, "
                        f"p99 {result.latency_p99_ms} ms, "
                        f"{result.cpu_us_per_relayed:.2f} us CPU per relayed, "
                        f"{result.allocations_per_s:.0f} allocations/s",
                        err=True,
                    )
                    time.sleep(args.pause)
    return summary


# --- memory per allocation ----------------------------------------------------------


def memory_once(
    name: str,
    args: argparse.Namespace,
    workdir: Path,
    server_cpus: Sequence[int],
) -> MemoryResult:
    """Start ``name`` afresh, hold ``args.allocations`` on it, read VmRSS."""
    from natkit.bench.turn import hold_allocations

    port = free_udp_port()
    rundir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    argv = TURN_ARGV[name](port, rundir, ALL_RELAY_PORTS)
    env = _server_env(name, args.natkit_src)
    with started(
        name, argv, port, server_cpus, rundir / "log", env, realtime=args.realtime
    ) as proc:
        time.sleep(1.0)
        before = rss_kib(proc.pid)
        held: list[int] = []

        def on_held(count: int) -> None:
            # let the server finish what it was doing, then read
            time.sleep(1.0)
            held.append(rss_kib(proc.pid))

        allocated = _run_fast(
            hold_allocations(
                HOST,
                port,
                username=TURN_USER,
                password=TURN_PASSWORD,
                realm=TURN_REALM,
                count=args.allocations,
                on_held=on_held,
            )
        )
    after = held[0] if held else before
    per = (after - before) / allocated if allocated else None
    return MemoryResult(
        server=name,
        allocations=args.allocations,
        allocated=allocated,
        rss_before_kib=before,
        rss_held_kib=after,
        kib_per_allocation=None if per is None else round(per, 2),
    )


def _run_fast(coro: Any) -> int:
    from natkit.bench.stun import run_on_fast_loop

    result: int = run_on_fast_loop(coro)
    return result


def run_memory(args: argparse.Namespace) -> MemorySummary:
    """One server at a time, started afresh for every run."""
    server_cpus, load_cpus = _split_cpus()
    if load_cpus:
        os.sched_setaffinity(0, set(load_cpus))
    _raise_file_limit()
    summary = MemorySummary(allocations=args.allocations, runs=args.runs)
    with tempfile.TemporaryDirectory(prefix="natkit-mem-") as tmp:
        for i in range(args.runs):
            for name in SERVERS if i % 2 == 0 else SERVERS[::-1]:
                result = memory_once(name, args, Path(tmp), server_cpus)
                summary.results.append(result)
                _say(
                    f"run {i + 1}/{args.runs} {name}: {result.allocated} allocations, "
                    f"RSS {result.rss_before_kib} -> {result.rss_held_kib} KiB, "
                    f"{result.kib_per_allocation} KiB per allocation",
                    err=True,
                )
    return summary


# --- the STUN mode, and output ------------------------------------------------------


def coturn_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "coturn"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": sys.version.split()[0],
        "natkit": __version__,
        "coturn": coturn_version(),
    }


def run(args: argparse.Namespace) -> Summary:
    cpus = _cpus()
    server_cpus = cpus[-1:] if len(cpus) > 1 else []
    client_cpus = cpus[:-1] if len(cpus) > 1 else []
    summary = Summary(
        duration_s=args.duration,
        runs=args.runs,
        rate=args.rate,
        window=args.window,
        sockets=args.sockets,
    )
    with tempfile.TemporaryDirectory(prefix="natkit-cpu-") as tmp:
        workdir = Path(tmp)
        ports = {"natkit": free_udp_port(), "coturn": free_udp_port()}
        argvs = {
            "natkit": natkit_argv(ports["natkit"], workdir),
            "coturn": coturn_argv(ports["coturn"], workdir),
        }
        with contextlib.ExitStack() as stack:
            procs = {
                name: stack.enter_context(
                    started(
                        name,
                        argvs[name],
                        ports[name],
                        server_cpus,
                        workdir / f"{name}.log",
                        _server_env(name, args.natkit_src),
                    )
                )
                for name in ("natkit", "coturn")
            }
            if args.idle:
                for name in ("natkit", "coturn"):
                    summary.idle_cpu_ms_per_s[name] = idle_cpu(
                        procs[name].pid, args.idle
                    )
            for i in range(args.runs):
                for name in (
                    ("natkit", "coturn") if i % 2 == 0 else ("coturn", "natkit")
                ):
                    result = bench_once(
                        name, procs[name].pid, ports[name], args, client_cpus
                    )
                    summary.results.append(result)
                    _say(
                        f"run {i + 1}/{args.runs} {name}: "
                        f"{result.responses_per_s:.0f} responses/s, "
                        f"{result.cpu_us_per_response:.2f} us CPU per response",
                        err=True,
                    )
    return summary


def idle_cpu(pid: int, seconds: float) -> float:
    """Server CPU milliseconds per second while nothing is sent to it."""
    before = process_cpu_seconds(pid)
    time.sleep(seconds)
    return round((process_cpu_seconds(pid) - before) * 1000.0 / seconds, 2)


def to_markdown(summary: Summary) -> str:
    lines = [
        "| server | responses/s | server CPU µs / response | p50 ms | p99 ms | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("natkit", "coturn"):
        lost = sum(r.lost for r in summary.results if r.server == name)

        def m(field_name: str, fmt: str, who: str = name) -> str:
            value = summary.median(who, field_name)
            return "-" if value is None else format(value, fmt)

        lines.append(
            f"| {name} | {m('responses_per_s', '.0f')} | "
            f"{m('cpu_us_per_response', '.2f')} | {m('latency_p50_ms', '.3f')} | "
            f"{m('latency_p99_ms', '.3f')} | {lost} |"
        )
    ratio = summary.ratio()
    text = "-" if ratio is None else f"{ratio:.2f}"
    lines.append("")
    lines.append(f"natkit / coturn CPU per response: **{text}** (median of runs)")
    for name, value in summary.idle_cpu_ms_per_s.items():
        lines.append(f"idle {name}: {value:.2f} ms CPU per second")
    return "\n".join(lines)


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def turn_to_markdown(summary: TurnSummary) -> str:
    """One row per server: medians, and the range of CPU per relayed datagram."""
    # set-up dominated runs (fewer echoes than allocations): CPU per allocation
    setup = summary.rate * summary.duration_s <= summary.allocations
    lines = [
        "| server | allocations/s | echoes/s | loss % (max) | p50 ms | p99 ms "
        "| CPU µs / relayed (range) | core µs / relayed | run-queue wait s |"
        + (" CPU µs / allocation |" if setup else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if setup else ""),
    ]
    for name in SERVERS:
        runs = [r for r in summary.results if r.server == name]
        cpu = [r.cpu_us_per_relayed for r in runs]
        spread = f" ({min(cpu):.1f} - {max(cpu):.1f})" if cpu else ""
        worst = max((r.loss_pct for r in runs), default=0.0)

        def m(field_name: str, fmt: str, who: str = name) -> str:
            return _fmt(summary.median(who, field_name), fmt)

        lines.append(
            f"| {name} | {m('allocations_per_s', '.0f')} | "
            f"{m('relayed_per_s', '.0f')} | {m('loss_pct', '.2f')} ({worst:.2f}) | "
            f"{m('latency_p50_ms', '.3f')} | {m('latency_p99_ms', '.2f')} | "
            f"{m('cpu_us_per_relayed', '.1f')}{spread} | "
            f"{m('core_us_per_relayed', '.1f')} | {m('runqueue_wait_s', '.2f')} |"
            + (f" {m('cpu_us_per_allocation', '.0f')} |" if setup else "")
        )
    lines.append("")
    cpu_ratio = _fmt(summary.ratio(), ".2f")
    alloc_ratio = _fmt(summary.ratio("allocations_per_s"), ".2f")
    if setup:
        alloc_ratio += (
            ", CPU per allocation **"
            + _fmt(summary.ratio("cpu_us_per_allocation"), ".2f")
            + "**"
        )
    lines.append(
        f"natkit / coturn: CPU per relayed datagram **{cpu_ratio}**, "
        f"allocations/s **{alloc_ratio}** (medians of {summary.runs} runs; "
        f"{summary.allocations} allocations, {summary.rate:g} pps, "
        f"{summary.size} B, {summary.duration_s:g} s"
        + (
            f", contention {summary.contend_pct:g} % of every "
            f"{summary.contend_period_s * 1000:g} ms"
            if summary.contend_pct
            else ""
        )
        + ")"
    )
    return "\n".join(lines)


def memory_to_markdown(summary: MemorySummary) -> str:
    lines = [
        "| server | allocations held | RSS before KiB | RSS held KiB "
        "| KiB / allocation |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in SERVERS:

        def m(field_name: str, fmt: str, who: str = name) -> str:
            return _fmt(summary.median(who, field_name), fmt)

        lines.append(
            f"| {name} | {m('allocated', '.0f')} | {m('rss_before_kib', '.0f')} | "
            f"{m('rss_held_kib', '.0f')} | {m('kib_per_allocation', '.2f')} |"
        )
    lines.append("")
    lines.append(
        f"natkit / coturn memory per allocation: **{_fmt(summary.ratio(), '.2f')}** "
        f"(medians of {summary.runs} runs)"
    )
    return "\n".join(lines)


def _say(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m natkit.bench.cpu",
        description="Server CPU (STUN, TURN) and memory per allocation: "
        "natkit vs coturn.",
        epilog="examples: python -m natkit.bench.cpu --duration 10 --runs 5 "
        "--rate 20000 | python -m natkit.bench.cpu --mode turn --rate 20000 "
        "--allocations 100 --runs 3 | python -m natkit.bench.cpu --mode "
        "turn-memory --allocations 10000",
    )
    parser.add_argument(
        "--mode", choices=("stun", "turn", "turn-memory"), default="stun"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per server")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s cap (stun); ChannelData packets/s (turn, default 20000)",
    )
    parser.add_argument("--window", type=int, default=64, help="requests in flight")
    parser.add_argument("--sockets", type=int, default=4, help="client UDP sockets")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="also measure idle CPU (seconds)"
    )
    parser.add_argument(
        "--allocations", type=int, default=100, help="TURN allocations (turn modes)"
    )
    parser.add_argument("--size", type=int, default=100, help="TURN payload bytes")
    parser.add_argument(
        "--contend",
        type=float,
        default=0.0,
        metavar="PCT",
        help="busy loop on the servers' CPU for PCT %% of every period (turn)",
    )
    parser.add_argument(
        "--contend-period",
        type=float,
        default=CONTEND_PERIOD,
        metavar="SECONDS",
        help="period of the --contend busy loop (default 0.02)",
    )
    parser.add_argument(
        "--pause", type=float, default=3.0, help="seconds between TURN runs"
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run servers and load under SCHED_RR (root): a shared machine's "
        "other programs then do not take their CPUs",
    )
    parser.add_argument(
        "--natkit-src",
        metavar="DIR",
        help="run natkit serve from this source tree (to compare two versions)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    if not 0 <= args.idle <= MAX_DURATION:
        parser.error(f"--idle must be in [0, {MAX_DURATION:g}]")
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be 1..{MAX_RUNS}")
    if not 0 <= args.contend < 100:
        parser.error("--contend must be in [0, 100)")
    if not 0.001 <= args.contend_period <= 10:
        parser.error("--contend-period must be in [0.001, 10] s")
    if not 0 <= args.pause <= MAX_DURATION:
        parser.error(f"--pause must be in [0, {MAX_DURATION:g}]")
    limit = (
        MAX_MEMORY_ALLOCATIONS if args.mode == "turn-memory" else (MAX_TURN_ALLOCATIONS)
    )
    if not 1 <= args.allocations <= limit:
        parser.error(f"--allocations must be 1..{limit} in mode {args.mode}")
    if args.mode == "turn" and args.rate is None:
        args.rate = 20_000.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine()
    summary: Summary | TurnSummary | MemorySummary
    if args.mode == "turn":
        summary = run_turn(args)
        table = turn_to_markdown(summary)
    elif args.mode == "turn-memory":
        summary = run_memory(args)
        table = memory_to_markdown(summary)
    else:
        summary = run(args)
        table = to_markdown(summary)
    if args.json:
        data = asdict(summary)
        data["machine"] = info
        data["ratio"] = summary.ratio()
        _say(json.dumps(data, indent=2))
    else:
        _say(
            f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
            f"coturn {info['coturn']}"
        )
        _say(table)


if __name__ == "__main__":
    main()
