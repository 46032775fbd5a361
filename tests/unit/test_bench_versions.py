"""bench/versions.py: the saturation step and the service's own share of a bench.json."""

import json

from bench.versions import report, saturation


def bench(throughputs, service_ms, model_ms=2.0):
    ramp = [{"throughput_img_s": t, "cpu_ms_per_img": {"inference-consumer": 0.3, "db-consumer": 0.2,
                                                      "inference": s, "kafka": 0.25}}
            for t, s in zip(throughputs, service_ms)]
    return {"pipeline": {"ramp": ramp}, "limit": {"best_batch": 32, "per_batch": {"32": {"core_ms_per_img": model_ms}}}}


def test_saturation_is_the_step_storing_most_and_the_service_own_share_leaves_the_model_out():
    r = saturation(bench([100.0, 300.0, 250.0], [5.0, 2.6, 3.0]))
    assert r["stored_img_s"] == 300.0 and r["inference"] == 2.6
    assert abs(r["service_own"] - 0.6) < 1e-9


def test_report_reads_each_run_folder_and_skips_links(tmp_path, capsys):
    for name, service in (("base-1", 2.5), ("new-1", 2.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench.json").write_text(json.dumps(bench([200.0], [service])))
    (tmp_path / "latest").symlink_to(tmp_path / "new-1")
    rows = report(tmp_path)
    assert [n for n, _ in rows] == ["base-1", "new-1"]
    assert "| new-1 | 200.0 |" in capsys.readouterr().out
