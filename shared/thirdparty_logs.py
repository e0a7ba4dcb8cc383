"""Third-party loggers (pika, the Alibaba SDKs, urllib3) routed through ours.

Some SDKs attach a ``StreamHandler`` of their own when imported (aliyunsdkcore's
HTTP response logger, alibabacloud-credentials' ``credentials``, Tea's
``alibabacloud-tea``), which writes past any format we configure, and pika logs
every failed socket at ERROR with tracebacks: one refused connection made 13
lines. :func:`route_third_party_loggers` takes their private handlers away, so
that their records reach the application's (or our command's) handlers, and
applies the level policy :mod:`~envelope_mq.shared.observability.logs` set: our
code already logs each failure once, with its cause, so below DEBUG these
loggers speak only at CRITICAL.

It is called by ``configure_logging`` and by the modules that import those
libraries (right after importing them), since an SDK adds its handler at import
time, which may come after logging was configured. Standard library only, so
that any module may call it without an import cycle.
"""

from __future__ import annotations

import logging
import re

__all__ = ["THIRD_PARTY_LOGGERS", "route_third_party_loggers", "set_policy"]

THIRD_PARTY_LOGGERS = (
    "pika",
    "aio_pika",
    "aiormq",
    "aliyunsdkcore",
    "credentials",  # alibabacloud-credentials
    "alibabacloud-tea",
    "urllib3",
)

# The level third-party loggers get: None until a command configures logging
# (then the application's own configuration decides: their level is cleared).
_policy: int | None = None


def set_policy(level: int | None) -> None:
    """Set the third-party level (None: inherit), and apply it now."""
    global _policy
    _policy = level
    route_third_party_loggers()


def policy() -> int | None:
    """The level set by :func:`set_policy`."""
    return _policy


# urllib3 logs each request line at DEBUG, query string included; the KMS RPC
# API sends its parameters there, and Encrypt's are a data key (the copies
# wrapped for other regions). The query is cut from every urllib3 record.
_QUERY = re.compile(r"\?[^\s\"']*")


class _DropQueryStrings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "?" in text:
            record.msg, record.args = _QUERY.sub("?<query hidden>", text), ()
        return True


_DROP_QUERY = _DropQueryStrings()


def route_third_party_loggers() -> None:
    """Remove the SDKs' own stream handlers and apply the level policy."""
    manager = logging.Logger.manager
    for name in THIRD_PARTY_LOGGERS:
        prefix = name + "."
        # The named logger and every child that exists by now.
        loggers = [logging.getLogger(name)] + [
            logger
            for key, logger in list(manager.loggerDict.items())
            if key.startswith(prefix) and isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            for handler in list(logger.handlers):
                # Exactly StreamHandler: the SDKs' own; subclasses (a test's
                # capture, a file handler) belong to someone who chose them.
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
        logging.getLogger(name).setLevel(logging.NOTSET if _policy is None else _policy)
    pool = logging.getLogger("urllib3.connectionpool")
    if _DROP_QUERY not in pool.filters:
        pool.addFilter(_DROP_QUERY)
