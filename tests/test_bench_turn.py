"""``natkit bench turn``: the sans-IO load, the echo process, quick real runs.

The real runs are short (5 allocations, 2 s at 2000 pps) against coturn and
``natkit serve`` on loopback (fixtures from ``test_net_turn_client``).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from natkit.bench.turn import (
    MAX_ALLOCATIONS,
    EchoPeers,
    RelayLoad,
    TurnBenchConfig,
    TurnBenchError,
    TurnBenchReport,
    format_report,
    hold_allocations,
    run_bench,
)
from natkit.cli import main
from natkit.stun.errors import UsageError
from test_net_turn_client import (
    NATKIT_ARGV,
    PASSWORD,
    USER,
    TurnServerUnderTest,
    natkit_env,
    pick_server,
    run_coturn,
    run_natkit,
)

RUN_TIMEOUT = 120


@pytest.fixture(scope="module")
def coturn_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_coturn(tmp_path_factory)


@pytest.fixture(scope="module")
def natkit_turn(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TurnServerUnderTest]:
    yield from run_natkit(tmp_path_factory)


@pytest.fixture(params=["coturn", "natkit"])
def turn_server(request: pytest.FixtureRequest) -> TurnServerUnderTest:
    return pick_server(request)


def config(**changes: object) -> TurnBenchConfig:
    values: dict[str, object] = {
        "username": USER,
        "password": PASSWORD,
        "allocations": 2,
        "duration": 1.0,
        "rate": 1000.0,
        "size": 32,
    }
    values.update(changes)
    return TurnBenchConfig(**values)  # type: ignore[arg-type]


# --- the sans-IO load ------------------------------------------------------------


def test_load_paces_to_the_rate_with_bounded_bursts() -> None:
    load = RelayLoad(config(rate=1000.0, duration=1.0), now=10.0)
    assert load.due(10.0) == 1
    load.payload(10.0)
    # 100 ms behind: 100 due, but one tick sends at most 5 ms worth
    assert load.due(10.1) == 5
    for _ in range(5):
        load.payload(10.1)
    assert load.due(10.1) == 5
    # after the duration nothing more, for good
    assert load.due(11.0) == 0
    assert not load.sending
    assert load.due(10.5) == 0


def test_load_counts_echoes_once_and_samples_latency() -> None:
    load = RelayLoad(config(size=40), now=0.0)
    first = load.payload(0.0)
    second = load.payload(0.001)
    assert len(first) == 40
    assert struct.unpack_from("!Q", second)[0] == 1

    load.handle_echo(first, 0.0025)
    load.handle_echo(first, 0.003)  # duplicate
    load.handle_echo(b"short", 0.003)  # not ours
    load.handle_echo(struct.pack("!Qd", 99, 0.0), 0.003)  # never sent
    assert (load.received, load.duplicates, load.invalid) == (1, 1, 2)
    assert load.latencies.tolist() == [pytest.approx(0.0025)]
    assert not load.all_back()
    load.handle_echo(memoryview(second), 0.002)
    assert load.all_back()


@pytest.mark.parametrize(
    "changes",
    [
        {"allocations": 0},
        {"allocations": MAX_ALLOCATIONS + 1},
        {"duration": 0.0},
        {"duration": 301.0},
        {"rate": 0.0},
        {"rate": 1e9},
        {"size": 15},
        {"size": 5000},
        {"echo_peers": 0},
    ],
)
def test_config_bounds(changes: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        config(**changes)


def test_echo_process_echoes_and_stops() -> None:
    peers = EchoPeers(2, lifetime=30)
    ports = peers.start()
    try:
        assert len(ports) == 2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for port in ports:
                sock.sendto(b"ping", ("127.0.0.1", port))
                data, addr = sock.recvfrom(100)
                assert (data, addr) == (b"ping", ("127.0.0.1", port))
        process = peers.process
        assert process is not None and process.poll() is None
    finally:
        peers.stop()
    assert process.poll() is not None


def test_report_formats() -> None:
    report = TurnBenchReport(
        target="127.0.0.1:3478",
        allocations=5,
        allocated=5,
        setup_failures=0,
        setup_error=None,
        allocate_s=0.01,
        allocations_per_s=500.0,
        channels_s=0.01,
        duration_s=2.0,
        rate=2000.0,
        size=100,
        echo_peers=1,
        sent=4000,
        received=4000,
        duplicates=0,
        invalid=0,
        lost=0,
        loss_pct=0.0,
        relayed_per_s=2000.0,
        latency_p50_ms=0.3,
        latency_p99_ms=1.0,
        latency_max_ms=2.0,
    )
    text = "\n".join(format_report(report))
    assert "5/5 in 0.010 s (500.0/s)" in text
    assert "p50 0.300  p99 1.000" in text


# --- the command ------------------------------------------------------------------


def bench_cli(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*NATKIT_ARGV, "bench", "turn", server, "--user", USER]
    return subprocess.run(
        [*argv, "--password", PASSWORD, *args],
        capture_output=True,
        text=True,
        env=natkit_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["bench", "turn", "--help"])
    assert result.exit_code == 0
    assert "natkit bench turn 127.0.0.1:3478 --user u --password p" in result.output
    assert "child process" in result.output


@pytest.mark.parametrize(
    "args", [["--allocations", "0"], ["--duration", "301"], ["--rate", "0"]]
)
def test_out_of_bounds_flags_are_refused(args: list[str]) -> None:
    done = bench_cli("127.0.0.1:9", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("natkit: error: ")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.interop
def test_quick_run(turn_server: TurnServerUnderTest) -> None:
    done = bench_cli(
        turn_server.endpoint,
        "--allocations",
        "5",
        "--duration",
        "2",
        "--rate",
        "2000",
        "--json",
    )
    assert done.returncode == 0, done.stderr + turn_server.log_tail()
    report = json.loads(done.stdout)
    assert report["allocated"] == 5 and report["setup_failures"] == 0
    assert report["allocations_per_s"] > 0
    assert 3000 <= report["sent"] <= 4001
    # loopback on a quiet machine loses nothing; allow a little for CI noise
    assert report["loss_pct"] < 5.0, report
    assert report["duplicates"] == 0 and report["invalid"] == 0
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]


@pytest.mark.interop
def test_wrong_password_is_one_line(coturn_turn: TurnServerUnderTest) -> None:
    done = subprocess.run(
        [
            *NATKIT_ARGV,
            "bench",
            "turn",
            coturn_turn.endpoint,
            "--user",
            USER,
            "--password",
            "wrong",
            "--allocations",
            "2",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        env=natkit_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "authentication failed" in lines[0], done.stderr


@pytest.mark.interop
async def test_run_bench_in_process(coturn_turn: TurnServerUnderTest) -> None:
    report = await run_bench(
        coturn_turn.ip,
        coturn_turn.port,
        config(allocations=3, duration=1.0, rate=1000.0, echo_peers=2),
    )
    assert (report.allocated, report.setup_failures) == (3, 0)
    assert report.received > 0 and report.loss_pct < 5.0
    assert report.target == coturn_turn.endpoint


@pytest.mark.interop
async def test_run_bench_without_any_allocation_raises(
    coturn_turn: TurnServerUnderTest,
) -> None:
    with pytest.raises(TurnBenchError, match="authentication failed"):
        await run_bench(
            coturn_turn.ip, coturn_turn.port, config(password="wrong", duration=0.5)
        )


@pytest.mark.interop
async def test_hold_allocations_reports_while_all_are_held(
    coturn_turn: TurnServerUnderTest,
) -> None:
    seen: list[int] = []
    allocated = await hold_allocations(
        coturn_turn.ip,
        coturn_turn.port,
        username=USER,
        password=PASSWORD,
        count=3,
        on_held=seen.append,
    )
    assert allocated == 3 and seen == [3]
