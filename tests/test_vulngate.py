"""The release gate: remediation deadlines, KEV, dedupe, unreachable service.

Fixtures in tests/data/vuln/ (invented advisory ids, see its README). The
policy: High and Critical 30 days from discovery, Moderate 90, Low 180,
unknown severity as High, an earlier CISA KEV due date wins.
"""

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from natkit.cli.supply import release_gate
from natkit.supply import vulngate as vg

DATA = Path(__file__).parent / "data" / "vuln"
TODAY = datetime.date(2099, 3, 10)


def day(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


def report(name: str) -> vg.Report:
    return vg.load_report(DATA / name)


def judge(
    *names: str,
    today: datetime.date = TODAY,
    state: bool = True,
    kev: bool = True,
) -> vg.GateResult:
    raw = [f for n in names for f in report(n).findings]
    return vg.evaluate(
        raw,
        state=vg.load_state(DATA / "state.json") if state else (),
        kev=vg.load_kev(DATA / "kev.json") if kev else {},
        today=today,
    )


def by_id(result: vg.GateResult) -> dict[str, vg.Finding]:
    found: dict[str, vg.Finding] = {}
    for finding in result.findings:
        for ident in (finding.id, *finding.aliases):
            found[ident] = finding
    return found


def gate(*args: str) -> Result:
    return CliRunner().invoke(release_gate, list(args), prog_name="natkit release-gate")


# --- policy ----------------------------------------------------------------


def test_policy_days() -> None:
    assert vg.REMEDIATION_DAYS == {
        vg.Severity.CRITICAL: 30,
        vg.Severity.HIGH: 30,
        vg.Severity.MODERATE: 90,
        vg.Severity.LOW: 180,
    }
    assert vg.UNKNOWN_SEVERITY is vg.Severity.HIGH


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("CRITICAL", vg.Severity.CRITICAL),
        ("High", vg.Severity.HIGH),
        ("important", vg.Severity.HIGH),
        ("moderate", vg.Severity.MODERATE),
        ("MEDIUM", vg.Severity.MODERATE),
        ("low", vg.Severity.LOW),
        (9.8, vg.Severity.CRITICAL),
        ("7.0", vg.Severity.HIGH),
        (6.9, vg.Severity.MODERATE),
        (4, vg.Severity.MODERATE),
        (3.9, vg.Severity.LOW),
        (0.0, None),
        (11, None),
        ("", None),
        ("severe", None),
        (None, None),
        (True, None),
    ],
)
def test_parse_severity(value: object, expected: vg.Severity | None) -> None:
    assert vg.parse_severity(value) is expected


@pytest.mark.parametrize(
    ("ident", "severity", "first_seen", "due"),
    [
        # critical, first seen (state) 2099-01-01: 30 days
        ("CVE-2099-0001", vg.Severity.CRITICAL, "2099-01-01", "2099-01-31"),
        # high from OSV database_specific, new today: 30 days
        ("PYSEC-2099-2", vg.Severity.HIGH, "2099-03-10", "2099-04-09"),
        # moderate, new: 90 days
        ("GHSA-test-mod-0003", vg.Severity.MODERATE, "2099-03-10", "2099-06-08"),
        # a CVSS base score of 5.3 is Medium: 90 days
        ("GHSA-test-cvss-0005", vg.Severity.MODERATE, "2099-03-10", "2099-06-08"),
        # unknown severity (pip-audit's usual), first seen 2099-03-01: as High
        ("PYSEC-2099-6", vg.Severity.HIGH, "2099-03-01", "2099-03-31"),
    ],
)
def test_each_severity_gets_its_deadline(
    ident: str, severity: vg.Severity, first_seen: str, due: str
) -> None:
    finding = by_id(judge("report-severities.json"))[ident]
    assert finding.severity is severity
    assert finding.first_seen == day(first_seen)
    assert finding.due == day(due)
    assert finding.due_source is vg.DueSource.POLICY


def test_low_severity_gets_180_days_without_kev() -> None:
    finding = by_id(judge("report-severities.json", kev=False))["GHSA-test-low-0004"]
    assert finding.severity is vg.Severity.LOW
    assert finding.due == TODAY + datetime.timedelta(days=180)


def test_unknown_severity_counts_as_high() -> None:
    finding = by_id(judge("report-severities.json"))["PYSEC-2099-6"]
    assert finding.severity is vg.Severity.HIGH
    assert finding.severity_source is vg.SeveritySource.UNKNOWN
    # the state's key stays the finding's id
    assert finding.id == "CVE-2099-0006"


# --- KEV -------------------------------------------------------------------


def test_earlier_kev_due_date_wins() -> None:
    finding = by_id(judge("report-severities.json"))["CVE-2099-0004"]
    assert finding.severity is vg.Severity.LOW
    assert finding.due == day("2099-03-22")
    assert finding.due_source is vg.DueSource.KEV
    assert finding.kev is not None and finding.kev.cve == "CVE-2099-0004"


def test_later_kev_due_date_does_not_extend_the_deadline() -> None:
    finding = by_id(judge("report-severities.json"))["CVE-2099-0002"]
    assert finding.kev is not None and finding.kev.due == day("2099-12-31")
    assert finding.due == day("2099-04-09")
    assert finding.due_source is vg.DueSource.POLICY


def test_kev_overdue_blocks() -> None:
    result = judge("report-severities.json", today=day("2099-03-23"))
    overdue = {f.id for f in result.overdue}
    assert "CVE-2099-0004" in overdue


# --- overdue or not ----------------------------------------------------------


def test_due_today_is_not_overdue() -> None:
    finding = by_id(judge("report-severities.json", today=day("2099-03-31")))[
        "PYSEC-2099-6"
    ]
    assert finding.due == day("2099-03-31")
    assert not finding.overdue
    assert finding.days_left == 0


def test_day_after_due_is_overdue() -> None:
    finding = by_id(judge("report-severities.json", today=day("2099-04-01")))[
        "PYSEC-2099-6"
    ]
    assert finding.overdue
    assert finding.days_left == -1


def test_overdue_finding_blocks_and_comes_first() -> None:
    result = judge("report-severities.json")
    assert result.blocked
    assert [f.id for f in result.overdue] == ["CVE-2099-0001"]
    assert result.findings[0].id == "CVE-2099-0001"
    assert result.findings[0].days_left == -38


def test_nothing_overdue_passes() -> None:
    result = judge("report-severities.json", state=False)
    assert not result.blocked
    assert len(result.findings) == 6
    assert all(f.new for f in result.findings)


def test_clean_report_passes() -> None:
    result = judge("report-clean.json", state=False)
    assert result.findings == ()
    assert not result.blocked


# --- one finding, once ----------------------------------------------------------


def test_duplicate_across_packages_and_reports_is_reported_once() -> None:
    result = judge(
        "report-duplicate-a.json", "report-duplicate-b.json", state=False, kev=False
    )
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert finding.id == "CVE-2099-0010"
    assert set(finding.aliases) == {"GHSA-test-dup-0010", "PYSEC-2099-10"}
    assert finding.packages == ("requests==2.0.0", "urllib3==1.0.0")
    assert finding.fix_versions == ("1.0.1", "2.0.1")
    # the highest severity any advisory gives
    assert finding.severity is vg.Severity.MODERATE
    assert finding.severity_source is vg.SeveritySource.ADVISORY


def test_group_findings_joins_on_shared_aliases() -> None:
    raw = [
        vg.RawFinding("A", ("B",), "p", "1"),
        vg.RawFinding("C", ("D",), "q", "1"),
        vg.RawFinding("d", ("E",), "r", "1"),  # ids compare case-insensitively
        vg.RawFinding("F", (), "s", "1"),
    ]
    groups = sorted(sorted(f.id for f in g) for g in vg.group_findings(raw))
    assert groups == [["A"], ["C", "d"], ["F"]]


def test_state_aliases_join_ids_no_report_links() -> None:
    state = [vg.StateEntry("CVE-2099-0020", ("GHSA-x",), TODAY, TODAY)]
    raw = [
        vg.RawFinding("CVE-2099-0020", (), "p", "1"),
        vg.RawFinding("GHSA-x", (), "q", "1"),
    ]
    result = vg.evaluate(raw, state=state, today=TODAY)
    assert len(result.findings) == 1
    assert result.findings[0].packages == ("p==1", "q==1")


def test_one_report_lists_a_package_once_per_vulnerability() -> None:
    raw = [vg.RawFinding("X", (), "p", "1"), vg.RawFinding("X", (), "p", "1")]
    result = vg.evaluate(raw, today=TODAY)
    assert [f.packages for f in result.findings] == [("p==1",)]


# --- state -----------------------------------------------------------------


def test_new_findings_are_recorded_first_seen_today() -> None:
    result = judge("report-severities.json")
    entries = {e.id: e for e in result.state}
    assert entries["CVE-2099-0002"].first_seen == TODAY
    assert entries["CVE-2099-0002"].severity is vg.Severity.HIGH
    assert entries["CVE-2099-0001"].first_seen == day("2099-01-01")
    # unknown severity is not written down as if an advisory had said High
    assert entries["CVE-2099-0006"].severity is None


def test_full_scan_resolves_what_it_no_longer_finds() -> None:
    state = vg.load_state(DATA / "state.json")
    result = vg.evaluate([], state=state, today=TODAY, complete=True)
    entries = {e.id: e for e in result.state}
    assert entries["CVE-2099-0001"].resolved == TODAY
    # already resolved: its date stays
    assert entries["CVE-2099-0099"].resolved == day("2098-06-02")


def test_partial_basis_keeps_open_findings_open() -> None:
    state = vg.load_state(DATA / "state.json")
    result = vg.evaluate([], state=state, today=TODAY, complete=False)
    assert {e.id: e.resolved for e in result.state}["CVE-2099-0001"] is None


def test_state_round_trip(tmp_path: Path) -> None:
    entries = judge("report-severities.json").state
    path = tmp_path / "state.json"
    path.write_text(json.dumps(vg.state_to_json(entries)))
    assert vg.load_state(path) == entries


def test_committed_state_file_loads() -> None:
    root = Path(__file__).parent.parent
    assert vg.load_state(root / "deploy" / "vuln" / "state.json") is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "schema natkit-vuln-state/1"),
        ("not json", "not JSON"),
        (
            '{"schema": "natkit-vuln-state/1", "findings": {"X": {"first_seen": "x"}}}',
            "expected a date",
        ),
    ],
)
def test_bad_state_is_one_clear_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(vg.GateError, match=message):
        vg.load_state(path)


# --- reports ------------------------------------------------------------------


def test_report_records_skipped_packages() -> None:
    parsed = report("report-severities.json")
    assert parsed.audited == 7
    assert [name for name, _ in parsed.skipped] == ["hotel"]


def test_old_list_form_of_the_report() -> None:
    parsed = report("report-v1-list.json")
    assert [(f.id, f.package, f.version) for f in parsed.findings] == [
        ("PYSEC-2099-9", "india", "9.0.0")
    ]


@pytest.mark.parametrize(
    "content",
    ['{"dependencies": 3}', '{"dependencies": [{"version": "1"}]}', "[1]"],
)
def test_bad_report_is_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(vg.GateError):
        vg.load_report(path)


def test_bad_kev_catalogue_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "kev.json"
    path.write_text('{"vulnerabilities": [{"cveID": "CVE-1", "dueDate": "soon"}]}')
    with pytest.raises(vg.GateError, match="dueDate"):
        vg.load_kev(path)


# --- the live scan and an unreachable service ----------------------------------


def test_all_not_found_means_unreachable() -> None:
    data = json.loads((DATA / "report-not-found.json").read_text())
    result = vg._interpret(0, "", data, "pypi")
    assert not result.reachable and result.report is None
    assert "all 2 pinned packages answered 'not found'" in result.message


def test_some_not_found_is_still_a_scan() -> None:
    data = json.loads((DATA / "report-severities.json").read_text())
    result = vg._interpret(1, "", data, "pypi")
    assert result.reachable and result.report == data


def test_network_failure_means_unreachable() -> None:
    stderr = (DATA / "osv-unreachable.stderr").read_text()
    result = vg._interpret(1, stderr, None, "osv")
    assert not result.reachable
    assert result.message == "osv api.osv.dev: cannot resolve the host name"


def test_pip_audit_missing_is_said_plainly() -> None:
    stderr = "/venv/bin/python: No module named pip_audit\n"
    result = vg._interpret(1, stderr, None, "pypi")
    assert result.message == "pip-audit is not installed (dev.lock)"


def test_other_pip_audit_failure_shows_its_last_line() -> None:
    result = vg._interpret(2, "usage: ...\nerror: bad flag\n", None, "pypi")
    assert result.message == "pip-audit failed (exit 2): error: bad flag"


def test_run_pip_audit_command_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    clean = (DATA / "report-clean.json").read_text()

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        Path(command[command.index("-o") + 1]).write_text(clean)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr("natkit.supply.vulngate.subprocess.run", fake_run)
    lock = tmp_path / "runtime.lock"
    result = vg.run_pip_audit([lock], service="osv", timeout=5)
    assert result.reachable and result.report == json.loads(clean)
    command = seen[0]
    assert command[1:3] == ["-m", "pip_audit"]
    for flag in ("--disable-pip", "--require-hashes", "--format"):
        assert flag in command
    assert command[command.index("-r") + 1] == str(lock)
    assert command[command.index("--vulnerability-service") + 1] == "osv"


def test_run_pip_audit_timeout_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(command, 1)

    monkeypatch.setattr("natkit.supply.vulngate.subprocess.run", fake_run)
    result = vg.run_pip_audit([Path("x.lock")])
    assert not result.reachable
    assert "no answer in time" in result.message


UNREACHABLE = vg.ScanResult(None, False, "pypi: all 15 pinned packages answered")


def test_unreachable_gate_runs_on_the_state() -> None:
    state = vg.load_state(DATA / "state.json")
    run = vg.run_gate(scan=UNREACHABLE, state=state, today=TODAY)
    assert run.scan_line is not None and "\n" not in run.scan_line
    assert run.scan_line.startswith("vulnerability scan: cannot reach")
    assert "the state's open findings" in run.scan_line
    assert run.basis == "the state's 2 open findings"
    # the state's open critical finding is past due: still blocks
    assert run.result.blocked
    assert {f.id for f in run.result.findings} == {"CVE-2099-0001", "CVE-2099-0006"}
    # nothing is marked resolved on a partial basis
    assert all(e.resolved is None for e in run.result.state if e.id != "CVE-2099-0099")


def test_unreachable_gate_uses_the_previous_report() -> None:
    previous = ("dist/pip-audit.json", report("report-duplicate-a.json"))
    run = vg.run_gate(scan=UNREACHABLE, previous=previous, today=TODAY)
    assert "the previous report dist/pip-audit.json" in (run.scan_line or "")
    assert [f.id for f in run.result.findings] == ["CVE-2099-0010"]


def test_unreachable_gate_with_an_empty_state() -> None:
    run = vg.run_gate(scan=UNREACHABLE, state=(), today=TODAY)
    assert run.basis == "the state's 0 open findings"
    assert run.scanned and not run.result.blocked


def test_unreachable_gate_with_nothing_passes_unverified() -> None:
    run = vg.run_gate(scan=UNREACHABLE, today=TODAY)
    assert not run.result.blocked
    assert not run.scanned


def test_reachable_scan_is_the_basis() -> None:
    data = json.loads((DATA / "report-clean.json").read_text())
    run = vg.run_gate(scan=vg.ScanResult(data, True, "pypi"), today=TODAY)
    assert run.basis == "live scan (pypi)"
    assert run.scan_line == (
        "vulnerability scan: pypi: 2 packages audited, 0 vulnerabilities"
    )


# --- the command ----------------------------------------------------------------


def test_command_blocks_on_overdue() -> None:
    result = gate(
        "--report", str(DATA / "report-severities.json"),
        "--state", str(DATA / "state.json"),
        "--kev", str(DATA / "kev.json"),
        "--today", "2099-03-10",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("release gate: 6 findings, 1 overdue")
    assert lines[1].split()[:2] == ["OVERDUE", "CVE-2099-0001"]
    assert lines[-1] == "release gate: BLOCKED: 1 findings overdue"
    assert "not audited: hotel" in result.stderr


def test_command_passes_when_nothing_is_overdue(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    result = gate(
        "--report", str(DATA / "report-severities.json"),
        "--today", "2099-03-10",
        "--state-out", str(out),
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["blocked"] is False
    assert len(verdict["findings"]) == 6
    assert vg.load_state(out)


def test_command_clean_report() -> None:
    result = gate("--report", str(DATA / "report-clean.json"))
    assert result.exit_code == 0
    assert result.stdout.startswith("release gate: pass: no known vulnerabilities")


def test_command_unreachable_scan_says_so_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(vg, "run_pip_audit", lambda *a, **k: UNREACHABLE)
    lock = tmp_path / "runtime.lock"
    lock.write_text("")
    result = gate(
        "--scan", "--lock", str(lock),
        "--state", str(DATA / "state.json"),
        "--today", "2099-03-10",
    )  # fmt: skip
    assert result.exit_code == 1
    said = [ln for ln in result.stderr.splitlines() if "cannot reach" in ln]
    assert len(said) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to gate"),
        (("--report", "missing.json"), "report missing.json: file not found"),
        (("--report", str(DATA / "report-clean.json"), "--today", "x"), "--today"),
        (("--scan", "--lock", "missing.lock"), "--lock missing.lock: file not found"),
    ],
)
def test_command_bad_input_is_one_line(args: tuple[str, ...], message: str) -> None:
    result = gate(*args)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr
