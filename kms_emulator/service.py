"""KmsService: the emulator's domain, one ``call`` per API request."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from kms_emulator.policy import Principal

__all__ = ["KmsService"]


class KmsService:
    """The KMS of one region and account: keys, aliases, principals, persistence."""

    @classmethod
    def open(
        cls,
        data: str | os.PathLike[str] | None = None,
        *,
        seed: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        region_id: str = "cn-hangzhou",
        account_id: str = "1234567890123456",
        clock: Callable[[], float] = time.time,
    ) -> KmsService:
        """Open (in memory when ``data`` is None) and load ``seed``."""
        raise NotImplementedError

    def principal(self, access_key_id: str) -> Principal | None:
        """The principal of ``access_key_id``, or None if unknown."""
        raise NotImplementedError

    def call(
        self, action: str, params: Mapping[str, str], principal: Principal | None
    ) -> dict[str, Any]:
        """Run one API action; the body without RequestId, or raise ApiError."""
        raise NotImplementedError

    def reset(self) -> None:
        """Drop every key and alias and reload the seed."""
        raise NotImplementedError

    def rotate_now(self, key_id: str) -> str:
        """Add a primary version to the key now; return its KeyVersionId."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush, release the data directory lock and close the database."""
        raise NotImplementedError
