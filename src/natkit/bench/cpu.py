"""Server CPU per STUN Binding response: natkit serve against coturn.

Run as ``python -m natkit.bench.cpu``. It starts ``natkit serve`` (on uvloop)
and coturn's ``turnserver``, each on its own free UDP port on 127.0.0.1,
drives each in turn with the same ``natkit bench stun`` load (a separate
process) for the same duration, and reads the server's CPU time
(utime + stime of the process and its children, from ``/proc/PID/stat``)
before and after each run. The result is server CPU microseconds per Binding
response received by the client, the median over the runs, and the ratio.

Runs alternate (natkit, coturn, natkit, ...) so that drift of the shared
machine hits both alike. On a machine with two or more CPUs the servers are
pinned to one CPU and the load generator to another. Everything is bounded:
at most 20 runs of at most 60 s each, only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

from natkit import __version__

HOST = "127.0.0.1"
MAX_RUNS = 20
MAX_DURATION = 60.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        values = [
            float(getattr(r, name))
            for r in self.results
            if r.server == server and getattr(r, name) is not None
        ]
        return statistics.median(values) if values else None

    def ratio(self) -> float | None:
        natkit = self.median("natkit", "cpu_us_per_response")
        coturn = self.median("coturn", "cpu_us_per_response")
        if natkit is None or not coturn:
            return None
        return natkit / coturn


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


def _pin(cpus: Sequence[int]) -> Callable[[], None] | None:
    """A ``preexec_fn`` that runs the child on ``cpus`` only (if any)."""
    if not cpus:
        return None
    wanted = set(cpus)
    return lambda: os.sched_setaffinity(0, wanted)


def _natkit_command() -> list[str]:
    exe = Path(sys.executable).with_name("natkit")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from natkit.cli import main; main()"]


@contextlib.contextmanager
def started(
    name: str, argv: list[str], port: int, cpus: Sequence[int], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until it answers Binding, stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(cpus),
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
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise SystemExit("turnserver not found: install the coturn package")
    return [
        turnserver,
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


def _say(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m natkit.bench.cpu",
        description="Server CPU per STUN Binding response: natkit vs coturn.",
        epilog="example: python -m natkit.bench.cpu --duration 10 --runs 5 "
        "--rate 20000",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per server")
    parser.add_argument("--rate", type=float, default=None, help="requests/s cap")
    parser.add_argument("--window", type=int, default=64, help="requests in flight")
    parser.add_argument("--sockets", type=int, default=4, help="client UDP sockets")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="also measure idle CPU (seconds)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    if not 0 <= args.idle <= MAX_DURATION:
        parser.error(f"--idle must be in [0, {MAX_DURATION:g}]")
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be 1..{MAX_RUNS}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    summary = run(args)
    if args.json:
        data = asdict(summary)
        data["machine"] = machine()
        data["ratio"] = summary.ratio()
        _say(json.dumps(data, indent=2))
    else:
        info = machine()
        _say(
            f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
            f"coturn {info['coturn']}"
        )
        _say(to_markdown(summary))


if __name__ == "__main__":
    main()
