"""Every way a sealed file can be altered fails, and leaves no plaintext behind."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import pytest
from envelope_mq.shared.errors import DecryptionError, KmsRequestError
from envelope_mq.shared.kms import InMemoryKeyProvider
from envelope_mq.shared.sealed_file import (
    MIN_SEGMENT_SIZE,
    read_header,
    seal_stream,
    unseal_stream,
    unseal_with_key,
)
from envelope_mq.shared.segments import TAG_SIZE

SEG = MIN_SEGMENT_SIZE
SEALED_SEG = SEG + TAG_SIZE
CONTEXT = {"file": "report.pdf"}
DATA = os.urandom(3 * SEG + 100)  # three full segments and a short last one


@pytest.fixture(scope="module")
def provider() -> InMemoryKeyProvider:
    return InMemoryKeyProvider(["master"])


@pytest.fixture(scope="module")
def sealed(provider: InMemoryKeyProvider) -> bytes:
    out = io.BytesIO()
    seal_stream(io.BytesIO(DATA), out, provider, "master", CONTEXT, segment_size=SEG)
    return out.getvalue()


def split(sealed: bytes) -> tuple[bytes, list[bytes]]:
    """Header, then the sealed segments."""
    size = len(read_header(io.BytesIO(sealed)).encoded)
    body = sealed[size:]
    return sealed[:size], [
        body[i : i + SEALED_SEG] for i in range(0, len(body), SEALED_SEG)
    ]


def test_layout_has_four_segments(sealed: bytes) -> None:
    _, segments = split(sealed)
    assert [len(s) for s in segments] == [SEALED_SEG] * 3 + [100 + TAG_SIZE]


def assert_rejected(provider: InMemoryKeyProvider, altered: bytes) -> None:
    """Unsealing fails with the one DecryptionError."""
    with pytest.raises(DecryptionError) as info:
        unseal_stream(io.BytesIO(altered), io.BytesIO(), provider)
    assert str(info.value) == DecryptionError.MESSAGE


def drop_last(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s[:-1])


def keep_two(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s[:2])


def keep_one(h: bytes, s: list[bytes]) -> bytes:
    return h + s[0]


def header_only(h: bytes, s: list[bytes]) -> bytes:
    return h


def cut_inside_last(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s)[:-1]


def cut_inside_middle(h: bytes, s: list[bytes]) -> bytes:
    return h + s[0] + s[1][:100]


def drop_middle(h: bytes, s: list[bytes]) -> bytes:
    return h + s[0] + s[2] + s[3]


def swap(h: bytes, s: list[bytes]) -> bytes:
    return h + s[1] + s[0] + s[2] + s[3]


def duplicate(h: bytes, s: list[bytes]) -> bytes:
    return h + s[0] + s[0] + s[1] + s[2] + s[3]


def duplicate_last(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s) + s[3]


def append_byte(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s) + b"\x00"


def append_full_segment(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s) + s[0]


def append_tag_sized(h: bytes, s: list[bytes]) -> bytes:
    return h + b"".join(s) + b"\x00" * TAG_SIZE


def move_last_to_front(h: bytes, s: list[bytes]) -> bytes:
    return h + s[3] + s[0] + s[1] + s[2]


@pytest.mark.parametrize(
    "alter",
    [
        drop_last,
        keep_two,
        keep_one,
        header_only,
        cut_inside_last,
        cut_inside_middle,
        drop_middle,
        swap,
        duplicate,
        duplicate_last,
        append_byte,
        append_full_segment,
        append_tag_sized,
        move_last_to_front,
    ],
)
def test_restructured_file_is_rejected(
    provider: InMemoryKeyProvider,
    sealed: bytes,
    alter: Callable[[bytes, list[bytes]], bytes],
) -> None:
    assert_rejected(provider, alter(*split(sealed)))


def test_segment_from_another_file_under_the_same_key_is_rejected(
    provider: InMemoryKeyProvider, sealed: bytes
) -> None:
    other = io.BytesIO()
    seal_stream(io.BytesIO(DATA), other, provider, "master", CONTEXT, segment_size=SEG)
    header, segments = split(sealed)
    _, foreign = split(other.getvalue())
    assert_rejected(
        provider, header + segments[0] + foreign[1] + segments[2] + segments[3]
    )


@pytest.mark.parametrize("segment", [0, 1, 2, 3])
@pytest.mark.parametrize("where", ["first", "middle", "tag"])
def test_flipped_body_bit_is_rejected(
    provider: InMemoryKeyProvider, sealed: bytes, segment: int, where: str
) -> None:
    header, segments = split(sealed)
    target = bytearray(segments[segment])
    offset = {"first": 0, "middle": len(target) // 2, "tag": len(target) - 1}[where]
    target[offset] ^= 0x01
    segments[segment] = bytes(target)
    assert_rejected(provider, header + b"".join(segments))


def test_every_flipped_header_byte_is_rejected_even_with_the_right_key(
    provider: InMemoryKeyProvider, sealed: bytes
) -> None:
    # With the data key in hand, KMS cannot be what catches it: the header
    # check or the header digest in every segment's associated data must.
    src = io.BytesIO(sealed)
    key = provider.decrypt_data_key(read_header(src).wrapped_key, CONTEXT).plaintext
    header, _ = split(sealed)
    for position in range(len(header)):
        altered = bytearray(sealed)
        altered[position] ^= 0x01
        src = io.BytesIO(bytes(altered))
        with pytest.raises(DecryptionError):
            unseal_with_key(src, io.BytesIO(), read_header(src), key)


def test_flipped_header_byte_never_releases_plaintext(
    provider: InMemoryKeyProvider, sealed: bytes
) -> None:
    header, _ = split(sealed)
    for position in range(len(header)):
        altered = bytearray(sealed)
        altered[position] ^= 0x01
        out = io.BytesIO()
        # An altered wrapped key or context is refused by KMS itself.
        with pytest.raises((DecryptionError, KmsRequestError)):
            unseal_stream(io.BytesIO(bytes(altered)), out, provider)
        assert out.getvalue() == b""


def test_wrong_expected_context_is_rejected_before_kms(sealed: bytes) -> None:
    provider = InMemoryKeyProvider(["master"])
    with pytest.raises(DecryptionError):
        unseal_stream(
            io.BytesIO(sealed), io.BytesIO(), provider, expected_context={"file": "x"}
        )
    assert provider.decrypt_calls == 0


def test_right_expected_context_is_accepted(
    provider: InMemoryKeyProvider, sealed: bytes
) -> None:
    out = io.BytesIO()
    unseal_stream(io.BytesIO(sealed), out, provider, expected_context=dict(CONTEXT))
    assert out.getvalue() == DATA


def test_truncation_releases_only_authenticated_segments(
    provider: InMemoryKeyProvider, sealed: bytes
) -> None:
    out = io.BytesIO()
    with pytest.raises(DecryptionError):
        unseal_stream(io.BytesIO(drop_last(*split(sealed))), out, provider)
    assert out.getvalue() == DATA[: 3 * SEG]
