"""The fault suite's judge of runs where the producer counted images as failed
(tests/faults/broker.py check_failed_counted): exact for the small producer buffer, lenient
about failed-but-stored images for the broker's storage faults."""

from tests.faults.broker import check_failed_counted

SENT = {f"i{n}" for n in range(10)}
FAILED = ["i8", "i9"]
COUNTS = {"attempted": 10, "acknowledged": 8, "failed": 2, "failed_images": FAILED}


def _row(**over):
    row = {"images": 10, "results": 8, "lost": 2, "duplicate_documents": 0, "duplicated_documents_checked": 0,
           "half_written_documents": 0, "producer_exit_codes": [1]}
    row.update(over)
    return row


def test_exactly_the_acknowledged_stored_passes_both_ways():
    stored = SENT - set(FAILED)
    assert check_failed_counted(_row(), COUNTS, stored, SENT, exact=True)["ok"]
    assert check_failed_counted(_row(), COUNTS, stored, SENT, exact=False)["ok"]


def test_a_failed_image_stored_all_the_same_is_allowed_only_when_not_exact():
    stored = SENT - {"i9"}
    assert not check_failed_counted(_row(results=9, lost=1), COUNTS, stored, SENT, exact=True)["ok"]
    facts = check_failed_counted(_row(results=9, lost=1), COUNTS, stored, SENT, exact=False)
    assert facts["ok"] and facts["failed_but_stored"] == 1


def test_an_acknowledged_image_missing_fails_and_is_named():
    stored = SENT - set(FAILED) - {"i0"}
    for exact in (True, False):
        facts = check_failed_counted(_row(), COUNTS, stored, SENT, exact=exact)
        assert not facts["ok"] and facts["acknowledged_not_stored"] == ["i0"]


def test_counts_that_do_not_add_up_fail():
    wrong = dict(COUNTS, acknowledged=9)
    assert not check_failed_counted(_row(), wrong, SENT - set(FAILED), SENT, exact=False)["ok"]


def test_exact_needs_the_failure_path_to_have_run():
    none_failed = {"attempted": 10, "acknowledged": 10, "failed": 0, "failed_images": []}
    assert not check_failed_counted(_row(results=10, lost=0), none_failed, SENT, SENT, exact=True)["ok"]
