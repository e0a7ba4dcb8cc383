"""The allowed-key policy: which master keys may speak, and for which contexts.

The encryption context is the sender's own choice, and the x-emq-key-id header
only a claim; what KMS proves is which master key wrapped the data key (the
KeyId Decrypt reports). A consumer that must trust *who* sent a message binds
master keys to what they may say::

    --allow-key key-a@tenant=a         # key-a may speak for tenant=a only
    --allow-key alias/billing          # the key behind alias/billing: any context
    --allow-key KEY@tenant=b,region=eu # KEY, for tenant=b in region=eu
    --allow-key KEY@tenant=b,tenant=c  # KEY, for tenant=b or tenant=c

A rule is ``KEY[@K=V,K=V...]``: KEY a key id, ``alias/NAME`` or ARN, resolved
to its KeyId once, at start, by DescribeKey (so an alias moved later does not
move the policy, and a mistyped key fails at start instead of quarantining
everything); the pairs after ``@`` constrain the context as ``--allow-context``
does (every named key must hold one of its values; a repeated key allows more
values). Repeating a KEY adds alternatives. A KMS client without DescribeKey
(the KMS 3.0 dedicated gateway) resolves key ids and key ARNs as written and
refuses aliases at start (:data:`KEY_IDS_ONLY`). With any rule given, a message
under a key no rule names is quarantined (``key-denied``), and one under a
listed key whose context fits none of its rules is ``context-denied``.

The rules are checked twice: on the header's claim before any KMS call (a
message that could only be refused costs no Decrypt), and on the KeyId KMS
reported after it, which is the check that counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.kms import key_id_of

__all__ = ["KEY_IDS_ONLY", "KeyPolicy", "KeyResolver", "KeyRule"]

_SCOPE = "@"


@runtime_checkable
class KeyResolver(Protocol):
    """Turns a key name into its KeyId (``AliyunKms.describe_key_id``)."""

    def describe_key_id(self, key: str) -> str:
        """The KeyId of ``key`` (id, alias or ARN); raise KmsError."""
        ...


class _KeyIdsOnly:
    """For a KMS client without DescribeKey (a KMS 3.0 dedicated gateway).

    Key ids and key ARNs name their key without a call; an alias cannot be
    resolved, so it is refused at start rather than guessed.
    """

    def describe_key_id(self, key: str) -> str:
        key_id = key_id_of(key)
        if key_id.startswith("acs:") or "alias/" in key_id:
            raise ConfigError(
                f"--allow-key {key}: this KMS client cannot resolve aliases "
                "(no DescribeKey); name the key by its id or key ARN"
            )
        return key_id


#: The resolver used when the KMS client offers no DescribeKey.
KEY_IDS_ONLY: KeyResolver = _KeyIdsOnly()


@dataclass(frozen=True)
class KeyRule:
    """One ``--allow-key``: a key as written, and the contexts it may claim."""

    key: str
    context: ContextPolicy = field(default_factory=ContextPolicy)

    @classmethod
    def parse(cls, spec: str) -> KeyRule:
        """Parse ``KEY[@K=V,K=V...]``."""
        key, scoped, pairs = spec.strip().partition(_SCOPE)
        key = key.strip()
        if not key:
            raise ConfigError(f"--allow-key needs a key id, alias or ARN: {spec!r}")
        if scoped and not pairs.strip():
            raise ConfigError(f"--allow-key {spec!r}: nothing after {_SCOPE!r}")
        parts = [p.strip() for p in pairs.split(",")] if scoped else []
        return cls(key, ContextPolicy.parse(parts))

    def __str__(self) -> str:
        pairs = ",".join(
            f"{k}={v}"
            for k, values in sorted(self.context.allowed.items())
            for v in sorted(values)
        )
        return f"{self.key}{_SCOPE}{pairs}" if pairs else self.key


@dataclass(frozen=True)
class KeyPolicy:
    """Rules by KeyId once :meth:`resolve` d; the empty policy allows any key."""

    rules: tuple[KeyRule, ...] = ()
    # KeyId -> the context policies of its rules (alternatives); set by resolve()
    by_key_id: Mapping[str, tuple[ContextPolicy, ...]] | None = None

    @classmethod
    def parse(cls, specs: Iterable[str]) -> KeyPolicy:
        """Parse ``--allow-key`` values (not resolved yet)."""
        return cls(tuple(KeyRule.parse(spec) for spec in specs))

    @property
    def resolved(self) -> bool:
        """Whether every rule's key was turned into a KeyId."""
        return self.by_key_id is not None or not self.rules

    def resolve(self, resolver: KeyResolver) -> KeyPolicy:
        """The same rules, keyed by the KeyId DescribeKey gives for each key.

        Raises:
            KmsError: a key could not be described (no such key or alias, no
                permission to describe it, or the consumer's credentials fail).
        """
        by_key_id: dict[str, list[ContextPolicy]] = {}
        names: dict[str, str] = {}
        for rule in self.rules:
            if rule.key not in names:
                names[rule.key] = resolver.describe_key_id(rule.key)
            by_key_id.setdefault(names[rule.key], []).append(rule.context)
        return KeyPolicy(self.rules, {k: tuple(v) for k, v in by_key_id.items()})

    def lists(self, key: str) -> bool:
        """Whether ``key`` (a KeyId, or a key ARN) is one the policy names."""
        return key_id_of(key) in self._table()

    def permits(self, key: str, context: Mapping[str, str]) -> bool:
        """Whether a message under ``key`` may say ``context`` (True when empty)."""
        if not self.rules:
            return True
        rules = self._table().get(key_id_of(key))
        if rules is None:
            return False
        return any(not rule or rule.permits(context) for rule in rules)

    def key_ids(self) -> Sequence[str]:
        """The resolved KeyIds, for logs."""
        return sorted(self._table())

    def _table(self) -> Mapping[str, tuple[ContextPolicy, ...]]:
        if self.by_key_id is None:
            if self.rules:
                raise ConfigError("the allowed-key policy was not resolved")
            return {}
        return self.by_key_id

    def __bool__(self) -> bool:
        return bool(self.rules)
