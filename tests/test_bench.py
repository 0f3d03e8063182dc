"""The STUN load generator: sans-IO core, loopback run, CLI, CPU helpers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from array import array
from collections.abc import Iterator
from typing import cast

import pytest
from click.testing import CliRunner

from natkit.bench.cpu import (
    RunResult,
    Summary,
    TurnRunResult,
    TurnSummary,
    parse_args,
    process_cpu_seconds,
    to_markdown,
    turn_to_markdown,
)
from natkit.bench.stun import (
    BenchConfig,
    BindingLoad,
    format_report,
    percentile,
    run_bench,
)
from natkit.cli import main
from natkit.stun.attributes import ErrorCodeAttr, XorMappedAddress
from natkit.stun.constants import MessageClass
from natkit.stun.errors import UsageError
from natkit.stun.message import decode, encode


class ThreadResponder:
    """A blocking UDP Binding responder in a thread, on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
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
            self.sock.sendto(_success(data), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _success(request: bytes) -> bytes:
    msg = decode(request)
    reply = msg.reply(MessageClass.SUCCESS, (XorMappedAddress("127.0.0.1", 5000),))
    return encode(reply)


def _error(request: bytes) -> bytes:
    msg = decode(request)
    return encode(msg.reply(MessageClass.ERROR, (ErrorCodeAttr(400, "Bad Request"),)))


# --- sans-IO core --------------------------------------------------------------


def test_window_is_filled_and_refilled() -> None:
    load = BindingLoad(BenchConfig(duration=10, window=4), now=0.0)
    first = load.due(0.0)
    assert len(first) == 4
    assert len({r[8:20] for r in first}) == 4
    assert all(decode(r).cls == MessageClass.REQUEST for r in first)
    assert load.due(0.001) == []

    load.handle_response(_success(first[0]), 0.002)
    assert load.received == 1
    assert load.in_flight == 3
    assert len(load.due(0.002)) == 1
    assert load.latencies[0] == pytest.approx(0.002)


def test_rate_caps_sending() -> None:
    load = BindingLoad(BenchConfig(duration=10, window=1000, rate=100), now=0.0)
    assert len(load.due(0.0)) == 1
    assert len(load.due(0.5)) == 50
    assert len(load.due(0.5)) == 0
    assert len(load.due(1.0)) == 50
    assert load.sent == 101


def test_duplicates_errors_garbage_and_losses_are_counted() -> None:
    config = BenchConfig(duration=1, window=3, request_timeout=0.5)
    load = BindingLoad(config, now=0.0)
    a, b, c = load.due(0.0)
    load.handle_response(_success(a), 0.01)
    load.handle_response(_success(a), 0.02)  # duplicate: late
    load.handle_response(_error(b), 0.03)
    load.handle_response(b"\x00" * 8, 0.03)  # garbage
    assert (load.received, load.late, load.errors, load.invalid) == (1, 1, 1, 1)

    # c is never answered: lost once the request timeout has passed
    load.handle_timeout(0.4)
    assert load.lost == 0
    load.handle_timeout(0.6)
    assert load.lost == 1
    load.handle_response(_success(c), 0.7)
    assert load.late == 2


def test_a_wrong_success_body_is_invalid() -> None:
    load = BindingLoad(BenchConfig(duration=1, window=1), now=0.0)
    (request,) = load.due(0.0)
    empty = encode(decode(request).reply(MessageClass.SUCCESS))
    load.handle_response(empty, 0.01)  # the first response is always verified
    assert load.invalid == 1
    assert load.received == 0


def test_stops_sending_after_duration_and_reports() -> None:
    load = BindingLoad(BenchConfig(duration=1, window=2, request_timeout=0.5), 0.0)
    a, b = load.due(0.0)
    load.handle_response(_success(a), 0.25)
    assert load.due(1.0) == []
    assert not load.sending
    assert not load.finished(1.1)
    load.handle_response(_success(b), 1.2)
    assert load.finished(1.2)
    report = load.report("127.0.0.1:3478", 1.2)
    assert report.sent == 2
    assert report.received == 2
    assert report.lost == 0
    assert report.responses_per_s == 2.0
    assert report.latency_p50_ms == 250.0
    assert report.latency_max_ms == 1200.0
    assert "responses/s   2.0" in format_report(report)


def test_in_flight_at_the_end_is_lost() -> None:
    load = BindingLoad(BenchConfig(duration=1, window=5), 0.0)
    load.due(0.0)
    load.due(1.0)
    assert load.finished(2.1)
    report = load.report("x", 2.1)
    assert report.lost == 5
    assert report.loss_pct == 100.0
    assert report.latency_p50_ms is None


def test_percentile_nearest_rank() -> None:
    values = array("d", [float(i) for i in range(1, 101)])
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(array("d"), 0.5) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duration": 0},
        {"duration": 301},
        {"duration": 1, "window": 0},
        {"duration": 1, "rate": 0},
        {"duration": 1, "sockets": 0},
        {"duration": 1, "request_timeout": 11},
    ],
)
def test_config_is_bounded(kwargs: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        BenchConfig(**kwargs)  # type: ignore[arg-type]


# --- loopback runs -------------------------------------------------------------


@pytest.fixture
def responder() -> Iterator[ThreadResponder]:
    r = ThreadResponder()
    yield r
    r.close()


async def test_run_bench_against_loopback_responder(responder: ThreadResponder) -> None:
    config = BenchConfig(duration=0.5, window=16, sockets=2)
    report = await asyncio.wait_for(run_bench("127.0.0.1", responder.port, config), 5)
    assert report.received > 100
    assert report.sent >= report.received
    assert report.invalid == 0
    assert report.errors == 0
    assert report.lost <= report.sent - report.received
    assert report.latency_p50_ms is not None
    assert report.latency_p99_ms is not None
    assert report.latency_p50_ms <= report.latency_p99_ms
    assert 0.4 < report.duration_s < 1.0


def test_cli_bench_json(responder: ThreadResponder) -> None:
    result = CliRunner().invoke(
        main,
        ["bench", "stun", f"127.0.0.1:{responder.port}"]
        + ["--duration", "0.5", "--rate", "500", "--json"],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("sent", "received", "responses_per_s", "loss_pct", "latency_p99_ms"):
        assert key in data
    assert data["received"] > 100
    assert data["sent"] <= 500 * 0.5 + 1


def test_cli_bench_human(responder: ThreadResponder) -> None:
    result = CliRunner().invoke(
        main, ["bench", "stun", f"127.0.0.1:{responder.port}", "--duration", "0.3"]
    )
    assert result.exit_code == 0, result.stderr
    assert "responses/s" in result.stdout
    assert "latency ms    p50" in result.stdout


def test_cli_bench_without_answers_fails_with_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = CliRunner().invoke(
            main, ["bench", "stun", f"127.0.0.1:{port}", "--duration", "0.2"]
        )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"natkit: error: no Binding success responses from 127.0.0.1:{port}"
    ]


@pytest.mark.parametrize(
    "args",
    [["--duration", "301"], ["--duration", "0"], ["--window", "0"]],
)
def test_cli_bench_refuses_unbounded_runs(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["bench", "stun", "127.0.0.1:3478", *args])
    assert result.exit_code == 2


def test_cli_bench_bad_address() -> None:
    result = CliRunner().invoke(main, ["bench", "stun", "[::1", "--duration", "1"])
    assert result.exit_code == 1
    assert "malformed address" in result.stderr
    assert "Traceback" not in result.stderr


# --- CPU comparison helpers ------------------------------------------------------


def test_process_cpu_seconds_of_this_process() -> None:
    before = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert process_cpu_seconds(os.getpid()) >= before > 0


def test_summary_median_ratio_and_table() -> None:
    def run(server: str, us: float) -> RunResult:
        return RunResult(server, 1000, 1000, 0, 100.0, us / 1000, us, 0.1, 0.2)

    summary = Summary(duration_s=1, runs=3, rate=None, window=64, sockets=4)
    summary.results.extend(
        [run("natkit", 30), run("natkit", 20), run("natkit", 40)]
        + [run("coturn", 10), run("coturn", 9), run("coturn", 11)]
    )
    assert summary.median("natkit", "cpu_us_per_response") == 30
    assert summary.ratio() == pytest.approx(3.0)
    table = to_markdown(summary)
    assert "| natkit | 100 | 30.00 |" in table
    assert "**3.00**" in table


def test_cpu_bench_arguments_are_bounded() -> None:
    assert parse_args(["--duration", "2", "--runs", "3"]).runs == 3
    for bad in (["--duration", "61"], ["--runs", "0"], ["--runs", "21"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert cast(float, parse_args([]).duration) == 10.0


def test_turn_summary_ratio_and_table() -> None:
    def run(server: str, us: float, alloc_us: float) -> TurnRunResult:
        return TurnRunResult(
            server=server,
            allocations=100,
            allocations_per_s=1000.0,
            sent=200,
            received=200,
            lost=0,
            loss_pct=0.0,
            relayed_per_s=100.0,
            cpu_s=0.1,
            cpu_us_per_relayed=us,
            core_us_per_relayed=us,
            runqueue_wait_s=0.0,
            latency_p50_ms=0.5,
            latency_p99_ms=2.0,
            cpu_us_per_allocation=alloc_us,
        )

    summary = TurnSummary(
        duration_s=1, runs=2, rate=100, allocations=500, size=100, contend_pct=30
    )
    summary.results.extend(
        [run("natkit", 12, 300), run("natkit", 14, 500)]
        + [run("coturn", 10, 200), run("coturn", 10, 200)]
    )
    assert summary.ratio() == pytest.approx(1.3)
    table = turn_to_markdown(summary)
    assert "| natkit | 1000 | 100 | 0.00 (0.00) |" in table
    assert "13.0 (12.0 - 14.0)" in table
    # few echoes per allocation: the set-up columns are shown
    assert "CPU per allocation **2.00**" in table
    assert "contention 30 % of every 20 ms" in table


def test_turn_modes_bound_allocations_and_default_the_rate() -> None:
    args = parse_args(["--mode", "turn"])
    assert args.rate == 20_000.0 and args.allocations == 100
    assert parse_args(["--mode", "turn-memory", "--allocations", "10000"])
    for bad in (
        ["--mode", "turn", "--allocations", "1001"],
        ["--mode", "turn-memory", "--allocations", "10001"],
        ["--mode", "turn", "--contend", "100"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
