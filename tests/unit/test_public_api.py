"""The public surface: what ``from envelope_mq import ...`` offers, pinned.

A name added to or removed from the facade is an API change: change this list
in the same commit, on purpose (as httpx's tests/test_exported_members.py).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys

import pytest
from envelope_mq.shared import errors

import envelope_mq

PINNED = [
    "AliyunKms",
    "Backoff",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "ConnectionOptions",
    "ConsumerStats",
    "ContextPolicy",
    "DataKey",
    "DecryptionError",
    "EncryptedConsumer",
    "EncryptedPublisher",
    "EncryptedStage",
    "InMemoryKeyProvider",
    "KeyMismatchError",
    "KeyProvider",
    "KmsCallerError",
    "KmsError",
    "KmsRequestError",
    "KmsUnavailableError",
    "MalformedMessageError",
    "ManualClock",
    "MessageNackedError",
    "MessageUnroutableError",
    "MessagingError",
    "Metrics",
    "PublishNotConfirmedError",
    "ReceivedMessage",
    "Reject",
    "Retry",
    "SealingError",
    "Settings",
    "StageOutput",
    "StageStats",
    "Topology",
    "TransportOptions",
    "TransportStats",
    "UnwrappedKey",
    "WrappedCopy",
    "__version__",
]


def test_the_facade_exports_exactly_the_pinned_names() -> None:
    assert envelope_mq.__all__ == PINNED


def test_every_exported_name_resolves_to_our_own_object() -> None:
    for name in envelope_mq.__all__:
        value = getattr(envelope_mq, name)
        if name != "__version__":
            assert value.__module__.startswith("envelope_mq."), name
            assert value.__name__ == name


def test_the_whole_error_tree_is_exported() -> None:
    assert set(errors.__all__) <= set(envelope_mq.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        envelope_mq.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_the_version_is_the_installed_distributions() -> None:
    assert envelope_mq.__version__ == importlib.metadata.version("envelope-mq")
    assert envelope_mq.__version__.count(".") >= 2


def test_the_package_is_marked_typed() -> None:
    assert (importlib.resources.files("envelope_mq") / "py.typed").is_file()


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(done.stdout.split())


def test_importing_the_namespace_or_the_core_loads_no_client() -> None:
    for statement in ("import envelope_mq", "import envelope_mq.shared.wire"):
        loaded = _modules_after(statement)
        assert not {"pika", "envelope_mq.producer", "envelope_mq.consumer"} & loaded
        assert not {m for m in loaded if m.startswith("aliyunsdk")}, statement


def test_a_name_of_the_facade_loads_its_own_side_only() -> None:
    loaded = _modules_after("from envelope_mq import Settings, MessagingError")
    assert "envelope_mq.shared.config" in loaded
    assert not {"pika", "envelope_mq.producer", "envelope_mq.consumer"} & loaded
