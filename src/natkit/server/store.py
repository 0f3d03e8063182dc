"""The persistent user store: long-term TURN users in SQLite.

The store is the file ``natkit.db`` in the data directory (mode 0600, the
directory 0700), in WAL mode so the server reads while ``natkit users``
writes. It keeps derived keys only, never a password: per user and realm
the long-term keys of RFC 8489 §9.2.2 (MD5 as in RFC 5389 §15.4, SHA-256)
and the USERHASH of RFC 8489 §14.4.

:class:`UserStore` is a :class:`~natkit.turn.auth.KeyLookup`. Lookups are
served from memory; at most once per ``refresh_interval`` a lookup asks
SQLite whether another connection committed (``PRAGMA data_version``) and,
if so, reloads, so a user added while the server runs is seen within about
a second.

Schema (version 2; the ``schema_version`` table lets later versions
migrate in place)::

    users(id, username, realm, userhash, created_at)   -- unique (username, realm)
    user_keys(user_id, algorithm, key, sealed)          -- algorithm: RFC 8489 §18.5

Version 2 added ``sealed``: in a sealed data directory (NIST SC-28,
:mod:`natkit.security.sealing`) every ``key`` is AES-256-GCM sealed under
the master key, bound to its user, realm and algorithm; keys stored plain
(version 1, or before the directory was sealed) are sealed when the store
is opened. Adding and removing a user writes an audit record (``user.add``,
``user.replace``, ``user.remove``) into the data directory's audit trail.
"""

import datetime
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from natkit.security.sealing import Sealer, SealError, data_dir_sealer
from natkit.security.secrets import (
    PrivateFileError,
    check_private_file,
    create_private_file,
    ensure_private_dir,
)
from natkit.stun import integrity
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import NatkitError, UsageError
from natkit.turn.credentials import parse_rest_username

logger = logging.getLogger(__name__)

DB_FILE = "natkit.db"
SCHEMA_VERSION = 2

#: what :meth:`UserStore.add_user` derives unless told otherwise
DEFAULT_ALGORITHMS: tuple[PasswordAlgorithm, ...] = (
    PasswordAlgorithm.MD5,
    PasswordAlgorithm.SHA256,
)
#: RFC 8489 §14.3: USERNAME is fewer than 509 bytes
MAX_USERNAME_BYTES = 508
#: RFC 8489 §14.9: REALM is fewer than 128 characters and at most 763 bytes
MAX_REALM_CHARS = 127
MAX_REALM_BYTES = 763

#: how long SQLite waits for another writer before giving up
BUSY_TIMEOUT_S = 5.0


class StoreError(NatkitError):
    """The store cannot be opened or changed (file, schema, existing user)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A long-term user as listed; the keys stay inside the store."""

    username: str
    realm: str
    algorithms: tuple[PasswordAlgorithm, ...]
    created_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class _Cache:
    """Everything a lookup needs, swapped as a whole on reload."""

    keys: Mapping[tuple[str, str], Mapping[PasswordAlgorithm, bytes]]
    hashes: Mapping[tuple[bytes, str], str]


# --- names -------------------------------------------------------------------


def prepare_username(username: str) -> str:
    """A long-term username as stored and as clients send it (RFC 8489 §14.3).

    OpaqueString (RFC 8265 §4.2) prepared, non-empty, at most 508 bytes, no
    control characters. A name of the REST shape ``<digits>:<user>`` is
    refused: those are minted from the shared secret, never stored.
    """
    if not username:
        raise UsageError("username must not be empty")
    try:
        prepared = integrity.opaque_string(username)
    except UsageError as exc:
        raise UsageError(f"username {username!r}: {_why(exc)}") from None
    if len(prepared.encode("utf-8")) > MAX_USERNAME_BYTES:
        raise UsageError(f"username longer than {MAX_USERNAME_BYTES} bytes")
    if parse_rest_username(prepared) is not None:
        raise UsageError(
            f"username {username!r} has the shape of a time-limited REST username "
            "(EXPIRY:USER); choose another"
        )
    return prepared


def prepare_realm(realm: str) -> str:
    """A realm as the server sends it in REALM (RFC 8489 §14.9)."""
    if not realm:
        raise UsageError("realm must not be empty")
    try:
        prepared = integrity.opaque_string(realm)
    except UsageError as exc:
        raise UsageError(f"realm {realm!r}: {_why(exc)}") from None
    if len(prepared) > MAX_REALM_CHARS or len(prepared.encode()) > MAX_REALM_BYTES:
        raise UsageError(
            f"realm must be under 128 characters and {MAX_REALM_BYTES + 1} bytes"
        )
    return prepared


def _lookup_form(text: str) -> str:
    """``text`` as it would have been stored: prepared when it can be."""
    try:
        return integrity.opaque_string(text)
    except UsageError:
        return text


def _why(exc: UsageError) -> str:
    return str(exc).removeprefix("OpaqueString: ")


def _algorithms(
    algorithms: Iterable[PasswordAlgorithm],
) -> tuple[PasswordAlgorithm, ...]:
    chosen = tuple(PasswordAlgorithm(a) for a in algorithms)
    if not chosen:
        raise UsageError("at least one password algorithm is needed")
    if len(set(chosen)) != len(chosen):
        raise UsageError("the same password algorithm is given twice")
    return tuple(sorted(chosen))


def derive_keys(
    username: str,
    realm: str,
    password: str,
    algorithms: Sequence[PasswordAlgorithm],
) -> dict[PasswordAlgorithm, bytes]:
    """The long-term keys of RFC 8489 §9.2.2 for ``algorithms``.

    An error names the password preparation that failed, never the password.
    """
    if not password:
        raise UsageError("password must not be empty")
    keys: dict[PasswordAlgorithm, bytes] = {}
    for algorithm in algorithms:
        try:
            keys[algorithm] = integrity.long_term_key(
                username, realm, password, algorithm
            )
        except UsageError as exc:
            raise UsageError(f"password: {exc}") from None
    return keys


# --- the store ---------------------------------------------------------------


class UserStore:
    """Long-term users of a data directory; a KeyLookup for the authenticator.

    Open with :meth:`open`. One instance may be shared by threads; any
    number of processes may open the same file (SQLite locking, WAL mode,
    a busy timeout of :data:`BUSY_TIMEOUT_S`).
    """

    __slots__ = (
        "path",
        "refresh_interval",
        "sealer",
        "_conn",
        "_lock",
        "_cache",
        "_clock",
        "_checked_at",
        "_data_version",
        "_closed",
    )

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        refresh_interval: float,
        clock: Callable[[], float],
        sealer: Sealer | None = None,
    ) -> None:
        self.path = path
        self.refresh_interval = refresh_interval
        self.sealer = sealer
        self._conn = conn
        self._lock = threading.Lock()
        self._clock = clock
        self._cache = _Cache({}, {})
        self._checked_at = clock()
        self._data_version = -1
        self._closed = False
        with self._lock:
            self._reload()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        create: bool = True,
        refresh_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sealer: Sealer | None = None,
    ) -> Self:
        """Open (by default create) ``natkit.db`` in ``data_dir``.

        ``sealer`` defaults to the data directory's
        (:func:`~natkit.security.sealing.data_dir_sealer`); with one, plain
        keys are sealed now. Raises :class:`StoreError` when the file is
        open to other users, is not a natkit store, has a newer schema,
        holds sealed keys but no master key is found, or (with
        ``create=False``) does not exist.
        """
        path = data_dir / DB_FILE
        try:
            if not path.exists():
                if not create:
                    raise StoreError(f"no user store at {path}")
                ensure_private_dir(data_dir)
                if create_private_file(path, b""):
                    logger.info("created user store %s", path)
            check_private_file(path)
        except PrivateFileError as exc:
            raise StoreError(str(exc)) from None
        try:
            sealer = sealer or data_dir_sealer(data_dir)
        except SealError as exc:
            raise StoreError(f"{path}: {exc}") from None
        conn = _connect(path)
        try:
            _migrate(conn, path)
            _seal_plain_keys(conn, path, sealer)
        except BaseException:
            conn.close()
            raise
        return cls(
            path, conn, refresh_interval=refresh_interval, clock=clock, sealer=sealer
        )

    def close(self) -> None:
        """Close the database; lookups then serve the last loaded users."""
        with self._lock:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- changes ---------------------------------------------------------

    def add_user(
        self,
        username: str,
        realm: str,
        password: str,
        *,
        algorithms: Sequence[PasswordAlgorithm] = DEFAULT_ALGORITHMS,
        replace: bool = False,
    ) -> UserRecord:
        """Store the derived keys of ``username`` in ``realm``; never the password.

        Raises UsageError for a bad name, realm, password or algorithm list,
        :class:`StoreError` if the user exists and ``replace`` is False. A
        replaced user gets new keys and a new ``created_at``.
        """
        username = prepare_username(username)
        realm = prepare_realm(realm)
        chosen = _algorithms(algorithms)
        keys = derive_keys(username, realm, password, chosen)
        digest = integrity.userhash(username, realm)
        created = time.time()

        with self._lock, self._transaction():
            row = self._conn.execute(
                "SELECT id FROM users WHERE username = ? AND realm = ?",
                (username, realm),
            ).fetchone()
            if row is not None and not replace:
                raise StoreError(
                    f"user {username!r} already exists in realm {realm!r}"
                    " (replace it to change the password)"
                )
            if row is not None:
                self._conn.execute("DELETE FROM users WHERE id = ?", (row[0],))
            cursor = self._conn.execute(
                "INSERT INTO users (username, realm, userhash, created_at)"
                " VALUES (?, ?, ?, ?)",
                (username, realm, digest, created),
            )
            self._conn.executemany(
                "INSERT INTO user_keys (user_id, algorithm, key, sealed)"
                " VALUES (?, ?, ?, ?)",
                [
                    (
                        cursor.lastrowid,
                        int(a),
                        *_at_rest(self.sealer, username, realm, a, k),
                    )
                    for a, k in keys.items()
                ],
            )
        with self._lock:
            self._reload()
        logger.info(
            "%s user %r in realm %r (%s)",
            "replaced" if row is not None else "added",
            username,
            realm,
            ", ".join(a.name for a in chosen),
        )
        _audit(
            self.path.parent,
            "user.replace" if row is not None else "user.add",
            username,
            realm,
            [a.name.lower() for a in chosen],
        )
        return UserRecord(username, realm, chosen, _utc(created))

    def remove_user(self, username: str, realm: str) -> bool:
        """Forget ``username`` in ``realm``; True if it was there."""
        key = (_lookup_form(username), _lookup_form(realm))
        with self._lock, self._transaction():
            cursor = self._conn.execute(
                "DELETE FROM users WHERE username = ? AND realm = ?", key
            )
        removed = cursor.rowcount > 0
        if removed:
            with self._lock:
                self._reload()
            logger.info("removed user %r from realm %r", username, realm)
            _audit(self.path.parent, "user.remove", key[0], key[1], None)
        return removed

    def list_users(self, realm: str | None = None) -> list[UserRecord]:
        """The users, sorted by realm then name; only ``realm`` if given."""
        query = (
            "SELECT u.username, u.realm, u.created_at, group_concat(k.algorithm)"
            " FROM users u LEFT JOIN user_keys k ON k.user_id = u.id"
        )
        params: tuple[str, ...] = ()
        if realm is not None:
            query += " WHERE u.realm = ?"
            params = (_lookup_form(realm),)
        query += " GROUP BY u.id ORDER BY u.realm, u.username"
        with self._lock:
            rows = self._query(query, params)
        return [
            UserRecord(name, user_realm, _parse_algorithms(algs), _utc(created))
            for name, user_realm, created, algs in rows
        ]

    # --- KeyLookup -------------------------------------------------------

    def key_for(
        self, username: str, realm: str, algorithm: PasswordAlgorithm
    ) -> bytes | None:
        """RFC 8489 §9.2.2: the stored key, or None for an unknown user."""
        self._maybe_refresh()
        keys = self._cache.keys.get((username, realm))
        return None if keys is None else keys.get(algorithm)

    def user_for_hash(self, userhash: bytes, realm: str) -> str | None:
        """RFC 8489 §14.4: the user whose USERHASH in ``realm`` is ``userhash``."""
        self._maybe_refresh()
        return self._cache.hashes.get((userhash, realm))

    def __len__(self) -> int:
        return len(self._cache.keys)

    def refresh(self) -> bool:
        """Reload now if another connection changed the file; True if it did."""
        with self._lock:
            self._checked_at = self._clock()
            if self._closed:
                return False
            try:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:
                logger.warning("cannot check user store %s: %s", self.path, exc)
                return False
            if version == self._data_version:
                return False
            self._reload()
            return True

    # --- internals -------------------------------------------------------

    def _maybe_refresh(self) -> None:
        if self._clock() - self._checked_at >= self.refresh_interval:
            self.refresh()

    def _reload(self) -> None:
        """Load every key into a new cache; the caller holds the lock."""
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            rows = self._conn.execute(
                "SELECT u.username, u.realm, u.userhash, k.algorithm, k.key, k.sealed"
                " FROM users u JOIN user_keys k ON k.user_id = u.id"
            ).fetchall()
        except sqlite3.Error as exc:
            logger.warning("cannot reload user store %s: %s", self.path, exc)
            return
        keys: dict[tuple[str, str], dict[PasswordAlgorithm, bytes]] = {}
        hashes: dict[tuple[bytes, str], str] = {}
        unusable = 0
        for username, realm, digest, algorithm, key, sealed in rows:
            try:
                kind = PasswordAlgorithm(algorithm)
            except ValueError:
                continue  # written by a newer natkit: not usable here
            plain = self._plain_key(username, realm, kind, bytes(key), bool(sealed))
            if plain is None:
                unusable += 1
                continue
            keys.setdefault((username, realm), {})[kind] = plain
            if digest is not None:
                hashes[(bytes(digest), realm)] = username
        self._cache = _Cache(keys, hashes)
        self._data_version = version
        if unusable:
            logger.warning(
                "user store %s: %d sealed keys do not unseal with master key %s "
                "(changed, or sealed with another key); those users cannot log in",
                self.path,
                unusable,
                self.sealer.key_id if self.sealer else "(none)",
            )
        logger.debug("loaded %d users from %s", len(keys), self.path)

    def _plain_key(
        self,
        username: str,
        realm: str,
        algorithm: PasswordAlgorithm,
        key: bytes,
        sealed: bool,
    ) -> bytes | None:
        """A stored key as the authenticator needs it; None if it cannot unseal."""
        if not sealed:
            return key
        if self.sealer is None:
            return None
        try:
            return self.sealer.unseal(
                key, context=key_context(username, realm, algorithm)
            )
        except SealError:
            return None

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._conn, self.path)

    def _query(
        self, query: str, params: tuple[str, ...]
    ) -> list[tuple[str, str, float, str | None]]:
        try:
            return self._conn.execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    __slots__ = ("_conn", "_path")

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    def __enter__(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {self._path}: {exc}") from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._conn.execute("ROLLBACK")
            if issubclass(exc_type, sqlite3.Error):
                raise StoreError(f"cannot write {self._path}: {exc}") from None
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.execute("ROLLBACK")
            raise StoreError(f"cannot write {self._path}: {exc}") from None


# --- schema ------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        # deleted and replaced keys are overwritten, not left in free pages
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from None
    return conn


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE users ("
        " id INTEGER PRIMARY KEY,"
        " username TEXT NOT NULL,"
        " realm TEXT NOT NULL,"
        " userhash BLOB,"
        " created_at REAL NOT NULL,"
        " UNIQUE (username, realm))"
    )
    conn.execute("CREATE INDEX users_by_hash ON users (userhash)")
    conn.execute(
        "CREATE TABLE user_keys ("
        " user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,"
        " algorithm INTEGER NOT NULL,"
        " key BLOB NOT NULL,"
        " PRIMARY KEY (user_id, algorithm))"
    )


def _add_sealed_v2(conn: sqlite3.Connection) -> None:
    """Version 2: keys may be sealed at rest (NIST SC-28)."""
    conn.execute("ALTER TABLE user_keys ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0")


#: _MIGRATIONS[n] brings a store from schema version n to n + 1
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _create_v1,
    _add_sealed_v2,
)


def key_context(username: str, realm: str, algorithm: PasswordAlgorithm) -> bytes:
    """What a sealed key is bound to: its user, realm and algorithm."""
    return b"\0".join(
        (
            b"natkit user-key v1",
            username.encode("utf-8"),
            realm.encode("utf-8"),
            str(int(algorithm)).encode("ascii"),
        )
    )


def _at_rest(
    sealer: Sealer | None,
    username: str,
    realm: str,
    algorithm: PasswordAlgorithm,
    key: bytes,
) -> tuple[bytes, int]:
    """A key as stored: ``(value, sealed)``."""
    if sealer is None:
        return key, 0
    return sealer.seal(key, context=key_context(username, realm, algorithm)), 1


def _seal_plain_keys(
    conn: sqlite3.Connection, path: Path, sealer: Sealer | None
) -> None:
    """Seal every plain key (schema v1, or stored before sealing was on).

    Without a sealer, sealed keys are an error: they could not be used.
    """
    with _Transaction(conn, path):
        if sealer is None:
            row = conn.execute("SELECT count(*) FROM user_keys WHERE sealed = 1")
            if row.fetchone()[0]:
                raise StoreError(
                    f"{path} holds sealed keys, but its data directory has no "
                    "sealing marker (sealing.json) naming the master key"
                )
            return
        rows = conn.execute(
            "SELECT k.user_id, k.algorithm, k.key, u.username, u.realm"
            " FROM user_keys k JOIN users u ON u.id = k.user_id WHERE k.sealed = 0"
        ).fetchall()
        for user_id, algorithm, key, username, realm in rows:
            try:
                kind = PasswordAlgorithm(algorithm)
            except ValueError:
                continue
            sealed, _ = _at_rest(sealer, username, realm, kind, bytes(key))
            conn.execute(
                "UPDATE user_keys SET key = ?, sealed = 1"
                " WHERE user_id = ? AND algorithm = ?",
                (sealed, user_id, algorithm),
            )
    if rows:
        _scrub(conn, path)
        logger.info(
            "user store %s: sealed %d keys under master key %s",
            path,
            len(rows),
            sealer.key_id,
        )


def _scrub(conn: sqlite3.Connection, path: Path) -> None:
    """Leave no plain key behind in free pages or the WAL (SC-28)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        logger.warning("user store %s: cannot compact after sealing: %s", path, exc)


def _audit(
    data_dir: Path,
    event_type: str,
    username: str,
    realm: str,
    algorithms: list[str] | None,
) -> None:
    from natkit.security.audit import record_change

    record_change(
        data_dir,
        event_type,
        outcome="success",
        user=username,
        realm=realm,
        algorithms=algorithms,
    )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema, or bring an older one up to :data:`SCHEMA_VERSION`."""
    with _Transaction(conn, path):
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a natkit user store: {exc}") from None
        version = 0 if row[0] is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}; this natkit reads up to "
                f"schema version {SCHEMA_VERSION}"
            )
        for step in range(version, SCHEMA_VERSION):
            _MIGRATIONS[step](conn)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (step + 1,))
            logger.info("user store %s: schema %d -> %d", path, step, step + 1)


def _parse_algorithms(text: str | None) -> tuple[PasswordAlgorithm, ...]:
    if not text:
        return ()
    known = {int(a) for a in PasswordAlgorithm}
    values = {int(v) for v in text.split(",")}
    return tuple(PasswordAlgorithm(v) for v in sorted(values & known))


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
