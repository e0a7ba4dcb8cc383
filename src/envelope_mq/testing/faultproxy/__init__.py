"""An in-process fault-injecting TCP proxy for tests, in Toxiproxy's vocabulary.

See :mod:`envelope_mq.testing.faultproxy.proxy` for the proxy and
:mod:`envelope_mq.testing.faultproxy.toxics` for the faults it injects.
"""

from __future__ import annotations

from envelope_mq.testing.faultproxy.proxy import FaultProxy, ProxyStats
from envelope_mq.testing.faultproxy.toxics import (
    Bandwidth,
    Hold,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    Stream,
    Timeout,
    Toxic,
)

__all__ = [
    "Bandwidth",
    "FaultProxy",
    "Hold",
    "Latency",
    "LimitData",
    "ProxyStats",
    "ResetPeer",
    "Slicer",
    "Stream",
    "Timeout",
    "Toxic",
]
