"""Bearer tokens of the admin API, stored hashed (NIST SP 800-53 IA-5).

A token is ``natkit.<id>.<secret>``: ``id`` is 8 hex digits that name the
token in listings and audit records, ``secret`` is 32 random bytes in
unpadded base64url (RFC 4648 §5). The store keeps the id, a name, the role
and the SHA-256 of the 32 secret bytes, never the token itself; a token is
shown once, when it is created. Checking one hashes the presented secret and
compares digests in constant time.

The store is the file ``admin-tokens.json`` in the data directory (mode
0600, written atomically, read-modify-write under ``flock``). With a
:class:`Sealer` (:class:`natkit.security.sealing.Sealer`, the data
directory's master key) the digests are sealed at rest as well (AES-GCM,
bound to the token id); digests stored plain are sealed when the store is
opened with one. The file is re-read when it changes on disk, so a token
removed by hand stops working at once.

The first start (no store yet) creates one ``admin`` token and writes it to
``admin-token`` (0600) in the data directory; the log names the file, never
the token. To regain access after losing every admin token, stop the server,
delete ``admin-tokens.json`` and start it again.
"""

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from natkit.security.secrets import (
    PrivateFileError,
    check_private_file,
    ensure_private_dir,
    write_private_file,
)
from natkit.stun.errors import NatkitError, UsageError

logger = logging.getLogger(__name__)

TOKENS_FILE = "admin-tokens.json"
INITIAL_TOKEN_FILE = "admin-token"
INITIAL_TOKEN_NAME = "initial-admin"
#: the random part of a token
TOKEN_BYTES = 32
TOKEN_PREFIX = "natkit"
FILE_FORMAT = "natkit-admin-tokens"
FILE_VERSION = 1
#: what a sealed digest is bound to (with the token id: rows cannot be swapped)
SEAL_CONTEXT = b"natkit admin token digest v1\0"

_ID_RE = re.compile(r"[0-9a-f]{8}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: compared against when the id is unknown, so both paths hash and compare
_DUMMY_DIGEST = hashlib.sha256(b"natkit: no such token").digest()


class TokenError(NatkitError):
    """The token store cannot be read or changed (file, format, last admin)."""


class Role(StrEnum):
    """What a token may do; see :data:`natkit.server.admin.ROLE_PERMISSIONS`."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Sealer(Protocol):
    """Seals bytes at rest (AES-GCM in :mod:`natkit.security.sealing`)."""

    def seal(self, plaintext: bytes, *, context: bytes) -> bytes: ...

    def unseal(self, sealed: bytes, *, context: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as listed: never the token, never its digest."""

    token_id: str
    name: str
    role: Role
    created_at: float


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just created: ``token`` is shown to its owner once."""

    record: TokenRecord
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Entry:
    record: TokenRecord
    digest: bytes = field(repr=False)


def new_token() -> tuple[str, str, bytes]:
    """A fresh ``(id, token, digest)``."""
    token_id = secrets.token_hex(4)
    secret = secrets.token_bytes(TOKEN_BYTES)
    text = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
    return token_id, f"{TOKEN_PREFIX}.{token_id}.{text}", _digest(secret)


def parse_token(token: str) -> tuple[str, bytes] | None:
    """``(id, secret bytes)`` of a well-formed token, else None."""
    prefix, _, rest = token.partition(".")
    token_id, _, text = rest.partition(".")
    if prefix != TOKEN_PREFIX or not _ID_RE.fullmatch(token_id):
        return None
    if len(text) != 43 or not text.isascii():
        return None
    try:
        secret = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError):
        return None
    return (token_id, secret) if len(secret) == TOKEN_BYTES else None


def token_id_of(token: str) -> str | None:
    """The id part of something shaped like a token (for audit records)."""
    parsed = parse_token(token)
    return parsed[0] if parsed is not None else None


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def check_name(name: str) -> str:
    """A token name: 1-64 of letters, digits and ``._@-``, starting alphanumeric."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"token name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return name


class TokenStore:
    """The admin tokens of one data directory; see the module doc.

    Safe to share between threads; any number of processes may change the
    file (``flock``), each sees the others' changes on its next lookup.
    """

    __slots__ = ("path", "sealer", "_lock", "_entries", "_stamp", "_plain")

    def __init__(self, path: Path, *, sealer: Sealer | None = None) -> None:
        self.path = path
        self.sealer = sealer
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._stamp: tuple[int, int, int] | None = None
        #: rows read with a plain digest although a sealer is set
        self._plain = False

    @classmethod
    def open(cls, data_dir: Path, *, sealer: Sealer | None = None) -> "TokenStore":
        """The store of ``data_dir`` (it may not exist yet: see :meth:`exists`).

        With ``sealer``, digests stored plain are sealed now.
        """
        store = cls(data_dir / TOKENS_FILE, sealer=sealer)
        if store.exists():
            with store._lock:
                store._reload()
            if store._plain:
                with store._changing():
                    pass
                logger.info("sealed the admin token digests in %s", store.path)
        return store

    def exists(self) -> bool:
        return self.path.exists()

    # --- lookups ---------------------------------------------------------

    def verify(self, token: str) -> TokenRecord | None:
        """The record of ``token`` if it is valid; constant-time comparison.

        Never waits for a change in progress (it runs on the event loop):
        while one is written, the tokens before it are used.
        """
        parsed = parse_token(token)
        if self._lock.acquire(blocking=False):
            try:
                self._maybe_reload()
            finally:
                self._lock.release()
        entries = self._entries
        token_id, secret = parsed if parsed is not None else ("", b"")
        entry = entries.get(token_id)
        expected = entry.digest if entry is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(_digest(secret), expected)
        return entry.record if matches and entry is not None else None

    def records(self) -> list[TokenRecord]:
        """Every token, oldest first."""
        with self._lock:
            self._maybe_reload()
            entries = list(self._entries.values())
        return sorted(
            (e.record for e in entries), key=lambda r: (r.created_at, r.token_id)
        )

    def get(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            self._maybe_reload()
            entry = self._entries.get(token_id)
        return entry.record if entry is not None else None

    def __len__(self) -> int:
        with self._lock:
            self._maybe_reload()
            return len(self._entries)

    # --- changes ---------------------------------------------------------

    def create(self, name: str, role: Role | str) -> IssuedToken:
        """A new token with ``role``; the token text is returned only here."""
        name = check_name(name)
        try:
            chosen = Role(role)
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise UsageError(f"role {role!r}: expected one of {roles}") from None
        with self._changing() as entries:
            token_id, token, digest = new_token()
            while token_id in entries:
                token_id, token, digest = new_token()
            record = TokenRecord(token_id, name, chosen, time.time())
            entries[token_id] = _Entry(record, digest)
        logger.info("created admin token %s %r (role %s)", token_id, name, chosen)
        return IssuedToken(record, token)

    def revoke(self, token_id: str) -> TokenRecord | None:
        """Delete a token; None if unknown. The last admin token stays."""
        with self._changing() as entries:
            entry = entries.get(token_id)
            if entry is None:
                return None
            admins = [e for e in entries.values() if e.record.role is Role.ADMIN]
            if entry.record.role is Role.ADMIN and len(admins) == 1:
                raise TokenError(
                    f"token {token_id} is the last admin token; create another first"
                )
            del entries[token_id]
        logger.info("revoked admin token %s %r", token_id, entry.record.name)
        return entry.record

    # --- the file --------------------------------------------------------

    @contextmanager
    def _changing(self) -> Iterator[dict[str, _Entry]]:
        """Read-modify-write under the file lock; written when the body returns."""
        ensure_private_dir(self.path.parent)
        with self._lock, _flocked(self.path):
            self._stamp = None
            if self.exists():
                self._reload()
            entries = dict(self._entries)
            yield entries
            try:
                write_private_file(self.path, self._encode(entries))
            except PrivateFileError as exc:
                raise TokenError(str(exc)) from None
            self._entries = entries
            self._stamp = _stamp(self.path)

    def _maybe_reload(self) -> None:
        """Re-read the file if it changed on disk; the caller holds the lock."""
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            if stamp is None:
                self._entries = {}
                self._stamp = None
                return
            self._reload()

    def _reload(self) -> None:
        """Read the file; the caller holds the lock. Raises TokenError."""
        try:
            check_private_file(self.path)
            stamp = _stamp(self.path)
            data = json.loads(self.path.read_bytes())
        except PrivateFileError as exc:
            raise TokenError(str(exc)) from None
        except OSError as exc:
            raise TokenError(f"cannot read {self.path}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError):
            raise TokenError(f"{self.path} is not valid JSON") from None
        self._entries = self._decode(data)
        self._stamp = stamp

    def _encode(self, entries: Mapping[str, _Entry]) -> bytes:
        rows: list[dict[str, Any]] = []
        for entry in entries.values():
            record = entry.record
            row: dict[str, Any] = {
                "id": record.token_id,
                "name": record.name,
                "role": record.role.value,
                "created_at": record.created_at,
            }
            if self.sealer is not None:
                context = SEAL_CONTEXT + record.token_id.encode("ascii")
                sealed = self.sealer.seal(entry.digest, context=context)
                row["sealed_sha256"] = base64.b64encode(sealed).decode("ascii")
            else:
                row["sha256"] = entry.digest.hex()
            rows.append(row)
        document = {"format": FILE_FORMAT, "version": FILE_VERSION, "tokens": rows}
        return (json.dumps(document, indent=1) + "\n").encode("utf-8")

    def _decode(self, data: object) -> dict[str, _Entry]:
        where = str(self.path)
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise TokenError(f"{where} is not a natkit admin token file")
        if data.get("version") != FILE_VERSION:
            raise TokenError(
                f"{where} has version {data.get('version')!r}; this natkit reads "
                f"{FILE_VERSION}"
            )
        rows = data.get("tokens")
        if not isinstance(rows, list):
            raise TokenError(f"{where}: 'tokens' is not a list")
        entries: dict[str, _Entry] = {}
        self._plain = False
        for index, row in enumerate(rows):
            entry = self._decode_row(row, f"{where} token {index}")
            entries[entry.record.token_id] = entry
        return entries

    def _decode_row(self, row: object, where: str) -> _Entry:
        try:
            if not isinstance(row, dict):
                raise ValueError("not an object")
            token_id = str(row["id"])
            if not _ID_RE.fullmatch(token_id):
                raise ValueError("bad id")
            record = TokenRecord(
                token_id, str(row["name"]), Role(row["role"]), float(row["created_at"])
            )
            digest = self._row_digest(row, token_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise TokenError(f"{where}: {exc}") from None
        if len(digest) != hashlib.sha256().digest_size:
            raise TokenError(f"{where}: digest is not SHA-256")
        return _Entry(record, digest)

    def _row_digest(self, row: Mapping[str, Any], token_id: str) -> bytes:
        if "sealed_sha256" in row:
            if self.sealer is None:
                raise ValueError("sealed digest, but no master key is configured")
            sealed = base64.b64decode(str(row["sealed_sha256"]), validate=True)
            context = SEAL_CONTEXT + token_id.encode("ascii")
            try:
                return self.sealer.unseal(sealed, context=context)
            except NatkitError as exc:
                raise ValueError(str(exc)) from None
        if self.sealer is not None:
            self._plain = True
        return bytes.fromhex(str(row["sha256"]))


def ensure_initial_token(store: TokenStore) -> Path | None:
    """First start: one admin token, written to ``admin-token`` (0600).

    Does nothing (returns None) when the store exists. Logs the file's path
    once, never the token.
    """
    if store.exists():
        if not len(store):
            logger.warning(
                "%s holds no admin token: the admin API accepts nobody; delete it "
                "and restart to generate one",
                store.path,
            )
        return None
    issued = store.create(INITIAL_TOKEN_NAME, Role.ADMIN)
    path = store.path.parent / INITIAL_TOKEN_FILE
    try:
        write_private_file(path, (issued.token + "\n").encode("ascii"))
    except PrivateFileError as exc:
        raise TokenError(str(exc)) from None
    logger.info(
        "generated admin token %s (role admin) in %s", issued.record.token_id, path
    )
    return path


def read_token_file(path: Path) -> str:
    """The token in a file (first non-blank line); raises TokenError."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TokenError(f"{path}: file not found") from None
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenError(f"{path}: not a token (not ASCII)") from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise TokenError(f"{path} is empty")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: inode, size, modification time."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


@contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` between processes."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise TokenError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
