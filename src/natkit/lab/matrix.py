"""The ICE connectivity matrix: every pair of NAT types, through kernel NATs.

    cells = run_matrix(MatrixOptions(nats=tuple(NatType), aioice=True))
    Path("matrix.html").write_text(render_html(cells))

For each ordered pair (left, right) of NAT types a lab with two NATs is
built (h1 behind ``left``, h2 behind ``right``; the same type twice is two
NATs of that type). ``natkit serve`` runs in the internet namespace as STUN
and TURN server on 203.0.113.10:3478, with the lab's public ranges allowed
as peers. ``natkit ice offer`` on h1 (controlling) and ``natkit ice answer``
on h2 swap their descriptions through files in a temporary directory (the
namespaces share the filesystem), connect, and print their JSON reports. With
``aioice`` the same is done, in the same lab and against the same server, by
two :mod:`natkit.lab.aioice_peer` processes. The lab is removed after the
cell (:class:`natkit.lab.topology.Lab` always cleans up).

What RFC 8445 ICE must get (the expectation of every cell): a direct pair
(host, srflx or prflx candidates on both ends) everywhere, except where both
NATs filter by address and port and at least one of them also maps by
address and port (symmetric with symmetric, symmetric with
port-restricted-cone): there only a relayed pair can work. Every cell must
connect.
"""

from __future__ import annotations

import enum
import html
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from natkit.lab.nat_rules import NatType
from natkit.lab.netns import LabError
from natkit.lab.topology import Lab, LabHost

logger = logging.getLogger(__name__)

SERVER_PORT = 3478
TURN_USER = "u"
TURN_PASSWORD = "p"
#: peers the relays may reach: the lab's internet and its open hosts
ALLOWED_PEERS = ("203.0.113.0/24", "198.51.100.0/24")
#: seconds each peer gets for gathering, the exchange and connecting
PEER_TIMEOUT = 20.0
#: seconds natkit serve may take to answer its first Binding request
SERVE_START_TIMEOUT = 15.0

#: the pairs that must relay (unordered): address-and-port-dependent filtering
#: on both sides and address-and-port-dependent mapping on at least one
RELAY_PAIRS = frozenset(
    {
        frozenset({NatType.SYMMETRIC}),
        frozenset({NatType.SYMMETRIC, NatType.PORT_RESTRICTED_CONE}),
    }
)

#: sends Binding requests until one is answered (exit 0), at most argv[3] s
_STUN_PING = r"""
import os, socket, struct, sys, time
dest = (sys.argv[1], int(sys.argv[2]))
end = time.monotonic() + float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
while time.monotonic() < end:
    s.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + os.urandom(12), dest)
    try:
        s.recvfrom(2048)
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


class Outcome(enum.StrEnum):
    """What a cell got: a direct pair, a relayed one, or nothing."""

    DIRECT = "direct"
    RELAY = "relay"
    FAILED = "failed"


class Impl(enum.StrEnum):
    """Which ICE agents ran the cell."""

    NATKIT = "natkit"
    AIOICE = "aioice"


def expected(left: NatType, right: NatType) -> Outcome:
    """The pair RFC 8445 ICE must select between hosts behind these NATs."""
    if frozenset({left, right}) in RELAY_PAIRS:
        return Outcome.RELAY
    return Outcome.DIRECT


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerReport:
    """One peer's result (the JSON of ``natkit ice --json``), or its error."""

    ok: bool
    local_type: str | None = None
    remote_type: str | None = None
    relayed: bool = False
    connected_ms: float | None = None
    rtt_ms: float | None = None
    data_rtt_ms: float | None = None
    error: str | None = None

    @classmethod
    def parse(cls, status: int, out: str, err: str) -> PeerReport:
        """The report of a finished peer process."""
        if status != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {status}"
            return cls(ok=False, error=why.strip())
        try:
            data = json.loads(out.strip().splitlines()[-1])
            return cls(
                ok=True,
                local_type=str(data["local"]["type"]),
                remote_type=str(data["remote"]["type"]),
                relayed=bool(data["relayed"]),
                connected_ms=_number(data.get("connected_ms")),
                rtt_ms=_number(data.get("rtt_ms")),
                data_rtt_ms=_number(data.get("data_rtt_ms")),
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return cls(ok=False, error=f"unreadable report ({exc}): {out[:200]!r}")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One connection of a cell: the offerer's (left, controlling) and the
    answerer's report, and the wall time of the whole exchange."""

    offerer: PeerReport
    answerer: PeerReport
    wall_s: float

    @property
    def outcome(self) -> Outcome:
        if not (self.offerer.ok and self.answerer.ok):
            return Outcome.FAILED
        if self.offerer.relayed or self.answerer.relayed:
            return Outcome.RELAY
        return Outcome.DIRECT

    @property
    def connected_ms(self) -> float | None:
        """The later of the two peers' times to connected."""
        times = [r.connected_ms for r in (self.offerer, self.answerer)]
        known = [t for t in times if t is not None]
        return max(known) if len(known) == 2 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CellResult:
    """All attempts of one implementation on one (left, right) pair of NATs."""

    left: NatType
    right: NatType
    impl: Impl
    attempts: tuple[Attempt, ...]
    error: str | None = None

    @property
    def expected(self) -> Outcome:
        return expected(self.left, self.right)

    @property
    def outcome(self) -> Outcome:
        """Failed if any attempt failed, else relay if any relayed."""
        outcomes = {a.outcome for a in self.attempts}
        if not self.attempts or Outcome.FAILED in outcomes:
            return Outcome.FAILED
        return Outcome.RELAY if Outcome.RELAY in outcomes else Outcome.DIRECT

    @property
    def as_expected(self) -> bool:
        return self.outcome is self.expected

    @property
    def pair(self) -> str:
        """Candidate types of the selected pair, controlling side first."""
        for attempt in self.attempts:
            if attempt.offerer.ok:
                return f"{attempt.offerer.local_type}-{attempt.offerer.remote_type}"
        return "-"

    @property
    def connected_ms(self) -> float | None:
        """Median over the attempts that connected."""
        times = [a.connected_ms for a in self.attempts]
        known = [t for t in times if t is not None]
        return statistics.median(known) if known else None

    @property
    def problem(self) -> str | None:
        """Why the cell failed (the first error seen), if it did."""
        if self.error is not None:
            return self.error
        for attempt in self.attempts:
            for side, report in (("h1", attempt.offerer), ("h2", attempt.answerer)):
                if report.error is not None:
                    return f"{side}: {report.error}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "left": str(self.left),
            "right": str(self.right),
            "impl": str(self.impl),
            "expected": str(self.expected),
            "outcome": str(self.outcome),
            "as_expected": self.as_expected,
            "pair": self.pair,
            "connected_ms": self.connected_ms,
            "connected_ms_all": [a.connected_ms for a in self.attempts],
            "data_rtt_ms": [a.offerer.data_rtt_ms for a in self.attempts],
            "wall_s": [round(a.wall_s, 3) for a in self.attempts],
            "problem": self.problem,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixOptions:
    """What to run: the NAT types, which pairs of them, and how often."""

    nats: tuple[NatType, ...] = tuple(NatType)
    #: the 15 unordered pairs instead of the 25 ordered ones
    unordered: bool = False
    #: explicit (left, right) pairs; overrides ``nats``/``unordered``
    pairs: tuple[tuple[NatType, NatType], ...] = ()
    aioice: bool = False
    natkit: bool = True
    runs: int = 1
    jobs: int = 1
    timeout: float = PEER_TIMEOUT
    python: str = field(default_factory=lambda: sys.executable)

    def cells(self) -> list[tuple[NatType, NatType]]:
        """The (left, right) pairs to run, left controlling."""
        if self.pairs:
            return list(self.pairs)
        nats = list(dict.fromkeys(self.nats))
        if self.unordered:
            return [(a, b) for i, a in enumerate(nats) for b in nats[i:]]
        return [(a, b) for a in nats for b in nats]


# --- running -----------------------------------------------------------------


def run_matrix(
    options: MatrixOptions,
    *,
    progress: Callable[[CellResult], None] | None = None,
) -> list[CellResult]:
    """Run every cell (``options.jobs`` labs at a time); results in cell order."""
    if options.runs < 1 or options.jobs < 1:
        raise LabError("runs and jobs must be at least 1")
    pairs = options.cells()
    run_id = f"{os.getpid()}"

    def one(index: int) -> list[CellResult]:
        left, right = pairs[index]
        results = run_cell(
            left, right, options=options, prefix=f"nk-{run_id}-m{index}-"
        )
        for result in results:
            if progress is not None:
                progress(result)
        return results

    if options.jobs == 1:
        nested = [one(i) for i in range(len(pairs))]
    else:
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            nested = list(pool.map(one, range(len(pairs))))
    return [result for cell in nested for result in cell]


def run_cell(
    left: NatType, right: NatType, *, options: MatrixOptions, prefix: str
) -> list[CellResult]:
    """One lab with NATs ``left`` and ``right``: serve, then each pair of peers."""
    impls = [
        i
        for i, on in ((Impl.NATKIT, options.natkit), (Impl.AIOICE, options.aioice))
        if on
    ]
    with tempfile.TemporaryDirectory(prefix="natkit-matrix-") as tmp:
        workdir = Path(tmp)
        try:
            with Lab([left, right], name_prefix=prefix) as lab:
                _start_serve(lab, workdir, options.python)
                attempts: dict[Impl, list[Attempt]] = {i: [] for i in impls}
                for run in range(options.runs):
                    for impl in impls:
                        where = workdir / f"{impl}-{run}"
                        where.mkdir()
                        attempts[impl].append(
                            _run_pair(lab, impl, where, options=options)
                        )
        except (LabError, OSError, subprocess.SubprocessError) as exc:
            why = f"lab: {exc}"
            logger.warning("cell %s/%s: %s", left, right, why)
            return [
                CellResult(left=left, right=right, impl=i, attempts=(), error=why)
                for i in impls
            ]
    return [
        CellResult(left=left, right=right, impl=i, attempts=tuple(attempts[i]))
        for i in impls
    ]


def serve_argv(python: str, data_dir: Path, ip: str) -> list[str]:
    """``natkit serve`` as STUN and TURN server of the matrix."""
    argv = [python, "-m", "natkit", "serve", "--listen", f"udp:{ip}:{SERVER_PORT}"]
    argv += ["--relay-ip", ip, "--user", f"{TURN_USER}:{TURN_PASSWORD}"]
    for cidr in ALLOWED_PEERS:
        argv += ["--allow-peer", cidr]
    argv += ["--data-dir", str(data_dir), "--log-level", "warning"]
    return argv


def _start_serve(lab: Lab, workdir: Path, python: str) -> None:
    ip = lab.server_ips[0]
    log = workdir / "serve.log"
    with log.open("w") as sink:
        lab.popen(
            "inet",
            serve_argv(python, workdir / "data", ip),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=lab.python_env(),
            cwd=workdir,
        )
    ping = [python, "-c", _STUN_PING, ip, str(SERVER_PORT), str(SERVE_START_TIMEOUT)]
    done = lab.exec("inet", ping, timeout=SERVE_START_TIMEOUT + 5)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise LabError(f"natkit serve did not answer: {' '.join(tail) or 'no output'}")


def peer_argv(
    impl: Impl,
    role: str,
    *,
    out: Path,
    peer: Path,
    server: str | None,
    python: str,
    timeout: float,
    host_ip: str | None = None,
) -> list[str]:
    """The command of one peer: ``natkit ice ROLE`` or the aioice peer."""
    if impl is Impl.NATKIT:
        argv = [python, "-m", "natkit", "ice", role, "-4", "--json"]
    else:
        argv = [python, "-m", "natkit.lab.aioice_peer", role]
    argv += ["--out", str(out), "--peer", str(peer), "--timeout", f"{timeout:g}"]
    if server is not None:
        endpoint = f"{server}:{SERVER_PORT}"
        argv += ["--stun", endpoint, "--turn", endpoint]
        argv += ["--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD]
    if host_ip is not None:
        argv += ["--host-ip", host_ip]
        if impl is Impl.NATKIT and host_ip.startswith("127."):
            argv.append("--loopback")
    return argv


def _run_pair(lab: Lab, impl: Impl, where: Path, *, options: MatrixOptions) -> Attempt:
    """Offer on h1 and answer on h2 at the same time; both reports."""
    offer, answer = where / "offer.json", where / "answer.json"
    hosts: tuple[LabHost, LabHost] = (lab.hosts[0], lab.hosts[1])
    server = lab.server_ips[0]
    started = time.monotonic()
    procs = []
    for host, role, out, peer in (
        (hosts[0], "offer", offer, answer),
        (hosts[1], "answer", answer, offer),
    ):
        argv = peer_argv(
            impl,
            role,
            out=out,
            peer=peer,
            server=server,
            python=options.python,
            timeout=options.timeout,
        )
        procs.append(
            lab.popen(
                host,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=lab.python_env(),
            )
        )
    reports = [_collect(proc, options.timeout + 10) for proc in procs]
    return Attempt(
        offerer=reports[0], answerer=reports[1], wall_s=time.monotonic() - started
    )


def _collect(proc: subprocess.Popen[str], timeout: float) -> PeerReport:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\nkilled after {timeout:g} s"
    return PeerReport.parse(proc.returncode, out, err)


# --- loopback ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopbackResult:
    """Time to connected of one implementation on 127.0.0.1, ``runs`` times."""

    impl: Impl
    connected_ms: tuple[float, ...]
    failures: int

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.connected_ms) if self.connected_ms else None

    def to_json(self) -> dict[str, Any]:
        return {
            "impl": str(self.impl),
            "median_ms": self.median_ms,
            "connected_ms": list(self.connected_ms),
            "failures": self.failures,
        }


def run_loopback(
    runs: int, impls: Iterable[Impl], *, python: str | None = None
) -> list[LoopbackResult]:
    """Offer and answer on 127.0.0.1 (host candidates only, no server), the
    implementations interleaved run by run so that drift hits them alike."""
    python = python or sys.executable
    chosen = list(impls)
    times: dict[Impl, list[float]] = {i: [] for i in chosen}
    failures = dict.fromkeys(chosen, 0)
    with tempfile.TemporaryDirectory(prefix="natkit-loopback-") as tmp:
        for run in range(runs):
            for impl in chosen:
                where = Path(tmp, f"{impl}-{run}")
                where.mkdir()
                attempt = _loopback_pair(impl, where, python)
                if attempt.connected_ms is None:
                    failures[impl] += 1
                else:
                    times[impl].append(attempt.connected_ms)
    return [
        LoopbackResult(impl=i, connected_ms=tuple(times[i]), failures=failures[i])
        for i in chosen
    ]


def _loopback_pair(impl: Impl, where: Path, python: str) -> Attempt:
    offer, answer = where / "offer.json", where / "answer.json"
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            peer_argv(
                impl,
                role,
                out=out,
                peer=peer,
                server=None,
                python=python,
                timeout=10.0,
                host_ip="127.0.0.1",
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=Lab.python_env(),
        )
        for role, out, peer in (("offer", offer, answer), ("answer", answer, offer))
    ]
    reports = [_collect(proc, 20.0) for proc in procs]
    return Attempt(
        offerer=reports[0], answerer=reports[1], wall_s=time.monotonic() - started
    )


# --- output ------------------------------------------------------------------

#: cell colours of the picture, by outcome (and a mismatch outline)
COLOURS = {
    Outcome.DIRECT: "#3a9d5d",
    Outcome.RELAY: "#e0a030",
    Outcome.FAILED: "#c8413b",
}
_MISSING = "#d0d0d0"
_SHORT = {
    NatType.OPEN: "open",
    NatType.FULL_CONE: "full",
    NatType.RESTRICTED_CONE: "restr",
    NatType.PORT_RESTRICTED_CONE: "port-r",
    NatType.SYMMETRIC: "sym",
}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def cell_text(cell: CellResult) -> str:
    """``direct srflx-prflx 45 ms`` (a ``!`` marks an unexpected outcome)."""
    mark = "" if cell.as_expected else "!"
    if cell.outcome is Outcome.FAILED:
        return f"{mark}failed"
    return f"{mark}{cell.outcome} {cell.pair} {_ms(cell.connected_ms)}"


def text_grid(cells: Sequence[CellResult], impl: Impl) -> list[str]:
    """A plain-text grid: rows the controlling side's NAT, columns the other."""
    mine = {(c.left, c.right): c for c in cells if c.impl is impl}
    lefts = list(dict.fromkeys(left for left, _ in mine))
    rights = list(dict.fromkeys(right for _, right in mine))
    rows = [[f"{impl} (row controls)", *map(str, rights)]]
    for left in lefts:
        row = [str(left)]
        for right in rights:
            cell = mine.get((left, right))
            row.append("" if cell is None else cell_text(cell))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def svg_grid(cells: Sequence[CellResult], impl: Impl, *, size: int = 118) -> str:
    """An inline SVG of the grid: one square per cell, coloured by outcome."""
    mine = {(c.left, c.right): c for c in cells if c.impl is impl}
    types = list(dict.fromkeys([t for pair in mine for t in pair]))
    order = [t for t in NatType if t in types]
    margin = 96
    width = margin + size * len(order) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{width}" viewBox="0 0 {width} {width}" '
        f'font-family="sans-serif" role="img" aria-label="{impl} matrix">',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{impl}</text>',
        '<text x="4" y="32" font-size="10">row: controlling</text>',
    ]
    for k, nat in enumerate(order):
        centre = margin + size * k + size / 2
        parts.append(
            f'<text x="{centre:.0f}" y="{margin - 8}" font-size="12" '
            f'text-anchor="middle">{html.escape(str(nat))}</text>'
        )
        parts.append(
            f'<text x="{margin - 6}" y="{centre:.0f}" font-size="12" '
            f'text-anchor="end">{html.escape(_SHORT[nat])}</text>'
        )
    for row, left in enumerate(order):
        for col, right in enumerate(order):
            parts.append(_svg_cell(mine.get((left, right)), row, col, margin, size))
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_cell(
    cell: CellResult | None, row: int, col: int, margin: int, size: int
) -> str:
    x, y = margin + col * size, margin + row * size
    fill = _MISSING if cell is None else COLOURS[cell.outcome]
    stroke = "#000" if cell is not None and not cell.as_expected else "#fff"
    width = 4 if stroke == "#000" else 2
    out = [
        f'<rect x="{x}" y="{y}" width="{size}" height="{size}" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{width}"/>'
    ]
    if cell is None:
        lines = ["not run"]
    elif cell.outcome is Outcome.FAILED:
        lines = ["failed", (cell.problem or "")[:18]]
    else:
        pair = cell.pair.split("-", 1)
        lines = [str(cell.outcome), f"{pair[0]} ->", pair[-1], _ms(cell.connected_ms)]
    if cell is not None and not cell.as_expected:
        lines.append(f"expected {cell.expected}")
    top = y + size / 2 - 8 * (len(lines) - 1)
    for n, line in enumerate(lines):
        out.append(
            f'<text x="{x + size / 2:.0f}" y="{top + 16 * n:.0f}" font-size="12" '
            f'fill="#fff" text-anchor="middle">{html.escape(line)}</text>'
        )
    return "\n".join(out)


def render_html(
    cells: Sequence[CellResult],
    *,
    loopback: Sequence[LoopbackResult] = (),
    title: str = "natkit ICE connectivity matrix",
) -> str:
    """One self-contained page: the grid pictures, then a table of all cells."""
    impls = list(dict.fromkeys(c.impl for c in cells))
    pictures = "\n".join(
        f'<figure style="display:inline-block;margin:0 24px 12px 0">'
        f"{svg_grid(cells, impl)}</figure>"
        for impl in impls
    )
    legend = " ".join(
        f'<span style="background:{COLOURS[o]};color:#fff;padding:2px 8px">{o}</span>'
        for o in Outcome
    )
    head = (
        "<tr><th>controlling (h1)</th><th>controlled (h2)</th><th>agents</th>"
        "<th>expected</th><th>outcome</th><th>pair (h1 local - remote)</th>"
        "<th>connected ms (median)</th><th>each run</th><th>problem</th></tr>"
    )
    rows = [_html_row(c) for c in cells]
    loop = ""
    if loopback:
        loop_rows = "".join(
            f"<tr><td>{r.impl}</td><td>{_ms(r.median_ms)}</td>"
            f"<td>{len(r.connected_ms)}</td><td>{r.failures}</td></tr>"
            for r in loopback
        )
        loop = (
            "<h2>Loopback (127.0.0.1, host candidates)</h2><table>"
            "<tr><th>agents</th><th>median connected</th><th>runs</th>"
            f"<th>failed</th></tr>{loop_rows}</table>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
th, td {{ border: 1px solid #bbb; padding: 3px 8px; font-size: 13px; }}
tr.bad td {{ background: #fbe3e1; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each cell: a lab with two kernel NATs, natkit serve as STUN/TURN server,
the left NAT's host offers and controls. {legend}; a black outline marks an
outcome other than the expected one. Generated {time.strftime("%Y-%m-%d %H:%M")}.
</p>
{pictures}
<h2>All cells</h2>
<table>{head}{"".join(rows)}</table>
{loop}
</body></html>
"""


def _html_row(cell: CellResult) -> str:
    runs = ", ".join(_ms(a.connected_ms) for a in cell.attempts) or "-"
    cls = "" if cell.as_expected else ' class="bad"'
    values = [
        str(cell.left),
        str(cell.right),
        str(cell.impl),
        str(cell.expected),
        f'<b style="color:{COLOURS[cell.outcome]}">{cell.outcome}</b>',
        html.escape(cell.pair),
        _ms(cell.connected_ms),
        runs,
        html.escape(cell.problem or ""),
    ]
    return f"<tr{cls}>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"


def write_json(
    cells: Sequence[CellResult],
    sink: IO[str],
    *,
    loopback: Sequence[LoopbackResult] = (),
) -> None:
    """All results as one JSON object."""
    blob = {
        "cells": [c.to_json() for c in cells],
        "loopback": [r.to_json() for r in loopback],
    }
    sink.write(json.dumps(blob) + "\n")
