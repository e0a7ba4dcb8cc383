"""The allowed-context policy: which KMS encryption contexts this consumer accepts.

Checked on the parsed envelope header, before any KMS call, so a message meant
for another tenant costs no Decrypt and never reaches the handler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envelope_mq.shared.errors import ConfigError

__all__ = ["ContextPolicy"]


@dataclass(frozen=True)
class ContextPolicy:
    """Context keys the consumer constrains, each with the values it accepts.

    A message passes when, for every constrained key, its context holds that key
    with one of the accepted values. Keys the policy does not name are not
    constrained. The empty policy accepts every context.
    """

    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, pairs: Iterable[str]) -> ContextPolicy:
        """Build a policy from ``k=v`` strings; repeating a key allows more values."""
        allowed: dict[str, set[str]] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ConfigError(f"allowed context must be key=value, got {pair!r}")
            allowed.setdefault(key, set()).add(value)
        return cls({k: frozenset(v) for k, v in allowed.items()})

    def permits(self, context: Mapping[str, str]) -> bool:
        """True when ``context`` satisfies every constraint of the policy."""
        return all(context.get(k) in values for k, values in self.allowed.items())

    def __bool__(self) -> bool:
        return bool(self.allowed)
