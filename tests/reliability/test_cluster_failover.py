"""A three-node cluster: the clients' node, then the queue leader, killed.

The quorum queue is replicated on all three nodes. Producer and consumer are
given the three URLs and fail over through them. Each node is crashed with
SIGKILL on its own pid (from its pid file); the first one is started again
before the leader is killed, so that two of three replicas stay up throughout,
which a quorum queue needs to accept and deliver messages.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from envelope_mq.producer import EncryptedPublisher
from scenario_kit import (
    PATIENCE,
    ConsumerThread,
    QuarantineWatcher,
    check_with_reconnects,
    confirm_all,
    scenario_clients,
    scenario_topology,
    settle,
    stream_in_background,
)

from envelope_mq.testing.kms import KmsFixture
from envelope_mq.testing.ledger import MessageLedger
from envelope_mq.testing.rabbitmq_node import (
    RabbitNode,
    RabbitNodeError,
    rabbitmq_server_unavailable_reason,
)

pytestmark = [pytest.mark.reliability, pytest.mark.cluster, pytest.mark.slow]

MESSAGES = 6_000


@pytest.fixture
def cluster() -> Iterator[list[RabbitNode]]:
    """Three private nodes clustered together; all stopped afterwards."""
    reason = rabbitmq_server_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)  # the plugin's CI policy applies to the session broker
    tag = uuid.uuid4().hex[:6]
    nodes = [RabbitNode(name=f"emq-{tag}-{n}") for n in "abc"]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda node: node.start(), nodes))
        for node in nodes[1:]:
            node.join_cluster(nodes[0])
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(RabbitNodeError):
                node.close()


def queue_leader(nodes: list[RabbitNode], queue: str) -> RabbitNode:
    """The node that leads ``queue`` now, asked of any node that answers."""
    for asked in nodes:
        with contextlib.suppress(RabbitNodeError):
            listing = asked.ctl(
                "list_queues", "name", "leader", "--quiet", "--no-table-headers"
            )
            for line in listing.splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[0] == queue:
                    return next(n for n in nodes if n.node_name == fields[1])
    raise AssertionError(f"no node knows the leader of {queue}")


def client_ports(node: RabbitNode) -> set[int]:
    """The AMQP ports of the cluster's client connections, as ``node`` sees them."""
    listing = node.ctl("list_connections", "port", "--quiet", "--no-table-headers")
    return {int(line) for line in listing.split()}


def progressed(
    ledger: MessageLedger, at_least: int, publisher: EncryptedPublisher
) -> None:
    """Wait until ``at_least`` messages are settled; say why not otherwise."""
    if not ledger.wait_settled(60, at_least=at_least):
        raise AssertionError(
            f"stuck at {ledger.settled} settled of {at_least} awaited; "
            f"publisher: {publisher.stats()}"
        )


def test_cluster_fails_over_when_nodes_die_and_loses_nothing(
    emq_kms: KmsFixture, cluster: list[RabbitNode]
) -> None:
    ledger = MessageLedger("3-node cluster: clients' node, then queue leader killed")
    first = cluster[0]
    urls = [node.url for node in cluster]
    topology = scenario_topology(
        "emq-cluster", "emq-cluster-x", queue_type="quorum", expires=False
    )
    consumer, publisher = scenario_clients(emq_kms, urls, topology, ledger)
    # About 500 messages/s, so the stream spans both crashes.
    producer, sent = stream_in_background(
        publisher,
        ledger,
        count=MESSAGES,
        size=300,
        tag="cluster",
        pause_every=50,
        pause=0.1,
    )
    # The watcher connects to the last node, so that it never shares a node
    # with the clients when the first one dies.
    watcher_urls = urls[::-1]
    with QuarantineWatcher(watcher_urls, topology, ledger), ConsumerThread(consumer):
        with publisher:
            producer.start()
            progressed(ledger, MESSAGES // 5, publisher)
            # The premise: both clients are on the first node of their list.
            assert client_ports(cluster[1]) >= {first.port}
            first.kill()
            ledger.fault("SIGKILL of the clients' node", 1)
            progressed(ledger, MESSAGES // 2, publisher)
            first.start()  # back in the cluster: two of three up again
            leader = queue_leader(cluster, topology.queue)
            progressed(ledger, MESSAGES * 3 // 5, publisher)
            leader.kill()
            ledger.fault("SIGKILL of the quorum queue's leader", 1)
            producer.join(PATIENCE)
            errors = confirm_all(publisher, ledger, sent)
        settle(ledger)
    stats = publisher.stats()
    assert errors == []
    report = check_with_reconnects(ledger, publisher, consumer)
    assert report["quarantined"] == {}
    assert stats.reconnects >= 1
    assert consumer.stats.reconnects >= 1
