"""Persistence: SQLite, key material sealed under a root key, one owner per directory.

Only writes come here (creating keys and versions, state and alias changes); the
service serves every read from memory, so no SQL runs on the cryptographic path.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from envelope_mq.kms_emulator.errors import DataDirLockedError, StorageError
from envelope_mq.kms_emulator.model import Key, KeyVersion

__all__ = ["ROOT_KEY_ENV", "Storage"]

ROOT_KEY_ENV = "KMS_EMULATOR_ROOT_KEY"
_ROOT_CHECK = b"kms-emulator root key check"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, created INTEGER NOT NULL, key_spec TEXT NOT NULL,
    description TEXT NOT NULL, state TEXT NOT NULL, origin TEXT NOT NULL,
    protection_level TEXT NOT NULL, key_usage TEXT NOT NULL,
    delete_date INTEGER, rotation_interval INTEGER);
CREATE TABLE IF NOT EXISTS versions (
    version_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, seq INTEGER NOT NULL,
    created INTEGER NOT NULL, sealed_material BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, key_id TEXT NOT NULL);
"""
_SELECT_KEYS = (
    "SELECT key_id, created, key_spec, description, state, origin, "
    "protection_level, key_usage, delete_date, rotation_interval FROM keys"
)
_UPSERT_KEY = (
    "INSERT OR REPLACE INTO keys (key_id, created, key_spec, description, state, "
    "origin, protection_level, key_usage, delete_date, rotation_interval) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _decode_root_key(text: str, origin: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise StorageError(f"the root key in {origin} is not base64") from exc
    if len(key) != 32:
        raise StorageError(f"the root key in {origin} must be 32 bytes")
    return key


def _file_root_key(directory: Path) -> bytes:
    """Read <data>/root.key, or create it (0600) on first start."""
    path = directory / "root.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode_root_key(path.read_text("ascii"), str(path))
    key = os.urandom(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(base64.b64encode(key).decode("ascii") + "\n")
    return key


def _lock(directory: Path) -> int:
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise DataDirLockedError(str(directory)) from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


class Storage:
    """The database of one emulator: keys, versions (material sealed) and aliases."""

    def __init__(
        self, conn: sqlite3.Connection, root_key: bytes, lock_fd: int | None
    ) -> None:
        self._conn = conn
        self._root = AESGCM(root_key)
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self._conn.executescript(_SCHEMA)
        self._check_root_key()

    @classmethod
    def open(cls, data: Path | None, root_key: bytes | None = None) -> Storage:
        """Open ``data`` (None: in memory); root key from the caller, env or file."""
        if data is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            return cls(conn, root_key or os.urandom(32), None)
        try:
            data.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(data)
        except OSError as exc:
            raise StorageError(f"cannot use the data directory {data}: {exc}") from exc
        try:
            if root_key is None:
                env = os.environ.get(ROOT_KEY_ENV)
                root_key = (
                    _decode_root_key(env, ROOT_KEY_ENV) if env else _file_root_key(data)
                )
            conn = sqlite3.connect(data / "kms.sqlite3", check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            os.close(lock_fd)
            raise StorageError(f"cannot use the data directory {data}: {exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return cls(conn, root_key, lock_fd)
        except sqlite3.Error as exc:
            conn.close()
            os.close(lock_fd)
            raise StorageError(f"cannot open the database in {data}: {exc}") from exc
        except BaseException:
            conn.close()
            os.close(lock_fd)
            raise

    def _check_root_key(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE name='root'").fetchone()
        if row is None:
            nonce = os.urandom(12)
            sealed = nonce + self._root.encrypt(nonce, _ROOT_CHECK, b"root")
            with self._conn:
                self._conn.execute("INSERT INTO meta VALUES ('root', ?)", (sealed,))
            return
        try:
            self._root.decrypt(row[0][:12], row[0][12:], b"root")
        except InvalidTag as exc:
            raise StorageError(
                "the root key does not match the one this database was created with"
            ) from exc

    def _seal(self, version: KeyVersion) -> bytes:
        nonce = os.urandom(12)
        aad = f"{version.key_id}/{version.version_id}".encode()
        return nonce + self._root.encrypt(nonce, version.material, aad)

    def _unseal(self, key_id: str, version_id: str, sealed: bytes) -> bytes:
        aad = f"{key_id}/{version_id}".encode()
        try:
            return self._root.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag as exc:
            raise StorageError(
                f"key material of version {version_id} is corrupt"
            ) from exc

    def load(self) -> tuple[list[Key], dict[str, str]]:
        """Every key with its versions (material unsealed), and the alias map."""
        keys: dict[str, Key] = {}
        with self._mutex:
            for row in self._conn.execute(_SELECT_KEYS):
                keys[row[0]] = Key(*row)
            versions = self._conn.execute(
                "SELECT version_id, key_id, created, sealed_material FROM versions "
                "ORDER BY key_id, seq"
            ).fetchall()
            aliases = dict(self._conn.execute("SELECT name, key_id FROM aliases"))
        for version_id, key_id, created, sealed in versions:
            material = self._unseal(key_id, version_id, sealed)
            keys[key_id].versions.append(
                KeyVersion(version_id, key_id, created, material)
            )
        return list(keys.values()), aliases

    def save_key(self, key: Key) -> None:
        """Insert or update a key's metadata (not its versions)."""
        row = (
            key.key_id, key.created, key.key_spec, key.description, key.state,
            key.origin, key.protection_level, key.key_usage, key.delete_date,
            key.rotation_interval,
        )  # fmt: skip
        with self._mutex, self._conn:
            self._conn.execute(_UPSERT_KEY, row)

    def add_version(self, version: KeyVersion, seq: int) -> None:
        """Persist a new version, its material sealed under the root key."""
        sealed = self._seal(version)
        with self._mutex, self._conn:
            self._conn.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
                (version.version_id, version.key_id, seq, version.created, sealed),
            )

    def delete_key(self, key_id: str) -> None:
        """Remove a key, its versions and its aliases."""
        with self._mutex, self._conn:
            for table in ("keys", "versions", "aliases"):
                self._conn.execute(f"DELETE FROM {table} WHERE key_id=?", (key_id,))  # noqa: S608

    def save_alias(self, name: str, key_id: str) -> None:
        """Create or re-point an alias."""
        with self._mutex, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO aliases VALUES (?, ?)", (name, key_id)
            )

    def delete_alias(self, name: str) -> None:
        """Remove an alias."""
        with self._mutex, self._conn:
            self._conn.execute("DELETE FROM aliases WHERE name=?", (name,))

    def clear(self) -> None:
        """Drop every key, version and alias (the root key stays)."""
        with self._mutex, self._conn:
            for table in ("keys", "versions", "aliases"):
                self._conn.execute(f"DELETE FROM {table}")  # noqa: S608

    def close(self) -> None:
        """Close the database and release the directory lock."""
        with self._mutex:
            self._conn.close()
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
