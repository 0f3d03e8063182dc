"""The SQLite user store: derived keys only, file modes, cache refresh."""

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from natkit.server.store import (
    DB_FILE,
    SCHEMA_VERSION,
    StoreError,
    UserStore,
    prepare_username,
)
from natkit.stun import integrity
from natkit.stun.constants import PasswordAlgorithm
from natkit.stun.errors import UsageError
from natkit.turn.auth import KeyLookup

MD5 = PasswordAlgorithm.MD5
SHA256 = PasswordAlgorithm.SHA256
PASSWORD = "correct-horse-battery-staple"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_round_trip(tmp_path: Path) -> None:
    with UserStore.open(tmp_path) as store:
        record = store.add_user("alice", "natkit", PASSWORD)
        store.add_user("bob", "example.org", "pw2", algorithms=(SHA256,))

        assert record.username == "alice"
        assert record.algorithms == (MD5, SHA256)
        assert record.created_at.tzinfo is not None
        listed = store.list_users()
        assert [(r.username, r.realm) for r in listed] == [
            ("bob", "example.org"),
            ("alice", "natkit"),
        ]
        assert listed[0].algorithms == (SHA256,)
        assert [r.username for r in store.list_users("natkit")] == ["alice"]
        assert len(store) == 2

        assert store.remove_user("alice", "natkit")
        assert not store.remove_user("alice", "natkit")
        assert store.key_for("alice", "natkit", MD5) is None

    # a new instance reads what the first wrote
    with UserStore.open(tmp_path) as again:
        assert [r.username for r in again.list_users()] == ["bob"]


def test_keys_match_rfc_8489_derivations(tmp_path: Path) -> None:
    """RFC 8489 §9.2.2 keys and §14.4 USERHASH, as natkit.stun.integrity has them."""
    store = UserStore.open(tmp_path)
    store.add_user("alice", "natkit", PASSWORD)

    for algorithm in (MD5, SHA256):
        expected = integrity.long_term_key("alice", "natkit", PASSWORD, algorithm)
        assert store.key_for("alice", "natkit", algorithm) == expected
    digest = integrity.userhash("alice", "natkit")
    assert store.user_for_hash(digest, "natkit") == "alice"
    assert store.user_for_hash(digest, "other") is None
    assert store.key_for("alice", "other", MD5) is None
    store.close()


def test_is_a_key_lookup(tmp_path: Path) -> None:
    store: KeyLookup = UserStore.open(tmp_path)
    assert store.key_for("nobody", "natkit", SHA256) is None


def test_sha256_only_user_has_no_md5_key(tmp_path: Path) -> None:
    """FIPS 140 profile: no MD5 key is derived or stored."""
    with UserStore.open(tmp_path) as store:
        store.add_user("carol", "natkit", PASSWORD, algorithms=(SHA256,))
        assert store.key_for("carol", "natkit", MD5) is None
        assert store.key_for("carol", "natkit", SHA256) is not None
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        algorithms = {row[0] for row in conn.execute("SELECT algorithm FROM user_keys")}
    assert algorithms == {int(SHA256)}


def test_no_plaintext_password_on_disk(tmp_path: Path) -> None:
    secret = "unmistakable-PLAINTEXT-9f3b"

    def assert_absent() -> None:
        for path in tmp_path.iterdir():  # natkit.db, and -wal / -shm while open
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert secret.encode("utf-16-le") not in data, path

    with UserStore.open(tmp_path) as store:
        store.add_user("alice", "natkit", secret)
        store.add_user("bob", "natkit", secret + "2")
        assert_absent()
    assert_absent()


def test_file_modes(tmp_path: Path) -> None:
    data_dir = tmp_path / "natkit-data"
    with UserStore.open(data_dir) as store:
        store.add_user("alice", "natkit", PASSWORD)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for path in data_dir.iterdir():  # natkit.db and its -wal / -shm
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    UserStore.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(SCHEMA_VERSION,)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    UserStore.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="schema version 2"):
        UserStore.open(tmp_path)


def test_open_refuses_file_open_to_others(tmp_path: Path) -> None:
    UserStore.open(tmp_path).close()
    (tmp_path / DB_FILE).chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        UserStore.open(tmp_path)


def test_open_without_create(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no user store"):
        UserStore.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"this is not sqlite" * 100)
    (tmp_path / DB_FILE).chmod(0o600)
    with pytest.raises(StoreError, match="not a database"):
        UserStore.open(tmp_path)


def test_change_by_another_instance_is_seen(tmp_path: Path) -> None:
    """The server's store sees `natkit users add` after its refresh interval."""
    clock = FakeClock()
    server = UserStore.open(tmp_path, clock=clock)
    cli = UserStore.open(tmp_path)

    cli.add_user("alice", "natkit", PASSWORD)
    # within the interval the cache is not checked
    assert server.key_for("alice", "natkit", MD5) is None
    clock.now += 1.0
    assert server.key_for("alice", "natkit", MD5) is not None

    cli.remove_user("alice", "natkit")
    clock.now += 1.0
    assert server.key_for("alice", "natkit", MD5) is None
    assert server.user_for_hash(integrity.userhash("alice", "natkit"), "natkit") is None
    assert not server.refresh()  # nothing changed since

    cli.close()
    server.close()


def test_duplicate_and_replace(tmp_path: Path) -> None:
    with UserStore.open(tmp_path) as store:
        store.add_user("alice", "natkit", "old password")
        with pytest.raises(StoreError, match="already exists"):
            store.add_user("alice", "natkit", "new password")
        store.add_user("alice", "natkit", "new password", replace=True)
        expected = integrity.long_term_key("alice", "natkit", "new password", SHA256)
        assert store.key_for("alice", "natkit", SHA256) == expected
        assert len(store.list_users()) == 1


def test_same_name_in_two_realms(tmp_path: Path) -> None:
    with UserStore.open(tmp_path) as store:
        store.add_user("alice", "a.example", "one")
        store.add_user("alice", "b.example", "two")
        key_a = store.key_for("alice", "a.example", MD5)
        key_b = store.key_for("alice", "b.example", MD5)
        assert key_a is not None and key_b is not None and key_a != key_b
        digest = integrity.userhash("alice", "b.example")
        assert store.user_for_hash(digest, "b.example") == "alice"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("bad\x00name", "U\\+0000"),
        ("tab\there", "U\\+0009"),
        ("line\nbreak", "U\\+000A"),
        ("x" * 509, "508 bytes"),
        ("é" * 255, "508 bytes"),
        ("1700000000:bob", "REST username"),
        ("42:", "REST username"),
    ],
)
def test_bad_usernames(tmp_path: Path, name: str, reason: str) -> None:
    with UserStore.open(tmp_path) as store:
        with pytest.raises(UsageError, match=reason):
            store.add_user(name, "natkit", PASSWORD)
        assert store.list_users() == []


def test_usernames_that_are_fine() -> None:
    assert prepare_username("x" * 508) == "x" * 508
    assert prepare_username("alice@example.org") == "alice@example.org"
    assert prepare_username("user:device") == "user:device"
    assert prepare_username("Ренат") == "Ренат"
    # OpaqueString: NFC, non-ASCII spaces become SPACE
    assert prepare_username("e\u0301") == "\u00e9"
    assert prepare_username("a\u00a0b") == "a b"


def test_stored_name_is_prepared(tmp_path: Path) -> None:
    """Clients send OpaqueString-prepared names (RFC 8489 §14.3)."""
    with UserStore.open(tmp_path) as store:
        record = store.add_user("e\u0301", "natkit", PASSWORD)
        assert record.username == "\u00e9"
        assert store.key_for("\u00e9", "natkit", SHA256) is not None
        assert store.remove_user("e\u0301", "natkit")


@pytest.mark.parametrize(
    ("password", "reason"),
    [("", "empty"), ("bell\x07", "U\\+0007")],
)
def test_bad_passwords_are_named_not_echoed(
    tmp_path: Path, password: str, reason: str
) -> None:
    with UserStore.open(tmp_path) as store:
        with pytest.raises(UsageError, match=reason) as info:
            store.add_user("alice", "natkit", password)
    assert "password" in str(info.value)
    if password:
        assert password not in str(info.value)


def test_bad_realm_and_algorithms(tmp_path: Path) -> None:
    with UserStore.open(tmp_path) as store:
        with pytest.raises(UsageError, match="realm"):
            store.add_user("alice", "", PASSWORD)
        with pytest.raises(UsageError, match="realm"):
            store.add_user("alice", "r" * 128, PASSWORD)
        with pytest.raises(UsageError, match="at least one"):
            store.add_user("alice", "natkit", PASSWORD, algorithms=())
        with pytest.raises(UsageError, match="twice"):
            store.add_user("alice", "natkit", PASSWORD, algorithms=(MD5, MD5))


def test_threads_share_one_store(tmp_path: Path) -> None:
    store = UserStore.open(tmp_path, refresh_interval=0)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for n in range(5):
                store.add_user(f"user{index}-{n}", "natkit", PASSWORD)
                store.key_for(f"user{index}-{n}", "natkit", SHA256)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert len(store.list_users()) == 20
    store.close()
