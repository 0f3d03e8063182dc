"""Commands of the supply chain records: inventory, release gate, SBOM.

``inventory`` and ``release_gate`` are click commands for ``natkit``
(``main.add_command``); ``release_gate`` and ``sbom_command`` also run as
``python -m natkit.supply.vulngate`` and ``python -m natkit.supply.sbom``.
"""

import datetime
import json
from pathlib import Path
from typing import Any

import click

from natkit.cli._common import _die, _OneLineCommand

__all__ = ["inventory", "release_gate", "sbom_command"]

# --- natkit inventory ---------------------------------------------------------

_INVENTORY_EPILOG = """\b
Examples:
  natkit inventory
  natkit inventory --json --config /etc/natkit/natkit.toml
  natkit inventory --csv > inventory.csv

The asset identifier is the image digest (NATKIT_IMAGE_DIGEST, or the file
/etc/natkit/image-digest), else host:<id>:natkit with <id> derived from
/etc/machine-id. The CSV has the columns of the FedRAMP Rev. 5 Integrated
Inventory Workbook. See docs/deploy.md.
"""


@click.command("inventory", cls=_OneLineCommand, epilog=_INVENTORY_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--csv", "as_csv", is_flag=True, help="Workbook rows as CSV.")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="Server TOML config (as for natkit serve; NATKIT_* applies too).",
)
def inventory(as_json: bool, as_csv: bool, config_file: str | None) -> None:
    """Inventory record of this natkit: asset id, software, ports, config hash."""
    from natkit.server.config import ConfigError, load_config
    from natkit.supply import inventory as inv

    if as_json and as_csv:
        _die("--json and --csv exclude each other", 2)
    path = Path(config_file) if config_file is not None else None
    try:
        config = load_config(config_file=path)
        record = inv.build_record(config, config_file=path)
    except ConfigError as exc:
        _die(f"config: {exc}", 2)
    except inv.InventoryError as exc:
        _die(str(exc), 2)
    if as_json:
        click.echo(json.dumps(inv.to_json(record), indent=2))
    elif as_csv:
        click.echo(inv.to_csv(record), nl=False)
    else:
        click.echo(inv.to_text(record))


# --- natkit release-gate --------------------------------------------------------

_GATE_EPILOG = """\b
Examples:
  natkit release-gate --scan --state deploy/vuln/state.json
  natkit release-gate --report pip-audit.json --state deploy/vuln/state.json \\
      --kev known_exploited_vulnerabilities.json
  natkit release-gate --scan --save-report dist/pip-audit.json \\
      --previous-report dist/pip-audit.json --state-out dist/vuln-state.json

Exit 0: nothing overdue; 1: a finding is past its due date (High and
Critical 30 days from discovery, Moderate 90, Low 180, an earlier CISA KEV
due date wins; unknown severity counts as High); 2: bad input.
"""


@click.command("release-gate", cls=_OneLineCommand, epilog=_GATE_EPILOG)
@click.option("--scan", is_flag=True, help="Run pip-audit on the lock files now.")
@click.option(
    "--lock",
    "locks",
    multiple=True,
    metavar="FILE",
    help="Hashed lock file to scan [default: requirements/runtime.lock].",
)
@click.option(
    "--service",
    type=click.Choice(["pypi", "osv"]),
    default="pypi",
    show_default=True,
    help="pip-audit's vulnerability service.",
)
@click.option(
    "--timeout",
    type=click.IntRange(1, 300),
    default=15,
    show_default=True,
    help="Seconds per request to the service.",
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    metavar="FILE",
    help="pip-audit JSON report to gate on (repeatable).",
)
@click.option(
    "--previous-report",
    metavar="FILE",
    help="Report to fall back on when the live scan cannot reach the service.",
)
@click.option("--save-report", metavar="FILE", help="Write the live scan's report.")
@click.option("--state", "state_file", metavar="FILE", help="First-seen state (JSON).")
@click.option("--state-out", metavar="FILE", help="Write the updated state here.")
@click.option(
    "--kev", "kev_file", metavar="FILE", help="Local CISA KEV catalogue JSON."
)
@click.option("--today", metavar="YYYY-MM-DD", help="Judge as of this date.")
@click.option("--json", "as_json", is_flag=True, help="The verdict as JSON.")
def release_gate(
    scan: bool,
    locks: tuple[str, ...],
    service: str,
    timeout: int,
    reports: tuple[str, ...],
    previous_report: str | None,
    save_report: str | None,
    state_file: str | None,
    state_out: str | None,
    kev_file: str | None,
    today: str | None,
    as_json: bool,
) -> None:
    """Block the release when a known vulnerability is past its due date."""
    from natkit.supply import vulngate as vg

    if not scan and not reports:
        _die("nothing to gate: give --scan and/or --report FILE", 2)
    try:
        day = _parse_day(today)
        state = vg.load_state(Path(state_file)) if state_file else None
        kev = vg.load_kev(Path(kev_file)) if kev_file else {}
        given = [(p, vg.load_report(Path(p))) for p in reports]
        live = _live_scan(locks, service, timeout) if scan else None
        previous = None
        if live is not None and live.report is None and previous_report:
            if Path(previous_report).is_file():
                previous = (previous_report, vg.load_report(Path(previous_report)))
            else:
                click.echo(
                    f"release gate: no previous report {previous_report}", err=True
                )
        run = vg.run_gate(
            reports=given, scan=live, previous=previous, state=state, kev=kev, today=day
        )
        if save_report and live is not None and live.report is not None:
            _write_json(Path(save_report), live.report)
        if state_out:
            _write_json(Path(state_out), vg.state_to_json(run.result.state))
    except vg.GateError as exc:
        _die(str(exc), 2)
    if run.scan_line:
        click.echo(run.scan_line, err=True)
    for name, reason in run.skipped[:3]:
        click.echo(f"release gate: not audited: {name}: {reason}", err=True)
    if len(run.skipped) > 3:
        click.echo(f"release gate: not audited: {len(run.skipped) - 3} more", err=True)
    if as_json:
        click.echo(json.dumps(_gate_json(run, day), indent=2))
    else:
        click.echo(_gate_text(run))
    if run.result.blocked:
        raise SystemExit(1)


def _parse_day(text: str | None) -> datetime.date:
    from natkit.supply.vulngate import GateError

    if text is None:
        return datetime.datetime.now(datetime.UTC).date()
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise GateError(f"--today {text!r}: expected a date YYYY-MM-DD") from None


def _live_scan(locks: tuple[str, ...], service: str, timeout: int) -> Any:
    """Run pip-audit on the lock files (runtime.lock by default)."""
    from natkit.supply import vulngate as vg

    paths = [Path(p) for p in locks] or [Path("requirements/runtime.lock")]
    for path in paths:
        if not path.is_file():
            raise vg.GateError(f"--lock {path}: file not found")
    return vg.run_pip_audit(paths, service=service, timeout=timeout)


def _write_json(path: Path, data: object) -> None:
    from natkit.supply.vulngate import GateError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise GateError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _gate_text(run: Any) -> str:
    result = run.result
    findings = result.findings
    basis = f"on {run.basis}"
    if not findings:
        if not run.scanned:
            return f"release gate: pass, unverified: {run.basis}"
        return f"release gate: pass: no known vulnerabilities ({basis})"
    lines = [
        f"release gate: {len(findings)} findings, {len(result.overdue)} overdue "
        f"({basis})"
    ]
    for f in findings:
        state = "OVERDUE" if f.overdue else "open"
        when = (
            f"{-f.days_left} days overdue" if f.overdue else f"{f.days_left} days left"
        )
        aliases = f" ({', '.join(f.aliases)})" if f.aliases else ""
        severity = f.severity.label
        if f.severity_source != "advisory":
            severity += " (unknown severity, counted as high)"
        lines.append(
            f"  {state:8} {f.id}{aliases}  {' '.join(f.packages)}  {severity}  "
            f"first seen {f.first_seen}{' (new)' if f.new else ''}  "
            f"due {f.due} ({f.due_source})  {when}"
        )
    if result.blocked:
        lines.append(f"release gate: BLOCKED: {len(result.overdue)} findings overdue")
    else:
        lines.append("release gate: pass: no finding overdue")
    return "\n".join(lines)


def _gate_json(run: Any, day: datetime.date) -> dict[str, Any]:
    result = run.result
    return {
        "blocked": result.blocked,
        "today": day.isoformat(),
        "basis": run.basis,
        "scan": run.scan_line,
        "not_audited": [{"name": n, "reason": r} for n, r in run.skipped],
        "findings": [
            {
                "id": f.id,
                "aliases": list(f.aliases),
                "packages": list(f.packages),
                "fix_versions": list(f.fix_versions),
                "severity": f.severity.label,
                "severity_source": str(f.severity_source),
                "first_seen": f.first_seen.isoformat(),
                "new": f.new,
                "due": f.due.isoformat(),
                "due_source": str(f.due_source),
                "kev": f.kev is not None,
                "overdue": f.overdue,
                "days_left": f.days_left,
            }
            for f in result.findings
        ],
    }


# --- SBOM ------------------------------------------------------------------------

_SBOM_EPILOG = """\b
Examples:
  python -m natkit.supply.sbom --rootfs build/rootfs --digest sha256:... \\
      -o dist/sbom.cdx.json
  python -m natkit.supply.sbom --oci dist/natkit.oci.tar -o dist/sbom.cdx.json
  python -m natkit.supply.sbom --lock requirements/runtime.lock \\
      -o dist/sbom-lock.cdx.json

Without --rootfs or --oci the components come from the lock file
(requirements/runtime.lock by default). The result is checked against the
CycloneDX 1.6 schema (needs cyclonedx-python-lib, in dev.lock).
"""


@click.command("sbom", cls=_OneLineCommand, epilog=_SBOM_EPILOG)
@click.option("--rootfs", metavar="DIR", help="Unpacked image root filesystem.")
@click.option("--oci", "oci_archive", metavar="FILE", help="OCI image archive (tar).")
@click.option("--lock", "lock_file", metavar="FILE", help="Hashed lock file.")
@click.option("--digest", metavar="sha256:HEX", help="Image manifest digest.")
@click.option("--name", default="natkit", show_default=True, help="Image name.")
@click.option("-o", "--output", default="-", metavar="FILE", help="Output [stdout].")
@click.option("--validate/--no-validate", default=True, help="Check the schema.")
def sbom_command(
    rootfs: str | None,
    oci_archive: str | None,
    lock_file: str | None,
    digest: str | None,
    name: str,
    output: str,
    validate: bool,
) -> None:
    """CycloneDX 1.6 SBOM of the natkit image (or of the runtime lock file)."""
    from natkit import __version__
    from natkit.supply import sbom

    if sum(x is not None for x in (rootfs, oci_archive, lock_file)) > 1:
        _die("give one of --rootfs, --oci and --lock", 2)
    if rootfs is not None and digest is None:
        _die("--rootfs needs --digest sha256:... (the image manifest digest)", 2)
    try:
        if oci_archive is not None:
            found, files = sbom.read_oci_archive(Path(oci_archive))
            if digest is not None and digest != found:
                raise sbom.SbomError(f"--digest {digest} is not the archive's {found}")
            top = sbom.TopComponent.image(found, name)
            contents = sbom.contents_from_files(files)
            source = sbom.BomSource("oci archive", oci_archive)
        elif rootfs is not None and digest is not None:
            top = sbom.TopComponent.image(digest, name)
            contents = sbom.contents_from_files(sbom.read_rootfs(Path(rootfs)))
            source = sbom.BomSource("image root filesystem", rootfs)
        else:
            lock = Path(lock_file or "requirements/runtime.lock")
            pins = sbom.read_lock_file(lock)
            top = (
                sbom.TopComponent.image(digest, name)
                if digest is not None
                else sbom.TopComponent(sbom.TopKind.APPLICATION, "natkit", __version__)
            )
            contents = sbom.ImageContents(python=pins)
            note = "Python components from the lock file, not from a built image"
            source = sbom.BomSource("lock file", str(lock), (note,))
        document = sbom.build_bom(top, contents, source=source)
        if validate:
            sbom.validate_bom(document)
    except sbom.SbomError as exc:
        _die(str(exc), 2)
    text = json.dumps(document, indent=2) + "\n"
    if output == "-":
        click.echo(text, nl=False)
        return
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        _die(f"{output}: cannot write: {exc.strerror or exc}")
    checked = f"valid CycloneDX {sbom.SPEC_VERSION}" if validate else "not validated"
    what = f"{top.kind} {top.version}, {sbom.summary(document)}"
    click.echo(f"wrote {output}: {what}; {checked}", err=True)
