"""Data keys in two KMS regions: two emulators, each its own region and master key.

The real clients of both SDKs against the real emulator: GenerateDataKey in
one region, Encrypt of the key's text in the other, and each copy decrypted
where it was made, under the same EncryptionContext, to the same key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
from collections.abc import Iterator, Mapping

import pika
import pytest
from command_kit import ENVELOPE_MQ, TIMEOUT, env_for
from envelope_mq.consumer.message import ReceivedMessage
from envelope_mq.consumer.worker import ConsumerStats, EncryptedConsumer
from envelope_mq.producer import EncryptedPublisher
from envelope_mq.shared import wire_v2
from envelope_mq.shared.amqp import Topology
from envelope_mq.shared.envelope import MessageMeta, SealedMessage, Sealer
from envelope_mq.shared.errors import KmsRequestError
from envelope_mq.shared.keycache import DataKeyCache, UnwrapCache
from envelope_mq.shared.kms import (
    AliyunKms,
    Credentials,
    DataKey,
    DedicatedKms,
    WrappedCopy,
)
from envelope_mq.shared.regions import (
    MultiRegionKeys,
    RegionalKeyResolver,
    RegionalUnwrapCache,
    RegionClients,
    region_clients,
    writer_keys_from_settings,
)
from regions_kit import (
    Principals,
    Region,
    new_principals,
    region_emulator,
    region_settings,
    two_regions,
)
from scenario_kit import run_at_most, scenario_topology

from envelope_mq.aio import AsyncEncryptedPublisher
from envelope_mq.testing.plugin import AmqpNames

pytestmark = pytest.mark.integration

CONTEXT = {"queue": "orders", "tenant": "a"}


def _dead_endpoint() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def principals() -> Principals:
    return new_principals()


@pytest.fixture
def regions(principals: Principals) -> Iterator[tuple[Region, Region]]:
    with two_regions(principals) as both:
        yield both


def _clients(principals: Principals, role: str, order: list[Region]) -> RegionClients:
    return region_clients(
        region_settings(role, principals, ["amqp://unused"], order),  # type: ignore[arg-type]
        [r.name for r in order],
    )


def test_a_copy_made_by_encrypt_decrypts_like_the_generated_key(
    principals: Principals, regions: tuple[Region, Region]
) -> None:
    shanghai, beijing = regions
    settings = region_settings("producer", principals, ["amqp://unused"], regions)
    keys, owned = writer_keys_from_settings(settings)
    assert isinstance(keys, MultiRegionKeys)
    with owned:
        data_key = keys.generate_data_key(shanghai.key_id, CONTEXT)
    assert [(c.region, c.key_id) for c in data_key.copies] == [
        ("cn-shanghai", shanghai.key_id),
        ("cn-beijing", beijing.key_id),
    ]
    with _clients(principals, "consumer", [shanghai, beijing]) as readers:
        for copy in data_key.copies:
            unwrapped = readers[copy.region].decrypt_data_key(copy.blob, CONTEXT)
            assert unwrapped.plaintext == data_key.plaintext
            assert unwrapped.key_id == copy.key_id
        # Keys do not span regions: each blob opens only where it was made.
        with pytest.raises(KmsRequestError):
            readers["cn-beijing"].decrypt_data_key(data_key.wrapped, CONTEXT)
        with pytest.raises(KmsRequestError):  # and only under its context
            readers["cn-beijing"].decrypt_data_key(
                data_key.copies[1].blob, {"queue": "orders"}
            )
    assert shanghai.requests("GenerateDataKey") == 1
    assert (beijing.requests("Encrypt"), beijing.requests("GenerateDataKey")) == (1, 0)


def test_both_sdks_wrap_copies_the_other_opens(principals: Principals) -> None:
    with region_emulator("cn-hangzhou", principals, tls=True) as region:
        assert region.ca_file is not None
        producer = Credentials.static(
            principals.producer.access_key_id, principals.producer.access_key_secret
        )
        consumer = Credentials.static(
            principals.consumer.access_key_id, principals.consumer.access_key_secret
        )
        old_sdk = AliyunKms(
            credentials=producer, endpoint=region.endpoint, ca_bundle=region.ca_file
        )
        new_sdk = DedicatedKms(region.endpoint, producer, ca_file=region.ca_file)
        data_key = old_sdk.generate_data_key(region.key_id, CONTEXT)
        by_new = new_sdk.wrap_data_key(region.key_id, data_key.plaintext, CONTEXT)
        by_old = old_sdk.wrap_data_key(region.key_id, data_key.plaintext, CONTEXT)
        readers = (
            AliyunKms(
                credentials=consumer, endpoint=region.endpoint, ca_bundle=region.ca_file
            ),
            DedicatedKms(region.endpoint, consumer, ca_file=region.ca_file),
        )
        for reader in readers:
            for key_id, blob in (by_new, by_old, (region.key_id, data_key.wrapped)):
                unwrapped = reader.decrypt_data_key(blob, CONTEXT)
                assert (unwrapped.plaintext, unwrapped.key_id) == (
                    data_key.plaintext,
                    key_id,
                )
        assert region.requests("Encrypt") == 2
        old_sdk.close()
        readers[0].close()


def test_a_reader_asks_its_own_region_first_and_caches_by_the_copy_it_used(
    principals: Principals, regions: tuple[Region, Region]
) -> None:
    shanghai, beijing = regions
    settings = region_settings("producer", principals, ["amqp://unused"], regions)
    keys, owned = writer_keys_from_settings(settings)
    cache = DataKeyCache(keys, max_messages=10)
    with owned:
        acquired = [cache.acquire(shanghai.key_id, CONTEXT) for _ in range(40)]
    data_keys = {key.wrapped: key for key in acquired}
    assert len(data_keys) == 4
    with _clients(principals, "consumer", [beijing, shanghai]) as readers:
        reader = RegionalUnwrapCache(
            [(name, UnwrapCache(client)) for name, client in readers.items()]
        )
        for _ in range(3):
            for key in data_keys.values():
                used, unwrapped = reader.unwrap_any(key.copies, CONTEXT)
                assert used.region == "cn-beijing"
                assert unwrapped.plaintext == key.plaintext
        resolver = RegionalKeyResolver(readers.items())
        assert resolver.describe_key_id(shanghai.key_id) == shanghai.key_id
    assert (beijing.requests("Decrypt"), shanghai.requests("Decrypt")) == (4, 0)


def _consume(
    principals: Principals,
    urls: list[str],
    order: list[Region],
    topology: Topology,
    count: int,
) -> tuple[list[ReceivedMessage], ConsumerStats]:
    """What a consumer asking the regions in ``order`` received of ``count``
    messages, and its stats; stopped after a minute whatever happened."""
    received: list[ReceivedMessage] = []
    reader = region_settings("consumer", principals, urls, order)
    consumer = EncryptedConsumer.from_settings(reader, topology, received.append)
    return received, run_at_most(consumer, count, 60.0)


class _Forging:
    """A data key source whose Beijing copy claims another master key."""

    def __init__(self, cache: DataKeyCache, claimed: str) -> None:
        self._cache, self._claimed = cache, claimed

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        real = self._cache.acquire(key_id, context)
        forged = tuple(WrappedCopy(c.region, self._claimed, c.blob) for c in real.extra)
        return dataclasses.replace(real, extra=forged)


def test_through_the_broker_a_consumer_opens_in_its_own_region_first(
    principals: Principals,
    regions: tuple[Region, Region],
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    shanghai, beijing = regions
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    writer = region_settings(
        "producer", principals, urls, regions, data_key_max_messages=10
    )
    with EncryptedPublisher.from_settings(writer, topology=topology) as publisher:
        for n in range(30):  # three data keys
            publisher.publish(f"order {n}".encode(), message_id=f"m-{n}")
        publisher.flush()
    received, stats = _consume(principals, urls, [beijing, shanghai], topology, 30)
    assert sorted(m.body for m in received) == sorted(
        f"order {n}".encode() for n in range(30)
    )
    assert {m.key_id for m in received} == {beijing.key_id}
    assert sum(stats.quarantined.values()) == 0
    assert (beijing.requests("Decrypt"), shanghai.requests("Decrypt")) == (3, 0)
    assert beijing.requests("Encrypt") == 3


def test_a_copy_claiming_another_key_id_is_a_key_mismatch(
    principals: Principals,
    regions: tuple[Region, Region],
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    shanghai, beijing = regions
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    writer = region_settings("producer", principals, urls, regions)
    keys, owned = writer_keys_from_settings(writer)
    honest = DataKeyCache(keys)
    forging = _Forging(DataKeyCache(keys), claimed=shanghai.key_id)
    with owned:
        for source, message_id in ((forging, "forged"), (honest, "honest")):
            with EncryptedPublisher(
                urls, source, shanghai.key_id, topology=topology
            ) as publisher:
                publisher.publish(b"pay 100", message_id=message_id).result(30)
    received, stats = _consume(principals, urls, [beijing, shanghai], topology, 1)
    assert [m.message_id for m in received] == ["honest"]
    # Beijing's KMS says its copy is under the Beijing key, not the one claimed.
    assert dict(stats.quarantined) == {"key-mismatch": 1}


def test_produce_and_consume_take_their_regions_from_flags_and_environment(
    principals: Principals,
    regions: tuple[Region, Region],
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    shanghai, beijing = regions
    urls = [emq_rabbitmq_url]
    queue = ["--queue", emq_amqp_names.queue, "--exchange", emq_amqp_names.exchange]
    writer = region_settings("producer", principals, urls, [shanghai])
    produced = subprocess.run(
        [
            *(ENVELOPE_MQ, "produce", *queue, "--count", "20"),
            *("--wrap-also", f"cn-beijing={beijing.key_id}"),
            *("--region-endpoint", f"cn-beijing={beijing.endpoint}"),
        ],
        env={
            **env_for(writer),
            "ALIBABA_CLOUD_REGION_ID": "cn-shanghai",
            "EMQ_DATA_KEY_MAX_MESSAGES": "5",
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr
    reader = region_settings("consumer", principals, urls, [beijing])
    consumed = subprocess.run(
        [
            *(ENVELOPE_MQ, "consume", *queue, "--count", "20"),
            *("--regions", "cn-guangzhou,cn-beijing,cn-shanghai"),
        ],
        env={
            **env_for(reader),
            "ALIBABA_CLOUD_REGION_ID": "cn-beijing",
            # cn-guangzhou: nothing listens there, and no message has a copy
            "KMS_REGION_ENDPOINTS": f"cn-shanghai={shanghai.endpoint},"
            f"cn-guangzhou={_dead_endpoint()}",
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert consumed.returncode == 0, consumed.stderr
    assert len(consumed.stdout.splitlines()) == 20
    assert "KMS region cn-guangzhou: cannot reach KMS" in consumed.stderr
    # Four data keys, each wrapped in Beijing by Encrypt and unwrapped there.
    assert (beijing.requests("Encrypt"), beijing.requests("Decrypt")) == (4, 4)
    assert shanghai.requests("Decrypt") == 0


def test_the_asyncio_publisher_wraps_in_every_region_too(
    principals: Principals,
    regions: tuple[Region, Region],
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    shanghai, beijing = regions
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    writer = region_settings(
        "producer", principals, urls, regions, data_key_max_messages=5
    )

    async def publish() -> None:
        publisher = AsyncEncryptedPublisher.from_settings(writer, topology=topology)
        async with publisher:
            confirms = [
                await publisher.publish(f"order {n}".encode(), message_id=f"m-{n}")
                for n in range(10)  # two data keys
            ]
            await asyncio.gather(*confirms)

    asyncio.run(publish())
    received, _ = _consume(principals, urls, [beijing, shanghai], topology, 10)
    assert len(received) == 10
    assert (beijing.requests("Encrypt"), beijing.requests("Decrypt")) == (2, 2)
    assert shanghai.requests("Decrypt") == 0


def test_a_dropped_or_swapped_copy_fails_authentication_in_every_region(
    principals: Principals,
    regions: tuple[Region, Region],
    emq_rabbitmq_url: str,
    emq_amqp_names: AmqpNames,
) -> None:
    shanghai, beijing = regions
    topology = scenario_topology(emq_amqp_names.queue, emq_amqp_names.exchange)
    urls = [emq_rabbitmq_url]
    keys, owned = writer_keys_from_settings(
        region_settings("producer", principals, urls, regions)
    )
    with owned:
        sealer = Sealer(DataKeyCache(keys), shanghai.key_id, CONTEXT)
        sealed = {
            name: sealer.seal(b"pay 100", MessageMeta(name, 1_700_000_000))
            for name in ("dropped", "swapped", "intact")
        }
    header = wire_v2.decode(sealed["intact"].headers[wire_v2.HEADER])
    first, second = header.copies
    copies = {
        "dropped": (second,),  # Beijing's copy alone: it would open there
        "swapped": (second, first),
        "intact": header.copies,
    }
    for order in ([beijing, shanghai], [shanghai, beijing]):
        _publish_raw(
            emq_rabbitmq_url,
            topology,
            [
                (message, wire_v2.encode(header.context_json, copies[name]))
                for name, message in sealed.items()
            ],
        )
        received, stats = _consume(principals, urls, order, topology, 1)
        assert [m.message_id for m in received] == ["intact"]
        assert dict(stats.quarantined) == {"undecryptable": 2}
    # One Decrypt per reader, both in Beijing: the Shanghai-first reader met
    # the dropped message first, whose only copy is Beijing's, and from then
    # on its Beijing cache answered (a hit anywhere comes before a KMS call).
    assert (beijing.requests("Decrypt"), shanghai.requests("Decrypt")) == (2, 0)


def _publish_raw(
    url: str, topology: Topology, messages: list[tuple[SealedMessage, bytes]]
) -> None:
    """Publish sealed bodies under the given x-emq values, confirmed."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        topology.declare(channel)
        channel.confirm_delivery()
        for message, value in messages:
            channel.basic_publish(
                topology.exchange,
                topology.binding_key,
                message.body,
                pika.BasicProperties(
                    message_id=message.meta.message_id,
                    timestamp=message.meta.timestamp,
                    headers={wire_v2.HEADER: value},
                ),
                mandatory=True,
            )
    finally:
        connection.close()
