"""The demo's summary: figures, then one message as stored beside what was read."""

from __future__ import annotations

import json

from envelope_mq.demo_run import DemoResult
from envelope_mq.shared import wire_v2

__all__ = ["format_report"]

_BODY_PREFIX_BYTES = 32
_SHOWN_TEXT = 72


def _rate(count: int, seconds: float) -> str:
    if seconds <= 0:
        return f"{count:,} msgs"
    return f"{count:,} msgs in {seconds:.2f} s = {count / seconds:,.0f} msg/s"


def _n(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _x_emq_lines(value: bytes) -> list[str]:
    """The one binary header of wire format v2, taken apart for a reader."""
    try:
        decoded = wire_v2.decode(value)
    except ValueError:
        return [f"  {wire_v2.HEADER:<15} {len(value)} bytes (not a valid x-emq)"]
    lines = [
        f"  {wire_v2.HEADER:<15} {len(value)} bytes: wire format v2, AES-256-GCM, "
        f"context {_short(decoded.context_json)}"
    ]
    for n, copy in enumerate(decoded.copies, 1):
        where = f"region {copy.region}" if copy.region else "default KMS"
        blob = wire_v2.blob_bytes(copy.blob)
        lines.append(
            f"  {f'copy {n}':<15} key {copy.key_id} ({where}), "
            f"blob {len(blob)} bytes: {_short(copy.blob)}"
        )
    return lines


def _short(text: str, limit: int = _SHOWN_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_report(
    result: DemoResult,
    *,
    broker: str,
    kms: str,
    kms_calls: dict[str, int],
    metrics: str | None = None,
) -> str:
    """The multi-line summary printed at the end of a demo run.

    ``metrics``: a line of metric totals, when the run served metrics.
    """
    verdict = "all verified" if result.ok else "NOT all verified"
    lines = [
        f"envelope-mq demo: {result.messages:,} messages of {result.size:,} bytes, "
        f"{verdict} ({result.verified:,}/{result.messages:,})",
        f"  broker     {broker}, queue {result.queue}",
        f"  KMS        {kms}",
        f"  publish    {_rate(result.messages, result.publish_seconds)} "
        "(encrypted, confirmed)",
        f"  consume    {_rate(result.verified, result.consume_seconds)} "
        "(decrypted, verified, acked)",
        "  KMS calls  "
        + (", ".join(f"{k} {v}" for k, v in sorted(kms_calls.items())) or "none"),
    ]
    if result.producer_cache and result.consumer_cache:
        p, c = result.producer_cache, result.consumer_cache
        lines.append(
            f"  key cache  producer {_n(p.hits, 'hit')} / "
            f"{_n(p.misses, 'miss', 'misses')}, consumer {_n(c.hits, 'hit')} / "
            f"{_n(c.misses, 'miss', 'misses')}"
        )
    if metrics is not None:
        lines.append(f"  metrics    {metrics}")
    if result.mismatched or result.unexpected or result.quarantined:
        lines.append(
            f"  problems   {result.mismatched} mismatched, {result.unexpected} "
            f"unexpected, quarantined {dict(result.quarantined) or 'none'}"
        )
    stored = result.stored
    if stored is not None:
        lines += [
            "",
            f"One message as the broker stored it (message_id {stored.message_id}):",
            f"  body            {len(stored.body):,} bytes of ciphertext: "
            f"{stored.body[:_BODY_PREFIX_BYTES].hex()}…",
        ]
        for name, value in sorted(stored.headers.items()):
            if name == wire_v2.HEADER and type(value) is bytes:
                lines += _x_emq_lines(value)
            elif name.startswith("x-emq-"):
                lines.append(f"  {name:<15} {_short(str(value))}")
    read = result.read
    if read is not None:
        lines += [
            "and as the consumer read it:",
            f"  body            {_short(read.body.decode('utf-8', 'replace'))}",
            f"  content_type    {read.content_type}",
            f"  context         {json.dumps(dict(read.context), sort_keys=True)}",
        ]
    return "\n".join(lines)
