"""consumer/ahead.py: data keys unwrapped ahead of the loop, never more than once."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping

from envelope_mq.consumer.ahead import UnwrapAhead
from envelope_mq.consumer.message import Delivery
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.keycache import UnwrapCache
from envelope_mq.shared.kms import InMemoryKeyProvider
from fakes import OneKeySource

KEY_ID = "key-1"


def delivery(source: OneKeySource, context: Mapping[str, str], n: int) -> Delivery:
    meta = MessageMeta(f"m-{n}", 1_700_000_000, "text/plain")
    sealed = Sealer(source, KEY_ID, context).seal(b"event", meta)
    return Delivery(
        sealed.body, dict(sealed.headers), meta.message_id, meta.timestamp,
        meta.content_type, None, None, False, n,
    )  # fmt: skip


def wait_for_calls(provider: InMemoryKeyProvider, calls: int) -> None:
    deadline = time.monotonic() + 10
    while provider.decrypt_calls < calls:
        assert time.monotonic() < deadline, provider.decrypt_calls
        time.sleep(0.01)
    time.sleep(0.05)  # and no more come


def test_each_data_key_is_unwrapped_once_ahead_and_then_a_hit() -> None:
    provider = InMemoryKeyProvider([KEY_ID])
    source = OneKeySource(provider)
    cache = UnwrapCache(provider)
    opener = Opener(cache)
    ahead = UnwrapAhead(opener, cache, lambda _h: True, workers=2)
    pending = collections.deque(
        delivery(source, {"tenant": t}, n) for n, t in enumerate("ababcc")
    )
    ahead.look(pending)
    ahead.look(pending)  # nothing new: nothing asked again
    wait_for_calls(provider, 3)
    assert provider.decrypt_calls == 3
    assert ahead.requested == 3
    for _ in range(len(pending)):  # the loop: every key a cache hit now
        ahead.taken()
        taken = pending.popleft()
        header = opener.parse(taken.headers)
        meta = MessageMeta(taken.message_id or "", 1_700_000_000, "text/plain")
        assert opener.open(taken.body, header, meta).plaintext == b"event"
    assert provider.decrypt_calls == 3
    pending.append(delivery(source, {"tenant": "d"}, 9))
    ahead.look(pending)  # only the new arrival is looked at
    wait_for_calls(provider, 4)
    assert ahead.requested == 4
    ahead.close()


def test_messages_the_policies_would_refuse_or_malformed_cost_nothing() -> None:
    provider = InMemoryKeyProvider([KEY_ID])
    source = OneKeySource(provider)
    cache = UnwrapCache(provider)
    opener = Opener(cache)
    ahead = UnwrapAhead(
        opener, cache, lambda header: header.context.get("tenant") == "a"
    )
    broken = delivery(source, {"tenant": "a"}, 3)
    damaged = Delivery(
        broken.body, {}, "m-x", 1, None, None, None, False, 4
    )  # no envelope headers
    ahead.look(collections.deque([delivery(source, {"tenant": "b"}, 1), damaged]))
    time.sleep(0.1)
    assert provider.decrypt_calls == 0
    assert ahead.requested == 0
    ahead.close()
