"""Sealing switched off: the benchmark's way to tell crypto cost from client cost.

:class:`PassThroughSealer` publishes the plaintext with the envelope
headers a real sealer would attach (same sizes, same frames), and
:class:`PassThroughOpener` hands the body over as it came. They live here, in
the repository and outside every package, so that no wheel ever ships a sealer
that does not encrypt. ``envelope-mq bench`` run from a checkout loads this
file by path (:mod:`envelope_mq.bench.unsealed`) and reaches the producer only
through ``EncryptedPublisher._sealer_class``, a private seam; from an installed
wheel its "sealing off" rows say they were not measured. No argument, setting,
environment variable or message header can switch sealing off.
"""

from __future__ import annotations

from collections.abc import Mapping

from envelope_mq.shared import wire, wire_v2
from envelope_mq.shared.envelope import (
    DataKeySource,
    EnvelopeHeader,
    MessageMeta,
    OpenedMessage,
    SealedMessage,
    Sealer,
)

__all__ = ["PassThroughOpener", "PassThroughSealer"]


class PassThroughSealer(Sealer):
    """A Sealer that does not encrypt: for ``envelope-mq bench`` only, never in use."""

    def __init__(
        self,
        cache: DataKeySource,
        key_id: str,
        context: Mapping[str, str] | None = None,
        *,
        wire_version: int = 2,
    ) -> None:
        super().__init__(cache, key_id, context, wire_version=wire_version)
        context = {} if context is None else context
        # One real data key, only so that the headers have their real sizes.
        data_key = cache.acquire(key_id, context)
        context_json = wire.canonical_context(context)
        self._headers: dict[str, str | int | bytes] = (
            {wire_v2.HEADER: wire_v2.encode(context_json, data_key.copies)}
            if wire_version == 2
            else {
                wire.VERSION_HEADER: wire.VERSION,
                wire.ALG_HEADER: wire.ALGORITHM,
                wire.KEY_ID_HEADER: data_key.key_id,
                wire.DATA_KEY_HEADER: data_key.wrapped,
                wire.CONTEXT_HEADER: context_json,
            }
        )

    def seal(self, plaintext: bytes, meta: MessageMeta) -> SealedMessage:
        """The plaintext, unchanged, with the headers a real seal would carry."""
        return SealedMessage(plaintext, dict(self._headers), meta)


class PassThroughOpener:
    """Opens nothing: the body as delivered is the plaintext. Bench only."""

    def __init__(self, key_id: str, context: Mapping[str, str]) -> None:
        self._header = EnvelopeHeader(key_id, "bench-pass-through", dict(context))

    def parse(self, headers: Mapping[str, object]) -> EnvelopeHeader:
        """The one fixed header; the x-emq-* values are not even looked at."""
        return self._header

    def open(
        self, body: bytes, header: EnvelopeHeader, meta: MessageMeta
    ) -> OpenedMessage:
        """``body`` as the plaintext."""
        return OpenedMessage(body, header.context, header.key_id, meta)
