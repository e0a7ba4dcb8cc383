"""KMS envelope encryption for Celery task messages (docs/celery.md).

One call sets up a Celery app::

    from envelope_mq.celery import setup
    setup(app, key_id="alias/tasks", context={"app": "billing"}, settings=settings)

It registers the ``envelope`` kombu serializer, makes it the task, result and
remote-control serializer and the only content the app accepts, empties the
``argsrepr``/``kwargsrepr`` headers on publish, and gives the worker the
consumer class that opens every task message before Celery sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kombu.serialization import register

from envelope_mq.celery.codec import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    NAME,
    Binding,
    EnvelopeCodec,
    bind_next,
)
from envelope_mq.celery.worker import EnvelopeConsumer
from envelope_mq.consumer.keypolicy import KeyPolicy, KeyResolver
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared.config import Settings
from envelope_mq.shared.envelope import Opener, Sealer
from envelope_mq.shared.errors import ConfigError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import KeyProvider

__all__ = ["CONTENT_TYPE", "NAME", "EnvelopeCodec", "EnvelopeConsumer", "setup"]

# Celery protocol 2 headers that quote the arguments (the rest describe the
# task: name, id, eta, retries, parent/root ids, time limits).
SCRUBBED = "<sealed>"
_ARGUMENT_HEADERS = ("argsrepr", "kwargsrepr")


def _before_publish(
    sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    # Runs in the publishing thread just before kombu serializes the body.
    if headers is None or "id" not in headers:
        return
    for name in _ARGUMENT_HEADERS:
        if name in headers:
            headers[name] = SCRUBBED
    task = headers.get("task", sender)
    if isinstance(task, str) and isinstance(headers["id"], str):
        bind_next(Binding(headers["id"], task))


def setup(
    app: Any,
    *,
    key_id: str,
    context: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    provider: KeyProvider | None = None,
    open_provider: KeyProvider | None = None,
    inner: str = "json",
    seal_results: bool = True,
    allow_context: Iterable[str] = (),
    allow_key: Iterable[str] = (),
    quarantine_arguments: Mapping[str, Any] | None = None,
    wire_version: int = 1,
) -> EnvelopeCodec:
    """Seal ``app``'s task messages (and results) under ``key_id`` and ``context``.

    KMS is ``provider`` (GenerateDataKey; and Decrypt unless ``open_provider``
    is given), else a client built from ``settings`` (``Settings.from_env()``
    when neither is given). ``inner`` names the kombu serializer of the
    plaintext: json unless you choose otherwise (pickle runs code chosen by
    whoever can seal). ``allow_context`` (``k=v``) and ``allow_key``
    (``KEY[@k=v,...]``) are the consumer's policies. ``quarantine_arguments``
    are the arguments of the ``<queue>.quarantine`` queues the worker declares.
    ``wire_version`` is the envelope the frame carries: 1 (the default: the
    frame is JSON in the body, where v2's one binary header saves the broker
    nothing) or 2; workers open both. Returns the codec (the process has one
    ``envelope`` serializer: the last setup wins).
    """
    if provider is None:
        from envelope_mq.shared.kms import kms_from_settings

        provider = kms_from_settings(settings or Settings.from_env())
    opening = open_provider or provider
    sealer = Sealer(DataKeyCache(provider), key_id, context, wire_version=wire_version)
    opener = Opener(UnwrapCache(opening))
    key_policy = KeyPolicy.parse(allow_key)
    resolver = opening if isinstance(opening, KeyResolver) else None
    if key_policy and resolver is None:
        raise ConfigError("allow_key needs a KMS client that can DescribeKey")
    codec = EnvelopeCodec(
        sealer,
        opener,
        inner=inner,
        policy=ContextPolicy.parse(allow_context),
        key_policy=key_policy,
        key_resolver=resolver,
    )
    register(NAME, codec.encode, codec.decode, CONTENT_TYPE, CONTENT_ENCODING)
    from celery.signals import before_task_publish

    before_task_publish.connect(_before_publish, weak=False, dispatch_uid=__name__)
    consumer = type(
        "EnvelopeWorkerConsumer",
        (EnvelopeConsumer,),
        {"codec": codec, "quarantine_arguments": dict(quarantine_arguments or {})},
    )
    app.conf.update(
        task_serializer=NAME,
        accept_content=[NAME],
        result_serializer=NAME if seal_results else "json",
        result_accept_content=[NAME if seal_results else "json"],
        event_serializer=NAME,
        worker_consumer=consumer,
        # Lose nothing on a worker killed mid-task (docs/celery.md).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
    )
    return codec
