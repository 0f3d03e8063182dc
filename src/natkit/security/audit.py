"""The audit trail: JSON lines, a keyed hash chain, checkpoints (NIST AU-2/3/9/12).

What is recorded
================

One JSON object per line, one line per event. Every record has, in this
order: ``seq`` (1, 2, 3, ... across every file of one chain), ``ts`` (UTC,
ISO 8601 with milliseconds and ``Z``), ``type``, ``node`` (config
``node_name`` or the host name), then the event's own fields, then ``prev``
(the MAC of the record before) and ``mac``. The event fields used by natkit:

============== ===========================================================
``outcome``    ``success`` or ``failure``
``code``       the STUN error code of a refusal (401, 403, 486, 508...)
``reason``     why, in words (never a secret)
``source``     the client's address, ``ip:port`` (``[ip]:port`` for IPv6)
``transport``  ``udp``, ``tcp`` or ``tls``
``listener``   the server address the client reached
``user``       TURN username (REST usernames as given) or store user
``realm``      the realm
``allocation`` allocation id; ``relay`` relayed address(es); ``peer``
``duration``   seconds, on allocation close, with ``bytes_to_peer``,
               ``packets_to_peer``, ``bytes_to_client``,
               ``packets_to_client`` and ``dropped_packets``
``actor``      who made a change: ``os:<login>`` for the CLI, the admin
               token id for the admin API
============== ===========================================================

Event types: ``auth.success``, ``auth.failure``, ``allocation.create``,
``allocation.refresh``, ``allocation.expire``, ``allocation.delete``,
``permission.create``, ``permission.expire``, ``channel.bind``,
``channel.expire``, ``peer.denied``, ``quota.refused`` (from the TURN core,
through :class:`TurnAuditSink`); ``user.add``, ``user.replace``,
``user.remove``, ``secret.add``, ``secret.retire`` (written by the CLI into
the same log, :func:`record_change`); ``server.start``, ``server.stop``,
``config.load``, ``config.reload``, ``backup.create``; ``admin.*`` (the
admin API); and the trail's own ``audit.init``, ``audit.rotated``,
``audit.checkpoint``, ``audit.dropped``, ``audit.recovered``.

The API for other parts of the server
=====================================

Anything that audits takes an :class:`AuditSink` and calls::

    audit.emit("admin.token_create", outcome="success", actor=token_id,
               source="127.0.0.1:50000", token_id=new_id, role="operator")

``event_type`` is dotted lower case (``area.action``); field values are
str, int, float, bool, None or a list of str/int. ``emit`` never blocks on
the disk and never raises for I/O; it raises :class:`UsageError` for a
malformed type, a value of another type, or a field whose name says it
holds a secret (``password``, ``secret``, ``key``, ``token``,
``integrity``, ``hmac``, ``mac`` and ``*_password``/``*_secret``/``*_key``;
``key_id`` and ``token_id`` are allowed). In ``natkit serve`` the sink is
opened by :func:`natkit.server.daemon.serve` (:func:`open_server_audit`)
and handed to every part it builds; tests use :class:`CollectingAuditSink`.

Tamper evidence
===============

``mac`` is HMAC-SHA-256, under the audit key, of the record's bytes up to
and including ``prev`` (the line without ``,"mac":...``), so changing,
removing, inserting or reordering a record breaks the chain; the key lives
in its own file (``audit_key_file``, default ``DATA_DIR/audit.key``, mode
0600), never in the log. A log file always begins with a record that
carries the link to what came before (``audit.init``: a new chain or one
continued from the checkpoint; ``audit.rotated``: the file before), so each
file can be checked alone and a sequence of files as one chain.

The checkpoint file ``DATA_DIR/audit.checkpoint`` (JSON, itself
MAC-protected) holds the last ``seq`` and ``mac`` written, the log and key
paths and the key id; it is rewritten after every flush, so cutting records
off the end of the log is detected. Every ``checkpoint_records`` records
or ``checkpoint_seconds`` seconds an ``audit.checkpoint`` record goes into
the log as well (a heartbeat for log collectors). :func:`verify_chain`
(``natkit audit verify``) checks it all.

Writing
=======

:meth:`AuditLog.emit` appends to a bounded in-memory buffer; a writer
thread flushes it every ``flush_seconds`` (and at close): one write and one
fsync per flush, under an ``flock`` so that ``natkit users add`` may append
to the same log while the server runs. When ``max_bytes`` is reached the
file is renamed ``audit.log.1``, ``audit.log.2``, ... and a new one starts.
When writing fails (disk full, unwritable file) the server keeps serving:
records stay buffered up to ``buffer_limit``, beyond that they are
counted and dropped, one WARNING says so, and an ``audit.dropped`` record
gives the count once writing works again.
"""

import base64
import binascii
import datetime
import errno
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from natkit.security.secrets import (
    PrivateFileError,
    check_private_file,
    create_private_file,
    ensure_private_dir,
    write_private_file,
)
from natkit.stun.errors import NatkitError, UsageError
from natkit.turn.events import (
    AllocationCreated,
    AllocationDeleted,
    AllocationExpired,
    AllocationRefreshed,
    AuthFailed,
    AuthSucceeded,
    ChannelBound,
    ChannelExpired,
    EventSink,
    PeerDenied,
    PermissionCreated,
    PermissionExpired,
    QuotaRefused,
    TrafficStats,
    TurnEvent,
)

logger = logging.getLogger(__name__)

LOG_FILE = "audit.log"
KEY_FILE = "audit.key"
CHECKPOINT_FILE = "audit.checkpoint"
#: the environment variable that names the audit key for CLI processes
KEY_FILE_ENV = "NATKIT_AUDIT_KEY_FILE"

KEY_BYTES = 32
MAC_HEX = 64
#: ``prev`` of the first record of a new chain
GENESIS = bytes(32)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BUFFER_LIMIT = 10_000
DEFAULT_FLUSH_SECONDS = 1.0
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_CHECKPOINT_SECONDS = 300.0

#: what the MAC of a record and of the checkpoint file covers, after this label
_RECORD_LABEL = b"natkit-audit-record-v1\x00"
_CHECKPOINT_LABEL = b"natkit-audit-checkpoint-v1\x00"
_KEY_ID_LABEL = b"natkit-audit-key-id"
_MAC_TAIL = re.compile(r',"mac":"([0-9a-f]{64})"\}\Z')
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+\Z")
_FIELD_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_RESERVED = frozenset({"seq", "ts", "type", "node", "prev", "mac"})
_SECRET_NAMES = frozenset(
    {"password", "secret", "key", "token", "integrity", "hmac", "mac", "passphrase"}
)
_SECRET_SUFFIXES = ("_password", "_secret", "_key", "_passphrase", "_integrity")
_ALLOWED_NAMES = frozenset({"key_id", "token_id"})
#: how much of the end of a log is read to find its last record
_TAIL_CHUNK = 64 * 1024
_ROTATED_RE = re.compile(r"\.(\d+)\Z")

AuditValue = str | int | float | bool | None | list[str] | list[int] | tuple[str, ...]


class AuditError(NatkitError):
    """The audit trail cannot be opened: key, log or checkpoint."""


# --- the API -----------------------------------------------------------------


class AuditSink(Protocol):
    """Where audit records go (see the module docstring for the fields)."""

    def emit(self, event_type: str, /, **fields: AuditValue) -> None:
        """Record one event; never blocks on I/O, never raises for I/O."""
        ...


class NullAuditSink:
    """An :class:`AuditSink` that keeps nothing (``audit = false``)."""

    __slots__ = ()

    def emit(self, event_type: str, /, **fields: AuditValue) -> None:
        check_event(event_type, fields)

    def close(self) -> None:
        """Nothing to close."""


@dataclass(frozen=True, slots=True)
class CollectedEvent:
    """One event as :class:`CollectingAuditSink` kept it."""

    type: str
    fields: Mapping[str, AuditValue]


class CollectingAuditSink:
    """Keeps every event in memory (tests)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[CollectedEvent] = []

    def emit(self, event_type: str, /, **fields: AuditValue) -> None:
        check_event(event_type, fields)
        self.events.append(CollectedEvent(event_type, dict(fields)))

    def of_type(self, event_type: str) -> list[Mapping[str, AuditValue]]:
        """The fields of every event of ``event_type``, in order."""
        return [e.fields for e in self.events if e.type == event_type]


#: event types and field names that passed :func:`check_event` (they come
#: from code, so the set stays small; it is capped all the same)
_CHECKED_TYPES: set[str] = set()
_CHECKED_NAMES: set[str] = set()
_CHECKED_LIMIT = 4096
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def check_event(event_type: str, fields: Mapping[str, object]) -> None:
    """Raise UsageError for a malformed type, field name or value."""
    if event_type not in _CHECKED_TYPES:
        if not _TYPE_RE.match(event_type):
            raise UsageError(f"audit event type {event_type!r}: expected area.action")
        _remember(_CHECKED_TYPES, event_type)
    for name, value in fields.items():
        if name not in _CHECKED_NAMES:
            _check_name(name)
            _remember(_CHECKED_NAMES, name)
        if type(value) not in _PLAIN_TYPES and not _plain_value(value):
            raise UsageError(
                f"audit field {name!r}: {type(value).__name__} is not a plain value"
            )


def _check_name(name: str) -> None:
    if not _FIELD_RE.match(name) or name in _RESERVED:
        raise UsageError(f"audit field {name!r}: not a usable field name")
    if name not in _ALLOWED_NAMES and (
        name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES)
    ):
        raise UsageError(f"audit field {name!r}: secrets are never audited")


def _remember(checked: set[str], text: str) -> None:
    if len(checked) < _CHECKED_LIMIT:
        checked.add(text)


def _plain_value(value: object) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
    return False


def utc_timestamp(seconds: float) -> str:
    """``2024-05-01T12:00:00.123Z``: ISO 8601, UTC, milliseconds."""
    millis = int(seconds * 1000)
    moment = datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"


# --- the key -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditKey:
    """The HMAC key of the chain, and where it came from."""

    key: bytes = field(repr=False)
    path: Path

    @property
    def key_id(self) -> str:
        """Names the key in records and the checkpoint: 8 hex digits."""
        return key_id(self.key)


def key_id(key: bytes) -> str:
    """8 hex digits of HMAC-SHA-256(key, label): names a key, reveals nothing."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8]


def load_audit_key(path: Path, *, create: bool = False) -> AuditKey:
    """The audit key in ``path`` (base64 text, 32 bytes), made if asked.

    Raises :class:`AuditError` when the file is missing (and not to be
    created), open to other users, or not a key.
    """
    try:
        if not path.exists() and create:
            ensure_private_dir(path.parent)
            text = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
            if create_private_file(path, text):
                logger.info("generated audit key %s", path)
        check_private_file(path)
        data = path.read_bytes()
    except PrivateFileError as exc:
        raise AuditError(f"audit key: {exc}") from None
    except OSError as exc:
        raise AuditError(f"cannot read audit key {path}: {exc.strerror}") from None
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise AuditError(f"{path} is not an audit key (base64 of {KEY_BYTES} bytes)")
    return AuditKey(key, path)


# --- settings and the checkpoint ---------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where the trail lives and how it is written."""

    log: Path
    key_file: Path
    checkpoint: Path
    node: str = field(default_factory=socket.gethostname)
    max_bytes: int = DEFAULT_MAX_BYTES
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS

    @classmethod
    def for_data_dir(cls, data_dir: Path, **options: Any) -> "AuditSettings":
        """The default layout: ``audit.log``, ``audit.key``, ``audit.checkpoint``."""
        options.setdefault("log", data_dir / LOG_FILE)
        options.setdefault("key_file", data_dir / KEY_FILE)
        options.setdefault("checkpoint", data_dir / CHECKPOINT_FILE)
        return cls(**options)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last record written, as the checkpoint file holds it."""

    seq: int
    mac: bytes = field(repr=False)
    ts: str
    log: Path
    key_file: Path | None
    key_id: str


def _checkpoint_body(point: Checkpoint) -> dict[str, Any]:
    return {
        "format": "natkit-audit-checkpoint",
        "version": 1,
        "seq": point.seq,
        "mac": point.mac.hex(),
        "ts": point.ts,
        "log": str(point.log),
        "key_file": None if point.key_file is None else str(point.key_file),
        "key_id": point.key_id,
    }


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_checkpoint(path: Path, point: Checkpoint, key: bytes) -> None:
    """Replace the checkpoint file (0600, atomic), MAC-protected."""
    body = _checkpoint_body(point)
    body["cmac"] = hmac.new(
        key, _CHECKPOINT_LABEL + _canonical(body), hashlib.sha256
    ).hexdigest()
    write_private_file(path, json.dumps(body, indent=1).encode("utf-8") + b"\n")


def read_checkpoint_unverified(path: Path) -> Checkpoint:
    """The checkpoint in ``path`` without checking its MAC (to find the key)."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return Checkpoint(
            seq=int(body["seq"]),
            mac=bytes.fromhex(str(body["mac"])),
            ts=str(body["ts"]),
            log=Path(str(body["log"])),
            key_file=None if body.get("key_file") is None else Path(body["key_file"]),
            key_id=str(body["key_id"]),
        )
    except OSError as exc:
        raise AuditError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise AuditError(f"{path} is not an audit checkpoint") from None


def read_checkpoint(path: Path, key: bytes) -> Checkpoint:
    """The checkpoint in ``path``; AuditError if it was changed or is foreign."""
    point = read_checkpoint_unverified(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        given = bytes.fromhex(str(body.pop("cmac")))
    except (OSError, ValueError, KeyError):
        raise AuditError(f"{path} is not an audit checkpoint") from None
    if point.key_id != key_id(key):
        raise AuditError(
            f"checkpoint {path} was written with audit key {point.key_id}, "
            f"not {key_id(key)}"
        )
    expected = hmac.new(key, _CHECKPOINT_LABEL + _canonical(body), hashlib.sha256)
    if not hmac.compare_digest(given, expected.digest()):
        raise AuditError(f"checkpoint {path} has been modified (MAC mismatch)")
    return point


# --- records -----------------------------------------------------------------


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def record_mac(key: bytes, body: bytes) -> bytes:
    """The MAC of a record's bytes up to ``prev`` (closed with ``}``)."""
    return hmac.new(key, _RECORD_LABEL + body, hashlib.sha256).digest()


def format_record(
    key: bytes,
    *,
    seq: int,
    ts: str,
    event_type: str,
    node: str,
    fields: Mapping[str, AuditValue],
    prev: bytes,
) -> tuple[bytes, bytes]:
    """One line (with its newline) and its MAC."""
    parts = [
        f'{{"seq":{seq},"ts":{_dumps(ts)},"type":{_dumps(event_type)}',
        f',"node":{_dumps(node)}',
    ]
    for name, value in fields.items():
        if isinstance(value, tuple):
            value = list(value)
        parts.append(f",{_dumps(name)}:{_dumps(value)}")
    parts.append(f',"prev":"{prev.hex()}"}}')
    body = "".join(parts).encode("utf-8")
    mac = record_mac(key, body)
    return body[:-1] + f',"mac":"{mac.hex()}"}}\n'.encode("ascii"), mac


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    """A line of the log, parsed; ``mac_ok`` says whether its MAC checks."""

    seq: int
    type: str
    prev: bytes
    mac: bytes
    mac_ok: bool
    fields: Mapping[str, Any]


class _RecordFormatError(Exception):
    """A line that is not a natkit audit record."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _RecordFormatError(f"field {name!r} twice")
        result[name] = value
    return result


def parse_record(line: bytes, key: bytes) -> ParsedRecord:
    """One line (without its newline); _RecordFormatError if it is no record."""
    try:
        text = line.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _RecordFormatError(f"not a JSON record ({exc})") from None
    match = _MAC_TAIL.search(text)
    if not isinstance(data, dict) or match is None:
        raise _RecordFormatError("not an audit record (no mac at the end)")
    try:
        seq = data["seq"]
        prev = bytes.fromhex(data["prev"])
        kind = data["type"]
    except (KeyError, TypeError, ValueError):
        raise _RecordFormatError("not an audit record (seq, type or prev)") from None
    if not isinstance(seq, int) or not isinstance(kind, str) or len(prev) != 32:
        raise _RecordFormatError("not an audit record (seq, type or prev)")
    body = text[: match.start()].encode("utf-8") + b"}"
    mac = bytes.fromhex(match.group(1))
    ok = hmac.compare_digest(mac, record_mac(key, body))
    return ParsedRecord(seq, kind, prev, mac, ok, data)


# --- the writer --------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """An event waiting for the writer (mutable only inside the writer)."""

    ts: float
    type: str
    fields: dict[str, AuditValue]


@dataclass(frozen=True, slots=True)
class AuditStats:
    """What the writer did so far."""

    written: int
    dropped: int
    buffered: int
    failing: bool


@dataclass(slots=True)
class _Tail:
    """The end of the log file: last seq and MAC, and the file's identity."""

    seq: int
    mac: bytes
    size: int
    inode: int


def rotated_files(log: Path) -> list[Path]:
    """``audit.log.1``, ``audit.log.2``, ... in chain order (oldest first)."""
    found: list[tuple[int, Path]] = []
    if log.parent.is_dir():
        for path in log.parent.iterdir():
            if path.name.startswith(log.name + "."):
                match = _ROTATED_RE.search(path.name[len(log.name) :])
                if match is not None and match.start() == 0:
                    found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def chain_files(log: Path) -> list[Path]:
    """Every file of the chain of ``log``, oldest first, ``log`` last."""
    files = rotated_files(log)
    if log.exists():
        files.append(log)
    return files


class AuditLog:
    """The audit trail writer: an :class:`AuditSink` over a chained file.

    Open with :meth:`open`; :meth:`close` flushes and stops the writer
    thread. Safe to use from any thread; several processes may append to
    one log (each flush holds an ``flock`` on ``.audit.log.lock``).
    """

    def __init__(
        self,
        settings: AuditSettings,
        key: AuditKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._key = key
        self._clock = clock
        self._buffer: deque[_Pending] = deque()
        self._drop_lock = threading.Lock()
        self._dropped = 0
        self._dropped_first = 0.0
        self._dropped_last = 0.0
        self._warned = False
        self._failing = False
        self._written = 0
        self._since_checkpoint = 0
        self._checkpoint_at = clock()
        self._checkpoint_from = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._tail: _Tail | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(
        cls,
        settings: AuditSettings,
        *,
        create_key: bool = True,
        start_thread: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> "AuditLog":
        """Open (and on first use create) the trail; AuditError if it cannot be.

        Refuses a key that is not the one the existing log or checkpoint was
        written with, and a missing key when a log already exists.
        """
        history = settings.checkpoint.exists() or bool(chain_files(settings.log))
        if not settings.key_file.exists():
            if history:
                raise AuditError(
                    f"audit key {settings.key_file} is missing but the audit trail "
                    f"{settings.log} exists: the chain cannot go on without its "
                    "key (restore the key or set audit_key_file)"
                )
            if not create_key:
                raise AuditError(f"audit key {settings.key_file} does not exist")
        key = load_audit_key(settings.key_file, create=create_key and not history)
        if settings.checkpoint.exists():
            try:
                check_private_file(settings.checkpoint)
            except PrivateFileError as exc:
                raise AuditError(f"audit checkpoint: {exc}") from None
            read_checkpoint(settings.checkpoint, key.key)
        audit = cls(settings, key, clock=clock)
        try:
            ensure_private_dir(settings.log.parent)
        except PrivateFileError as exc:
            raise AuditError(f"audit log: {exc}") from None
        try:
            with audit._lock, audit._file_lock():
                audit._read_tail(audit._open_fd())
        except OSError as exc:
            audit._close_fd()
            raise AuditError(
                f"cannot open audit log {settings.log}: {exc.strerror or exc}"
            ) from None
        except AuditError:
            audit._close_fd()
            raise
        if start_thread:
            audit._thread = threading.Thread(
                target=audit._run, name="natkit-audit", daemon=True
            )
            audit._thread.start()
        return audit

    @property
    def key_id(self) -> str:
        """The id of the audit key (in ``audit.init`` and the checkpoint)."""
        return self._key.key_id

    # --- AuditSink -------------------------------------------------------

    def emit(self, event_type: str, /, **fields: AuditValue) -> None:
        check_event(event_type, fields)
        now = self._clock()
        if self._closed:
            logger.debug("audit log closed: %s not recorded", event_type)
            return
        if len(self._buffer) >= self.settings.buffer_limit:
            self._drop(now)
            return
        self._buffer.append(_Pending(now, event_type, dict(fields)))
        if len(self._buffer) >= _WAKE_AT:
            self._wake.set()

    def _drop(self, now: float) -> None:
        with self._drop_lock:
            if not self._dropped:
                self._dropped_first = now
            self._dropped += 1
            self._dropped_last = now
            warn = not self._warned
            self._warned = True
        if warn:
            logger.warning(
                "audit buffer full (%d records): counting and dropping audit "
                "records until %s can be written",
                self.settings.buffer_limit,
                self.settings.log,
            )

    # --- control ---------------------------------------------------------

    def stats(self) -> AuditStats:
        """Records written and dropped so far, and what waits in the buffer."""
        return AuditStats(
            self._written, self._dropped, len(self._buffer), self._failing
        )

    def flush(self) -> bool:
        """Write what is buffered now; True when everything got written."""
        with self._lock:
            return self._flush_locked()

    def close(self) -> None:
        """Flush, stop the writer thread, close the file. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
        with self._lock:
            self._flush_locked()
            self._closed = True
            if self._buffer or self._dropped:
                logger.error(
                    "audit log %s: %d records not written at close, %d dropped",
                    self.settings.log,
                    len(self._buffer),
                    self._dropped,
                )
            self._close_fd()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the writer --------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                try:
                    self._flush_locked()
                except Exception:  # the thread must outlive any surprise
                    logger.exception("audit writer failed")

    def _flush_locked(self) -> bool:
        checkpoint_due = self._checkpoint_due()
        if not self._buffer and not self._dropped and not checkpoint_due:
            return True
        try:
            with self._file_lock():
                fd = self._open_fd()
                tail = self._read_tail(fd)
                self._write_pending(fd, tail, checkpoint_due=checkpoint_due)
        except (OSError, AuditError) as exc:
            self._on_failure(exc)
            return False
        if self._failing:
            self._failing = False
            logger.info("audit log %s is writable again", self.settings.log)
        with self._drop_lock:
            self._warned = bool(self._dropped)
        return not self._buffer and not self._dropped

    def _checkpoint_due(self) -> bool:
        settings = self.settings
        if 0 < settings.checkpoint_records <= self._since_checkpoint:
            return True
        elapsed = self._clock() - self._checkpoint_at
        return 0 < settings.checkpoint_seconds <= elapsed

    def _on_failure(self, exc: OSError | AuditError) -> None:
        reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        with self._drop_lock:
            warn = not self._warned and not self._failing
            self._warned = True
        if warn:
            logger.warning(
                "cannot write audit log %s: %s; buffering up to %d records "
                "(beyond that they are counted and dropped)",
                self.settings.log,
                reason,
                self.settings.buffer_limit,
            )
        self._failing = True
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                logger.debug("closing the audit log failed")
            self._fd = None
        self._tail = None

    def _file_lock(self) -> "_FileLock":
        log = self.settings.log
        return _FileLock(log.with_name(f".{log.name}.lock"))

    def _open_fd(self) -> int:
        """The log, open for appending; reopened if it was rotated or removed."""
        path = self.settings.log
        if self._fd is not None:
            try:
                same = os.stat(path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            self._close_fd()
        try:
            ensure_private_dir(path.parent)
        except PrivateFileError as exc:
            raise AuditError(f"audit log: {exc}") from None
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            check_private_file(path)
        except PrivateFileError as exc:
            os.close(fd)
            raise AuditError(f"audit log: {exc}") from None
        self._fd = fd
        self._tail = None
        return fd

    def _read_tail(self, fd: int) -> _Tail:
        """The last record of the open log; a new log gets its first record."""
        info = os.fstat(fd)
        cached = self._tail
        if cached is not None and (cached.size, cached.inode) == (
            info.st_size,
            info.st_ino,
        ):
            return cached
        if info.st_size == 0:
            tail = self._start_file(fd, info.st_ino)
        else:
            tail = self._tail_of(fd, info.st_size, info.st_ino)
        self._tail = tail
        return tail

    def _tail_of(self, fd: int, size: int, inode: int) -> _Tail:
        start = max(0, size - _TAIL_CHUNK)
        data = os.pread(fd, size - start, start)
        end = data.rfind(b"\n")
        if end != len(data) - 1:
            # a record cut short (crash, full disk) was never complete: cut it
            cut = start + end + 1 if end >= 0 else 0
            logger.warning(
                "audit log %s ends with an incomplete record (%d bytes): removed",
                self.settings.log,
                size - cut,
            )
            os.ftruncate(fd, cut)
            self._buffer.appendleft(
                _Pending(
                    self._clock(),
                    "audit.recovered",
                    {"reason": "incomplete last record removed", "bytes": size - cut},
                )
            )
            if cut == 0:
                return self._start_file(fd, inode)
            data, size = data[: end + 1], cut
        begin = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            record = parse_record(data[begin:-1], self._key.key)
        except _RecordFormatError as exc:
            raise AuditError(
                f"audit log {self.settings.log}: the last line is not an audit "
                f"record ({exc}); run natkit audit verify and move the file away"
            ) from None
        if not record.mac_ok:
            raise AuditError(
                f"audit log {self.settings.log}: the last record does not verify "
                f"with audit key {self.key_id} ({self.settings.key_file}); run "
                "natkit audit verify, then give the right audit_key_file or move "
                "the log away"
            )
        return _Tail(record.seq, record.mac, size, inode)

    def _start_file(self, fd: int, inode: int) -> _Tail:
        """The first record of a new chain: continue the checkpoint, or begin."""
        settings = self.settings
        seq, prev = 0, GENESIS
        fields: dict[str, AuditValue] = {"key_id": self.key_id}
        if settings.checkpoint.exists():
            point = read_checkpoint(settings.checkpoint, self._key.key)
            seq, prev = point.seq, point.mac
            fields["reason"] = "continued from the checkpoint"
            fields["prev_seq"] = point.seq
            logger.warning(
                "audit log %s is new: it continues the chain of %s after seq %d",
                settings.log,
                settings.checkpoint,
                point.seq,
            )
        else:
            fields["reason"] = "new chain"
        line, mac = self._format(
            _Pending(self._clock(), "audit.init", fields), seq + 1, prev
        )
        _write_all(fd, line)
        os.fsync(fd)
        tail = _Tail(seq + 1, mac, len(line), inode)
        self._save_checkpoint(tail)
        return tail

    def _format(self, item: _Pending, seq: int, prev: bytes) -> tuple[bytes, bytes]:
        return format_record(
            self._key.key,
            seq=seq,
            ts=utc_timestamp(item.ts),
            event_type=item.type,
            node=self.settings.node,
            fields=item.fields,
            prev=prev,
        )

    def _write_pending(self, fd: int, tail: _Tail, *, checkpoint_due: bool) -> None:
        """Write the buffer, then a drop count and a checkpoint if due.

        Records go out in chunks, one per file: when the next record would
        take the file past ``max_bytes`` the file is rotated first. A chunk
        that fails leaves the file as it was and its records buffered.
        """
        limit = self.settings.checkpoint_records
        items: list[_Pending] = []
        since = self._since_checkpoint
        for item in list(self._buffer):  # one C call: other threads append
            items.append(item)
            since += 1
            if limit and since >= limit:
                items.append(_Pending(item.ts, "audit.checkpoint", {}))
                since = 0
        with self._drop_lock:
            dropped = self._dropped
            first, last = self._dropped_first, self._dropped_last
        if dropped:
            items.append(
                _Pending(
                    self._clock(),
                    "audit.dropped",
                    {
                        "dropped": dropped,
                        "first": utc_timestamp(first),
                        "last": utc_timestamp(last),
                        "reason": "audit log not writable or buffer full",
                    },
                )
            )
        if checkpoint_due and (not items or items[-1].type != "audit.checkpoint"):
            items.append(_Pending(self._clock(), "audit.checkpoint", {}))

        done, fresh = 0, False
        while done < len(items):
            lines: list[bytes] = []
            seq, prev, size = tail.seq, tail.mac, tail.size
            count = 0
            for item in items[done:]:
                if item.type == "audit.checkpoint":
                    item.fields["since_seq"] = self._checkpoint_from or 1
                    item.fields["until_seq"] = seq
                line, mac = self._format(item, seq + 1, prev)
                if self._full(size, len(line)) and (lines or not fresh):
                    break
                lines.append(line)
                size += len(line)
                seq, prev = seq + 1, mac
                count += 1
            self._commit(fd, tail, lines, seq, prev)
            self._consumed(items[done : done + count], dropped)
            done += count
            if done < len(items):
                fd, tail = self._rotate(tail)
                fresh = True

    def _full(self, size: int, more: int) -> bool:
        limit = self.settings.max_bytes
        return bool(limit) and size + more > limit

    def _consumed(self, chunk: Sequence[_Pending], dropped: int) -> None:
        """Take what was written off the buffer and the counters."""
        for item in chunk:
            self._since_checkpoint += 1
            if item.type == "audit.checkpoint":  # it does not count itself
                self._since_checkpoint = 0
                self._checkpoint_at = self._clock()
                until = item.fields.get("until_seq")
                self._checkpoint_from = (until if isinstance(until, int) else 0) + 2
            if self._buffer and self._buffer[0] is item:
                self._buffer.popleft()
                self._written += 1
            elif item.type == "audit.dropped":
                with self._drop_lock:
                    self._dropped -= dropped
                logger.info(
                    "audit log %s: %d records were dropped (see the audit.dropped "
                    "record)",
                    self.settings.log,
                    dropped,
                )

    def _commit(
        self, fd: int, tail: _Tail, lines: Sequence[bytes], seq: int, mac: bytes
    ) -> None:
        """Append ``lines`` and fsync; on failure the file is cut back."""
        if not lines:
            return
        data = b"".join(lines)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, tail.size)
            except OSError:
                logger.debug("cannot cut the audit log back after a failed write")
            raise
        tail.seq, tail.mac = seq, mac
        tail.size += len(data)
        self._save_checkpoint(tail)

    def _rotate(self, tail: _Tail) -> tuple[int, _Tail]:
        """Rename the full log to the next ``.N``; start a new file that links."""
        log = self.settings.log
        done = rotated_files(log)
        number = _rotation_number(done[-1], log) + 1 if done else 1
        target = log.with_name(f"{log.name}.{number}")
        os.rename(log, target)
        self._close_fd()
        fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._fd = fd
        fields: dict[str, AuditValue] = {
            "prev_file": target.name,
            "prev_seq": tail.seq,
        }
        line, mac = self._format(
            _Pending(self._clock(), "audit.rotated", fields), tail.seq + 1, tail.mac
        )
        _write_all(fd, line)
        os.fsync(fd)
        new = _Tail(tail.seq + 1, mac, len(line), os.fstat(fd).st_ino)
        self._tail = new
        self._save_checkpoint(new)
        logger.info("audit log %s rotated to %s", log, target.name)
        return fd, new

    def _save_checkpoint(self, tail: _Tail) -> None:
        settings = self.settings
        point = Checkpoint(
            seq=tail.seq,
            mac=tail.mac,
            ts=utc_timestamp(self._clock()),
            log=_relative(settings.log, settings.checkpoint.parent),
            key_file=_relative(settings.key_file, settings.checkpoint.parent),
            key_id=self.key_id,
        )
        try:
            write_checkpoint(settings.checkpoint, point, self._key.key)
        except PrivateFileError as exc:
            raise OSError(errno.EIO, str(exc)) from None


def _rotation_number(path: Path, log: Path) -> int:
    match = _ROTATED_RE.search(path.name[len(log.name) :])
    return int(match.group(1)) if match else 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FileLock:
    """An exclusive ``flock`` on a lock file next to the log."""

    __slots__ = ("path", "_fd")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: a buffer this long wakes the writer before its timer
_WAKE_AT = 512


# --- TURN events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientParts:
    """The parts of a 5-tuple string ``udp:1.2.3.4:5->10.0.0.1:3478``."""

    transport: str
    source: str
    listener: str


def split_client(client: str) -> ClientParts:
    """Transport, client and server address of a TURN 5-tuple string."""
    head, _, listener = client.partition("->")
    transport, _, source = head.partition(":")
    if not source:
        return ClientParts("", client, listener)
    return ClientParts(transport, source, listener)


@dataclass(frozen=True, slots=True)
class _AllocationInfo:
    """What later events of an allocation are missing: who and from where."""

    user: str
    client: ClientParts
    relay: tuple[str, ...]


def _traffic(stats: TrafficStats) -> dict[str, AuditValue]:
    return {
        "bytes_to_peer": stats.bytes_to_peer,
        "packets_to_peer": stats.packets_to_peer,
        "bytes_to_client": stats.bytes_to_client,
        "packets_to_client": stats.packets_to_client,
        "dropped_packets": stats.dropped,
    }


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


#: RFC 8656 §7.2: 486 for allocation quotas; 508 for permission/channel limits
_QUOTA_CODES = {
    "allocations-total": 486,
    "allocations-per-user": 486,
    "permissions-per-allocation": 508,
    "channels-per-allocation": 508,
}


class TurnAuditSink:
    """A :class:`~natkit.turn.events.EventSink` that writes audit records.

    Every TURN core event becomes one record (types in the module
    docstring). Events that name only the allocation get its user, source,
    transport and listener from the ``allocation.create`` seen before.
    ``also`` receives every event as well (text log, metrics). Never
    raises: an event that cannot be recorded is logged at ERROR.
    """

    __slots__ = ("audit", "realm", "also", "_allocations")

    def __init__(
        self, audit: AuditSink, *, realm: str, also: EventSink | None = None
    ) -> None:
        self.audit = audit
        self.realm = realm
        self.also = also
        self._allocations: dict[str, _AllocationInfo] = {}

    def emit(self, event: TurnEvent) -> None:
        try:
            self._record(event)
        except Exception:  # the TURN core must never see an audit failure
            logger.exception("cannot audit %s", type(event).__name__)
        if self.also is not None:
            self.also.emit(event)

    def _who(self, user: str | None, client: ClientParts) -> dict[str, AuditValue]:
        return {
            "source": client.source,
            "transport": client.transport,
            "listener": client.listener,
            "user": user,
            "realm": self.realm,
        }

    def _of(self, allocation: str) -> dict[str, AuditValue]:
        info = self._allocations.get(allocation)
        if info is None:
            return {"allocation": allocation, "realm": self.realm}
        fields = self._who(info.user, info.client)
        fields["allocation"] = allocation
        fields["relay"] = list(info.relay)
        return fields

    def _record(self, event: TurnEvent) -> None:
        emit = self.audit.emit
        match event:
            case AuthSucceeded():
                who = self._who(event.username, split_client(event.client))
                emit("auth.success", outcome="success", method=event.method, **who)
            case AuthFailed():
                who = self._who(event.username, split_client(event.client))
                emit(
                    "auth.failure",
                    outcome="failure",
                    code=event.code,
                    reason=event.reason,
                    method=event.method,
                    **who,
                )
            case AllocationCreated():
                client = split_client(event.client)
                info = _AllocationInfo(event.username, client, event.relays)
                self._allocations[event.allocation] = info
                emit(
                    "allocation.create",
                    outcome="success",
                    lifetime=event.lifetime,
                    **self._of(event.allocation),
                )
            case AllocationRefreshed():
                emit(
                    "allocation.refresh",
                    outcome="success",
                    lifetime=event.lifetime,
                    **self._of(event.allocation),
                    **_traffic(event.stats),
                )
            case AllocationExpired():
                fields = self._of(event.allocation)
                self._allocations.pop(event.allocation, None)
                emit(
                    "allocation.expire",
                    outcome="success",
                    reason="expired",
                    duration=round(event.duration, 3),
                    **fields,
                    **_traffic(event.stats),
                )
            case AllocationDeleted():
                fields = self._of(event.allocation)
                self._allocations.pop(event.allocation, None)
                emit(
                    "allocation.delete",
                    outcome="success",
                    reason=str(event.reason),
                    duration=round(event.duration, 3),
                    **fields,
                    **_traffic(event.stats),
                )
            case PermissionCreated():
                emit(
                    "permission.create",
                    outcome="success",
                    peer=event.peer_ip,
                    **self._of(event.allocation),
                )
            case PermissionExpired():
                emit(
                    "permission.expire",
                    outcome="success",
                    peer=event.peer_ip,
                    **self._of(event.allocation),
                )
            case ChannelBound():
                emit(
                    "channel.bind",
                    outcome="success",
                    channel=event.channel,
                    peer=_endpoint(event.peer_ip, event.peer_port),
                    **self._of(event.allocation),
                )
            case ChannelExpired():
                emit(
                    "channel.expire",
                    outcome="success",
                    channel=event.channel,
                    peer=_endpoint(event.peer_ip, event.peer_port),
                    **self._of(event.allocation),
                )
            case PeerDenied():
                emit(
                    "peer.denied",
                    outcome="failure",
                    code=403,
                    reason=event.reason,
                    peer=_endpoint(event.peer_ip, event.peer_port),
                    **self._of(event.allocation),
                )
            case QuotaRefused():
                who = self._who(event.username, split_client(event.client))
                emit(
                    "quota.refused",
                    outcome="failure",
                    code=_QUOTA_CODES.get(str(event.quota), 486),
                    quota=str(event.quota),
                    limit=event.limit,
                    **who,
                )


# --- records written by other processes (the CLI) ----------------------------


def settings_for_data_dir(
    data_dir: Path, *, environ: Mapping[str, str] | None = None
) -> AuditSettings:
    """The trail of ``data_dir`` as another process finds it.

    The checkpoint file names the log and the key the server uses; the key
    may be given with ``NATKIT_AUDIT_KEY_FILE`` instead. Without a
    checkpoint the default layout of the data directory is used.
    """
    env = os.environ if environ is None else environ
    checkpoint = data_dir / CHECKPOINT_FILE
    log, key_file = data_dir / LOG_FILE, data_dir / KEY_FILE
    if checkpoint.exists():
        try:
            point = read_checkpoint_unverified(checkpoint)
        except AuditError:
            logger.debug("unreadable checkpoint %s: default layout", checkpoint)
        else:
            log = _resolve(point.log, data_dir)
            if point.key_file is not None:
                key_file = _resolve(point.key_file, data_dir)
    if env.get(KEY_FILE_ENV):
        key_file = Path(env[KEY_FILE_ENV])
    node = env.get("NATKIT_NODE_NAME") or socket.gethostname()
    return AuditSettings(log=log, key_file=key_file, checkpoint=checkpoint, node=node)


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _relative(path: Path, base: Path) -> Path:
    """``path`` as the checkpoint stores it: relative when it is in ``base``."""
    absolute, root = path.absolute(), base.absolute()
    return Path(absolute.name) if absolute.parent == root else absolute


def actor() -> str:
    """Who runs this process, for ``actor``: ``os:<login name>``."""
    try:
        return f"os:{getpass.getuser()}"
    except (OSError, KeyError):
        return f"os:uid={os.getuid()}"


def record_change(
    data_dir: Path,
    event_type: str,
    /,
    *,
    environ: Mapping[str, str] | None = None,
    **fields: AuditValue,
) -> bool:
    """Append one record to the trail of ``data_dir`` now (CLI changes).

    Used for ``natkit users`` and ``natkit secrets`` changes; ``actor``
    defaults to the OS user. Returns False, after a WARNING, when the
    record cannot be written (the change itself stands).
    """
    check_event(event_type, fields)
    fields.setdefault("actor", actor())
    settings = settings_for_data_dir(data_dir, environ=environ)
    try:
        with AuditLog.open(settings, start_thread=False) as audit:
            audit.emit(event_type, **fields)
            if audit.flush():
                return True
    except AuditError as exc:
        logger.warning("audit record %s not written: %s", event_type, exc)
        return False
    logger.warning("audit record %s not written to %s", event_type, settings.log)
    return False


# --- verification ------------------------------------------------------------


class ProblemKind(StrEnum):
    """What :func:`verify_chain` found wrong."""

    MODIFIED = "modified"
    DELETED = "deleted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    WRONG_KEY = "wrong-key"


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """The first record that breaks the chain."""

    kind: ProblemKind
    file: Path
    line: int
    seq: int | None
    detail: str

    def __str__(self) -> str:
        seq = "" if self.seq is None else f" (seq {self.seq})"
        return f"{self.file} line {self.line}{seq}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`."""

    records: int
    files: int
    first_seq: int | None
    last_seq: int | None
    problem: ChainProblem | None
    #: the checkpoint seq that was checked, None if none applied
    checkpoint_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class _Line:
    """One line of a log file as the verifier saw it."""

    file: Path
    number: int
    record: ParsedRecord | None
    error: str = ""
    #: the file's last line, without a newline after it
    cut: bool = False


def _read_lines(files: Sequence[Path], key: bytes) -> list[_Line]:
    result: list[_Line] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read {path}: {exc.strerror}") from None
        raw = data.split(b"\n")
        complete = raw[-1] == b""
        if complete:
            raw.pop()
        for number, line in enumerate(raw, start=1):
            cut = not complete and number == len(raw)
            try:
                record = parse_record(line, key)
            except _RecordFormatError as exc:
                result.append(_Line(path, number, None, str(exc), cut))
                continue
            result.append(_Line(path, number, _slim(record), "", cut))
    return result


def _slim(record: ParsedRecord) -> ParsedRecord:
    return ParsedRecord(
        record.seq, record.type, record.prev, record.mac, record.mac_ok, {}
    )


_LINK_TYPES = frozenset({"audit.init", "audit.rotated"})


def verify_chain(
    files: Sequence[Path],
    key: bytes,
    *,
    checkpoint: Checkpoint | None = None,
) -> VerifyReport:
    """Check ``files`` (oldest first) as one chain, then against ``checkpoint``.

    Reports the first record that was modified (MAC), deleted (a gap in
    ``seq``, or a file that does not begin with its link record),
    reordered (``seq`` out of order) or truncated (a cut last line, or
    fewer records than the checkpoint has). Raises AuditError when a file
    cannot be read.
    """
    lines = _read_lines(files, key)
    records = [entry.record for entry in lines if entry.record is not None]
    if records and not any(r.mac_ok for r in records):
        first = lines[0]
        wrong = ChainProblem(
            ProblemKind.WRONG_KEY,
            first.file,
            first.number,
            first.record.seq if first.record else None,
            f"no record verifies with audit key {key_id(key)}: wrong key?",
        )
        return VerifyReport(len(records), len(files), None, None, wrong)
    positions = {r.seq for r in records}
    problem = _walk(lines, positions)
    first_seq = records[0].seq if records else None
    last_seq = records[-1].seq if records else None
    if problem is None and checkpoint is not None and lines:
        problem = _against_checkpoint(lines, checkpoint)
    return VerifyReport(
        len(records),
        len(files),
        first_seq,
        last_seq,
        problem,
        None if checkpoint is None else checkpoint.seq,
    )


def _walk(lines: Sequence[_Line], seen: set[int]) -> ChainProblem | None:
    expected_seq: int | None = None
    expected_prev = b""
    previous_file: Path | None = None
    for entry in lines:
        record = entry.record
        if record is None:
            kind = ProblemKind.TRUNCATED if entry.cut else ProblemKind.MODIFIED
            detail = "the last record is cut short" if entry.cut else entry.error
            return ChainProblem(kind, entry.file, entry.number, None, detail)
        where = (entry.file, entry.number, record.seq)
        if not record.mac_ok:
            if entry.cut:
                return ChainProblem(
                    ProblemKind.TRUNCATED, *where, "the last record is cut short"
                )
            return ChainProblem(
                ProblemKind.MODIFIED, *where, "record changed (MAC mismatch)"
            )
        starts_file = entry.file != previous_file
        previous_file = entry.file
        if starts_file and record.type not in _LINK_TYPES:
            return ChainProblem(
                ProblemKind.DELETED,
                *where,
                "the file does not begin with its link record (audit.init or "
                "audit.rotated): records before it were removed",
            )
        if expected_seq is None:
            expected_seq, expected_prev = record.seq + 1, record.mac
            continue
        if record.seq != expected_seq:
            return _out_of_order(entry, record, expected_seq, seen)
        if record.prev != expected_prev:
            return ChainProblem(
                ProblemKind.MODIFIED,
                *where,
                f"does not link to seq {expected_seq - 1} before it (a record "
                "was replaced, or another chain spliced in)",
            )
        expected_seq, expected_prev = record.seq + 1, record.mac
    return None


def _out_of_order(
    entry: _Line, record: ParsedRecord, expected: int, seen: set[int]
) -> ChainProblem:
    where = (entry.file, entry.number, record.seq)
    if record.seq < expected:
        return ChainProblem(
            ProblemKind.REORDERED,
            *where,
            f"comes after seq {expected - 1} (records reordered or duplicated)",
        )
    if expected in seen:
        return ChainProblem(
            ProblemKind.REORDERED,
            *where,
            f"comes where seq {expected} belongs (records reordered)",
        )
    missing = (
        f"seq {expected}"
        if record.seq == expected + 1
        else f"seq {expected}-{record.seq - 1}"
    )
    return ChainProblem(ProblemKind.DELETED, *where, f"{missing} missing before it")


def _against_checkpoint(
    lines: Sequence[_Line], point: Checkpoint
) -> ChainProblem | None:
    last = lines[-1]
    if last.record is None:
        return None
    if point.seq > last.record.seq:
        return ChainProblem(
            ProblemKind.TRUNCATED,
            last.file,
            last.number,
            last.record.seq,
            f"the log ends here but the checkpoint has seq {point.seq} "
            "(records cut off the end)",
        )
    for entry in lines:
        record = entry.record
        if record is not None and record.seq == point.seq:
            if not hmac.compare_digest(record.mac, point.mac):
                return ChainProblem(
                    ProblemKind.MODIFIED,
                    entry.file,
                    entry.number,
                    record.seq,
                    "differs from the checkpoint's record (log replaced)",
                )
            return None
    return None


def checkpoint_applies(point: Checkpoint, checkpoint_path: Path, log: Path) -> bool:
    """Is ``point`` (read from ``checkpoint_path``) about the log file ``log``?"""
    mine = _resolve(point.log, checkpoint_path.parent)
    try:
        return mine.resolve() == log.resolve()
    except OSError:
        return False
