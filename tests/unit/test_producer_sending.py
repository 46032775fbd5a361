"""The producer's bound on unacknowledged images (producer/buffer.py)."""

from __future__ import annotations

import threading

from producer.buffer import SendBuffer


def test_an_image_that_finds_no_room_in_time_is_refused_and_takes_nothing():
    buf = SendBuffer(100)
    assert buf.reserve(60, 0) and buf.reserve(40, 0)
    assert not buf.reserve(1, 0.05)
    assert buf.used == 100
    buf.release(60)
    assert buf.reserve(50, 0) and buf.used == 90


def test_a_waiting_image_goes_as_soon_as_an_acknowledgement_frees_room():
    buf = SendBuffer(10)
    assert buf.reserve(10, 0)
    threading.Timer(0.1, buf.release, args=(10,)).start()
    # The hang guard only: it returns when the release comes, whatever the host's speed.
    assert buf.reserve(5, 30)
    assert buf.used == 5


def test_an_image_bigger_than_the_whole_buffer_goes_alone():
    buf = SendBuffer(10)
    assert buf.reserve(25, 0) and not buf.reserve(1, 0)
    buf.release(25)
    assert buf.used == 0 and buf.reserve(1, 0)


def test_releases_from_another_thread_are_counted_once_each():
    buf = SendBuffer(1000)
    for _ in range(100):
        assert buf.reserve(10, 0)
    threads = [threading.Thread(target=buf.release, args=(10,)) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert buf.used == 0
