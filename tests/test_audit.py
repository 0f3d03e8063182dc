"""The audit trail writer and its verifier (NIST SP 800-53 AU-3, AU-9, AU-12).

Records are written by :class:`natkit.security.audit.AuditLog` into a temporary
data directory; ``natkit audit verify`` (through click's runner) and
:func:`verify_chain` must find each kind of tampering: a modified, a deleted
and a reordered record, and records cut off the end.
"""

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from natkit.cli import main
from natkit.security.audit import (
    AuditError,
    AuditLog,
    AuditSettings,
    CollectingAuditSink,
    ProblemKind,
    chain_files,
    check_event,
    load_audit_key,
    read_checkpoint,
    record_change,
    utc_timestamp,
    verify_chain,
)
from natkit.stun.errors import UsageError

LOGGER = "natkit.security.audit"


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def settings(data_dir: Path, **options: object) -> AuditSettings:
    options.setdefault("node", "node-a")
    return AuditSettings.for_data_dir(data_dir, **options)


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(settings(tmp_path), start_thread=False)
    yield log
    log.close()


def write_events(data_dir: Path, count: int, **options: object) -> AuditSettings:
    config = settings(data_dir, **options)
    with AuditLog.open(config, start_thread=False) as log:
        for number in range(count):
            log.emit("test.event", outcome="success", number=number)
            if number % 4 == 3:
                assert log.flush()
    return config


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify_cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["audit", "verify", *args])


def one_error(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("natkit: error: ")
    return lines[0]


# --- the record --------------------------------------------------------------


def test_record_fields_in_order(tmp_path: Path) -> None:
    """AU-3: seq, UTC time (ms, Z), type, node, the fields, prev, mac."""
    clock = FakeClock(1_700_000_000.123)
    with AuditLog.open(settings(tmp_path), start_thread=False, clock=clock) as log:
        log.emit("auth.failure", outcome="failure", code=401, user="alice")
    lines = (tmp_path / "audit.log").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["type"] == "audit.init" and first["seq"] == 1
    assert first["prev"] == "00" * 32
    assert list(second) == [
        "seq",
        "ts",
        "type",
        "node",
        "outcome",
        "code",
        "user",
        "prev",
        "mac",
    ]
    assert second["seq"] == 2
    assert second["ts"] == "2023-11-14T22:13:20.123Z"
    assert second["node"] == "node-a"
    assert second["prev"] == first["mac"]
    assert re.fullmatch(r"[0-9a-f]{64}", str(second["mac"]))


def test_utc_timestamp() -> None:
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(86400.5) == "1970-01-02T00:00:00.500Z"


@pytest.mark.parametrize(
    ("event_type", "fields", "words"),
    [
        ("login", {}, "area.action"),
        ("Auth.Ok", {}, "area.action"),
        ("auth.success", {"password": "x"}, "secrets are never audited"),
        ("auth.success", {"rest_secret": "x"}, "secrets are never audited"),
        ("auth.success", {"message_integrity": "x"}, "secrets are never audited"),
        ("auth.success", {"api_key": "x"}, "secrets are never audited"),
        ("auth.success", {"token": "x"}, "secrets are never audited"),
        ("auth.success", {"seq": 1}, "not a usable field name"),
        ("auth.success", {"mac": "x"}, "not a usable field name"),
        ("auth.success", {"when": object()}, "not a plain value"),
        ("auth.success", {"ratio": float("nan")}, "not a plain value"),
        ("auth.success", {"keys": {"a": 1}}, "not a plain value"),
    ],
)
def test_emit_refuses_bad_events(
    event_type: str, fields: dict[str, object], words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        check_event(event_type, fields)
    with pytest.raises(UsageError, match=words):
        CollectingAuditSink().emit(event_type, **fields)  # type: ignore[arg-type]


def test_key_id_and_token_id_are_allowed() -> None:
    check_event("admin.token_create", {"token_id": "ab12cd34", "key_id": "x"})


def test_files_are_private(tmp_path: Path) -> None:
    write_events(tmp_path, 3)
    for name in ("audit.log", "audit.key", "audit.checkpoint"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_key_is_not_in_the_log(tmp_path: Path) -> None:
    write_events(tmp_path, 5)
    key = load_audit_key(tmp_path / "audit.key").key
    text = (tmp_path / "audit.log").read_bytes()
    assert key not in text
    assert key.hex().encode() not in text
    assert (tmp_path / "audit.key").read_bytes().strip() not in text


def test_open_to_others_key_is_refused(tmp_path: Path) -> None:
    write_events(tmp_path, 1)
    (tmp_path / "audit.key").chmod(0o640)
    with pytest.raises(AuditError, match="chmod 600"):
        AuditLog.open(settings(tmp_path), start_thread=False)


def test_missing_key_with_an_existing_log_is_refused(tmp_path: Path) -> None:
    write_events(tmp_path, 1)
    (tmp_path / "audit.key").unlink()
    with pytest.raises(AuditError, match="missing but the audit trail"):
        AuditLog.open(settings(tmp_path), start_thread=False)


def test_another_key_is_refused(tmp_path: Path) -> None:
    write_events(tmp_path, 1)
    other = tmp_path / "other"
    other.mkdir()
    write_events(other, 1)
    (tmp_path / "audit.key").write_bytes((other / "audit.key").read_bytes())
    with pytest.raises(AuditError, match="written with audit key"):
        AuditLog.open(settings(tmp_path), start_thread=False)


# --- verification -------------------------------------------------------------


def test_intact_chain_verifies(tmp_path: Path) -> None:
    write_events(tmp_path, 10)
    result = verify_cli("--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    # init, ten events, and the chain's checkpoint record at close
    assert re.fullmatch(r"ok: 1[12] records, chain intact\n", result.stdout)

    log = tmp_path / "audit.log"
    result = verify_cli(str(log), "--key", str(tmp_path / "audit.key"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    write_events(tmp_path, 3)
    write_events(tmp_path, 3)
    seqs = [r["seq"] for r in records(tmp_path / "audit.log")]
    assert seqs == list(range(1, len(seqs) + 1))
    assert verify_cli("--data-dir", str(tmp_path)).exit_code == 0


def _tamper(tmp_path: Path, how: str) -> tuple[int, int]:
    """Change the log as ``how`` says; the line and seq the verifier should name."""
    log = tmp_path / "audit.log"
    lines = log.read_text().splitlines(keepends=True)
    if how == "modified":
        lines[4] = lines[4].replace('"number":3', '"number":4')
        expected = (5, 5)
    elif how == "deleted":
        del lines[4]
        expected = (5, 6)
    elif how == "reordered":
        lines[4], lines[5] = lines[5], lines[4]
        expected = (5, 6)
    elif how == "truncated":
        del lines[-2:]
        expected = (len(lines), len(lines))
    elif how == "cut":
        lines[-1] = lines[-1][:40]
        expected = (len(lines), 0)
    elif how == "head":
        del lines[0]
        expected = (1, 2)
    else:
        raise AssertionError(how)
    log.write_text("".join(lines))
    return expected


@pytest.mark.parametrize(
    ("how", "kind"),
    [
        ("modified", "modified"),
        ("deleted", "deleted"),
        ("reordered", "reordered"),
        ("truncated", "truncated"),
        ("cut", "truncated"),
        ("head", "deleted"),
    ],
)
def test_verify_names_the_first_bad_record(tmp_path: Path, how: str, kind: str) -> None:
    """AU-9: each kind of tampering is found, with its line and seq."""
    write_events(tmp_path, 10)
    line, seq = _tamper(tmp_path, how)
    result = verify_cli("--data-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    error = one_error(result)
    assert f"line {line}" in error, error
    assert f": {kind}: " in error, error
    if seq:
        assert f"(seq {seq})" in error, error

    # the same through the API
    key = load_audit_key(tmp_path / "audit.key").key
    point = read_checkpoint(tmp_path / "audit.checkpoint", key)
    report = verify_chain([tmp_path / "audit.log"], key, checkpoint=point)
    assert report.problem is not None and report.problem.kind == ProblemKind(kind)


def test_truncation_needs_the_checkpoint(tmp_path: Path) -> None:
    """Without the checkpoint, a log cut at a record boundary looks whole."""
    write_events(tmp_path, 10)
    _tamper(tmp_path, "truncated")
    key = load_audit_key(tmp_path / "audit.key").key
    report = verify_chain([tmp_path / "audit.log"], key)
    assert report.ok
    result = verify_cli(
        str(tmp_path / "audit.log"), "--checkpoint", str(tmp_path / "audit.checkpoint")
    )
    assert result.exit_code == 1
    assert "truncated" in one_error(result)


def test_a_changed_checkpoint_is_refused(tmp_path: Path) -> None:
    write_events(tmp_path, 3)
    path = tmp_path / "audit.checkpoint"
    body = json.loads(path.read_text())
    body["seq"] -= 2
    path.write_text(json.dumps(body))
    result = verify_cli("--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "checkpoint" in one_error(result) and "modified" in one_error(result)


def test_wrong_key_is_reported_as_such(tmp_path: Path) -> None:
    write_events(tmp_path, 3)
    other = tmp_path / "other"
    other.mkdir()
    write_events(other, 1)
    result = verify_cli(str(tmp_path / "audit.log"), "--key", str(other / "audit.key"))
    assert result.exit_code == 1
    error = one_error(result)
    assert "audit key" in error


def test_verify_usage_errors(tmp_path: Path) -> None:
    result = verify_cli(str(tmp_path / "nope.log"))
    assert result.exit_code == 2
    assert "no such file" in one_error(result)
    result = verify_cli("--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no audit log" in one_error(result)


def test_verify_json(tmp_path: Path) -> None:
    write_events(tmp_path, 5)
    _tamper(tmp_path, "deleted")
    result = verify_cli("--data-dir", str(tmp_path), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["problem"]["kind"] == "deleted"
    assert data["problem"]["line"] == 5 and data["problem"]["seq"] == 6


# --- rotation -------------------------------------------------------------------


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    """Size-based rotation: audit.log.1, .2, ...; each file begins with the link."""
    write_events(tmp_path, 40, max_bytes=1500)
    files = chain_files(tmp_path / "audit.log")
    assert len(files) >= 4, files
    assert [f.name for f in files[:2]] == ["audit.log.1", "audit.log.2"]
    for path in files[1:]:
        first = records(path)[0]
        assert first["type"] == "audit.rotated"
    for earlier, later in zip(files, files[1:], strict=False):
        last = records(earlier)[-1]
        first = records(later)[0]
        assert first["prev"] == last["mac"]
        assert first["seq"] == int(str(last["seq"])) + 1
        assert first["prev_file"] == earlier.name
    for path in files[:-1]:
        # one flush may take a file past the limit by at most one record
        assert path.stat().st_size <= 1500 + 400

    result = verify_cli(*map(str, files), "--key", str(tmp_path / "audit.key"))
    assert result.exit_code == 0, result.output
    assert verify_cli("--data-dir", str(tmp_path)).exit_code == 0

    # each file alone verifies too (its first record carries the link)
    key = load_audit_key(tmp_path / "audit.key").key
    for path in files:
        assert verify_chain([path], key).ok

    # a file left out in the middle is a deletion
    gap = verify_chain([files[0], *files[2:]], key)
    assert gap.problem is not None and gap.problem.kind is ProblemKind.DELETED
    assert gap.problem.file == files[2] and gap.problem.line == 1


# --- checkpoints ---------------------------------------------------------------


def test_checkpoint_record_every_n_records(tmp_path: Path) -> None:
    write_events(tmp_path, 12, checkpoint_records=5)
    kinds = [r["type"] for r in records(tmp_path / "audit.log")]
    assert kinds.count("audit.checkpoint") >= 2
    checkpoints = [
        r for r in records(tmp_path / "audit.log") if r["type"] == "audit.checkpoint"
    ]
    for record in checkpoints:
        assert record["until_seq"] == int(str(record["seq"])) - 1


def test_checkpoint_record_after_t_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    config = settings(tmp_path, checkpoint_records=0, checkpoint_seconds=60)
    with AuditLog.open(config, start_thread=False, clock=clock) as log:
        log.emit("test.event", number=1)
        log.flush()
        clock.now += 61
        log.flush()  # nothing buffered, but a checkpoint is due
    kinds = [r["type"] for r in records(tmp_path / "audit.log")]
    assert kinds == ["audit.init", "test.event", "audit.checkpoint"]


def test_checkpoint_file_follows_every_flush(tmp_path: Path, audit: AuditLog) -> None:
    key = load_audit_key(tmp_path / "audit.key").key
    audit.emit("test.event", number=1)
    assert audit.flush()
    point = read_checkpoint(tmp_path / "audit.checkpoint", key)
    last = records(tmp_path / "audit.log")[-1]
    assert point.seq == last["seq"]
    assert point.mac.hex() == last["mac"]
    assert point.log == Path("audit.log")
    assert point.key_id == audit.key_id


def test_new_log_continues_from_the_checkpoint(tmp_path: Path) -> None:
    """A log restored without its file (or removed) starts where the chain was."""
    write_events(tmp_path, 4)
    old = tmp_path / "old.log"
    (tmp_path / "audit.log").rename(old)
    write_events(tmp_path, 2)
    first = records(tmp_path / "audit.log")[0]
    assert first["type"] == "audit.init"
    assert first["reason"] == "continued from the checkpoint"
    assert first["prev"] == records(old)[-1]["mac"]
    key = load_audit_key(tmp_path / "audit.key").key
    assert verify_chain([old, tmp_path / "audit.log"], key).ok


# --- failure and buffering -------------------------------------------------------


def test_unwritable_log_buffers_counts_and_reports_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """AU-5: a full disk does not stop the caller; drops are counted and said."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    config = settings(tmp_path, buffer_limit=100)
    log = AuditLog.open(config, start_thread=False)
    real_write = os.write
    failing = True

    def write(fd: int, data: bytes | memoryview) -> int:
        if failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("natkit.security.audit.os.write", write)
    log.emit("test.event", number=0)
    assert not log.flush()
    for number in range(1, 150):
        log.emit("test.event", number=number)  # never raises, never blocks
    assert not log.flush()
    stats = log.stats()
    assert stats.failing and stats.buffered == 100 and stats.dropped == 50
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "No space left on device" in warnings[0].getMessage()
    size_while_failing = (tmp_path / "audit.log").stat().st_size

    failing = False
    assert log.flush()
    log.close()
    assert size_while_failing > 0
    lines = records(tmp_path / "audit.log")
    numbers = [r["number"] for r in lines if r["type"] == "test.event"]
    assert numbers == list(range(100))
    dropped = [r for r in lines if r["type"] == "audit.dropped"]
    assert len(dropped) == 1 and dropped[0]["dropped"] == 50
    assert log.stats().dropped == 0
    assert verify_cli("--data-dir", str(tmp_path)).exit_code == 0


def test_a_half_written_record_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half way leaves no partial line behind."""
    log = AuditLog.open(settings(tmp_path), start_thread=False)
    real_write = os.write
    calls = 0

    def write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data)[:17])
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("natkit.security.audit.os.write", write)
    log.emit("test.event", number=1)
    assert not log.flush()
    monkeypatch.setattr("natkit.security.audit.os.write", real_write)
    assert (tmp_path / "audit.log").read_bytes().endswith(b"}\n")
    assert log.flush()
    log.close()
    assert verify_cli("--data-dir", str(tmp_path)).exit_code == 0


def test_incomplete_last_line_is_removed_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-write left part of a record: it is cut, and that is recorded."""
    write_events(tmp_path, 2)
    with (tmp_path / "audit.log").open("ab") as fh:
        fh.write(b'{"seq":99,"ts":"2024')
    caplog.set_level(logging.WARNING, logger=LOGGER)
    write_events(tmp_path, 1)
    assert "incomplete record" in caplog.text
    kinds = [r["type"] for r in records(tmp_path / "audit.log")]
    assert "audit.recovered" in kinds
    assert verify_cli("--data-dir", str(tmp_path)).exit_code == 0


def test_writer_thread_flushes_on_its_timer(tmp_path: Path) -> None:
    import time

    log = AuditLog.open(settings(tmp_path, flush_seconds=0.05))
    try:
        log.emit("test.event", number=1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if "test.event" in (tmp_path / "audit.log").read_text():
                break
            time.sleep(0.02)
        else:
            pytest.fail("the writer thread did not flush")
    finally:
        log.close()


def test_emit_after_close_is_ignored(tmp_path: Path) -> None:
    log = AuditLog.open(settings(tmp_path), start_thread=False)
    log.close()
    log.emit("test.event", number=1)
    log.close()
    assert "test.event" not in (tmp_path / "audit.log").read_text()


# --- other processes -------------------------------------------------------------


def test_record_change_appends_to_the_servers_chain(tmp_path: Path) -> None:
    """The CLI writes into the same log while the server holds it open."""
    server = AuditLog.open(settings(tmp_path), start_thread=False)
    server.emit("server.start", outcome="success")
    assert server.flush()
    assert record_change(tmp_path, "user.add", outcome="success", user="bob")
    server.emit("auth.success", outcome="success", user="bob")
    assert server.flush()
    server.close()
    lines = records(tmp_path / "audit.log")
    kinds = [r["type"] for r in lines]
    assert kinds[:4] == ["audit.init", "server.start", "user.add", "auth.success"]
    assert str(lines[2]["actor"]).startswith("os:")
    assert verify_cli("--data-dir", str(tmp_path)).exit_code == 0


def test_record_change_finds_a_key_kept_elsewhere(tmp_path: Path) -> None:
    """The checkpoint names the server's key file; the CLI finds it there."""
    keys = tmp_path / "keys"
    data = tmp_path / "data"
    config = settings(data, key_file=keys / "audit.key")
    AuditLog.open(config, start_thread=False).close()
    assert not (data / "audit.key").exists()
    assert record_change(data, "secret.add", outcome="success", fingerprint="ab")
    key = load_audit_key(keys / "audit.key").key
    assert verify_chain([data / "audit.log"], key).ok


def test_record_change_without_its_key_warns_and_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_events(tmp_path, 1)
    (tmp_path / "audit.key").unlink()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert not record_change(tmp_path, "user.remove", outcome="success", user="x")
    assert "not written" in caplog.text
