"""A configuration's trials and their pooled view (common/trials.py, analysis.summary.pool): written,
read back trial by trial, and refused, naming the file and line, where a figure would be wrong."""

from __future__ import annotations

import json

import pytest

from common.rundir import RunDir, RunFileError
from common.trials import Pool, complete_rows
from tests.support import write_experiment


def experiment(tmp_path, **trials):
    data = {int(k[1:]): v for k, v in trials.items()} or {1: [[10.0, 20.0, 30.0], [11.0, 21.0]],
                                                          2: [[40.0, 50.0, 60.0, 70.0], [41.0, 51.0]]}
    return write_experiment(tmp_path / "exp", data)


def test_the_pool_holds_every_trial_and_tells_them_apart(tmp_path):
    out = experiment(tmp_path)
    pool = Pool(out / "2-producers")
    assert Pool.holds_trials(pool.path) and not Pool.holds_trials(pool.path / "trial-1")
    got = [(t.number, t.producer_ids, [r.e2e_ms for r in rows]) for t, rows in pool.trial_rows()]
    assert got == [(1, ("2-producers-t1-p1", "2-producers-t1-p2"), [40.0, 50.0, 60.0, 70.0]),
                   (2, ("2-producers-t2-p1", "2-producers-t2-p2"), [41.0, 51.0])]
    summary = pool.run.summary()
    assert summary["sent"] == 6 and summary["lost"] == 0 and summary["trials"] == 2
    assert summary["e2e_ms"]["max"] == 70.0 and summary["producers"] == 2
    # rates: the mean of the trials' (each trial's own span), never one over the pooled span
    rates = summary["per_trial"]["throughput_img_s"]
    assert summary["throughput_img_s"] == pytest.approx(sum(rates) / 2)
    # the interleaved order: 1-producer's trial 1, 2-producers' trial 1, then round 2
    record = json.loads((out / "experiment.json").read_text())
    assert [(r["dir"], r["order"]) for c in record["runs"] for r in c["trials"]] == \
        [("1-producer/trial-1", 1), ("1-producer/trial-2", 3), ("2-producers/trial-1", 2), ("2-producers/trial-2", 4)]


def test_a_listed_trial_without_its_files(tmp_path):
    out = experiment(tmp_path)
    (out / "1-producer" / "trial-2" / "latencies.csv").unlink()
    with pytest.raises(RunFileError, match=r"trial-2/latencies.csv: no such file"):
        Pool(out / "1-producer").trial_rows()
    import shutil

    shutil.rmtree(out / "1-producer" / "trial-2")
    with pytest.raises(RunFileError, match=r"trial-2: no such trial directory \(listed in .*trials.json\)"):
        Pool(out / "1-producer").trial_rows()


def test_a_trial_with_zero_images(tmp_path):
    out = experiment(tmp_path, n1=[[10.0, 20.0], []])
    with pytest.raises(RunFileError, match=r"1-producer/trial-2/latencies.csv: trial 2 has no image"):
        Pool(out / "1-producer").trial_rows()


def test_a_pooled_file_cut_at_a_line_boundary(tmp_path):
    out = experiment(tmp_path)
    path = out / "2-producers" / "latencies.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # the last row gone: still valid CSV
    with pytest.raises(RunFileError) as err:
        Pool(out / "2-producers").trial_rows()
    assert f"{path}:6: 1 row(s) of trial 2, but" in str(err.value) and "truncated" in str(err.value)


def test_a_pooled_file_cut_mid_line(tmp_path):
    out = experiment(tmp_path)
    path = out / "2-producers" / "latencies.csv"
    path.write_text(path.read_text()[:-30])
    with pytest.raises(RunFileError, match=rf"{path}:7: expected 10 fields"):
        Pool(out / "2-producers").trial_rows()


def test_a_trial_file_cut_short_against_its_summary(tmp_path):
    out = experiment(tmp_path)
    run = RunDir(out / "1-producer" / "trial-1")
    lines = run.latencies_csv.read_text().splitlines()
    run.latencies_csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(RunFileError, match=r"trial-1/latencies.csv:3: 2 row\(s\), but .*says 3 image\(s\) were sent"):
        complete_rows(RunDir(run.path))


def test_rows_of_another_configuration_in_the_pool(tmp_path):
    out = experiment(tmp_path)
    mine, other = out / "1-producer" / "latencies.csv", out / "2-producers" / "latencies.csv"
    mine.write_text(mine.read_text() + other.read_text().splitlines()[1] + "\n")
    with pytest.raises(RunFileError, match=rf"{mine}:7: producer 2-producers-t1-p1 is in no trial"):
        Pool(out / "1-producer").trial_rows()


def test_trials_of_different_settings_are_not_pooled(tmp_path):
    out = experiment(tmp_path)
    run = RunDir(out / "2-producers" / "trial-2")
    run.write_summary({**run.summary(), "rate": 99.0})
    with pytest.raises(RunFileError, match=r"trial-2/summary.json: rate 99.0, but trial 1 has 10.0 \(mixed"):
        Pool(out / "2-producers").trial_rows()


def test_a_trial_holding_another_trials_rows(tmp_path):
    out = experiment(tmp_path)
    a, b = out / "1-producer" / "trial-1" / "latencies.csv", out / "1-producer" / "trial-2" / "latencies.csv"
    a.write_text(a.read_text() + b.read_text().splitlines()[1] + "\n")
    RunDir(a.parent).write_summary({**RunDir(a.parent).summary(), "sent": 4})
    with pytest.raises(RunFileError, match=rf"{a}:5: producer 1-producer-t2-p1 is not one of trial 1's"):
        Pool(out / "1-producer").trial_rows()


@pytest.mark.parametrize("text, words", [
    ("{", "invalid JSON"),
    ('{"trials": []}', "non-empty list"),
    ('{"trials": [{"trial": 1, "producer_ids": []}]}', "producer_ids"),
    ('{"trials": [{"trial": 1, "producer_ids": ["a"]}, {"trial": 1, "producer_ids": ["b"]}]}', "not used before"),
])
def test_a_broken_trials_json(tmp_path, text, words):
    out = experiment(tmp_path)
    (out / "1-producer" / "trials.json").write_text(text)
    with pytest.raises(RunFileError, match=words) as err:
        Pool(out / "1-producer").trial_rows()
    assert "1-producer/trials.json" in str(err.value)
