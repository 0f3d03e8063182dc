"""``natkit lab``: build, use and remove kernel NAT labs from the shell.

``lab up`` builds a :class:`natkit.lab.topology.Lab` and detaches it (its state
file outlives the command); ``lab exec`` runs a command inside one of its
namespaces; ``lab down`` removes it; ``lab list`` shows the labs that have a
state file. docs/nat-lab.md describes the lab itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from natkit.cli._common import _die, _OneLineGroup
from natkit.lab import matrix
from natkit.lab.nat_rules import NatSpec, NatType
from natkit.lab.netns import LabError, list_netns
from natkit.lab.topology import Lab, LabHost, LabState, check_prefix, state_dir

#: Default lab names are ``nk-lab1-``, ``nk-lab2-``, ...: short, and never
#: mistaken for the ``nk-<pid>-`` labs of a process (those go when it dies).
_DEFAULT_NAME = "nk-lab{}-"


def _die_os(exc: OSError) -> NoReturn:
    """An OS error (state files, running ip) as one line."""
    where = exc.filename if exc.filename is not None else state_dir()
    _die(f"{exc.strerror or exc}: {where}")


def _require_root() -> None:
    if os.geteuid() != 0:
        _die("the NAT lab needs root (network namespaces, nftables)")


# --- the group ---------------------------------------------------------------

_LAB_EPILOG = """\b
Examples:
  natkit lab up --nat symmetric --nat full-cone
  natkit lab exec h1 -- natkit probe 203.0.113.10
  natkit lab list
  natkit lab down

The lab needs root. See docs/nat-lab.md.
"""


@click.group("lab", cls=_OneLineGroup, epilog=_LAB_EPILOG)
def lab() -> None:
    """NAT lab: real kernel NATs in network namespaces.

    An "internet" namespace holds the servers (203.0.113.10 and
    203.0.113.11); each NAT is a router namespace (nftables) with a host
    namespace behind it.
    """


# --- up ----------------------------------------------------------------------

_UP_EPILOG = """\b
Examples:
  natkit lab up --nat port-restricted-cone
  natkit lab up --nat open --nat full-cone --nat restricted-cone \\
                --nat port-restricted-cone --nat symmetric
  natkit lab up --nat symmetric --udp-timeout 30 --delay 50 --loss 1
  natkit lab up --nat full-cone --name demo --json

\b
NAT types: open, full-cone, restricted-cone, port-restricted-cone,
symmetric. --udp-timeout, --delay and --loss apply to every NAT of the
lab. The lab stays up after this command; remove it with 'natkit lab down'.
"""


@lab.command("up", epilog=_UP_EPILOG)
@click.option(
    "--nat",
    "nats",
    multiple=True,
    required=True,
    metavar="TYPE",
    help="One NAT with one host behind it, repeatable (h1, h2, ... in order).",
)
@click.option(
    "--udp-timeout",
    type=click.IntRange(1, 86400),
    metavar="SECONDS",
    help="UDP binding lifetime of the NATs (default: the kernel's 30/120 s).",
)
@click.option(
    "--delay",
    type=click.IntRange(0, 60000),
    default=0,
    metavar="MS",
    help="Delay added to each host's packets towards the internet.",
)
@click.option(
    "--loss",
    type=click.FloatRange(0, 100),
    default=0.0,
    metavar="PERCENT",
    help="Loss of each host's packets towards the internet.",
)
@click.option(
    "--name",
    metavar="PREFIX",
    help="Lab name: the prefix of its namespaces (default: nk-labN-).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lab_up(
    nats: tuple[str, ...],
    udp_timeout: int | None,
    delay: int,
    loss: float,
    name: str | None,
    as_json: bool,
) -> None:
    """Build a NAT lab and leave it running."""
    try:
        specs = [
            NatSpec(
                type=NatSpec.of(n).type,
                udp_timeout=udp_timeout,
                delay_ms=delay,
                loss_percent=loss,
            )
            for n in nats
        ]
        prefix = _prefix(name) if name is not None else None
    except LabError as exc:
        _die(str(exc), 2)
    _require_root()

    # a failure (or Ctrl-C) during the build removes what was built
    try:
        with Lab(specs, name_prefix=prefix or _free_name()) as built:
            built.detach()
    except LabError as exc:
        _die(str(exc))
    except OSError as exc:
        _die_os(exc)
    except KeyboardInterrupt:
        sys.exit(130)

    if as_json:
        click.echo(json.dumps(_lab_record(built)))
        return
    for line in _describe(built):
        click.echo(line)


def _prefix(name: str) -> str:
    """A lab name as typed ("demo" or "demo-") to its namespace prefix."""
    return check_prefix(name if name.endswith("-") else f"{name}-")


def _free_name() -> str:
    """The first ``nk-labN-`` with neither a state file nor namespaces."""
    taken = {state.prefix for state in Lab.list_labs()}
    namespaces = _netns_names()
    for number in range(1, 1000):
        prefix = _DEFAULT_NAME.format(number)
        if prefix not in taken and not any(n.startswith(prefix) for n in namespaces):
            return prefix
    raise LabError("no free lab name left; give one with --name")


def _host_record(host: LabHost) -> dict[str, object]:
    return {
        "name": host.name,
        "netns": host.netns,
        "ip": host.ip,
        "nat": str(host.nat.type),
        "router": f"r{host.index}",
        "router_netns": host.router_netns,
        "router_wan_ip": host.router_wan_ip,
        "public_ip": host.public_ip,
        "udp_timeout": host.nat.udp_timeout,
        "delay_ms": host.nat.delay_ms,
        "loss_percent": host.nat.loss_percent,
    }


def _lab_record(built: Lab) -> dict[str, object]:
    return {
        "lab": built.prefix,
        "internet": built.internet,
        "server_ips": list(built.server_ips),
        "gateway_ip": built.gateway_ip,
        "hosts": [_host_record(h) for h in built.hosts],
        "state_file": str(state_dir() / f"{built.prefix}.json"),
    }


def _conditions(spec: NatSpec) -> str:
    parts = []
    if spec.udp_timeout is not None:
        parts.append(f"udp timeout {spec.udp_timeout} s")
    if spec.delay_ms:
        parts.append(f"delay {spec.delay_ms} ms")
    if spec.loss_percent:
        parts.append(f"loss {spec.loss_percent:g} %")
    return ", ".join(parts) or "-"


def _describe(built: Lab) -> list[str]:
    """The text output of ``lab up``: servers, then one row per host."""
    servers = " ".join(built.server_ips)
    rows = [("host", "namespace", "ip", "nat", "router wan ip", "conditions")]
    rows += [
        (h.name, h.netns, h.ip, str(h.nat.type), h.router_wan_ip, _conditions(h.nat))
        for h in built.hosts
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    ]
    first = built.hosts[0].name
    return [
        f"lab {built.prefix} is up",
        f"internet  {built.internet}: servers {servers}, gateway {built.gateway_ip}",
        "",
        *(line.rstrip() for line in table),
        "",
        f"run:     natkit lab exec --lab {built.prefix} {first} -- "
        f"natkit probe {built.server_ips[0]}",
        f"remove:  natkit lab down --lab {built.prefix}",
    ]


# --- exec --------------------------------------------------------------------

_EXEC_EPILOG = """\b
Examples:
  natkit lab exec h1 -- natkit probe 203.0.113.10 --json
  natkit lab exec inet -- natkit serve --rfc5780 \\
      --listen udp:203.0.113.10:3478 --alternate-ip 203.0.113.11
  natkit lab exec --lab demo- r1 -- nft list ruleset
  natkit lab exec r2 -- conntrack -L -p udp

\b
HOST is hN (a host), rN (its router), inet (the internet namespace) or a
full namespace name. The command inherits stdin, stdout and stderr, and
its exit status is the command's. 'natkit' and the Python of this natkit
are on its PATH. --lab is needed only when several labs are up.
"""


@lab.command(
    "exec",
    epilog=_EXEC_EPILOG,
    context_settings={"allow_interspersed_args": False},
)
@click.option("--lab", "lab_name", metavar="PREFIX", help="Which lab (see: lab list).")
@click.argument("host", metavar="HOST")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(lab_name: str | None, host: str, command: tuple[str, ...]) -> None:
    """Run a command inside a lab host's (or router's) namespace."""
    _require_root()
    try:
        attached = Lab.attach(_pick_lab(lab_name))
    except LabError as exc:
        _die(str(exc))
    except OSError as exc:
        _die_os(exc)
    try:
        netns = attached.netns_of(host)
    except LabError:
        _die(_no_host(host, attached), 2)
    if netns not in _netns_names():
        _die(f"namespace {netns} of lab {attached.prefix} is gone; remove the lab")

    # "--" after HOST reaches us as an argument (options stop at HOST)
    if command[:1] == ("--",):
        command = command[1:]
    if not command:
        _die("no command given (natkit lab exec HOST -- CMD [ARGS]...)", 2)
    env = _exec_env()
    if shutil.which(command[0], path=env["PATH"]) is None:
        _die(f"command not found: {command[0]}", 127)
    ip = shutil.which("ip", path=f"{env['PATH']}{os.pathsep}/usr/sbin:/sbin")
    argv = ["ip", "netns", "exec", netns, *command]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(ip or "/usr/sbin/ip", argv, env)
    except OSError as exc:
        _die(f"cannot run ip netns exec: {exc.strerror or exc}")


def _no_host(host: str, attached: Lab) -> str:
    names = [h.name for h in attached.hosts] + [f"r{h.index}" for h in attached.hosts]
    return (
        f"host {host!r} not found in lab {attached.prefix} "
        f"(one of: {', '.join(names)}, inet)"
    )


def _exec_env() -> dict[str, str]:
    """Environment of ``lab exec`` commands: natkit importable and on PATH.

    The directory of this Python (a virtualenv's bin holds the ``natkit``
    script) and that of the running ``natkit`` script come first in PATH.
    """
    env = Lab.python_env()
    first = [str(Path(sys.executable).parent)]
    script = Path(sys.argv[0])
    if script.name == "natkit" and script.parent != Path():
        first.append(str(script.resolve().parent))
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p]
    env["PATH"] = os.pathsep.join(dict.fromkeys([*first, *rest]))
    return env


def _pick_lab(name: str | None) -> str:
    """The prefix of lab ``name``, or of the only lab when none is named."""
    if name is not None:
        return _prefix(name)
    labs = Lab.list_labs()
    if not labs:
        raise LabError("no lab is up (start one with: natkit lab up --nat TYPE)")
    if len(labs) > 1:
        names = ", ".join(state.prefix for state in labs)
        raise LabError(f"several labs are up ({names}): choose one with --lab")
    return labs[0].prefix


# --- down --------------------------------------------------------------------

_DOWN_EPILOG = """\b
Examples:
  natkit lab down
  natkit lab down --lab nk-lab2-
  natkit lab down --all

Stops every process inside the lab's namespaces, deletes them and the state
file. Without --lab or --all, removes the only lab that is up.
"""


@lab.command("down", epilog=_DOWN_EPILOG)
@click.option("--lab", "lab_name", metavar="PREFIX", help="Which lab (see: lab list).")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Every lab, and namespaces left by crashed lab processes.",
)
def lab_down(lab_name: str | None, everything: bool) -> None:
    """Remove a lab: its processes, namespaces and state file."""
    if lab_name is not None and everything:
        _die("give --lab or --all, not both", 2)
    _require_root()
    try:
        if not everything:
            prefix = _pick_lab(lab_name)
            if not Lab.down(prefix):
                _die(f"no lab {prefix!r} (see: natkit lab list)")
            click.echo(f"lab {prefix} removed")
            return
        removed = [state.prefix for state in Lab.list_labs() if Lab.down(state.prefix)]
        stale = Lab.cleanup_stale()
    except LabError as exc:
        _die(str(exc))
    except OSError as exc:
        _die_os(exc)
    for prefix in removed:
        click.echo(f"lab {prefix} removed")
    if stale:
        click.echo(f"stale namespaces removed: {' '.join(stale)}")
    if not removed and not stale:
        click.echo("no lab to remove")


# --- list --------------------------------------------------------------------

_LIST_EPILOG = """\b
Examples:
  natkit lab list
  natkit lab list --json
"""


@lab.command("list", epilog=_LIST_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def lab_list(as_json: bool) -> None:
    """Show the labs that are up (those with a state file)."""
    try:
        labs = Lab.list_labs()
        namespaces = set(_netns_names())
    except LabError as exc:
        _die(str(exc))
    except OSError as exc:
        _die_os(exc)
    if as_json:
        click.echo(json.dumps([_state_record(s, namespaces) for s in labs]))
        return
    if not labs:
        click.echo("no lab is up")
        return
    for state in labs:
        status = _status(state, namespaces)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.created))
        click.echo(f"{state.prefix}  {status}, created {created}")
        for h in state.hosts:
            click.echo(f"  {h.name}  {h.ip:<15} {h.nat.type:<21} {h.router_wan_ip}")


def _status(state: LabState, namespaces: set[str]) -> str:
    missing = [n for n in state.namespaces if n not in namespaces]
    if missing:
        return f"incomplete ({len(missing)} namespaces missing)"
    if state.detached:
        return "up (detached)"
    return f"up (owned by pid {state.pid})"


def _state_record(state: LabState, namespaces: set[str]) -> dict[str, object]:
    return {
        "lab": state.prefix,
        "status": _status(state, namespaces),
        "detached": state.detached,
        "pid": state.pid,
        "created": state.created,
        "internet": state.internet,
        "namespaces": list(state.namespaces),
        "hosts": [_host_record(h) for h in state.hosts],
    }


def _netns_names() -> list[str]:
    return list_netns()


# --- matrix ------------------------------------------------------------------

_MATRIX_EPILOG = """\b
Examples:
  natkit lab matrix
  natkit lab matrix --nat symmetric --nat port-restricted-cone
  natkit lab matrix --aioice --runs 3 --html matrix.html
  natkit lab matrix --unordered --jobs 3 --json
  natkit lab matrix --aioice --loopback-runs 10 --runs 0

\b
For each ordered pair of the NAT types (all five by default: 25 cells) a
lab with two NATs is built, natkit serve runs in it as STUN/TURN server on
203.0.113.10:3478, 'natkit ice offer' on h1 (controlling, the row) and
'natkit ice answer' on h2 (the column) connect, and the lab is removed.
--aioice runs two aioice peers in the same lab too. Every cell must
connect: directly, except symmetric with symmetric or port-restricted-cone,
which must relay. Exit status 1 if a natkit cell is not as expected.
--loopback-runs N also times both agents on 127.0.0.1 (no NAT, no server).
"""


@lab.command("matrix", epilog=_MATRIX_EPILOG)
@click.option(
    "--nat",
    "nats",
    multiple=True,
    metavar="TYPE",
    help="NAT types to pair, repeatable (default: all five).",
)
@click.option(
    "--unordered", is_flag=True, help="Each unordered pair once (15 of 25 cells)."
)
@click.option("--aioice", is_flag=True, help="Also run two aioice peers per cell.")
@click.option(
    "--runs",
    type=click.IntRange(0, 100),
    default=1,
    show_default=True,
    help="Connections per cell and agent (the median is reported); 0: no lab.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="Labs at a time (more is faster, but the timings get noisier).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 300),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="Each peer's limit for gathering and connecting.",
)
@click.option(
    "--loopback-runs",
    type=click.IntRange(0, 1000),
    default=0,
    metavar="N",
    help="Also time N connections on 127.0.0.1 per agent.",
)
@click.option("--html", "html_file", metavar="FILE", help="Write an HTML page here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lab_matrix(
    nats: tuple[str, ...],
    unordered: bool,
    aioice: bool,
    runs: int,
    jobs: int,
    timeout: float,
    loopback_runs: int,
    html_file: str | None,
    as_json: bool,
) -> None:
    """ICE between hosts behind each pair of NAT types: direct, relay or failed."""
    try:
        types = tuple(NatSpec.of(n).type for n in nats) if nats else ()
    except LabError as exc:
        _die(str(exc), 2)
    if aioice and not _has_aioice():
        _die("--aioice needs the aioice package (pip install aioice)", 2)
    _require_root()
    options = matrix.MatrixOptions(
        nats=types or tuple(NatType),
        unordered=unordered,
        aioice=aioice,
        runs=max(runs, 1),
        jobs=jobs,
        timeout=timeout,
    )

    def progress(cell: matrix.CellResult) -> None:
        if not as_json:
            line = f"{cell.left} -> {cell.right} ({cell.impl}): "
            line += matrix.cell_text(cell)
            if cell.problem:
                line += f" [{cell.problem}]"
            click.echo(line, err=True)

    impls = [matrix.Impl.NATKIT] + ([matrix.Impl.AIOICE] if aioice else [])
    try:
        cells = matrix.run_matrix(options, progress=progress) if runs else []
        loopback = matrix.run_loopback(loopback_runs, impls) if loopback_runs else []
        if html_file is not None:
            Path(html_file).write_text(matrix.render_html(cells, loopback=loopback))
    except LabError as exc:
        _die(str(exc))
    except OSError as exc:
        _die_os(exc)
    except KeyboardInterrupt:
        sys.exit(130)

    if as_json:
        matrix.write_json(cells, sys.stdout, loopback=loopback)
    else:
        _print_matrix(cells, loopback, impls)
    if any(c.impl is matrix.Impl.NATKIT and not c.as_expected for c in cells):
        sys.exit(1)


def _has_aioice() -> bool:
    import importlib.util

    return importlib.util.find_spec("aioice") is not None


def _print_matrix(
    cells: list[matrix.CellResult],
    loopback: list[matrix.LoopbackResult],
    impls: list[matrix.Impl],
) -> None:
    for impl in impls:
        if any(c.impl is impl for c in cells):
            for line in matrix.text_grid(cells, impl):
                click.echo(line)
            click.echo("")
    for result in loopback:
        median = "-" if result.median_ms is None else f"{result.median_ms:.1f} ms"
        click.echo(
            f"loopback {result.impl}: median {median} over "
            f"{len(result.connected_ms)} runs, {result.failures} failed"
        )
    wrong = [c for c in cells if not c.as_expected]
    for cell in wrong:
        click.echo(
            f"not as expected: {cell.left} -> {cell.right} ({cell.impl}): "
            f"{cell.outcome}, expected {cell.expected}"
            + (f" [{cell.problem}]" if cell.problem else "")
        )
