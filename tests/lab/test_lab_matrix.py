"""The ICE connectivity matrix (``natkit lab matrix``) through kernel NATs.

The root tests run ``natkit lab matrix --nat symmetric`` (the CLI, one
cell that must relay, JSON and the HTML page), then all 25 cells through
the library four representative cells, four labs at a time (open with
symmetric, port-restricted with itself, symmetric with port-restricted both
ways), and one cell with the aioice peers: about 20 s. With
``NATKIT_LAB_MATRIX_FULL=1`` the library test runs all 25 cells instead
(45 s on an idle 2-core machine, 115 s on a busy one); ``natkit lab matrix``
is the full matrix and the benchmark. The rest checks the expectations, the
output and report parsing without a lab.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natkit.lab.matrix import (
    Attempt,
    CellResult,
    Impl,
    MatrixOptions,
    Outcome,
    PeerReport,
    cell_text,
    expected,
    render_html,
    run_matrix,
    text_grid,
)
from natkit.lab.nat_rules import NatType

N = NatType
#: cells of the subset run: (left, right), left controlling
SUBSET_CELLS = (
    (N.OPEN, N.SYMMETRIC),
    (N.PORT_RESTRICTED_CONE, N.PORT_RESTRICTED_CONE),
    (N.SYMMETRIC, N.PORT_RESTRICTED_CONE),
    (N.PORT_RESTRICTED_CONE, N.SYMMETRIC),
)
FULL = os.environ.get("NATKIT_LAB_MATRIX_FULL") == "1"


def _check(cells: list[CellResult]) -> None:
    problems = [
        f"{c.left}->{c.right} ({c.impl}): {c.outcome} {c.pair}, expected "
        f"{c.expected} [{c.problem}]"
        for c in cells
        if c.impl is Impl.NATKIT and not c.as_expected
    ]
    assert not problems, "\n".join(problems)
    for cell in cells:
        # RFC 8445: every cell connects; a direct pair has no relayed candidate
        assert cell.outcome is not Outcome.FAILED, cell.problem
        if cell.outcome is Outcome.DIRECT:
            assert "relay" not in cell.pair, cell


# --- through the lab ---------------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_matrix_cli(tmp_path: Path) -> None:
    """symmetric x symmetric relays (RFC 8445 cannot do better); the JSON
    report and the HTML page."""
    page = tmp_path / "matrix.html"
    argv = [sys.executable, "-m", "natkit", "lab", "matrix", "--json"]
    argv += ["--nat", "symmetric", "--html", str(page)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    print(f"natkit lab matrix, 1 cell: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    (cell,) = json.loads(done.stdout)["cells"]
    assert cell["outcome"] == "relay" and cell["as_expected"], cell
    assert cell["connected_ms"] is not None and "relay" in cell["pair"], cell
    text = page.read_text()
    assert "<svg" in text and "symmetric" in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.root
@pytest.mark.slow
def test_matrix_all_cells() -> None:
    """Every cell connects, directly except where RFC 8445 must relay; then
    the aioice peers connect through the same kind of lab (aioice nominates
    the first pair that works, so it is not held to direct pairs)."""
    if FULL:
        options = MatrixOptions(jobs=4)
    else:
        options = MatrixOptions(pairs=SUBSET_CELLS, jobs=4)
    started = time.monotonic()
    cells = run_matrix(options)
    print(f"{len(cells)} natkit cells: {time.monotonic() - started:.1f} s")
    for line in text_grid(cells, Impl.NATKIT):
        print(line)
    _check(cells)

    pytest.importorskip("aioice", reason="aioice (interop peer) not installed")
    both = run_matrix(MatrixOptions(pairs=((N.SYMMETRIC, N.SYMMETRIC),), aioice=True))
    _check(both)
    assert {c.impl for c in both} == {Impl.NATKIT, Impl.AIOICE}
    assert all(c.outcome is Outcome.RELAY for c in both), both


# --- without a lab -------------------------------------------------------------


def test_expected_outcomes() -> None:
    """Only symmetric x symmetric and symmetric x port-restricted must relay."""
    relays = {(a, b) for a in N for b in N if expected(a, b) is Outcome.RELAY}
    assert relays == {
        (N.SYMMETRIC, N.SYMMETRIC),
        (N.SYMMETRIC, N.PORT_RESTRICTED_CONE),
        (N.PORT_RESTRICTED_CONE, N.SYMMETRIC),
    }


def test_cells_ordered_and_unordered() -> None:
    assert len(MatrixOptions().cells()) == 25
    unordered = MatrixOptions(unordered=True).cells()
    assert len(unordered) == 15
    assert len({frozenset(pair) for pair in unordered}) == 15
    two = MatrixOptions(nats=(N.SYMMETRIC, N.OPEN, N.SYMMETRIC)).cells()
    assert two == [
        (N.SYMMETRIC, N.SYMMETRIC),
        (N.SYMMETRIC, N.OPEN),
        (N.OPEN, N.SYMMETRIC),
        (N.OPEN, N.OPEN),
    ]


def _report(local: str, remote: str, ms: float) -> str:
    return json.dumps(
        {
            "local": {"type": local, "address": "203.0.113.101:1"},
            "remote": {"type": remote, "address": "203.0.113.10:2"},
            "relayed": "relay" in (local, remote),
            "connected_ms": ms,
            "rtt_ms": 1.0,
            "data_rtt_ms": 0.5,
        }
    )


def test_peer_report_parse() -> None:
    good = PeerReport.parse(0, "warning line\n" + _report("srflx", "prflx", 12.5), "")
    assert good.ok and good.local_type == "srflx" and good.connected_ms == 12.5
    failed = PeerReport.parse(1, "", "natkit: error: no ICE connection after 20 s\n")
    assert (
        not failed.ok and failed.error == "natkit: error: no ICE connection after 20 s"
    )
    garbled = PeerReport.parse(0, "not json", "")
    assert not garbled.ok and garbled.error is not None
    silent = PeerReport.parse(-9, "", "")
    assert silent.error == "exit status -9"


def _cell(left: NatType, right: NatType, local: str, remote: str) -> CellResult:
    offerer = PeerReport.parse(0, _report(local, remote, 40.0), "")
    answerer = PeerReport.parse(0, _report(remote, local, 50.0), "")
    attempt = Attempt(offerer=offerer, answerer=answerer, wall_s=1.0)
    return CellResult(left=left, right=right, impl=Impl.NATKIT, attempts=(attempt,))


def test_outputs() -> None:
    """Text grid, cell text and the self-contained HTML page with its SVG."""
    cells = [
        _cell(N.SYMMETRIC, N.SYMMETRIC, "prflx", "relay"),
        _cell(N.SYMMETRIC, N.OPEN, "prflx", "host"),
        _cell(N.OPEN, N.SYMMETRIC, "host", "relay"),  # direct was possible
        CellResult(
            left=N.OPEN, right=N.OPEN, impl=Impl.NATKIT, attempts=(), error="lab: x"
        ),
    ]
    assert cell_text(cells[0]) == "relay prflx-relay 50 ms"
    assert cell_text(cells[2]).startswith("!relay")
    assert cells[3].outcome is Outcome.FAILED and cells[3].problem == "lab: x"
    grid = text_grid(cells, Impl.NATKIT)
    assert len(grid) == 3 and "symmetric" in grid[0]
    page = render_html(cells)
    assert page.count("<svg") == 1 and page.count("<rect") == 4
    assert "expected direct" in page and "lab: x" in page
    assert "<script" not in page and "<link" not in page
