"""The publisher's reconnection policy and channel retirement, without a broker."""

from __future__ import annotations

from envelope_mq.producer.channels import ChannelRetirement
from envelope_mq.producer.options import TransportOptions
from envelope_mq.producer.reconnect import Reconnect
from envelope_mq.shared.errors import BrokerUnavailableError


def test_each_url_is_tried_once_per_round_then_the_round_ends() -> None:
    reconnect = Reconnect(TransportOptions(), 3, "three nodes")
    tried = [reconnect.url()]
    more = []
    for _ in range(3):
        more.append(reconnect.open_failed(ConnectionRefusedError()))
        tried.append(reconnect.url())
    assert tried == [0, 1, 2, 0]
    assert more == [True, True, False]


def test_a_lost_connection_moves_on_to_the_next_url() -> None:
    reconnect = Reconnect(TransportOptions(), 2, "two nodes")
    reconnect.lost(ConnectionResetError())
    assert reconnect.url() == 1


def test_backoff_doubles_up_to_the_cap_with_jitter_below_it() -> None:
    options = TransportOptions(initial_backoff=1.0, max_backoff=4.0)
    reconnect = Reconnect(options, 1, "one node")
    ceilings = [1.0, 2.0, 4.0, 4.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= reconnect.backoff() <= ceiling
    reconnect.ready(reconnected=True)
    assert 0.5 <= reconnect.backoff() <= 1.0
    assert reconnect.reconnects == 1


def test_giving_up_names_the_last_error_but_no_url_secret() -> None:
    options = TransportOptions(reconnect_timeout=0.0)
    reconnect = Reconnect(options, 1, "amqp://127.0.0.1:5672/")
    reconnect.lost(ConnectionResetError("amqp://guest:s3cret@host"))
    error = reconnect.expired()
    assert isinstance(error, BrokerUnavailableError)
    assert "ConnectionResetError" in str(error)
    assert "s3cret" not in str(error)


def test_without_a_reconnect_timeout_it_never_gives_up() -> None:
    reconnect = Reconnect(TransportOptions(reconnect_timeout=None), 1, "node")
    reconnect.lost(ConnectionResetError())
    assert reconnect.expired() is None


def test_a_nack_retires_the_channel_once() -> None:
    channels = ChannelRetirement()
    assert channels.nacked()
    assert not channels.nacked()
    assert channels.retiring
    assert channels.nack_streak == 1


def test_a_replacement_channel_starts_with_a_probe_that_an_ack_passes() -> None:
    channels = ChannelRetirement()
    channels.nacked()
    assert channels.closed()
    assert channels.replacing() == 0
    channels.ready()
    assert channels.probing
    assert channels.acked()
    assert not channels.probing
    assert channels.nack_streak == 0
    assert channels.replaced == 1


def test_a_first_channel_needs_no_probe() -> None:
    channels = ChannelRetirement()
    channels.ready()
    assert not channels.probing
    assert not channels.acked()
    assert not channels.closed()
