"""Failed publishes: logged once per cause, counted, reported when nobody looked."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable

import pytest
from envelope_mq.producer.failures import (
    FailureLedger,
    PublishHandle,
    cause_of,
    unseen_failures_error,
)
from envelope_mq.shared.errors import (
    BrokerUnavailableError,
    MessageNackedError,
    MessageUnroutableError,
)

UNROUTABLE = cause_of(MessageUnroutableError("m"), "ex", "rk")


def fail(ledger: FailureLedger, handle: PublishHandle, cause: str) -> None:
    error = MessageUnroutableError("message matched no queue")
    ledger.failed(handle, error, cause)
    handle.set_exception(error)


def test_a_failure_nobody_looked_at_is_reported_once() -> None:
    ledger = FailureLedger()
    fail(ledger, PublishHandle(), UNROUTABLE)
    fail(ledger, PublishHandle(), UNROUTABLE)
    assert ledger.take_unseen() == {UNROUTABLE: 2}
    assert not ledger.take_unseen()
    assert ledger.by_cause == {UNROUTABLE: 2}  # counted still


@pytest.mark.parametrize(
    "look",
    [
        lambda h: h.add_done_callback(lambda _f: None),
        lambda h: h.exception(timeout=0),
    ],
    ids=["callback-before", "exception-before"],
)
def test_a_handle_looked_at_before_it_failed_is_not_reported(
    look: Callable[[PublishHandle], object],
) -> None:
    ledger = FailureLedger()
    handle = PublishHandle()
    handle.set_running_or_notify_cancel()
    with contextlib.suppress(TimeoutError):  # not done yet: looking is what counts
        look(handle)
    fail(ledger, handle, UNROUTABLE)
    assert not ledger.take_unseen()


def test_a_handle_looked_at_after_it_failed_is_not_reported() -> None:
    ledger = FailureLedger()
    handle = PublishHandle()
    fail(ledger, handle, UNROUTABLE)
    with pytest.raises(MessageUnroutableError):
        handle.result(timeout=0)
    assert not ledger.take_unseen()


def test_a_handle_looked_at_after_the_report_does_not_hide_a_new_failure() -> None:
    ledger = FailureLedger()
    early = PublishHandle()
    fail(ledger, early, UNROUTABLE)
    assert ledger.take_unseen() == {UNROUTABLE: 1}
    fail(ledger, PublishHandle(), UNROUTABLE)
    early.exception(timeout=0)  # a late look at the reported one
    assert ledger.take_unseen() == {UNROUTABLE: 1}


def test_each_cause_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    ledger = FailureLedger()
    nacked = cause_of(MessageNackedError("m"), "ex", "rk")
    with caplog.at_level(logging.WARNING):
        for cause in (UNROUTABLE, UNROUTABLE, nacked, UNROUTABLE, nacked):
            fail(ledger, PublishHandle(), cause)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "publish failed: matched no queue",
        "publish failed: nacked by the broker",
    ]
    assert ledger.by_cause == {UNROUTABLE: 3, nacked: 2}


def test_causes_name_where_and_why_but_not_the_message() -> None:
    assert UNROUTABLE == "matched no queue (exchange 'ex', routing key 'rk')"
    gone = BrokerUnavailableError("the publisher closed first")
    assert cause_of(gone, "ex", "rk") == "the publisher closed first"


def test_the_report_counts_every_cause() -> None:
    error = unseen_failures_error(Counter({UNROUTABLE: 3, "nacked by the broker": 1}))
    assert str(error).startswith("4 published message(s) failed")
    assert "3 x matched no queue (exchange 'ex', routing key 'rk')" in str(error)
