"""The message ledger balances only when every published message is accounted for."""

from __future__ import annotations

import threading

import pytest

from envelope_mq.testing.ledger import LedgerError, MessageLedger, parse_lines


def published(ledger: MessageLedger, count: int) -> list[str]:
    ids = [f"m-{i}" for i in range(count)]
    for mid in ids:
        ledger.published(mid, mid.encode())
    return ids


def test_every_message_handled_once_balances(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = MessageLedger("plain")
    for mid in published(ledger, 5):
        ledger.handled(mid, mid.encode())
    report = ledger.check()
    assert report["published"] == report["handled"] == 5
    assert report["lost"] == report["duplicates"] == 0
    assert parse_lines(capsys.readouterr().out.splitlines()) == [report]


def test_duplicates_are_counted_not_failed() -> None:
    ledger = MessageLedger("dups")
    ids = published(ledger, 3)
    for mid in [*ids, ids[0], ids[0], ids[2]]:
        ledger.handled(mid, mid.encode())
    report = ledger.check()
    assert report["handled"] == 3
    assert report["duplicates"] == 3


def test_a_missing_message_is_lost_and_fails_the_check() -> None:
    ledger = MessageLedger("lossy")
    ids = published(ledger, 3)
    ledger.handled(ids[0], ids[0].encode())
    ledger.quarantined(ids[1], "undecryptable")
    with pytest.raises(LedgerError, match=r"lost=1.*m-2"):
        ledger.check()


def test_a_wrong_payload_is_corruption_not_handling() -> None:
    ledger = MessageLedger("corrupt")
    (mid,) = published(ledger, 1)
    ledger.handled(mid, b"something else")
    report = ledger.report()
    assert report["corrupted"] == 1
    assert report["lost"] == 1
    with pytest.raises(LedgerError, match="corrupted=1"):
        ledger.check()


def test_quarantine_counts_by_reason() -> None:
    ledger = MessageLedger("bad input")
    for i in range(4):
        ledger.published(f"q-{i}", b"x", expect="quarantined")
    ledger.quarantined("q-0", "malformed")
    ledger.quarantined("q-1", "malformed")
    ledger.quarantined("q-2", "undecryptable")
    ledger.quarantined("q-3", "")
    assert ledger.check()["quarantined"] == {
        "(no reason)": 1,
        "malformed": 2,
        "undecryptable": 1,
    }


def test_a_message_in_the_wrong_place_fails_the_check() -> None:
    ledger = MessageLedger("misplaced")
    ledger.published("good", b"g")
    ledger.published("bad", b"b", expect="quarantined")
    ledger.quarantined("good", "kms-rejected")
    ledger.handled("bad", b"b")
    with pytest.raises(LedgerError, match="misplaced=2"):
        ledger.check()


def test_outcomes_of_unpublished_ids_fail_the_check() -> None:
    ledger = MessageLedger("strangers")
    ledger.handled("never-published", b"")
    ledger.quarantined(None, "malformed")
    with pytest.raises(LedgerError, match="unknown"):
        ledger.check()


def test_publishing_an_id_twice_is_refused() -> None:
    ledger = MessageLedger("twice")
    ledger.published("a", b"1")
    with pytest.raises(ValueError, match="twice"):
        ledger.published("a", b"2")


def test_faults_are_reported() -> None:
    ledger = MessageLedger("faults")
    ledger.fault("connection-reset", 3)
    ledger.fault("connection-reset")
    assert ledger.check()["faults"] == {"connection-reset": 4}


def test_wait_settled_wakes_when_another_thread_settles_the_last_id() -> None:
    ledger = MessageLedger("threads")
    ids = published(ledger, 100)

    def consume() -> None:
        for mid in ids:
            ledger.handled(mid, mid.encode())

    worker = threading.Thread(target=consume)
    worker.start()
    assert ledger.wait_settled(timeout=30)
    worker.join()
    assert ledger.settled == 100


def test_wait_settled_gives_up_when_something_is_missing() -> None:
    ledger = MessageLedger("timeout")
    published(ledger, 2)
    assert not ledger.wait_settled(timeout=0.05)
    assert ledger.outstanding() == ["m-0", "m-1"]


def test_the_report_holds_digests_never_payloads() -> None:
    ledger = MessageLedger("secrets")
    ledger.published("s", b"top secret payload")
    ledger.handled("s", b"top secret payload")
    assert "top secret" not in repr(ledger.report())
    assert "top secret" not in repr(ledger.__dict__)
