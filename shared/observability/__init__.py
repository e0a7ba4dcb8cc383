"""Operability: Prometheus metrics, structured logs, liveness and readiness.

Off by default in the library (producer and consumer get :data:`NULL_METRICS`
unless given a :class:`Metrics`); on in the services with ``--metrics-port``.
docs/observability.md lists the metrics, the log keys and the endpoints.
"""

from __future__ import annotations

from envelope_mq.shared.observability.caches import (
    DATA_KEY_CACHE,
    UNWRAP_CACHE,
    CacheCollector,
)
from envelope_mq.shared.observability.health import HealthReport, HealthState
from envelope_mq.shared.observability.kms import InstrumentedKeyProvider
from envelope_mq.shared.observability.logs import (
    LOG_FIELDS,
    JsonFormatter,
    RedactBytesFilter,
    TextFormatter,
    configure_logging,
    logging_configured,
)
from envelope_mq.shared.observability.metrics import (
    NULL_METRICS,
    Metrics,
    MetricsHooks,
    NullMetrics,
)
from envelope_mq.shared.observability.server import ObservabilityServer
from envelope_mq.shared.observability.service import (
    Observability,
    add_observability_arguments,
    observability,
)
from envelope_mq.shared.observability.tally import Tally
from envelope_mq.shared.observability.timing import (
    MessageOpener,
    MessageSealer,
    TimedOpener,
    TimedSealer,
)

__all__ = [
    "DATA_KEY_CACHE",
    "LOG_FIELDS",
    "NULL_METRICS",
    "UNWRAP_CACHE",
    "CacheCollector",
    "HealthReport",
    "HealthState",
    "InstrumentedKeyProvider",
    "JsonFormatter",
    "MessageOpener",
    "MessageSealer",
    "Metrics",
    "MetricsHooks",
    "NullMetrics",
    "Observability",
    "ObservabilityServer",
    "RedactBytesFilter",
    "Tally",
    "TextFormatter",
    "TimedOpener",
    "TimedSealer",
    "add_observability_arguments",
    "configure_logging",
    "logging_configured",
    "observability",
]
