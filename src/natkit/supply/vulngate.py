"""The release gate: known vulnerabilities held against remediation deadlines.

Policy (FedRAMP continuous monitoring remediation times, counted in days
from discovery):

=========================  =========
severity                   due after
=========================  =========
Critical, High             30 days
Moderate (Medium)          90 days
Low                        180 days
unknown                    as High: 30 days
=========================  =========

A CISA Known Exploited Vulnerabilities (KEV) entry for one of a finding's
CVE ids gives a due date of its own; it wins when it is earlier. A finding
blocks the release when its due date has passed (exit 1); due today is not
yet overdue.

Inputs:

- pip-audit JSON reports (``pip-audit -r requirements/runtime.lock
  --disable-pip --require-hashes --format json``), given as files or produced
  by a live scan (:func:`run_pip_audit`);
- the state file, a JSON file committed under ``deploy/vuln/`` that records
  when each finding was first seen (its discovery date) and what was last
  known about it;
- optionally a local copy of the KEV catalogue (its JSON feed format).

A finding is reported once however many packages and reports name it: ids
and aliases that share a member are one finding (union of the alias sets).

Severity comes from the advisory when the report carries one (a
``severity`` field, text or CVSS score, or OSV ``database_specific.severity``).
pip-audit's JSON has none, so its findings count as High until an advisory
says otherwise: unknown severity never shortens the deadline.

When the live scan cannot reach the vulnerability service it says so in one
line, and the gate runs on what it has: the previous report when given, else
the findings the state file still holds open.
"""

import dataclasses
import datetime
import json
import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from natkit.stun.errors import NatkitError

__all__ = [
    "REMEDIATION_DAYS",
    "UNKNOWN_SEVERITY",
    "Finding",
    "GateError",
    "GateResult",
    "KevEntry",
    "GateRun",
    "RawFinding",
    "Report",
    "ScanResult",
    "Severity",
    "StateEntry",
    "evaluate",
    "group_findings",
    "load_kev",
    "load_report",
    "load_state",
    "parse_report",
    "run_gate",
    "run_pip_audit",
    "state_to_json",
]

logger = logging.getLogger(__name__)

STATE_SCHEMA = "natkit-vuln-state/1"


class GateError(NatkitError):
    """Input the gate cannot use; ``str()`` is the one line to show."""


class Severity(IntEnum):
    LOW = 1
    MODERATE = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


#: days from discovery to the remediation deadline
REMEDIATION_DAYS = {
    Severity.CRITICAL: 30,
    Severity.HIGH: 30,
    Severity.MODERATE: 90,
    Severity.LOW: 180,
}
#: what a finding without a severity counts as
UNKNOWN_SEVERITY = Severity.HIGH

_SEVERITY_WORDS = {
    "critical": Severity.CRITICAL,
    "high": Severity.HIGH,
    "important": Severity.HIGH,
    "moderate": Severity.MODERATE,
    "medium": Severity.MODERATE,
    "low": Severity.LOW,
}


def parse_severity(value: object) -> Severity | None:
    """``HIGH``, ``moderate``, ``Medium`` or a CVSS base score; None if unknown.

    CVSS v3 ranges: 9.0-10.0 Critical, 7.0-8.9 High, 4.0-6.9 Medium,
    0.1-3.9 Low (0.0, "None", is not a finding: None here).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        score = float(value)
    else:
        text = str(value).strip().lower()
        if text in _SEVERITY_WORDS:
            return _SEVERITY_WORDS[text]
        try:
            score = float(text)
        except ValueError:
            return None
    if not 0.0 < score <= 10.0:
        return None
    if score >= 9.0:
        return Severity.CRITICAL
    if score >= 7.0:
        return Severity.HIGH
    return Severity.MODERATE if score >= 4.0 else Severity.LOW


# --- records -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawFinding:
    """One vulnerability of one package in one report."""

    id: str
    aliases: tuple[str, ...]
    package: str
    version: str
    fix_versions: tuple[str, ...] = ()
    severity: Severity | None = None
    description: str = ""

    @property
    def ids(self) -> frozenset[str]:
        return frozenset((self.id, *self.aliases))


@dataclass(frozen=True, slots=True)
class Report:
    """A parsed pip-audit report: findings and the packages it could not audit."""

    findings: tuple[RawFinding, ...]
    audited: int
    skipped: tuple[tuple[str, str], ...] = ()  # (package, reason)


@dataclass(frozen=True, slots=True)
class KevEntry:
    cve: str
    due: datetime.date
    added: datetime.date | None = None


@dataclass(frozen=True, slots=True)
class StateEntry:
    """What the state file knows of one finding, under its canonical id."""

    id: str
    aliases: tuple[str, ...]
    first_seen: datetime.date
    last_seen: datetime.date
    packages: tuple[str, ...] = ()
    severity: Severity | None = None
    resolved: datetime.date | None = None

    @property
    def ids(self) -> frozenset[str]:
        return frozenset((self.id, *self.aliases))


class SeveritySource(StrEnum):
    ADVISORY = "advisory"
    UNKNOWN = "unknown, counted as high"


class DueSource(StrEnum):
    POLICY = "policy"
    KEV = "CISA KEV"


@dataclass(frozen=True, slots=True)
class Finding:
    """One deduplicated finding, judged."""

    id: str
    aliases: tuple[str, ...]
    packages: tuple[str, ...]
    fix_versions: tuple[str, ...]
    severity: Severity
    severity_source: SeveritySource
    first_seen: datetime.date
    new: bool
    due: datetime.date
    due_source: DueSource
    kev: KevEntry | None
    today: datetime.date

    @property
    def overdue(self) -> bool:
        return self.today > self.due

    @property
    def days_left(self) -> int:
        return (self.due - self.today).days


@dataclass(frozen=True, slots=True)
class GateResult:
    findings: tuple[Finding, ...]
    state: tuple[StateEntry, ...]
    notes: tuple[str, ...] = ()

    @property
    def overdue(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.overdue)

    @property
    def blocked(self) -> bool:
        return bool(self.overdue)


# --- reading inputs ----------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"{what} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateError(f"{what} {path}: cannot read: {exc}") from None
    except ValueError as exc:
        raise GateError(f"{what} {path}: not JSON: {exc}") from None


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GateError(f"{where}: expected a list of strings")
    return tuple(value)


def load_report(path: Path) -> Report:
    return parse_report(_read_json(path, "report"), str(path))


def parse_report(data: object, origin: str) -> Report:
    """A pip-audit ``--format json`` report (2.x object, or 1.x list form)."""
    deps = data.get("dependencies") if isinstance(data, dict) else data
    if not isinstance(deps, list):
        raise GateError(f"{origin}: not a pip-audit JSON report (no dependencies)")
    findings: list[RawFinding] = []
    skipped: list[tuple[str, str]] = []
    audited = 0
    for index, dep in enumerate(deps):
        where = f"{origin}: dependencies[{index}]"
        if not isinstance(dep, dict) or not isinstance(dep.get("name"), str):
            raise GateError(f"{where}: expected an object with a name")
        name = dep["name"]
        if "skip_reason" in dep:
            skipped.append((name, str(dep["skip_reason"])))
            continue
        audited += 1
        version = str(dep.get("version", ""))
        vulns = dep.get("vulns", [])
        if not isinstance(vulns, list):
            raise GateError(f"{where}.vulns: expected a list")
        for number, vuln in enumerate(vulns):
            findings.append(
                _raw_finding(vuln, name, version, f"{where}.vulns[{number}]")
            )
    return Report(tuple(findings), audited, tuple(skipped))


def _raw_finding(vuln: object, package: str, version: str, where: str) -> RawFinding:
    if not isinstance(vuln, dict) or not isinstance(vuln.get("id"), str):
        raise GateError(f"{where}: expected an object with an id")
    severity = parse_severity(vuln.get("severity"))
    specific = vuln.get("database_specific")
    if severity is None and isinstance(specific, dict):
        severity = parse_severity(specific.get("severity"))
    return RawFinding(
        id=vuln["id"].strip(),
        aliases=tuple(a.strip() for a in _strings(vuln.get("aliases"), where)),
        package=package,
        version=version,
        fix_versions=_strings(vuln.get("fix_versions"), where),
        severity=severity,
        description=str(vuln.get("description") or ""),
    )


def _date(value: object, where: str) -> datetime.date:
    if not isinstance(value, str):
        raise GateError(f"{where}: expected a date YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(value.strip())
    except ValueError:
        raise GateError(f"{where} = {value!r}: expected a date YYYY-MM-DD") from None


def load_kev(path: Path) -> dict[str, KevEntry]:
    """A local copy of the CISA KEV catalogue (its JSON feed), by CVE id."""
    data = _read_json(path, "KEV catalogue")
    entries = data.get("vulnerabilities") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise GateError(f"KEV catalogue {path}: no 'vulnerabilities' list")
    catalogue: dict[str, KevEntry] = {}
    for index, entry in enumerate(entries):
        where = f"KEV catalogue {path}: vulnerabilities[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("cveID"), str):
            raise GateError(f"{where}: expected an object with a cveID")
        cve = entry["cveID"].strip().upper()
        added = entry.get("dateAdded")
        catalogue[cve] = KevEntry(
            cve,
            _date(entry.get("dueDate"), f"{where}.dueDate"),
            _date(added, f"{where}.dateAdded") if added is not None else None,
        )
    return catalogue


def load_state(path: Path) -> tuple[StateEntry, ...]:
    """The first-seen records of a state file (see :func:`state_to_json`)."""
    data = _read_json(path, "state")
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        raise GateError(
            f"state {path}: expected a JSON object with schema {STATE_SCHEMA}"
        )
    findings = data.get("findings", {})
    if not isinstance(findings, dict):
        raise GateError(f"state {path}: 'findings' must be an object")
    entries = []
    for key, item in sorted(findings.items()):
        where = f"state {path}: findings[{key!r}]"
        if not isinstance(item, dict):
            raise GateError(f"{where}: expected an object")
        first_seen = _date(item.get("first_seen"), f"{where}.first_seen")
        resolved = item.get("resolved")
        entries.append(
            StateEntry(
                id=key,
                aliases=_strings(item.get("aliases"), where),
                first_seen=first_seen,
                last_seen=_date(item.get("last_seen", item.get("first_seen")), where),
                packages=_strings(item.get("packages"), where),
                severity=parse_severity(item.get("severity")),
                resolved=_date(resolved, f"{where}.resolved") if resolved else None,
            )
        )
    return tuple(entries)


def state_to_json(entries: Iterable[StateEntry]) -> dict[str, Any]:
    """The state file's JSON: first/last seen, ids, packages, severity."""
    findings: dict[str, Any] = {}
    for entry in sorted(entries, key=lambda e: e.id):
        item: dict[str, Any] = {
            "aliases": sorted(entry.aliases),
            "first_seen": entry.first_seen.isoformat(),
            "last_seen": entry.last_seen.isoformat(),
            "packages": sorted(entry.packages),
        }
        if entry.severity is not None:
            item["severity"] = entry.severity.label
        if entry.resolved is not None:
            item["resolved"] = entry.resolved.isoformat()
        findings[entry.id] = item
    return {"schema": STATE_SCHEMA, "findings": findings}


def findings_from_state(entries: Iterable[StateEntry]) -> tuple[RawFinding, ...]:
    """The findings the state still holds open, for a gate without a report."""
    raw = []
    for entry in entries:
        if entry.resolved is not None:
            continue
        for package in entry.packages or ("?==?",):
            name, _, version = package.partition("==")
            raw.append(
                RawFinding(
                    entry.id, entry.aliases, name, version, severity=entry.severity
                )
            )
    return tuple(raw)


# --- grouping and judging ----------------------------------------------------


_ID_PREFERENCE = ("CVE-", "GHSA-", "PYSEC-")


def _canonical_id(ids: Iterable[str], known: Iterable[str]) -> str:
    """The id a finding is filed under: one the state already uses, else the
    CVE, else GHSA, else PYSEC, else the first in order."""
    ids = sorted(set(ids))
    for candidate in sorted(set(known)):
        if candidate in ids:
            return candidate
    for prefix in _ID_PREFERENCE:
        for candidate in ids:
            if candidate.upper().startswith(prefix):
                return candidate
    return ids[0]


def group_findings(raw: Iterable[RawFinding]) -> list[list[RawFinding]]:
    """Findings that share an id or alias, as groups (union-find over ids)."""
    items = list(raw)
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, item in enumerate(items):
        for ident in item.ids:
            key = ident.upper()
            if key in owner:
                parent[root(index)] = root(owner[key])
            else:
                owner[key] = index
    groups: dict[int, list[RawFinding]] = {}
    for index, item in enumerate(items):
        groups.setdefault(root(index), []).append(item)
    return list(groups.values())


def evaluate(
    raw: Iterable[RawFinding],
    *,
    state: Sequence[StateEntry] = (),
    kev: Mapping[str, KevEntry] | None = None,
    today: datetime.date,
    complete: bool = True,
) -> GateResult:
    """Judge the findings; return them and the state to record.

    ``complete`` says that ``raw`` is a full scan: open state entries it no
    longer names are then marked resolved. A gate running on the state alone
    passes ``complete=False``.
    """
    kev = kev or {}
    findings: list[Finding] = []
    new_state: dict[str, StateEntry] = {}
    matched: set[str] = set()
    for group in group_findings(_with_state_aliases(raw, state)):
        ids = set().union(*(f.ids for f in group))
        upper = {i.upper() for i in ids}
        known = [e for e in state if {i.upper() for i in e.ids} & upper]
        matched.update(e.id for e in known)
        finding, entry = _judge(group, ids, known, kev, today)
        findings.append(finding)
        new_state[entry.id] = entry

    # entries not named this time: resolved after a full scan, else kept
    for entry in state:
        if entry.id in matched or entry.id in new_state:
            continue
        if complete and entry.resolved is None:
            entry = dataclasses.replace(entry, resolved=today)
        new_state[entry.id] = entry
    findings.sort(key=lambda f: (not f.overdue, f.due, f.id))
    return GateResult(tuple(findings), tuple(new_state[k] for k in sorted(new_state)))


def _with_state_aliases(
    raw: Iterable[RawFinding], state: Sequence[StateEntry]
) -> list[RawFinding]:
    """Findings with the aliases the state records for them added, so that
    two reports' ids that the state knows to be one finding group as one."""
    by_id = {i.upper(): e for e in state for i in e.ids}
    expanded = []
    for finding in raw:
        extra = {
            i for x in finding.ids if x.upper() in by_id for i in by_id[x.upper()].ids
        }
        aliases = tuple(sorted((set(finding.aliases) | extra) - {finding.id}))
        expanded.append(dataclasses.replace(finding, aliases=aliases))
    return expanded


def _judge(
    group: list[RawFinding],
    ids: set[str],
    known: list[StateEntry],
    kev: Mapping[str, KevEntry],
    today: datetime.date,
) -> tuple[Finding, StateEntry]:
    # step 1: one id, the union of aliases, every package named
    known_ids = {i for e in known for i in e.ids}
    canonical = _canonical_id(ids, [e.id for e in known])
    aliases = tuple(sorted((ids | known_ids) - {canonical}))
    packages = tuple(sorted({f"{f.package}=={f.version}" for f in group}))
    fixes = tuple(sorted({v for f in group for v in f.fix_versions}))

    # step 2: severity, the highest any advisory gives; unknown counts as High
    severities = [f.severity for f in group if f.severity is not None]
    if severities:
        severity, severity_source = max(severities), SeveritySource.ADVISORY
    else:
        severity, severity_source = UNKNOWN_SEVERITY, SeveritySource.UNKNOWN

    # step 3: discovery date from the state, else today (a new finding)
    first_seen = min((e.first_seen for e in known), default=today)
    reopened = any(e.resolved is not None for e in known)
    due = first_seen + datetime.timedelta(days=REMEDIATION_DAYS[severity])
    due_source = DueSource.POLICY

    # step 4: a KEV due date wins when it is earlier
    entries = [kev[i.upper()] for i in sorted(ids | known_ids) if i.upper() in kev]
    listed = min(entries, key=lambda k: k.due, default=None)
    if listed is not None and listed.due < due:
        due, due_source = listed.due, DueSource.KEV

    finding = Finding(
        id=canonical,
        aliases=aliases,
        packages=packages,
        fix_versions=fixes,
        severity=severity,
        severity_source=severity_source,
        first_seen=first_seen,
        new=not known,
        due=due,
        due_source=due_source,
        kev=listed,
        today=today,
    )
    entry = StateEntry(
        id=canonical,
        aliases=aliases,
        first_seen=first_seen,
        last_seen=today,
        packages=packages,
        severity=severity if severity_source is SeveritySource.ADVISORY else None,
    )
    if reopened:
        logger.info("%s: seen again after being marked resolved", canonical)
    return finding, entry


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A live pip-audit run: its report, or why there is none."""

    report: dict[str, Any] | None
    reachable: bool
    message: str


# --- one gate run ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateRun:
    """A verdict and what it rests on, for the command to print."""

    result: GateResult
    #: what the findings came from, in words: "live scan (pypi)", ...
    basis: str
    #: the one scan status line, when a live scan was attempted
    scan_line: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def scanned(self) -> bool:
        """False when the gate had nothing at all to go on."""
        return not self.basis.startswith("nothing")


def run_gate(
    *,
    reports: Sequence[tuple[str, Report]] = (),
    scan: ScanResult | None = None,
    previous: tuple[str, Report] | None = None,
    state: Sequence[StateEntry] | None = None,
    kev: Mapping[str, KevEntry] | None = None,
    today: datetime.date,
) -> GateRun:
    """Gate on what there is: the reports, the live scan, else what came before.

    ``reports`` are (name, report) pairs given by the caller; ``scan`` is the
    live scan's outcome when one was attempted; ``previous`` is the report
    to fall back on when the scan could not reach its service. With no report
    at all the gate runs on the findings the state holds open (``state`` is
    None when there is no state file, as opposed to an empty one).
    """
    entries = state or ()
    used = list(reports)
    basis = [name for name, _ in reports]
    scan_line = None
    if scan is not None and scan.report is not None:
        live = parse_report(scan.report, "live scan")
        used.append(("live scan", live))
        basis.insert(0, f"live scan ({scan.message})")
        scan_line = (
            f"vulnerability scan: {scan.message}: {live.audited} packages audited, "
            f"{len(live.findings)} vulnerabilities"
        )
    elif scan is not None:
        fallback = "the reports given" if reports else "the state's open findings"
        if previous is not None:
            used.append(previous)
            basis.append(f"previous report {previous[0]}")
            fallback = f"the previous report {previous[0]}"
        scan_line = (
            f"vulnerability scan: cannot reach the vulnerability service "
            f"({scan.message}); the gate runs on {fallback}"
        )
    complete = bool(reports) or (scan is not None and scan.report is not None)
    if used:
        raw: list[RawFinding] = [f for _, r in used for f in r.findings]
    else:
        raw = list(findings_from_state(entries))
        opened = len({e.id for e in entries if e.resolved is None})
        basis.append(
            f"the state's {opened} open findings"
            if state is not None
            else "nothing: no report and no state"
        )
    result = evaluate(raw, state=entries, kev=kev, today=today, complete=complete)
    skipped = tuple(s for _, r in used for s in r.skipped)
    return GateRun(result, ", ".join(basis), scan_line, skipped)


# --- the live scan -----------------------------------------------------------


#: how network failures show in pip-audit's traceback, in plain words
_NETWORK_ERRORS = (
    ("NameResolutionError", "cannot resolve the host name"),
    ("Failed to resolve", "cannot resolve the host name"),
    ("Temporary failure in name resolution", "cannot resolve the host name"),
    ("Connection refused", "connection refused"),
    ("Network is unreachable", "network unreachable"),
    ("ConnectTimeout", "connection timed out"),
    ("ReadTimeout", "no answer in time"),
    ("Max retries exceeded", "connection failed"),
    ("ConnectionError", "connection failed"),
)
_NOT_FOUND = "not found on PyPI"


def pip_audit_command(
    locks: Sequence[Path], *, service: str, output: Path, timeout: int
) -> list[str]:
    """The pip-audit command line: hashed lock files, no resolver, JSON out."""
    command = [sys.executable, "-m", "pip_audit", "--format", "json"]
    command += ["--progress-spinner", "off", "--disable-pip", "--require-hashes"]
    command += ["--vulnerability-service", service, "--timeout", str(timeout)]
    for lock in locks:
        command += ["-r", str(lock)]
    return command + ["-o", str(output)]


def run_pip_audit(
    locks: Sequence[Path], *, service: str = "pypi", timeout: int = 15
) -> ScanResult:
    """Scan the lock files with pip-audit against ``service`` (pypi or osv).

    Unreachable is any of: a network error, no answer in time, or PyPI
    answering "not found" for every pinned package (a registry mirror that
    serves the simple index but not the per-release JSON API, whose
    ``vulnerabilities`` pip-audit reads).
    """
    with tempfile.TemporaryDirectory(prefix="natkit-audit-") as tmp:
        output = Path(tmp, "report.json")
        command = pip_audit_command(
            locks, service=service, output=output, timeout=timeout
        )
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout * 8 + 30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return ScanResult(None, False, f"{service}: no answer in time")
        except OSError as exc:
            return ScanResult(None, False, f"cannot run pip-audit: {exc}")
        report = _read_output(output)
    return _interpret(done.returncode, done.stderr, report, service)


def _read_output(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _network_problem(stderr: str) -> str | None:
    for marker, words in _NETWORK_ERRORS:
        if marker in stderr:
            return words
    return None


def _interpret(
    returncode: int, stderr: str, report: dict[str, Any] | None, service: str
) -> ScanResult:
    """Turn pip-audit's exit code, stderr and report into a ScanResult."""
    if "No module named pip_audit" in stderr:
        return ScanResult(None, False, "pip-audit is not installed (dev.lock)")
    if report is None or returncode not in (0, 1):
        network = _network_problem(stderr)
        if network is not None:
            host = re.search(r"host='([^']+)'", stderr)
            where = f" {host.group(1)}" if host else ""
            return ScanResult(None, False, f"{service}{where}: {network}")
        last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        return ScanResult(None, False, f"pip-audit failed (exit {returncode}): {last}")
    deps = report.get("dependencies", [])
    if isinstance(deps, list) and deps:
        missing = [d for d in deps if _NOT_FOUND in str(d.get("skip_reason", ""))]
        if len(missing) == len(deps):
            return ScanResult(
                None,
                False,
                f"{service}: all {len(deps)} pinned packages answered 'not found', "
                "no vulnerability data is served here",
            )
    return ScanResult(report, True, service)


if __name__ == "__main__":  # pragma: no cover - the command's own entry point
    from natkit.cli.supply import release_gate

    release_gate(prog_name="python -m natkit.supply.vulngate")
