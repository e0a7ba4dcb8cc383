"""Third-party loggers (pika, the Alibaba SDKs, urllib3) routed through ours.

Some SDKs attach a ``StreamHandler`` of their own when imported (aliyunsdkcore's
HTTP response logger, alibabacloud-credentials' ``credentials``, Tea's
``alibabacloud-tea``, darabonba's ``darabonba-core``), which writes past any
format we configure, and pika logs
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

What the Alibaba SDKs log is the HTTP exchange, and a KMS exchange carries data
keys; what urllib3 logs is URLs, and a KMS URL carries the request parameters.
Neither may reach a handler whatever the levels say (see :func:`guard_sdk_loggers`).
"""

from __future__ import annotations

import logging
import re
import traceback

__all__ = [
    "THIRD_PARTY_LOGGERS",
    "guard_sdk_loggers",
    "route_third_party_loggers",
    "set_policy",
]

THIRD_PARTY_LOGGERS = (
    "pika",
    "aio_pika",
    "aiormq",
    "aliyunsdkcore",
    "credentials",  # alibabacloud-credentials
    "alibabacloud-tea",
    "darabonba-core",
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


# The KMS RPC API sends its parameters in the query string (Encrypt's Plaintext
# is a data key: the copies wrapped for other regions), and GenerateDataKey's
# and Decrypt's answers carry the data key in their body. aliyunsdkcore logs
# every parameter and every response body at DEBUG, the request URL under its
# debug switch (env DEBUG=sdk), and errors that quote the URL at ERROR; its
# vendored urllib3 logs under its name. Tea and darabonba log the request line,
# query included, under DEBUG=sdk. None of it says anything our own records
# do not (each failure once, with its cause), so no record of theirs is kept.
_SDK_LOGGERS = ("aliyunsdkcore", "alibabacloud-tea", "darabonba-core")
# urllib3 (the one requests uses, under the new SDK) logs request lines,
# retries and redirects with their URL; alibabacloud-credentials logs a failed
# refresh with its exception, whose text quotes the STS URL (AssumeRoleWithOIDC
# sends the OIDC token, a bearer credential, in the query). Their warnings
# matter (a background refresh that fails is not ours to see), so only the
# query is cut from their records, traceback included.
_URL_LOGGERS = ("urllib3", "credentials")
_QUERY = re.compile(r"\?[^\s\"']*")


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _DropQueryStrings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "?" in text:
            record.msg, record.args = _cut(text), ()
        if record.exc_info is not None and record.exc_info[1] is not None:
            # The exception goes as its formatted text, cut (a formatter
            # prints exc_text as it is); the object, which quotes the URL
            # whole, goes with exc_info.
            shown = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info, record.exc_text = None, _cut(shown).rstrip("\n")
        return True


def _cut(text: str) -> str:
    return _QUERY.sub("?<query hidden>", text)


_DROP_RECORDS = _DropRecords()
_DROP_QUERY = _DropQueryStrings()


def _family(name: str) -> list[logging.Logger]:
    """The logger ``name`` and every child of it that exists by now."""
    prefix = name + "."
    return [logging.getLogger(name)] + [
        logger
        for key, logger in list(logging.Logger.manager.loggerDict.items())
        if key.startswith(prefix) and isinstance(logger, logging.Logger)
    ]


def guard_sdk_loggers() -> None:
    """Drop the Alibaba SDKs' records and cut urllib3's query strings.

    A filter on each logger (a filter acts only on the records of the logger
    it is on, not on those its children pass up): unlike a level or the
    ``disabled`` flag, which an application's ``setLevel`` or ``dictConfig``
    (it re-enables every logger it does not name) undo, a logger's filters
    stay. Idempotent; called by :func:`route_third_party_loggers` and by each
    KMS client made, for loggers an SDK creates after it was imported.
    """
    for names, guard in ((_SDK_LOGGERS, _DROP_RECORDS), (_URL_LOGGERS, _DROP_QUERY)):
        for name in names:
            for logger in _family(name):
                if guard not in logger.filters:
                    logger.addFilter(guard)


def route_third_party_loggers() -> None:
    """Remove the SDKs' own stream handlers and apply the level policy."""
    for name in THIRD_PARTY_LOGGERS:
        for logger in _family(name):
            for handler in list(logger.handlers):
                # Exactly StreamHandler: the SDKs' own; subclasses (a test's
                # capture, a file handler) belong to someone who chose them.
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
        logging.getLogger(name).setLevel(logging.NOTSET if _policy is None else _policy)
    guard_sdk_loggers()
