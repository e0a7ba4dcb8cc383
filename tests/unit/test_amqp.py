from __future__ import annotations

from typing import Any

import pika.exceptions
import pytest
from envelope_mq.shared.amqp import (
    DEFAULT_EXCHANGE,
    ConnectionOptions,
    Topology,
    broker_errors,
    connection_parameters,
    redact_url,
    split_urls,
    translate_error,
)
from envelope_mq.shared.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    MessageNackedError,
    MessageUnroutableError,
)
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorSocketConnectError,
)


class RecordingChannel:
    """A hand-written fake of a pika channel: records calls, answers callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def method(**kwargs: Any) -> None:
            callback = kwargs.pop("callback", None)
            self.calls.append((name, kwargs))
            if callback is not None:
                callback(object())

        return method


def test_comma_separated_urls_split_in_failover_order() -> None:
    assert split_urls(" amqp://a:5672/ , amqp://b:5673/,,") == (
        "amqp://a:5672/",
        "amqp://b:5673/",
    )


def test_a_list_of_urls_may_itself_hold_comma_separated_ones() -> None:
    assert split_urls(["amqp://a/,amqp://b/", "amqp://c/"]) == (
        "amqp://a/",
        "amqp://b/",
        "amqp://c/",
    )


@pytest.mark.parametrize("urls", ["", " , ", []])
def test_no_url_at_all_is_a_config_error(urls: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        split_urls(urls)


def test_parameters_carry_our_defaults() -> None:
    options = ConnectionOptions(
        heartbeat=7, blocked_connection_timeout=9.0, connection_attempts=4
    )
    (params,) = connection_parameters("amqp://u:p@host:5679/vh", options)
    assert (params.host, params.port, params.virtual_host) == ("host", 5679, "vh")
    assert params.heartbeat == 7
    assert params.blocked_connection_timeout == 9.0
    assert params.connection_attempts == 4
    assert params.client_properties == {"connection_name": "envelope-mq"}


def test_the_urls_own_query_string_wins_over_defaults() -> None:
    (params,) = connection_parameters(
        "amqp://h/%2F?heartbeat=5&blocked_connection_timeout=3"
    )
    assert params.heartbeat == 5
    assert params.blocked_connection_timeout == 3


def test_several_urls_give_parameters_in_the_same_order() -> None:
    params = connection_parameters("amqp://first:1/,amqp://second:2/")
    assert [(p.host, p.port) for p in params] == [("first", 1), ("second", 2)]


@pytest.mark.parametrize(
    "url",
    ["http://user:hunter2@host/", "host:5672", "amqp://user:hunter2@h/?heartbeat=x"],
)
def test_bad_urls_are_config_errors_that_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        connection_parameters(url)
    assert "hunter2" not in str(caught.value)


def test_redact_url_hides_only_the_password() -> None:
    assert (
        redact_url("amqp://user:secret@host:5672/vh") == "amqp://user:***@host:5672/vh"
    )
    assert redact_url("amqp://host/") == "amqp://host/"


def test_topology_binds_the_queue_with_its_own_name_by_default() -> None:
    topology = Topology("orders")
    assert topology.exchange == DEFAULT_EXCHANGE
    assert topology.binding_key == "orders"
    assert topology.quarantine_queue == "orders.quarantine"


def test_topology_routing_key_overrides_the_binding() -> None:
    assert Topology("orders", routing_key="orders.*").binding_key == "orders.*"


def test_queue_arguments_carry_the_type_and_the_extras() -> None:
    topology = Topology("q", queue_type="quorum", queue_arguments={"x-expires": 1000})
    assert topology.queue_declare_arguments() == {
        "x-queue-type": "quorum",
        "x-expires": 1000,
    }


@pytest.mark.parametrize(
    ("queue", "exchange", "queue_type"),
    [("", "x", "classic"), ("q", "", "classic"), ("q", "x", "lazy")],
)
def test_invalid_topologies_are_config_errors(
    queue: str, exchange: str, queue_type: Any
) -> None:
    with pytest.raises(ConfigError):
        Topology(queue, exchange=exchange, queue_type=queue_type)


EXPECTED_DECLARATIONS = [
    (
        "exchange_declare",
        {
            "exchange": "ex",
            "exchange_type": "topic",
            "durable": True,
            "auto_delete": False,
        },
    ),
    (
        "queue_declare",
        {"queue": "q", "durable": True, "arguments": {"x-queue-type": "quorum"}},
    ),
    (
        "queue_declare",
        {
            "queue": "q.quarantine",
            "durable": True,
            "arguments": {"x-queue-type": "quorum"},
        },
    ),
    ("queue_bind", {"queue": "q", "exchange": "ex", "routing_key": "rk"}),
]


def test_declare_makes_a_durable_topic_exchange_two_durable_queues_and_a_binding() -> (
    None
):
    channel = RecordingChannel()
    Topology("q", exchange="ex", routing_key="rk", queue_type="quorum").declare(channel)
    assert channel.calls == EXPECTED_DECLARATIONS


def test_async_declare_chains_the_same_steps_then_calls_back_once() -> None:
    channel = RecordingChannel()
    done: list[int] = []
    topology = Topology("q", exchange="ex", routing_key="rk", queue_type="quorum")
    topology.declare_async(channel, lambda: done.append(len(channel.calls)))
    assert channel.calls == EXPECTED_DECLARATIONS
    assert done == [len(EXPECTED_DECLARATIONS)]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (pika.exceptions.UnroutableError([]), MessageUnroutableError),
        (pika.exceptions.NackError([]), MessageNackedError),
        (pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND"), BrokerError),
        (pika.exceptions.StreamLostError("eof"), BrokerUnavailableError),
        (pika.exceptions.AMQPConnectionError(), BrokerUnavailableError),
        (
            pika.exceptions.ConnectionClosedByBroker(320, "shutdown"),
            BrokerUnavailableError,
        ),
        (ConnectionRefusedError(111, "refused"), BrokerUnavailableError),
        (pika.exceptions.ChannelWrongStateError("closed"), BrokerError),
    ],
)
def test_pika_errors_map_to_our_tree(raised: BaseException, expected: type) -> None:
    error = translate_error(raised, "doing it")
    assert type(error) is expected
    assert str(error).startswith("doing it")


def test_broker_errors_translates_and_chains() -> None:
    cause = pika.exceptions.ChannelClosedByBroker(
        406, "PRECONDITION_FAILED - inequivalent"
    )
    with pytest.raises(BrokerError) as caught, broker_errors("declare queue 'q'"):
        raise cause
    assert caught.value.__cause__ is cause
    assert "406 PRECONDITION_FAILED" in str(caught.value)


def test_a_refused_connection_is_described_by_its_socket_error() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    wrapped = pika.exceptions.AMQPConnectionError(
        AMQPConnectionWorkflowFailed([AMQPConnectorSocketConnectError(refused)] * 3)
    )
    error = translate_error(wrapped, "cannot connect to RabbitMQ at amqp://h/")
    assert str(error) == (
        "cannot connect to RabbitMQ at amqp://h/: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )
