"""The error tree: its shape, its attributes, and the drawing in its docstring."""

from __future__ import annotations

import inspect
import re

import pytest
from envelope_mq.shared import errors
from envelope_mq.shared.errors import (
    DecryptionError,
    KmsError,
    KmsRequestError,
    KmsUnavailableError,
    MessagingError,
    PublishNotConfirmedError,
)

CLASSES = {
    name: cls
    for name, cls in vars(errors).items()
    if inspect.isclass(cls)
    and issubclass(cls, Exception)
    and cls.__module__ == errors.__name__
}


def _drawn_parents() -> dict[str, str | None]:
    """Child -> parent as drawn in the module docstring (by the column of each name)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^([\s│├└─]*)(\w+Error)\b", line)
        if not match:
            continue
        column, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_the_drawn_tree_is_the_real_tree() -> None:
    drawn = _drawn_parents()
    assert set(drawn) == set(CLASSES)
    for name, parent in drawn.items():
        (base,) = CLASSES[name].__bases__
        assert base.__name__ == (parent or "Exception"), name


def test_every_error_is_exported() -> None:
    assert set(errors.__all__) == set(CLASSES)


@pytest.mark.parametrize("cls", sorted(CLASSES.values(), key=lambda c: c.__name__))
def test_every_error_derives_from_the_one_root(cls: type[Exception]) -> None:
    assert issubclass(cls, MessagingError)


def test_transient_and_permanent_kms_failures_are_distinct_kms_errors() -> None:
    assert issubclass(KmsUnavailableError, KmsError)
    assert issubclass(KmsRequestError, KmsError)
    assert not issubclass(KmsUnavailableError, KmsRequestError)
    assert not issubclass(KmsRequestError, KmsUnavailableError)


def test_a_kms_error_keeps_the_service_codes() -> None:
    err = KmsRequestError(
        "KMS Decrypt failed",
        code="Forbidden.KeyNotFound",
        request_id="r-1",
        http_status=404,
    )
    assert (str(err), err.code, err.request_id, err.http_status) == (
        "KMS Decrypt failed",
        "Forbidden.KeyNotFound",
        "r-1",
        404,
    )
    bare = KmsUnavailableError("down")
    assert (bare.code, bare.request_id, bare.http_status) == ("", "", None)


def test_every_decryption_error_says_the_same_thing() -> None:
    assert str(DecryptionError()) == str(DecryptionError()) == DecryptionError.MESSAGE


def test_an_unconfirmed_publish_names_its_message() -> None:
    assert PublishNotConfirmedError("nacked", message_id="m-1").message_id == "m-1"
