"""A bound on the Decrypt calls that unknown wrapped keys can cost a consumer.

Every message names its own wrapped data key, and a key the unwrap cache has
not seen costs one KMS Decrypt. A publisher holding no master key at all can
send a message per random blob; without a bound each one would be a KMS call
(KMS bills them, throttles them per account, and audits them), so anyone who
may write to the queue could spend the consumer's KMS quota.

:class:`DecryptBudget` sits between the unwrap cache and KMS (only cache
misses reach it) and lets at most ``rate`` Decrypt calls per second through,
with bursts up to ``burst``. A call over the budget fails as
``KmsUnavailableError`` (code ``EMQ.DecryptBudget``): the consumer holds that
message unacknowledged and retries it with backoff, as in a KMS outage. So a
flood of unknown keys waits its turn; nothing is lost, and nothing is
quarantined that KMS itself would have opened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from envelope_mq.shared.errors import KmsUnavailableError
from envelope_mq.shared.kms import DataKey, KeyProvider, UnwrappedKey

__all__ = ["DECRYPT_BUDGET_CODE", "DEFAULT_DECRYPT_RATE", "DecryptBudget"]

DECRYPT_BUDGET_CODE = "EMQ.DecryptBudget"
# Far above what a healthy consumer needs (a data key serves many messages),
# far below a real KMS account's Decrypt quota.
DEFAULT_DECRYPT_RATE = 50.0


class DecryptBudget:
    """A KeyProvider that passes at most ``rate`` Decrypt calls per second on."""

    def __init__(
        self,
        provider: KeyProvider,
        rate: float = DEFAULT_DECRYPT_RATE,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError("the Decrypt rate must be positive")
        self._provider = provider
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._bucket = _Bucket(self.burst, clock())
        self._clock = clock

    @property
    def deferred(self) -> int:
        """Calls refused for the budget since it was made (shared ones too)."""
        return self._bucket.deferred

    def sharing(self, provider: KeyProvider) -> DecryptBudget:
        """A budget for ``provider`` (another KMS region) spending this one's calls.

        A flood of unknown wrapped keys then costs at most ``rate`` Decrypt
        calls per second whatever region each names.
        """
        twin = DecryptBudget(provider, self.rate, burst=self.burst, clock=self._clock)
        twin._bucket = self._bucket
        return twin

    def __repr__(self) -> str:
        return f"DecryptBudget({self._provider!r}, rate={self.rate})"

    def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """Pass through: the bound is on what others' messages can cost us."""
        return self._provider.generate_data_key(key_id, context)

    def decrypt_data_key(
        self, wrapped: str, context: Mapping[str, str]
    ) -> UnwrappedKey:
        """Decrypt through the provider if the budget allows one more call now.

        Raises:
            KmsUnavailableError: over the budget (code ``EMQ.DecryptBudget``);
                try again later.
        """
        if not self._take():
            raise KmsUnavailableError(
                f"KMS Decrypt deferred: more than {self.rate:g} unknown data "
                "keys per second",
                code=DECRYPT_BUDGET_CODE,
            )
        return self._provider.decrypt_data_key(wrapped, context)

    def _take(self) -> bool:
        bucket = self._bucket
        with bucket.lock:
            now = self._clock()
            elapsed = max(0.0, now - bucket.last)
            bucket.last = now
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return True
            bucket.deferred += 1
            return False


class _Bucket:
    """The tokens of one budget, shared by the providers it bounds."""

    __slots__ = ("deferred", "last", "lock", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.lock = threading.Lock()
        self.deferred = 0
