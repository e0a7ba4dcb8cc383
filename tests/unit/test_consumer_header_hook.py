"""consumer/header_frames.py: the private pika hook is checked, and its fallback."""

from __future__ import annotations

import logging

import pika
import pytest
from envelope_mq.consumer import header_frames
from envelope_mq.consumer.header_frames import (
    SafeHeaderConnection,
    connection_class,
    hook_usable,
)


def test_the_installed_pika_has_the_hook() -> None:
    # If a pika release changes it, consumers still work on pika's decoding
    # (and warn), but hostile content headers drop the connection again.
    assert hook_usable()
    assert connection_class() is SafeHeaderConnection


def test_the_fallback_is_pikas_own_and_warns_once_naming_the_version(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh once-only record (module state, not the component's behaviour).
    monkeypatch.setattr(header_frames, "_warned", set())
    caplog.set_level(logging.WARNING, "envelope_mq.consumer.header_frames")
    assert connection_class(False) is pika.SelectConnection
    assert connection_class(False) is pika.SelectConnection
    told = [
        r
        for r in caplog.records
        if r.__dict__.get("event") == "header_decoder_fallback"
    ]
    assert len(told) == 1
    assert told[0].levelno == logging.WARNING
    assert pika.__version__ in told[0].getMessage()
    assert "not defended" in told[0].getMessage()
