"""bench/compare_runs.py: several bench.json side by side in one figure, named by the
choice that differs between them."""

import json

from bench import compare_runs


def _run(tmp_path, name, store, cpu, p50, p99):
    d = tmp_path / name
    d.mkdir()
    step = {"offered_img_s": 100.0, "throughput_img_s": 95.0}
    point = {"offered_img_s": 50.0, "e2e_ms": {"p99": 120.0}}
    d.joinpath("bench.json").write_text(json.dumps({
        "run": name, "store": store, "pipeline_max_img_s": 95.0, "ratio_to_limit": 0.4, "load_average_start": [1.0],
        "store_core_ms_per_img": cpu, "store_write_ms_p50": p50, "store_write_ms_p99": p99,
        "pipeline": {"ramp": [step], "latency": {"50pct": point}}}))
    return d


def test_figure_and_figures_named_by_the_store(tmp_path, capsys):
    runs = [_run(tmp_path, "a", "mongodb", 1.0, 10.0, 50.0), _run(tmp_path, "b", "postgres", 0.2, 5.0, 20.0)]
    out = tmp_path / "cmp.png"
    assert compare_runs.main([*map(str, runs), "--label", "store", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("mongodb") and "postgres" in printed and "0.2 core-ms/img" in printed
    assert out.stat().st_size > 10_000
