"""The producer's run state and progress file (what experiments.fleet reads while a run goes on)."""

import json
from types import SimpleNamespace

from producer.camera import PROGRESS_E2E_SAMPLES, ProducerRun, SentImage, write_progress


def _meta(image_id: str, sent_at: float) -> dict:
    return {"image_id": image_id, "sent_at": sent_at, "device_id": "p-test-cam00", "producer_id": "p-test",
            "seq": 0, "label": None}


def _run_with_results(n: int) -> ProducerRun:
    run = ProducerRun("p-test")
    for i in range(n):
        sent = SentImage(_meta(f"i{i}", 100.0 + i))
        run.sent[f"i{i}"] = sent
        run.got_result(sent, SimpleNamespace(image_id=f"i{i}"), now=100.0 + i + (i % 7) / 1000)
    run.sent["lost"] = SentImage(_meta("lost", 1.0))
    return run


def test_results_are_counted_as_they_arrive():
    run = _run_with_results(5)
    assert run.results == 5
    assert run.counts()["results"] == 5
    assert run.counts()["attempted"] == 6
    assert [r["e2e_ms"] is not None for r in run.latency_rows()].count(True) == 5


def test_progress_keeps_the_latest_times_in_arrival_order(tmp_path):
    n = PROGRESS_E2E_SAMPLES + 300
    run = _run_with_results(n)
    path = tmp_path / "progress.json"
    write_progress(path, run, count=n + 1, done=True)
    p = json.loads(path.read_text())
    assert (p["results"], p["attempted"], p["done"]) == (n, n + 1, True)
    assert len(p["e2e_ms"]) == PROGRESS_E2E_SAMPLES
    # the latest results, not the largest: image i took (i % 7) ms
    assert p["e2e_ms"] == [float(i % 7) for i in range(300, n)]


def _folder(tmp_path, n: int):
    import io

    from PIL import Image

    from common.dataset import load_folder
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(buf, format="PNG")
        (tmp_path / "cat").mkdir(exist_ok=True)
        (tmp_path / "cat" / f"{i}.png").write_bytes(buf.getvalue())
    return load_folder(str(tmp_path))


def test_a_folder_file_replaced_or_removed_after_loading_is_skipped(tmp_path, caplog):
    from producer.camera import _messages

    ds = _folder(tmp_path, 4)
    ds.files[1].write_bytes(b"not an image any more")
    ds.files[2].unlink()
    out = list(_messages(ds, "p-folder", count=5, devices=2))
    assert [m["seq"] for m, _img in out] == [0, 1, 2, 3, 4]  # count images still, seq unbroken
    assert all(img.startswith(b"\x89PNG") for _m, img in out)
    assert {m["label"] for m, _img in out} == {"cat"}
    assert "skipping image" in caplog.text and "1.png" in caplog.text and "2.png" in caplog.text


def test_a_folder_with_no_sendable_file_left_stops_the_run_clearly(tmp_path):
    import pytest

    from common.dataset import DatasetUnavailable
    from producer.camera import _messages

    ds = _folder(tmp_path, 2)
    for f in ds.files:
        f.unlink()
    with pytest.raises(DatasetUnavailable, match="no image of .* can be sent any more"):
        list(_messages(ds, "p-folder", count=3, devices=1))


def test_ahead_of_schedule_the_producer_flushes_and_says_whether_the_broker_acknowledged():
    from kafka.errors import KafkaTimeoutError, UnknownError

    from producer.sending import flush_before_sleep

    class Producer:
        def __init__(self, error=None):
            self.error, self.timeouts = error, []

        def flush(self, timeout=None):
            self.timeouts.append(timeout)
            if self.error is not None:
                raise self.error

    quick, silent, odd = Producer(), Producer(KafkaTimeoutError("Timeout waiting for future")), \
        Producer(UnknownError("Future not done"))
    assert flush_before_sleep(quick, 0.04) is True
    assert flush_before_sleep(silent, 0.05) is False  # the records stay queued; the run goes on
    assert flush_before_sleep(odd, 0.05) is False
    assert quick.timeouts == [0.04] and silent.timeouts == [0.05]
