"""Retries of transient KMS failures, with full jitter."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from envelope_mq.shared.errors import ConfigError, KmsUnavailableError
from envelope_mq.shared.kms.failures import (
    TLS_FAILED,
    TLS_UNTRUSTED,
    surely_not_processed,
)

__all__ = ["RetryPolicy"]

logger = logging.getLogger("envelope_mq.shared.kms")
T = TypeVar("T")
# A certificate does not become trusted by asking again.
_NEVER_AGAIN = frozenset({TLS_UNTRUSTED, TLS_FAILED})


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` tries of a call that fails transiently.

    Between tries it sleeps a random time in ``[0, min(max_backoff, backoff *
    2**n)]`` ("full jitter", so that many clients throttled together do not
    come back together). Only :class:`KmsUnavailableError` is retried, and a
    call that is not idempotent only when KMS surely did not act on it.
    """

    max_attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("KMS max_attempts must be at least 1")

    def run(self, action: str, call: Callable[[], T], *, idempotent: bool) -> T:
        """``call()``, tried again on transient failures; its result."""
        attempt = 1
        while True:
            try:
                return call()
            except KmsUnavailableError as err:
                repeatable = err.code not in _NEVER_AGAIN and (
                    idempotent or surely_not_processed(err.code)
                )
                if attempt >= self.max_attempts or not repeatable:
                    raise
                delay = random.uniform(
                    0.0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                )
                logger.warning(
                    "KMS %s: %s, retry %d of %d in %.2fs",
                    action,
                    err.code,
                    attempt,
                    self.max_attempts - 1,
                    delay,
                )
                self.sleep(delay)
                attempt += 1
