"""Which batches the embedded broker's retention deletes (stack/broker_retention.py); the
deletion itself runs against s3rver and tansu in tests/integration/test_broker_persistence.py."""

from datetime import datetime, timedelta, timezone

from stack.broker_retention import GROUP_EXPIRY_S, Commit, expired, floors

NOW = datetime(2026, 12, 6, tzinfo=timezone.utc)


def _c(group, topic, partition, offset, age_s=0.0):
    return Commit(group, topic, partition, offset, NOW - timedelta(seconds=age_s))


def test_the_floor_is_the_lowest_offset_of_the_topics_groups():
    commits = [_c("a", "images", 0, 40), _c("b", "images", 0, 25), _c("a", "images", 1, 7), _c("b", "images", 1, 9),
               _c("b", "results", 0, 3)]
    assert floors(commits, NOW) == {("images", 0): 25, ("images", 1): 7, ("results", 0): 3}


def test_a_partition_where_one_of_the_topics_groups_has_not_committed_is_kept_whole():
    commits = [_c("a", "images", 0, 40), _c("a", "images", 1, 7), _c("b", "images", 0, 25)]
    assert floors(commits, NOW) == {("images", 0): 25}


def test_a_group_silent_past_the_expiry_no_longer_holds_the_topic():
    old = GROUP_EXPIRY_S + 1
    commits = [_c("live", "images", 0, 40), _c("gone", "images", 0, 2, age_s=old), _c("gone", "images", 1, 2, age_s=old)]
    assert floors(commits, NOW) == {("images", 0): 40}
    assert floors([_c("gone", "images", 0, 2, age_s=old)], NOW) == {}


def test_only_batches_below_the_floor_and_old_enough_are_expired():
    before = NOW - timedelta(seconds=60)
    batches = [("k0", 0, before - timedelta(seconds=1)), ("k5", 5, before - timedelta(seconds=1)),
               ("k9", 9, before + timedelta(seconds=1)), ("k12", 12, before - timedelta(seconds=5))]
    assert expired(batches, 12, before) == ["k0", "k5"]


def test_the_batch_holding_the_floor_and_the_last_batch_are_kept():
    old = NOW - timedelta(seconds=600)
    before = NOW - timedelta(seconds=60)
    batches = [("k9", 9, old), ("k0", 0, old), ("k5", 5, old), ("k12", 12, old)]
    # A group committed at 11 has not read 11 (in the batch at 9): that batch stays.
    assert expired(batches, 11, before) == ["k0", "k5"]
    assert expired(batches, 12, before) == ["k0", "k5", "k9"]
    assert expired(batches, 99, before) == ["k0", "k5", "k9"]  # where k12 ends is not known
