"""KmsService: the emulator's domain, one ``call`` per API request."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from envelope_mq.kms_emulator.actions import HANDLERS
from envelope_mq.kms_emulator.errors import ApiError
from envelope_mq.kms_emulator.key_ops import unsupported_origin
from envelope_mq.kms_emulator.keyring import Keyring
from envelope_mq.kms_emulator.policy import Principal, deny
from envelope_mq.kms_emulator.request import Call
from envelope_mq.kms_emulator.seed import Seed, load_seed
from envelope_mq.kms_emulator.states import check_state
from envelope_mq.kms_emulator.storage import Storage

__all__ = ["KmsService"]


def _unknown_action() -> ApiError:
    return ApiError(
        400,
        "InvalidAction.NotFound",
        "Specified api is not found, please check your url and method.",
    )


class KmsService:
    """The KMS of one region and account: keys, aliases, principals, persistence."""

    def __init__(self, ring: Keyring, storage: Storage, seed: Seed | None) -> None:
        self._ring = ring
        self._storage = storage
        self._seed = seed
        self._principals = {
            p.access_key_id: p for p in (seed.principals if seed else ())
        }
        self._closed = False

    @classmethod
    def open(
        cls,
        data: str | os.PathLike[str] | None = None,
        *,
        seed: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        region_id: str = "cn-hangzhou",
        account_id: str = "1234567890123456",
        clock: Callable[[], float] = time.time,
        root_key: bytes | None = None,
    ) -> KmsService:
        """Open (in memory when ``data`` is None) and load ``seed``.

        A directory is created if missing and locked for this process. The root
        key is ``root_key``, else env KMS_EMULATOR_ROOT_KEY (base64 of 32 bytes),
        else <data>/root.key (generated with mode 0600).
        Raises SeedError, StorageError or DataDirLockedError.
        """
        parsed = load_seed(seed) if seed is not None else None
        storage = Storage.open(Path(data) if data is not None else None, root_key)
        try:
            ring = Keyring(storage, clock, region_id, account_id)
            service = cls(ring, storage, parsed)
            service._apply_seed()
        except BaseException:
            storage.close()
            raise
        return service

    def _apply_seed(self) -> None:
        seed, ring = self._seed, self._ring
        if seed is None:
            return
        with ring.lock:
            now = ring.now()
            for entry in seed.keys:
                if entry.key_id not in ring.keys:  # never overwrite a key
                    for version in entry.versions:
                        if version.version_id in ring.versions:
                            raise seed.error(
                                entry.line,
                                f"version {version.version_id} belongs to another key",
                            )
                    ring.add_key(entry.build(now))
                for alias in entry.aliases:
                    if alias not in ring.aliases:  # never re-point an alias
                        ring.set_alias(alias, entry.key_id)

    @property
    def region_id(self) -> str:
        """The region this emulator answers for."""
        return self._ring.region_id

    @property
    def account_id(self) -> str:
        """The account UID in ARNs and Creator."""
        return self._ring.account_id

    @property
    def seed(self) -> Seed | None:
        """The seed loaded at open (principals, keys, roles, OIDC providers)."""
        return self._seed

    def principal(self, access_key_id: str) -> Principal | None:
        """The principal of ``access_key_id``, or None if unknown."""
        return self._principals.get(access_key_id)

    def call(
        self, action: str, params: Mapping[str, str], principal: Principal | None
    ) -> dict[str, Any]:
        """Run one API action; the body without RequestId, or raise ApiError.

        ``principal`` None means authentication is off: everything is allowed.
        """
        handler = HANDLERS.get(action)
        if handler is None:
            raise _unknown_action()
        if principal is not None and not principal.may_call(action):
            resource = f"acs:kms:{self.region_id}:{self.account_id}:*"
            raise deny(principal, action, resource)
        return handler(Call(action, params, principal, self._ring))

    def reset(self) -> None:
        """Drop every key and alias and reload the seed."""
        with self._ring.lock:
            self._ring.clear()
            self._apply_seed()

    def rotate_now(self, key_id: str) -> str:
        """Add a primary version to the key now; return its KeyVersionId.

        ``key_id`` takes the same forms as KeyId; raises ApiError as
        CreateKeyVersion would (unknown key, state, EXTERNAL origin).
        """
        with self._ring.lock:
            key = self._ring.find(key_id)
            check_state("CreateKeyVersion", key.state)
            if key.origin == "EXTERNAL":
                raise unsupported_origin()
            return self._ring.add_version(key).version_id

    def close(self) -> None:
        """Release the data directory lock and close the database (idempotent)."""
        if not self._closed:
            self._closed = True
            self._storage.close()

    def __enter__(self) -> KmsService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
