"""The allowed-key policy: parsing --allow-key, resolving it, and what it permits."""

from __future__ import annotations

import pytest
from envelope_mq.consumer.keypolicy import KEY_IDS_ONLY, KeyPolicy, KeyRule
from envelope_mq.shared.errors import ConfigError, KmsRequestError
from envelope_mq.shared.kms import InMemoryKeyProvider


class Aliases:
    """A resolver with aliases, counting DescribeKey calls."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.calls: list[str] = []

    def describe_key_id(self, key: str) -> str:
        self.calls.append(key)
        try:
            return self.table[key]
        except KeyError:
            raise KmsRequestError("no", code="Forbidden.AliasNotFound") from None


def test_a_rule_is_a_key_and_optional_context_pairs() -> None:
    rule = KeyRule.parse("acs:kms:cn-hangzhou:1:key/key-b@tenant=b,tenant=c,app=x")
    assert rule.key == "acs:kms:cn-hangzhou:1:key/key-b"
    assert rule.context.allowed == {
        "tenant": frozenset({"b", "c"}),
        "app": frozenset({"x"}),
    }
    assert KeyRule.parse("alias/orders").context.allowed == {}


@pytest.mark.parametrize("spec", ["", "@tenant=b", "key-b@", "key-b@tenant"])
def test_a_malformed_rule_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError):
        KeyRule.parse(spec)


def test_aliases_and_arns_are_resolved_once_at_start() -> None:
    resolver = Aliases({"alias/b": "key-b", "key-a": "key-a"})
    policy = KeyPolicy.parse(["alias/b@tenant=b", "alias/b@tenant=c", "key-a"])
    resolved = policy.resolve(resolver)
    assert resolver.calls == ["alias/b", "key-a"]
    assert resolved.key_ids() == ["key-a", "key-b"]


def test_a_key_that_does_not_resolve_fails_at_start() -> None:
    with pytest.raises(KmsRequestError):
        KeyPolicy.parse(["alias/typo"]).resolve(Aliases({}))


def test_an_unresolved_policy_cannot_be_used() -> None:
    with pytest.raises(ConfigError):
        KeyPolicy.parse(["key-a"]).permits("key-a", {})


def test_only_key_b_may_speak_for_tenant_b() -> None:
    policy = KeyPolicy.parse(["key-a@tenant=a", "key-b@tenant=b"]).resolve(
        Aliases({"key-a": "key-a", "key-b": "key-b"})
    )
    assert policy.permits("key-b", {"tenant": "b"})
    assert policy.permits("acs:kms:cn-hangzhou:1:key/key-b", {"tenant": "b"})
    assert not policy.permits("key-a", {"tenant": "b"})
    assert not policy.permits("key-c", {"tenant": "b"})
    assert policy.lists("key-a")
    assert not policy.lists("key-c")


def test_a_key_without_pairs_may_say_anything_and_alternatives_add_up() -> None:
    policy = KeyPolicy.parse(["k@t=a", "k@t=b", "free"]).resolve(
        Aliases({"k": "k", "free": "free"})
    )
    assert policy.permits("k", {"t": "b"})
    assert not policy.permits("k", {"t": "c"})
    assert policy.permits("free", {"anything": "at all"})


def test_the_empty_policy_allows_every_key() -> None:
    policy = KeyPolicy.parse([])
    assert not policy
    assert policy.resolved
    assert policy.permits("any", {"t": "x"})


def test_the_in_memory_provider_resolves_known_keys_only() -> None:
    provider = InMemoryKeyProvider(["key-a"])
    assert KeyPolicy.parse(["key-a"]).resolve(provider).key_ids() == ["key-a"]
    with pytest.raises(KmsRequestError):
        KeyPolicy.parse(["key-x"]).resolve(provider)


def test_without_describe_key_ids_and_key_arns_resolve_and_aliases_fail_at_start() -> (
    None
):
    policy = KeyPolicy.parse(["key-a@t=a", "acs:kms:cn-hangzhou:1:key/key-b"])
    assert policy.resolve(KEY_IDS_ONLY).key_ids() == ["key-a", "key-b"]
    for alias in ("alias/orders", "acs:kms:cn-hangzhou:1:alias/orders"):
        with pytest.raises(ConfigError, match="alias"):
            KeyPolicy.parse([alias]).resolve(KEY_IDS_ONLY)
