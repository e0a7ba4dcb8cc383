"""Wire format v2 through the recipe: one x-emq header, copies, causation, mix-ups."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from envelope_mq.consumer.message import Delivery
from envelope_mq.consumer.outcome import ACK, Reason, Verdict, handle
from envelope_mq.consumer.policy import ContextPolicy
from envelope_mq.shared import wire, wire_v2
from envelope_mq.shared.envelope import MessageMeta, Opener, Sealer
from envelope_mq.shared.errors import (
    DecryptionError,
    MalformedMessageError,
    SealingError,
)
from envelope_mq.shared.kms import (
    DataKey,
    InMemoryKeyProvider,
    UnwrappedKey,
    WrappedCopy,
    local_copy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

KEY_ID = "key-1"
CONTEXT = {"tenant": "acme"}
META = MessageMeta("m-1", 1_700_000_000, "application/json", None, "order")
BLOB = base64.b64encode(bytes(range(60))).decode()


class Keys:
    """One data key with ``extra`` copies; unwraps any blob of it; counts calls."""

    def __init__(self, *extra: WrappedCopy, blob: str = BLOB) -> None:
        self.data_key = DataKey(bytes(range(32)), blob, KEY_ID, extra=extra)
        self.unwraps: list[WrappedCopy] = []

    def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        return self.data_key

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        copy = local_copy(copies)
        self.unwraps.append(copy)
        return copy, UnwrappedKey(self.data_key.plaintext, copy.key_id)


def _seal(keys: Keys, meta: MessageMeta = META, **kwargs: Any) -> Any:
    return Sealer(keys, KEY_ID, CONTEXT, **kwargs).seal(b"payload", meta)


def _open(keys: Keys, headers: Mapping[str, object], body: bytes, meta: Any) -> bytes:
    opener = Opener(keys)
    return opener.open(body, opener.parse(headers), meta).plaintext


def test_v2_is_the_default_and_writes_one_byte_array_header() -> None:
    keys = Keys()
    sealed = _seal(keys)
    assert list(sealed.headers) == ["x-emq"]
    value = sealed.headers["x-emq"]
    assert type(value) is bytes
    context = b'{"tenant":"acme"}'
    assert value == (
        b"\x02\x01"
        + len(context).to_bytes(2, "big")
        + context
        + b"\x01"
        + b"\x00"
        + bytes([len(KEY_ID)])
        + KEY_ID.encode()
        + (60).to_bytes(2, "big")
        + bytes(range(60))
    )
    assert _open(keys, sealed.headers, sealed.body, META) == b"payload"


def test_every_copy_travels_and_the_reader_uses_its_own() -> None:
    extra = (
        WrappedCopy("cn-shanghai", "key-sh", base64.b64encode(b"sh").decode()),
        WrappedCopy("", "key-local", base64.b64encode(b"local").decode()),
    )
    keys = Keys(*extra)
    sealed = _seal(keys)
    decoded = wire_v2.decode(sealed.headers["x-emq"])
    assert decoded.copies == (WrappedCopy("", KEY_ID, BLOB), *extra)
    opener = Opener(keys)
    opened = opener.open(sealed.body, opener.parse(sealed.headers), META)
    # UnwrapCache's rule: the first copy in region "" (here the primary)
    assert keys.unwraps == [WrappedCopy("", KEY_ID, BLOB)]
    assert opened.key_id == KEY_ID


def test_dropping_or_swapping_a_copy_fails_authentication() -> None:
    extra = (WrappedCopy("eu", "key-eu", base64.b64encode(b"eu").decode()),)
    keys = Keys(*extra)
    sealed = _seal(keys)
    decoded = wire_v2.decode(sealed.headers["x-emq"])
    for copies in (decoded.copies[:1], decoded.copies[::-1]):
        value = wire_v2.encode(decoded.context_json, copies)
        with pytest.raises(DecryptionError) as caught:
            _open(keys, {"x-emq": value}, sealed.body, META)
        assert not isinstance(caught.value, MalformedMessageError)


def test_the_causation_id_is_sent_and_bound() -> None:
    keys = Keys()
    meta = dataclasses.replace(META, causation_id="order-41")
    sealed = _seal(keys, meta)
    assert sealed.headers["x-emq-cause"] == "order-41"
    assert _open(keys, sealed.headers, sealed.body, meta) == b"payload"
    for other in (None, "order-42"):
        with pytest.raises(DecryptionError):
            _open(
                keys,
                sealed.headers,
                sealed.body,
                META.__class__(**{**dataclasses.asdict(meta), "causation_id": other}),
            )


@pytest.mark.parametrize("cause", ["", "x" * 256, "é" * 128])
def test_a_causation_id_out_of_range_is_not_sealed(cause: str) -> None:
    with pytest.raises(SealingError):
        _seal(Keys(), dataclasses.replace(META, causation_id=cause))


def test_v1_remains_selectable_and_opens_beside_v2() -> None:
    keys = Keys()
    sealed = _seal(keys, wire_version=1)
    assert set(sealed.headers) == set(wire.HEADER_NAMES)
    assert _open(keys, sealed.headers, sealed.body, META) == b"payload"
    with pytest.raises(SealingError, match="wire_version"):
        Sealer(keys, KEY_ID, wire_version=3)


def test_v1_headers_beside_x_emq_are_a_mix_up() -> None:
    keys = Keys()
    v1 = _seal(keys, wire_version=1)
    v2 = _seal(keys)
    with pytest.raises(MalformedMessageError):
        Opener(keys).parse({**v1.headers, **v2.headers})
    for name in wire.HEADER_NAMES:
        with pytest.raises(MalformedMessageError):
            Opener(keys).parse({**v2.headers, name: v1.headers[name]})


def test_a_v2_body_under_v1_headers_and_back_fails_authentication() -> None:
    keys = Keys()
    v1 = _seal(keys, wire_version=1)
    v2 = _seal(keys)
    for headers, body in ((v1.headers, v2.body), (v2.headers, v1.body)):
        with pytest.raises(DecryptionError) as caught:
            _open(keys, headers, body, META)
        assert not isinstance(caught.value, MalformedMessageError)


@pytest.mark.parametrize("name", ["x-emq-cause", "x-emq-future", "x-emq-"])
def test_v1_refuses_x_emq_headers_it_does_not_define(name: str) -> None:
    v1 = _seal(Keys(), wire_version=1)
    with pytest.raises(MalformedMessageError):
        Opener(Keys()).parse({**v1.headers, name: "x"})


@pytest.mark.parametrize("name", ["x-emq-version", "x-emq-future", "x-emq-"])
def test_v2_refuses_x_emq_headers_it_does_not_define(name: str) -> None:
    v2 = _seal(Keys())
    with pytest.raises(MalformedMessageError):
        Opener(Keys()).parse({**v2.headers, name: "x"})


def test_quarantine_headers_and_foreign_headers_are_ignored() -> None:
    keys = Keys()
    for version in (1, 2):
        sealed = _seal(keys, wire_version=version)
        headers = {
            **sealed.headers,
            "x-emq-quarantine-reason": "malformed",
            "x-emqx": "not ours",
            "x-death": [],
        }
        assert _open(keys, headers, sealed.body, META) == b"payload"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="void"),
        pytest.param("text", id="long string"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x01\x00\x02{}\x00", id="version 1"),
        pytest.param(b"\x02\x02\x00\x02{}\x00", id="alg 2"),
    ],
)
def test_a_bad_x_emq_value_is_malformed(value: object) -> None:
    with pytest.raises(MalformedMessageError):
        Opener(Keys()).parse({"x-emq": value})


def test_the_writer_refuses_a_blob_that_is_not_canonical_base64() -> None:
    for blob in ("wrapped-1", "YQ", "YR==", "YQ==\n", "YQ="):
        with pytest.raises(SealingError, match="x-emq"):
            _seal(Keys(blob=blob))


def test_the_writer_refuses_more_than_4096_bytes() -> None:
    # value = 2 + 2 + len(context) + 1 + (1 + 1 + len(key id) + 2 + blob)
    context = len(b'{"tenant":"acme"}')
    fixed = 2 + 2 + context + 1 + 1 + 1 + len(KEY_ID) + 2
    at_budget = bytes(4096 - fixed)
    sealed = _seal(Keys(blob=base64.b64encode(at_budget).decode()))
    assert len(sealed.headers["x-emq"]) == 4096
    with pytest.raises(SealingError):
        _seal(Keys(blob=base64.b64encode(at_budget + b"\x00").decode()))


def test_more_than_eight_copies_are_refused() -> None:
    extra = [WrappedCopy(f"r{n}", "k", "YQ==") for n in range(8)]
    with pytest.raises(SealingError):
        _seal(Keys(*extra))
    sealed = _seal(Keys(*extra[:7]))
    assert len(wire_v2.decode(sealed.headers["x-emq"]).copies) == 8


# --- the consumer's verdicts ----------------------------------------------------


def _delivery(sealed: Any, **changes: Any) -> Delivery:
    fields: dict[str, Any] = {
        "body": sealed.body,
        "headers": dict(sealed.headers),
        "message_id": sealed.meta.message_id,
        "timestamp": sealed.meta.timestamp,
        "content_type": sealed.meta.content_type,
        "content_encoding": sealed.meta.content_encoding,
        "type": sealed.meta.type,
        "redelivered": False,
        "delivery_tag": 1,
    }
    fields.update(changes)
    return Delivery(**fields)


def _verdict(delivery: Delivery, provider: InMemoryKeyProvider) -> Any:
    from fakes import ProviderUnwrapper

    received: list[Any] = []
    outcome = handle(
        delivery,
        Opener(ProviderUnwrapper(provider)),
        received.append,
        policy=ContextPolicy(),
    )
    return outcome, received


@pytest.fixture
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider([KEY_ID])


def _sealed(provider: InMemoryKeyProvider, meta: MessageMeta = META) -> Any:
    from fakes import OneKeySource

    return Sealer(OneKeySource(provider), KEY_ID, CONTEXT).seal(b"payload", meta)


def test_the_handler_sees_the_causation_id(provider: InMemoryKeyProvider) -> None:
    sealed = _sealed(provider, dataclasses.replace(META, causation_id="c-1"))
    outcome, received = _verdict(_delivery(sealed), provider)
    assert outcome is ACK
    assert received[0].properties.causation_id == "c-1"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"body": bytes(27)}, id="27-byte body"),
        pytest.param({"message_id": ""}, id="empty message_id"),
        pytest.param({"headers": {"x-emq": b"\x02"}}, id="truncated x-emq"),
        pytest.param({"content_type": "x" * 256}, id="content_type too long"),
    ],
)
def test_refused_before_kms_is_malformed(
    provider: InMemoryKeyProvider, changes: dict[str, Any]
) -> None:
    outcome, received = _verdict(_delivery(_sealed(provider), **changes), provider)
    assert (outcome.verdict, outcome.reason) == (Verdict.QUARANTINE, Reason.MALFORMED)
    assert received == []


@pytest.mark.parametrize("cause", [b"c-1", 1, None, "", "x" * 256])
def test_a_bad_cause_header_is_malformed(
    provider: InMemoryKeyProvider, cause: object
) -> None:
    sealed = _sealed(provider)
    delivery = _delivery(sealed, headers={**sealed.headers, "x-emq-cause": cause})
    outcome, _ = _verdict(delivery, provider)
    assert outcome.reason is Reason.MALFORMED


def test_a_tampered_body_is_undecryptable(provider: InMemoryKeyProvider) -> None:
    sealed = _sealed(provider)
    body = sealed.body[:-1] + bytes([sealed.body[-1] ^ 1])
    outcome, _ = _verdict(_delivery(sealed, body=body), provider)
    assert outcome.reason is Reason.UNDECRYPTABLE


def test_a_typical_v2_header_against_v1s_five() -> None:
    """docs/wire-format.md §11.5: one copy, empty context, an emulator-size blob."""
    import pika.data

    key_id = "0b30658a-ed1a-4922-b8f7-a673ca9c2ab4"
    blob = base64.b64encode(bytes(108)).decode()  # 36 + 12 + 44 + 16 bytes
    keys = Keys(blob=blob)
    keys.data_key = DataKey(bytes(32), blob, key_id)
    sizes = {}
    for version in (1, 2):
        sealed = Sealer(keys, key_id, {}, wire_version=version).seal(b"x", META)
        pieces: list[bytes] = []
        pika.data.encode_table(pieces, sealed.headers)
        sizes[version] = (len(sealed.headers), len(b"".join(pieces)) - 4)
    assert sizes == {1: (5, 284), 2: (1, 166)}
    assert len(wire_v2.encode("{}", keys.data_key.copies)) == 155


def test_pamqps_bytearray_for_x_opens_too() -> None:
    """pamqp (asyncio consumer, FastStream) decodes an AMQP "x" as a bytearray."""
    keys = Keys()
    sealed = _seal(keys)
    headers = {"x-emq": bytearray(sealed.headers["x-emq"])}
    assert _open(keys, headers, sealed.body, META) == b"payload"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_damaged_x_emq_is_malformed_or_fails_the_tag_never_anything_else(
    data: st.DataObject,
) -> None:
    extra = (WrappedCopy("eu", "key-eu", base64.b64encode(b"eu").decode()),)
    keys = Keys(*extra)
    sealed = _seal(keys)
    value = bytearray(sealed.headers["x-emq"])
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(value) - 1 if value else 0))
        if kind == "flip" and value:
            value[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del value[at : at + data.draw(st.integers(1, 8))]
        else:
            value[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        _open(keys, {"x-emq": bytes(value)}, sealed.body, META)
    except MalformedMessageError:
        assert keys.unwraps == []  # refused before any KMS call
    except DecryptionError:
        assert len(keys.unwraps) == 1  # decoded, unwrapped, tag failed
    else:
        assert bytes(value) == sealed.headers["x-emq"]


class RegionFirst:
    """A reader that unwraps the copy of its own region first (as regions do)."""

    def __init__(self, provider: InMemoryKeyProvider, region: str) -> None:
        self.provider, self.region = provider, region

    def unwrap_any(
        self, copies: Sequence[WrappedCopy], context: Mapping[str, str]
    ) -> tuple[WrappedCopy, UnwrappedKey]:
        copy = next(c for c in copies if c.region == self.region)
        return copy, self.provider.decrypt_data_key(copy.blob, context)


def test_the_allowed_key_policy_takes_a_claim_of_any_copy_before_decrypt() -> None:
    """A reader allowed only the second region's key opens a message whose
    primary copy is under another key: the claim checked before Decrypt is
    any copy's, the KeyId KMS reports after it is the one that counts."""
    from envelope_mq.consumer.keypolicy import KeyPolicy

    provider = InMemoryKeyProvider(["key-a", "key-b"])

    class TwoRegions:
        def acquire(self, key_id: str, context: Mapping[str, str]) -> DataKey:
            primary = provider.generate_data_key("key-a", context)
            key_b, blob = provider.wrap_data_key("key-b", primary.plaintext, context)
            extra = (WrappedCopy("eu", key_b, blob),)
            return dataclasses.replace(primary, extra=extra)

    sealed = Sealer(TwoRegions(), "key-a", CONTEXT).seal(b"payload", META)
    only_b = KeyPolicy.parse(["key-b"]).resolve(provider)
    only_c = KeyPolicy.parse(["key-a@tenant=other"]).resolve(provider)
    for policy, expected in ((only_b, None), (only_c, Reason.CONTEXT_DENIED)):
        received: list[Any] = []
        outcome = handle(
            _delivery(sealed),
            Opener(RegionFirst(provider, "eu")),
            received.append,
            policy=ContextPolicy(),
            key_policy=policy,
        )
        if expected is None:
            assert outcome is ACK
            assert received[0].key_id == "key-b"
        else:
            assert outcome.reason is expected
