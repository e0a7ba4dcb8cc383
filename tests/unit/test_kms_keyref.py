"""Comparing the key a message names with the KeyId KMS reports."""

from __future__ import annotations

import pytest
from envelope_mq.shared.kms import key_id_of, same_key

KEY = "key-hzz630c8ea0cmqp3bxztk"


@pytest.mark.parametrize(
    "name",
    [KEY, f"acs:kms:cn-hangzhou:1234567890:key/{KEY}"],
)
def test_a_key_id_or_its_arn_names_the_key(name: str) -> None:
    assert key_id_of(name) == KEY
    assert same_key(name, KEY)


@pytest.mark.parametrize(
    "name",
    [
        "alias/orders",  # an alias can be moved: it proves nothing
        "acs:kms:cn-hangzhou:1234567890:alias/orders",
        "acs:kms:cn-hangzhou:1234567890:key/",
        f"{KEY}-other",
        "",
    ],
)
def test_other_names_are_not_the_key(name: str) -> None:
    assert not same_key(name, KEY)
