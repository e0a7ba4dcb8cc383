"""QPS quotas: the gateways' throttling, answered as HTTP 429 ``Rejected.Throttling``.

KMS 3.0 meters symmetric cryptographic operations per account and region on
the shared gateway (1,000 QPS, fixed), and per instance on a dedicated gateway
(the instance's spec: 1,000, 2,000 or 4,000 QPS). A token bucket holding one
second of quota stands for each meter: a burst of up to ``qps`` requests, then
``qps`` per second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from envelope_mq.kms_emulator.errors import ApiError

__all__ = ["METERED_ACTIONS", "QpsLimiter", "throttled"]

#: The symmetric cryptographic operations the 1,000-QPS quota counts.
METERED_ACTIONS = frozenset(
    {
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncrypt",
    }
)


class QpsLimiter:
    """A token bucket of ``qps`` tokens refilled at ``qps`` per second."""

    def __init__(
        self, qps: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not qps > 0:
            raise ValueError(f"a QPS quota must be positive, not {qps}")
        self.qps = qps
        self._clock = clock
        self._tokens = qps
        self._stamp = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take one token; False when the quota is spent for now."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.qps, self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


def throttled() -> ApiError:
    """The gateways' over-quota answer."""
    return ApiError(429, "Rejected.Throttling", "QPS Limit Exceeded")
