"""Encrypted, integrity-checked backups of a data directory (NIST CP-9, CP-10).

What goes in
============

Every regular file of the data directory, taken while the server runs:

- SQLite databases (the user store ``natkit.db``) through SQLite's online
  backup API, so the copy is one consistent state even mid-write;
- the audit trail (``audit.log``, rotated ``audit.log.N``) and its
  ``audit.checkpoint``, copied together under the trail's lock, so the
  restored chain and checkpoint agree (``include_audit_log=False`` keeps
  the checkpoint only: a restored server then continues the chain from it);
- everything else as it is on disk: ``rest-secrets`` (sealed),
  ``sealing.json``, certificates and keys, admin tokens;
- the configuration file, when one is given, as ``config/<name>``.

Never in a backup: the master key and the audit key (``master.key``,
``audit.key``, or wherever ``master_key_file``/``audit_key_file`` point),
lock files (``.*``), SQLite's ``-wal``/``-shm``/``-journal`` files. Keys
stay apart from the data they protect (SC-12, SC-28); keep them in their own
place, a restore needs them: the master key to unseal the restored
secrets, the audit key to continue and verify the chain.

The file
========

``NATKITBK`` (8 bytes) | header length (4 bytes, big endian) | header
(JSON) | ciphertext | GCM tag (16 bytes).

The header holds ``format``, ``version``, ``created`` (UTC), the cipher
(AES-256-GCM), its ``nonce``, and the key derivation: ``hkdf-sha256`` of
the master key (with ``salt`` and the master key's ``key_id``) or
``pbkdf2-sha256`` of a passphrase (``salt``, ``iterations``). The header is
authenticated as GCM associated data, so any changed byte anywhere makes
the archive fail. The plaintext is a gzip'd tar: ``manifest.json`` first
(``created``, natkit version, and per file its path, size, mode and
SHA-256), then the files. :func:`read_backup` decrypts into a temporary
file, checks the tag, then every file against the manifest, before
anything is restored.
"""

import base64
import binascii
import datetime
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import struct
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from natkit import __version__
from natkit.security.audit import CHECKPOINT_FILE, KEY_FILE, LOG_FILE
from natkit.security.sealing import MASTER_KEY_FILE, MasterKey
from natkit.security.secrets import weak_secret_reason
from natkit.stun.errors import NatkitError

logger = logging.getLogger(__name__)

MAGIC = b"NATKITBK"
FORMAT = "natkit-backup"
VERSION = 1
MANIFEST = "manifest.json"
DATA_PREFIX = "data/"
CONFIG_PREFIX = "config/"
#: PBKDF2-HMAC-SHA-256 iterations for a passphrase (SP 800-132; OWASP 2023)
PBKDF2_ITERATIONS = 600_000
MIN_PASSPHRASE_BYTES = 16
_HKDF_INFO = b"natkit backup v1"
_LENGTH = struct.Struct("!I")
_TAG = 16
_NONCE = 12
_SALT = 16
_CHUNK = 1 << 20
_MAX_HEADER = 64 * 1024
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


class BackupError(NatkitError):
    """A backup that cannot be made, read, verified or restored."""


# --- keys --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupKey:
    """What the archive key is derived from: the master key or a passphrase."""

    master: MasterKey | None = None
    passphrase: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_passphrase(cls, passphrase: bytes) -> "BackupKey":
        """A passphrase key; refused when short or a placeholder."""
        weak = weak_secret_reason(passphrase)
        if len(passphrase) < MIN_PASSPHRASE_BYTES or weak is not None:
            raise BackupError(
                f"passphrase refused: {weak or 'too short'} "
                f"(at least {MIN_PASSPHRASE_BYTES} bytes, not a placeholder)"
            )
        return cls(passphrase=passphrase)

    def header(self, salt: bytes) -> dict[str, Any]:
        if self.master is not None:
            return {
                "name": "hkdf-sha256",
                "salt": _b64(salt),
                "key_id": self.master.key_id,
            }
        return {
            "name": "pbkdf2-sha256",
            "salt": _b64(salt),
            "iterations": PBKDF2_ITERATIONS,
        }

    def derive(self, kdf: dict[str, Any]) -> bytes:
        """The AES-256 key for the ``kdf`` part of a header."""
        try:
            name = kdf["name"]
            salt = _unb64(kdf["salt"])
        except (KeyError, TypeError):
            raise BackupError("header: key derivation missing") from None
        if name == "hkdf-sha256":
            if self.master is None:
                raise BackupError(
                    "the backup is encrypted with the master key "
                    f"{kdf.get('key_id')}; give --master-key-file or NATKIT_MASTER_KEY"
                )
            if kdf.get("key_id") != self.master.key_id:
                raise BackupError(
                    f"the backup is encrypted with master key {kdf.get('key_id')}, "
                    f"not {self.master.key_id} ({self.master.source})"
                )
            return self.master.derive(_HKDF_INFO, salt=salt)
        if name == "pbkdf2-sha256":
            if self.passphrase is None:
                raise BackupError(
                    "the backup is encrypted with a passphrase; give --passphrase-file"
                )
            iterations = kdf.get("iterations")
            if not isinstance(iterations, int) or not 100_000 <= iterations <= 10**8:
                raise BackupError("header: implausible PBKDF2 iteration count")
            pbkdf = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations)
            return pbkdf.derive(self.passphrase)
        raise BackupError(f"header: unknown key derivation {name!r}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise BackupError("header: not base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BackupError("header: not base64") from None


# --- the manifest ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file in the archive."""

    path: str
    size: int
    sha256: str
    mode: int


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds, from its header and manifest."""

    created: str
    natkit_version: str
    key_derivation: str
    files: tuple[ManifestEntry, ...]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- collecting the files ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """A file to archive: its archive name and a snapshot copy on disk."""

    name: str
    path: Path
    mode: int


def _skipped(relative: PurePosixPath, never: set[Path], path: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return True
    if relative.name.endswith(_SKIP_SUFFIXES):
        return True
    return path.absolute() in never


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _snapshot_sqlite(path: Path, target: Path) -> None:
    """A consistent copy of a live database (SQLite online backup API)."""
    try:
        source = sqlite3.connect(path, timeout=10.0)
        try:
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {path}: {exc}") from None


@contextmanager
def _audit_lock(log: Path) -> Iterator[None]:
    """Hold the audit trail's lock (the writer's flock) while copying it."""
    lock = log.with_name(f".{log.name}.lock")
    if not log.parent.is_dir():
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_audit(relative: PurePosixPath, log_name: str) -> bool:
    name = relative.name
    if len(relative.parts) != 1:
        return False
    if name == CHECKPOINT_FILE or name == log_name:
        return True
    rest = name[len(log_name) :]
    return name.startswith(log_name + ".") and rest[1:].isdigit()


def collect(
    data_dir: Path,
    workdir: Path,
    *,
    exclude: Sequence[Path] = (),
    audit_log: Path | None = None,
    include_audit_log: bool = True,
) -> list[_Source]:
    """Snapshot the data directory's files into ``workdir`` (see module doc)."""
    never = {p.absolute() for p in exclude}
    never |= {(data_dir / MASTER_KEY_FILE).absolute(), (data_dir / KEY_FILE).absolute()}
    log = audit_log or data_dir / LOG_FILE
    log_name = log.name if log.parent.absolute() == data_dir.absolute() else LOG_FILE
    plain: list[tuple[PurePosixPath, Path]] = []
    audit: list[tuple[PurePosixPath, Path]] = []
    for path in sorted(data_dir.rglob("*")):
        relative = PurePosixPath(path.relative_to(data_dir).as_posix())
        if path.is_symlink() or not path.is_file() or _skipped(relative, never, path):
            continue
        if _is_audit(relative, log_name):
            if include_audit_log or relative.name == CHECKPOINT_FILE:
                audit.append((relative, path))
            continue
        plain.append((relative, path))

    sources: list[_Source] = []
    for index, (relative, path) in enumerate(plain):
        target = workdir / f"f{index}"
        if _is_sqlite(path):
            _snapshot_sqlite(path, target)
        else:
            _copy(path, target)
        sources.append(_Source(DATA_PREFIX + str(relative), target, 0o600))
    with _audit_lock(log):
        for index, (relative, path) in enumerate(audit):
            target = workdir / f"a{index}"
            _copy(path, target)
            sources.append(_Source(DATA_PREFIX + str(relative), target, 0o600))
    return sources


def _copy(path: Path, target: Path) -> None:
    try:
        shutil.copyfile(path, target)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- writing -----------------------------------------------------------------


def create_backup(
    data_dir: Path,
    out: Path,
    key: BackupKey,
    *,
    config_file: Path | None = None,
    exclude: Sequence[Path] = (),
    audit_log: Path | None = None,
    include_audit_log: bool = True,
) -> BackupInfo:
    """Write an encrypted backup of ``data_dir`` to ``out`` (which must not exist).

    ``exclude`` names more files never to take (the configured key files).
    """
    if not data_dir.is_dir():
        raise BackupError(f"data directory {data_dir} does not exist")
    if out.exists():
        raise BackupError(f"{out} exists; give a new file name")
    with tempfile.TemporaryDirectory(prefix="natkit-backup-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o700)
        sources = collect(
            data_dir,
            workdir,
            exclude=exclude,
            audit_log=audit_log,
            include_audit_log=include_audit_log,
        )
        if config_file is not None:
            target = workdir / "config"
            _copy(config_file, target)
            sources.append(_Source(CONFIG_PREFIX + config_file.name, target, 0o600))
        entries = tuple(
            ManifestEntry(s.name, s.path.stat().st_size, _sha256(s.path), s.mode)
            for s in sources
        )
        info = BackupInfo(_utc_now(), __version__, key.header(b"")["name"], entries)
        with tempfile.TemporaryFile(dir=workdir) as plain:
            _write_tar(plain, info, sources)
            plain.seek(0)
            _encrypt_to(out, plain, key, info.created)
    return info


def _manifest_bytes(info: BackupInfo) -> bytes:
    body = {
        "format": FORMAT,
        "version": VERSION,
        "created": info.created,
        "natkit": info.natkit_version,
        "files": [
            {"path": e.path, "size": e.size, "sha256": e.sha256, "mode": e.mode}
            for e in info.files
        ],
    }
    return json.dumps(body, indent=1).encode("utf-8")


def _write_tar(fh: IO[bytes], info: BackupInfo, sources: Sequence[_Source]) -> None:
    with tarfile.open(fileobj=fh, mode="w:gz") as tar:
        manifest = _manifest_bytes(info)
        tar.addfile(_member(MANIFEST, len(manifest)), io.BytesIO(manifest))
        for source in sources:
            with source.path.open("rb") as data:
                size = source.path.stat().st_size
                tar.addfile(_member(source.name, size), data)


def _member(name: str, size: int) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = size
    member.mode = 0o600
    member.mtime = 0
    member.uname = member.gname = ""
    return member


def _encrypt_to(out: Path, plain: IO[bytes], key: BackupKey, created: str) -> None:
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    header = json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "created": created,
            "cipher": "AES-256-GCM",
            "nonce": _b64(nonce),
            "kdf": key.header(salt),
        },
        sort_keys=True,
    ).encode("utf-8")
    prefix = MAGIC + _LENGTH.pack(len(header)) + header
    aes = key.derive(json.loads(header)["kdf"])
    encryptor = Cipher(algorithms.AES(aes), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(prefix)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(prefix)
            while chunk := plain.read(_CHUNK):
                fh.write(encryptor.update(chunk))
            fh.write(encryptor.finalize())
            fh.write(encryptor.tag)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"cannot write {out}: {exc.strerror or exc}") from None


# --- reading -----------------------------------------------------------------


def _read_header(fh: IO[bytes], path: Path) -> tuple[bytes, dict[str, Any]]:
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        raise BackupError(f"{path} is not a natkit backup")
    raw_length = fh.read(_LENGTH.size)
    if len(raw_length) != _LENGTH.size:
        raise BackupError(f"{path} is truncated")
    (length,) = _LENGTH.unpack(raw_length)
    if not 2 <= length <= _MAX_HEADER:
        raise BackupError(f"{path}: header length {length} is not plausible")
    header = fh.read(length)
    try:
        data = json.loads(header)
    except (UnicodeDecodeError, ValueError):
        raise BackupError(f"{path}: header is not JSON (changed?)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError(f"{path}: not a natkit backup header")
    if data.get("version") != VERSION:
        raise BackupError(
            f"{path}: backup format version {data.get('version')}; this natkit "
            f"reads version {VERSION}"
        )
    if data.get("cipher") != "AES-256-GCM":
        raise BackupError(f"{path}: unknown cipher {data.get('cipher')!r}")
    return magic + raw_length + header, data


def _decrypt(path: Path, key: BackupKey, plain: IO[bytes]) -> dict[str, Any]:
    """Decrypt ``path`` into ``plain``; BackupError unless the tag checks."""
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        prefix, header = _read_header(fh, path)
        nonce = _unb64(header.get("nonce"))
        if len(nonce) != _NONCE:
            raise BackupError(f"{path}: header: bad nonce")
        aes = key.derive(header.get("kdf") or {})
        body = size - len(prefix) - _TAG
        if body < 0:
            raise BackupError(f"{path} is truncated")
        fh.seek(size - _TAG)
        tag = fh.read(_TAG)
        fh.seek(len(prefix))
        decryptor = Cipher(algorithms.AES(aes), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(prefix)
        left = body
        while left:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise BackupError(f"{path} is truncated")
            left -= len(chunk)
            plain.write(decryptor.update(chunk))
        try:
            plain.write(decryptor.finalize())
        except InvalidTag:
            raise BackupError(
                f"{path} failed its integrity check: changed, truncated, or another key"
            ) from None
    return header


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError(f"archive member {name!r}: unsafe path")
    return path


def _parse_manifest(data: bytes) -> BackupInfo:
    try:
        body = json.loads(data)
        files = tuple(
            ManifestEntry(
                str(f["path"]), int(f["size"]), str(f["sha256"]), int(f["mode"])
            )
            for f in body["files"]
        )
        return BackupInfo(str(body["created"]), str(body["natkit"]), "", files)
    except (ValueError, KeyError, TypeError):
        raise BackupError("manifest.json is not a natkit manifest") from None


@contextmanager
def open_backup(
    path: Path, key: BackupKey
) -> Iterator[tuple[BackupInfo, tarfile.TarFile]]:
    """The verified manifest and the tar of a backup (every hash checked)."""
    with tempfile.TemporaryFile() as plain:
        header = _decrypt(path, key, plain)
        plain.seek(0)
        try:
            tar = tarfile.open(fileobj=plain, mode="r:gz")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{path}: archive unreadable: {exc}") from None
        with tar:
            info = _verify_members(tar, path)
            kdf = header.get("kdf") or {}
            yield (
                BackupInfo(
                    info.created, info.natkit_version, str(kdf.get("name")), info.files
                ),
                tar,
            )


def _verify_members(tar: tarfile.TarFile, path: Path) -> BackupInfo:
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{path}: archive unreadable: {exc}") from None
    if not members or members[0].name != MANIFEST:
        raise BackupError(f"{path}: the archive does not start with its manifest")
    info = _parse_manifest(_read_member(tar, members[0]))
    listed = {entry.path: entry for entry in info.files}
    present = list(members[1:])
    names = [m.name for m in present]
    if sorted(names) != sorted(listed) or len(set(names)) != len(names):
        raise BackupError(f"{path}: the files differ from the manifest")
    for member in present:
        entry = listed[member.name]
        _safe_name(member.name)
        if not member.isfile():
            raise BackupError(f"{path}: {member.name} is not a regular file")
        data = _read_member(tar, member)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise BackupError(f"{path}: {member.name} does not match its SHA-256")
    return info


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise BackupError(f"archive member {member.name} is not a file")
    with handle:
        return handle.read()


def verify_backup(path: Path, key: BackupKey) -> BackupInfo:
    """Decrypt and check every file; BackupError with the reason otherwise."""
    with open_backup(path, key) as (info, _):
        return info


def restore_backup(path: Path, data_dir: Path, key: BackupKey) -> BackupInfo:
    """Restore ``path`` into ``data_dir``, which must be missing or empty.

    Everything is checked before the first file is written; files get mode
    0600 and directories 0700.
    """
    if data_dir.exists():
        if not data_dir.is_dir():
            raise BackupError(f"{data_dir} is not a directory")
        if any(data_dir.iterdir()):
            raise BackupError(
                f"{data_dir} is not empty; restore only into a new or empty directory"
            )
    with open_backup(path, key) as (info, tar):
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        for entry in info.files:
            name = _safe_name(entry.path)
            if entry.path.startswith(DATA_PREFIX):
                target = data_dir.joinpath(*name.parts[1:])
            else:
                target = data_dir.joinpath(*name.parts)
            _make_dirs(data_dir, target.parent)
            data = _read_member(tar, tar.getmember(entry.path))
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    return info


def _make_dirs(root: Path, directory: Path) -> None:
    missing: list[Path] = []
    while directory != root and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700)
        path.chmod(0o700)
