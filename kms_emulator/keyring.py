"""The keys, versions and aliases of one emulator, in memory, written through.

Every read (including the whole cryptographic path) is served from these dicts;
changes take the lock, update memory and write through to :class:`Storage`.
Time-driven changes happen lazily when a key is looked up, as in local-kms: a
key whose NextRotationDate has passed gets a new primary version, and a key
whose DeleteDate has passed is deleted.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable

from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.model import SYMMETRIC_SPECS, Key, KeyVersion
from envelope_mq.kms_emulator.storage import Storage

__all__ = ["Keyring", "alias_not_found", "key_not_found"]


def key_not_found() -> ApiError:
    """404 Forbidden.KeyNotFound."""
    return ApiError(404, "Forbidden.KeyNotFound", "The specified Key is not found.")


def alias_not_found() -> ApiError:
    """404 Forbidden.AliasNotFound."""
    return ApiError(404, "Forbidden.AliasNotFound", "The specified Alias is not found.")


class Keyring:
    """The in-memory key store of one region and account."""

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float],
        region_id: str,
        account_id: str,
    ) -> None:
        self.region_id = region_id
        self.account_id = account_id
        self.lock = threading.RLock()
        self._storage = storage
        self._clock = clock
        self._arn_prefix = f"acs:kms:{region_id}:{account_id}:"
        self.keys: dict[str, Key] = {}
        self.versions: dict[str, KeyVersion] = {}
        self.aliases: dict[str, str] = {}  # "alias/<name>" -> key id
        # Copy-on-write frozensets: readers iterate them without the lock.
        self.aliases_by_key: dict[str, frozenset[str]] = {}
        keys, aliases = storage.load()
        for key in keys:
            self._index(key)
        for name, key_id in aliases.items():
            self._index_alias(name, key_id)

    # --- reading -----------------------------------------------------------

    def now(self) -> int:
        """The injected clock, in whole seconds (the API's date resolution)."""
        return int(self._clock())

    def arn(self, key_id: str) -> str:
        """The key ARN ``acs:kms:<region>:<account>:key/<id>``."""
        return f"{self._arn_prefix}key/{key_id}"

    def alias_arn(self, name: str) -> str:
        """The alias ARN ``acs:kms:<region>:<account>:alias/<name>``."""
        return self._arn_prefix + name

    def names(self, key: Key) -> list[str]:
        """Every name a principal's ``keys`` entry may use for ``key``."""
        return [
            key.key_id,
            self.arn(key.key_id),
            *self.aliases_by_key.get(key.key_id, ()),
        ]

    def find(self, ref: str) -> Key:
        """Resolve a KeyId parameter: key id, ``alias/<name>``, key or alias ARN."""
        if ref.startswith(self._arn_prefix):
            ref = ref[len(self._arn_prefix) :]
            if ref.startswith("key/"):
                ref = ref[4:]
            elif not ref.startswith("alias/"):
                raise key_not_found()
        elif ref.startswith("acs:"):
            raise key_not_found()  # another region's or account's key
        if ref.startswith("alias/"):
            key_id = self.aliases.get(ref)
            if key_id is None:
                raise alias_not_found()
            ref = key_id
        key = self.keys.get(ref)
        if key is None or not self._maintain(key):
            raise key_not_found()
        return key

    def version(self, version_id: str) -> tuple[Key, KeyVersion] | None:
        """The key and version a CiphertextBlob names, if they still exist."""
        version = self.versions.get(version_id)
        if version is None:
            return None
        key = self.keys.get(version.key_id)
        if key is None or not self._maintain(key):
            return None
        return key, version

    def _maintain(self, key: Key) -> bool:
        """Apply due deletion or rotation; False if the key is now gone."""
        now = self.now()
        deleting = key.state == "PendingDeletion" and key.delete_date is not None
        if deleting and now >= (key.delete_date or 0):
            with self.lock:
                if key.key_id in self.keys:
                    self.delete_key(key)
            return False
        due = key.next_rotation
        if due is not None and now >= due and key.state == "Enabled":
            with self.lock:
                due = key.next_rotation
                if due is not None and now >= due:
                    self.add_version(key, created=now)
        return True

    def sweep(self) -> None:
        """Apply due deletions and rotations to every key (before listing)."""
        for key in list(self.keys.values()):
            self._maintain(key)

    # --- writing (callers that read-modify-write hold ``lock``) -------------

    def _index(self, key: Key) -> None:
        self.keys[key.key_id] = key
        self.aliases_by_key.setdefault(key.key_id, frozenset())
        for version in key.versions:
            self.versions[version.version_id] = version

    def _index_alias(self, name: str, key_id: str) -> None:
        old = self.aliases.get(name)
        if old is not None:
            self._unlink_alias(name, old)
        self.aliases[name] = key_id
        self.aliases_by_key[key_id] = self.aliases_by_key.get(key_id, frozenset()) | {
            name
        }

    def _unlink_alias(self, name: str, key_id: str) -> None:
        remaining = self.aliases_by_key.get(key_id, frozenset()) - {name}
        self.aliases_by_key[key_id] = remaining

    def new_key_id(self) -> str:
        """A fresh KeyId (a UUID, as classic KMS keys have)."""
        return str(uuid.uuid4())

    def add_key(self, key: Key) -> Key:
        """Store a fully formed key with its versions."""
        with self.lock:
            self._storage.save_key(key)
            for seq, version in enumerate(key.versions):
                self._storage.add_version(version, seq)
            self._index(key)
        return key

    def add_version(
        self,
        key: Key,
        created: int | None = None,
        material: bytes | None = None,
        version_id: str | None = None,
    ) -> KeyVersion:
        """Append a version and make it primary (rotation, CreateKeyVersion)."""
        with self.lock:
            version = KeyVersion(
                version_id or str(uuid.uuid4()),
                key.key_id,
                self.now() if created is None else created,
                material or os.urandom(SYMMETRIC_SPECS[key.key_spec]),
            )
            self._storage.add_version(version, len(key.versions))
            key.versions.append(version)
            self.versions[version.version_id] = version
        return version

    def save(self, key: Key) -> None:
        """Write a key's changed metadata through."""
        with self.lock:
            self._storage.save_key(key)

    def delete_key(self, key: Key) -> None:
        """Delete a key, its versions and its aliases."""
        with self.lock:
            self._storage.delete_key(key.key_id)
            self.keys.pop(key.key_id, None)
            for version in key.versions:
                self.versions.pop(version.version_id, None)
            for name in self.aliases_by_key.pop(key.key_id, frozenset()):
                self.aliases.pop(name, None)

    def set_alias(self, name: str, key_id: str) -> None:
        """Create or re-point an alias."""
        with self.lock:
            self._storage.save_alias(name, key_id)
            self._index_alias(name, key_id)

    def delete_alias(self, name: str) -> None:
        """Remove an alias."""
        with self.lock:
            key_id = self.aliases.pop(name, None)
            if key_id is not None:
                self._unlink_alias(name, key_id)
            self._storage.delete_alias(name)

    def clear(self) -> None:
        """Drop every key, version and alias."""
        with self.lock:
            self._storage.clear()
            self.keys.clear()
            self.versions.clear()
            self.aliases.clear()
            self.aliases_by_key.clear()
