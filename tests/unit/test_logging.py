"""Structured logging: stable JSON keys, whitelisted fields, nothing secret."""

from __future__ import annotations

import argparse
import enum
import io
import json
import logging
from collections.abc import Iterator

import pytest
from envelope_mq.shared import thirdparty_logs
from envelope_mq.shared.observability import (
    LOG_FIELDS,
    JsonFormatter,
    RedactBytesFilter,
    add_observability_arguments,
    configure_logging,
    logging_configured,
)

FIXED_KEYS = ["ts", "level", "logger", "event", "message"]
SECRET = b"\x13\x37" * 16  # stands in for a data key or a plaintext


class Reason(enum.StrEnum):
    UNDECRYPTABLE = "undecryptable"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Root logging to a buffer through configure_logging, restored afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_factory = logging.getLogRecordFactory()
    saved_policy = thirdparty_logs.policy()
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    thirdparty_logs.set_policy(saved_policy)
    logging.setLogRecordFactory(saved_factory)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_line_carries_the_stable_keys_in_order(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    logging.getLogger("envelope_mq.consumer.worker").warning(
        "quarantining message %s from %r: %s",
        "m-1",
        "orders",
        Reason.UNDECRYPTABLE,
        extra={
            "event": "message_quarantined",
            "queue": "orders",
            "message_id": "m-1",
            "reason": Reason.UNDECRYPTABLE,
        },
    )
    [line] = lines(stream)
    assert list(line)[:5] == FIXED_KEYS
    assert line["level"] == "warning"
    assert line["logger"] == "envelope_mq.consumer.worker"
    assert line["event"] == "message_quarantined"
    assert line["message"] == "quarantining message m-1 from 'orders': undecryptable"
    assert line["queue"] == "orders"
    assert line["message_id"] == "m-1"
    assert line["reason"] == "undecryptable"
    assert isinstance(line["ts"], str)
    assert line["ts"].endswith("Z")


def test_event_defaults_to_the_message_template(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    log = logging.getLogger("envelope_mq.producer.transport")
    log.info("reconnected; re-publishing %d message(s)", 3)
    log.info("reconnected; re-publishing %d message(s)", 7)
    first, second = lines(stream)
    assert (
        first["event"]
        == second["event"]
        == ("reconnected; re-publishing %d message(s)")
    )
    assert first["message"] != second["message"]


def test_fields_outside_the_whitelist_are_dropped(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    logging.getLogger("app").info(
        "sealed", extra={"plaintext": "attack at dawn", "data_key": "k", "count": 2}
    )
    [line] = lines(stream)
    assert "plaintext" not in line
    assert "data_key" not in line
    assert "attack at dawn" not in json.dumps(line)
    assert line["count"] == 2


def test_non_scalar_field_values_are_written_as_their_type(
    stream: io.StringIO,
) -> None:
    configure_logging("json", "info", stream=stream)
    logging.getLogger("app").info("x", extra={"queue": SECRET, "reason": ["a"]})
    [line] = lines(stream)
    assert line["queue"] == "<bytes>"
    assert line["reason"] == "<list>"


def test_bytes_arguments_are_redacted_in_json_and_text(stream: io.StringIO) -> None:
    for log_format in ("json", "text"):
        configure_logging(log_format, "info", stream=stream)
        logging.getLogger("app").info("key %s body %r", SECRET, bytearray(SECRET))
        logging.getLogger("app").info(SECRET)
    text = stream.getvalue()
    assert SECRET.hex() not in text
    assert repr(SECRET) not in text
    assert "\\x13" not in text
    # json: event and message of the second record, two in the first's message;
    # text: two, then one
    assert text.count("<32 bytes>") == 7


def test_other_handlers_see_redacted_records_too(
    stream: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging("text", "info", stream=stream)
    logging.getLogger("app").info("key %s", SECRET)
    assert caplog.messages == ["key <32 bytes>"]


def test_redaction_covers_mapping_arguments() -> None:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "%(k)s", None, None)
    record.args = {"k": SECRET}
    assert RedactBytesFilter().filter(record)
    assert record.getMessage() == "<32 bytes>"


def test_formatter_redacts_even_without_the_handler_filter() -> None:
    record = logging.LogRecord(
        "app", logging.INFO, __file__, 1, "key %s", (SECRET,), None
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "key <32 bytes>"


def test_exception_text_is_never_written_only_type_and_frames(
    stream: io.StringIO,
) -> None:
    configure_logging("json", "debug", stream=stream)
    try:
        raise ValueError("the plaintext was: attack at dawn")
    except ValueError:
        logging.getLogger("app").exception("handler failed")
    [line] = lines(stream)
    assert "attack at dawn" not in json.dumps(line)
    assert line["error_type"] == "ValueError"
    stack = line["stack"]
    assert isinstance(stack, list)
    assert any("test_logging.py" in frame for frame in stack)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_below_debug_a_logged_exception_is_its_type_without_a_traceback(
    stream: io.StringIO, log_format: str
) -> None:
    configure_logging(log_format, "info", stream=stream)
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError:
        logging.getLogger("app").exception("could not connect")
    [line] = stream.getvalue().splitlines()
    assert "Traceback" not in line
    assert "ConnectionRefusedError" in line
    if log_format == "json":
        assert "stack" not in json.loads(line)


def test_every_documented_field_is_written(stream: io.StringIO) -> None:
    configure_logging("json", "debug", stream=stream)
    extra = {field: f"v-{field}" for field in LOG_FIELDS}
    logging.getLogger("app").debug("all", extra=extra)
    [line] = lines(stream)
    for field in LOG_FIELDS:
        assert line[field] == f"v-{field}"


def test_level_filters_and_reconfiguring_replaces_the_handler(
    stream: io.StringIO,
) -> None:
    configure_logging("json", "warning", stream=stream)
    configure_logging("json", "warning", stream=stream)
    log = logging.getLogger("app")
    log.info("hidden")
    log.warning("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


@pytest.mark.parametrize(
    "name",
    ["pika", "pika.adapters.blocking_connection", "aliyunsdkcore", "credentials"],
)
def test_third_party_loggers_speak_only_at_critical_unless_debugging(
    stream: io.StringIO, name: str
) -> None:
    configure_logging("text", "info", stream=stream)
    assert logging.getLogger(name).getEffectiveLevel() == logging.CRITICAL
    logging.getLogger(name).error("Socket failed to connect")
    assert stream.getvalue() == ""
    configure_logging("text", "debug", stream=stream)
    assert logging.getLogger(name).getEffectiveLevel() == logging.DEBUG


def test_an_sdks_own_stream_handler_is_routed_through_ours(
    stream: io.StringIO,
) -> None:
    private = io.StringIO()
    sdk = logging.getLogger("credentials")
    sdk.setLevel(logging.DEBUG)  # as alibabacloud-credentials does when imported
    sdk.addHandler(logging.StreamHandler(private))
    configure_logging("json", "debug", stream=stream)
    sdk.debug("a refresh")
    assert private.getvalue() == ""
    [line] = lines(stream)
    assert line["logger"] == "credentials"


@pytest.mark.parametrize(
    "name",
    [
        "aliyunsdkcore.client",
        "aliyunsdkcore.http.http_response",
        "aliyunsdkcore.vendored.requests.packages.urllib3.connectionpool",
        "alibabacloud-tea",
        "darabonba-core",
    ],
)
def test_no_record_of_a_kms_sdk_reaches_a_handler_whatever_its_level(
    stream: io.StringIO, name: str
) -> None:
    import envelope_mq.shared.kms  # noqa: F401  (imports every KMS SDK we use)

    configure_logging("json", "debug", stream=stream)
    sdk = logging.getLogger(name)
    # What an application's setLevel and dictConfig (which re-enables every
    # logger it does not name) would do.
    saved = sdk.level, sdk.disabled
    sdk.setLevel(logging.DEBUG)
    sdk.disabled = False
    try:
        sdk.debug("> POST /?Action=Encrypt&Plaintext=%s", "ZGF0YSBrZXk=")
        sdk.error("Response-body: %s", b'{"Plaintext": "ZGF0YSBrZXk="}')
    finally:
        sdk.setLevel(saved[0])
        sdk.disabled = saved[1]
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    "name",
    [
        "urllib3.connectionpool",
        "urllib3.util.retry",
        "urllib3.poolmanager",
        "credentials",
    ],
)
def test_records_that_quote_urls_lose_their_query_strings(
    stream: io.StringIO, name: str
) -> None:
    import envelope_mq.shared.kms  # noqa: F401

    configure_logging("json", "debug", stream=stream)
    logging.getLogger(name).debug(
        "Incremented Retry for (url='%s')", "/?Action=Encrypt&Plaintext=ZGF0YSBrZXk="
    )
    [line] = lines(stream)
    assert line["message"] == "Incremented Retry for (url='/?<query hidden>')"


def test_a_logged_credentials_exception_loses_its_query_too() -> None:
    import envelope_mq.shared.kms  # noqa: F401

    # alibabacloud-credentials logs a failed STS call with log.exception: the
    # exception's text quotes the URL, the OIDC token in its query.
    written = io.StringIO()
    handler = logging.StreamHandler(written)  # the standard format: tracebacks
    sdk = logging.getLogger("credentials")
    sdk.addHandler(handler)
    try:
        try:
            raise ConnectionError("Max retries exceeded with url: /?OIDCToken=tok-1")
        except ConnectionError as exc:
            sdk.error(exc, exc_info=True)
    finally:
        sdk.removeHandler(handler)
    assert "tok-1" not in written.getvalue()
    assert "ConnectionError: Max retries exceeded with url: /?<query hidden>" in (
        written.getvalue()
    )


def test_text_format_has_time_level_and_logger(stream: io.StringIO) -> None:
    configure_logging("text", "info", stream=stream)
    logging.getLogger("envelope_mq.consumer.worker").info("hello %s", "world")
    [line] = stream.getvalue().splitlines()
    assert line.endswith(" INFO envelope_mq.consumer.worker: hello world")


@pytest.mark.parametrize(
    ("log_format", "level"), [("xml", "info"), ("json", "loud"), ("text", "")]
)
def test_bad_format_or_level_is_refused(
    stream: io.StringIO, log_format: str, level: str
) -> None:
    with pytest.raises(ValueError, match="log"):
        configure_logging(log_format, level, stream=stream)


def test_service_arguments_parse_format_level_and_port() -> None:
    parser = argparse.ArgumentParser()
    add_observability_arguments(parser)
    args = parser.parse_args(
        ["--log-format", "json", "--log-level", "INFO", "--metrics-port", "0"]
    )
    assert (args.log_format, args.log_level, args.metrics_port) == ("json", "info", 0)
    assert args.metrics_host == "127.0.0.1"
    defaults = parser.parse_args([])
    assert (defaults.log_format, defaults.log_level) == ("text", "warning")
    assert defaults.metrics_port is None


@pytest.mark.parametrize(
    "argv",
    [["--log-format", "xml"], ["--log-level", "loud"], ["--metrics-port", "70000"]],
)
def test_service_arguments_refuse_bad_values(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_observability_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)


def test_a_scoped_configuration_is_undone_on_exit(stream: io.StringIO) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogRecordFactory())
    with logging_configured("json", "debug", stream=stream):
        logging.getLogger("app").debug("inside %s", SECRET)
        assert root.level == logging.DEBUG
    logging.getLogger("app").warning("outside")
    after = (list(root.handlers), root.level, logging.getLogRecordFactory())
    assert after == before
    [line] = lines(stream)
    assert line["message"] == "inside <32 bytes>"


# What a publisher may put in a message_id: each of these starts a new line for
# some reader (str.splitlines() breaks on all of them; a terminal obeys ESC).
FORGERIES = [
    "m-1\n2026-01-01 00:00:00,000 WARNING envelope_mq: forged",
    "m-1\r2026-01-01 00:00:00,000 WARNING forged",
    "m-1\x1b[2Kforged",
    "m-1\x0bforged",
    "m-1\x1cforged",
    "m-1\x85forged",
    "m-1\u2028forged",
    "m-1\u2029forged",
]


@pytest.mark.parametrize("message_id", FORGERIES)
def test_a_message_id_cannot_forge_a_text_line(
    stream: io.StringIO, message_id: str
) -> None:
    configure_logging("text", "info", stream=stream)
    logging.getLogger("envelope_mq.consumer.worker").warning(
        "quarantining message %s", message_id
    )
    [line] = stream.getvalue().splitlines()
    assert "forged" in line
    assert not any(c in line for c in "\x1b\x0b\x1c\x85\u2028\u2029\r")


def test_text_escapes_are_readable(stream: io.StringIO) -> None:
    configure_logging("text", "info", stream=stream)
    logging.getLogger("x").warning("id %s", "a\nb\tc\x1bd\u2028e")
    assert stream.getvalue().rstrip("\n").endswith(r"id a\nb\tc\x1bd\u2028e")


@pytest.mark.parametrize("message_id", FORGERIES)
def test_a_message_id_cannot_forge_a_json_line(
    stream: io.StringIO, message_id: str
) -> None:
    configure_logging("json", "info", stream=stream)
    logging.getLogger("envelope_mq.consumer.worker").warning(
        "quarantining message %s",
        message_id,
        extra={"event": "message_quarantined", "message_id": message_id},
    )
    [entry] = lines(stream)
    assert entry["message_id"] == message_id  # escaped, not lost
    assert entry["message"] == f"quarantining message {message_id}"


def test_text_exceptions_are_one_line_with_type_and_frames_not_text(
    stream: io.StringIO,
) -> None:
    configure_logging("text", "debug", stream=stream)  # frames at debug only
    try:
        raise ValueError("secret\nforged line")
    except ValueError:
        logging.getLogger("x").exception("failed")
    [line] = stream.getvalue().splitlines()
    assert "secret" not in line
    assert "[ValueError at " in line
    assert "test_logging.py:" in line


def test_no_sdk_we_import_keeps_a_stream_handler_of_its_own() -> None:
    import envelope_mq.shared.kms  # noqa: F401  (imports every KMS SDK we use)

    manager = logging.Logger.manager
    private = {
        name: logger.handlers
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
        and name.split(".")[0] in thirdparty_logs.THIRD_PARTY_LOGGERS
        and any(type(h) is logging.StreamHandler for h in logger.handlers)
    }
    assert private == {}
