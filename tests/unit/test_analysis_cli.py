"""``python -m analysis``: run directories in, percentiles / figures / accuracy out."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.cli import main
from common.rundir import write_latencies
from analysis.runs import load_mongo_run, load_run
from stack.ports import free_port as _free_port
from tests.binaries import venv_tool

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
T0 = 1_700_000_000.0


def make_run(run_dir: Path, latencies_ms, *, producers=None, model="resnet50-cifar10",
             labels=None, predictions=None, stages=False, summary=None, interval_s=0.1):
    """A run directory with known latencies; image i is sent at T0 + i * interval_s."""
    rows, stage_rows = [], []
    for i, e2e in enumerate(latencies_ms):
        sent = T0 + i * interval_s
        result = None if e2e is None else sent + e2e / 1000
        rows.append({"image_id": f"img-{run_dir.name}-{i}", "device_id": f"cam-{i % 3}",
                     "producer_id": f"p{i % 2}", "seq": i, "sent_at": sent, "result_at": result,
                     "e2e_ms": e2e, "label": labels[i] if labels else None,
                     "prediction": predictions[i] if predictions else None, "model": model})
        if stages and e2e is not None:
            # 20 % to the consumer, 50 % inference, 10 % publish, 20 % back; stored at 30 %.
            stage_rows.append([rows[-1]["image_id"], sent, sent + 0.2 * e2e / 1000,
                               sent + 0.7 * e2e / 1000, sent + 0.8 * e2e / 1000, result,
                               sent + 0.3 * e2e / 1000])
    write_latencies(run_dir / "latencies.csv", rows)
    if stages:
        with open(run_dir / "stages.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image_id", "sent_at", "received_at", "inferred_at", "published_at",
                             "result_at", "stored_at"])
            writer.writerows(stage_rows)
    if summary is not None or producers is not None:
        data = dict(summary or {})
        if producers is not None:
            data["producers"] = producers
        (run_dir / "summary.json").write_text(json.dumps(data))
    return run_dir


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_png(path: Path, min_px=(500, 400)):
    """A real, non-blank PNG of a sensible size."""
    import matplotlib.image as mpimg

    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 15_000, f"{path} is suspiciously small"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= min_px[0] and h >= min_px[1], (w, h)
    assert img[..., :3].std() > 0.05, f"{path} looks blank"


# ------------------------------------------------------------------ percentiles

def test_known_percentiles_csv_and_markdown(tmp_path, capsys):
    a = make_run(tmp_path / "run-a", [float(v) for v in range(100, 0, -1)])
    b = make_run(tmp_path / "run-b", [float(v) for v in (7, 1, 9, 3, 10, 2, 8, 4, 6, 5)])
    out = tmp_path / "out"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    rows = read_csv(out / "percentiles.csv")
    assert list(rows[0]) == ["run", "trials", "count"] + [
        f"p{p}_{k}" for p in (50, 90, 95, 99) for k in ("ms", "ci_low_ms", "ci_high_ms")] + [
        "max_ms", "throughput_img_s", "throughput_ci_low_img_s", "throughput_ci_high_img_s"]
    ra, rb = rows
    assert ra["run"] == "run-a" and ra["count"] == "100"
    assert [float(ra[k]) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")] == \
        [50, 90, 95, 99, 100]
    assert rb["count"] == "10" and float(rb["p95_ms"]) == 10 and float(rb["p50_ms"]) == 5
    # one trial each: intervals around the exact estimates, no throughput interval
    for r in rows:
        assert r["trials"] == "1" and r["throughput_ci_low_img_s"] == ""
        for p in (50, 90, 95, 99):
            assert float(r[f"p{p}_ci_low_ms"]) <= float(r[f"p{p}_ms"]) <= float(r[f"p{p}_ci_high_ms"])
    # No summary.json: throughput = results / (last result_at - first sent_at).
    # run-a: last image sent at 9.9 s with 1 ms latency -> 100 / 9.901
    assert float(ra["throughput_img_s"]) == pytest.approx(100 / 9.901, abs=1e-3)
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| run | trials | count | p50 ms | p90 ms | p95 ms | p99 ms | max ms | images/s |"
    line = next(x for x in table.splitlines() if x.startswith("| run-a |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["run-a", "1", "100"] and cells[7:] == ["100.0", "10.1"]
    assert [c.split(" [")[0] for c in cells[3:7]] == ["50.0", "90.0", "95.0", "99.0"]
    assert "confidence intervals" in table and "p99 only about" in table


def test_throughput_and_label_from_summary(tmp_path):
    run = make_run(tmp_path / "r", [10.0, 20.0], producers=4,
                   summary={"throughput_img_s": 123.5})
    loaded = load_run(run)
    assert loaded.label == "4 producers" and loaded.throughput() == 123.5
    assert load_run(make_run(tmp_path / "one", [5.0], producers=1)).label == "1 producer"
    assert load_run(make_run(tmp_path / "plain", [5.0])).label == "plain"


def test_single_sample_run(tmp_path, capsys):
    run = make_run(tmp_path / "solo", [42.0])
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out)]) == 0
    (row,) = read_csv(out / "percentiles.csv")
    assert row["count"] == "1"
    assert {row[k] for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")} == {"42.0"}
    assert float(row["throughput_img_s"]) == pytest.approx(1 / 0.042, abs=1e-3)
    assert_png(out / "latency_cdf.png")
    err = capsys.readouterr().err
    assert "stages.png skipped" in err and "accuracy.json and confusion.png skipped" in err
    assert not (out / "stages.png").exists() and not (out / "accuracy.json").exists()


def test_lost_images_and_a_run_without_results(tmp_path):
    some = make_run(tmp_path / "some", [10.0, None, 30.0, None])
    none = make_run(tmp_path / "none", [None, None])
    out = tmp_path / "out"
    assert main([str(some), str(none), "--out", str(out)]) == 0
    r_some, r_none = read_csv(out / "percentiles.csv")
    assert r_some["count"] == "2" and float(r_some["p50_ms"]) == 10
    assert r_none["count"] == "0" and r_none["p50_ms"] == "" and r_none["throughput_img_s"] == ""
    assert r_none["p50_ci_low_ms"] == "" and r_none["throughput_ci_low_img_s"] == ""
    assert_png(out / "latency_cdf.png")


# ------------------------------------------------------------------ errors

def test_malformed_latencies_exit_2_names_file_and_line(tmp_path, capsys):
    run = make_run(tmp_path / "bad", [10.0, 20.0, 30.0])
    path = run / "latencies.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("30.0", "thirty")
    path.write_text("\n".join(lines) + "\n")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4:" in err and "thirty" in err and "Traceback" not in err


def test_missing_latencies_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "latencies.csv: no such file" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_malformed_stages_and_summary_exit_2(tmp_path, capsys):
    run = make_run(tmp_path / "r", [10.0, 20.0], stages=True)
    with open(run / "stages.csv", "a") as fh:
        fh.write("img-x,1.0,zzz,,,,\n")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    assert f"{run / 'stages.csv'}:4:" in capsys.readouterr().err
    run2 = make_run(tmp_path / "r2", [10.0])
    (run2 / "summary.json").write_text("{not json")
    assert main([str(run2), "--out", str(tmp_path / "out")]) == 2
    assert "summary.json: invalid JSON" in capsys.readouterr().err


def test_cli_process_exit_code_without_traceback(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "latencies.csv").write_text("image_id,sent_at\nx,1\n")
    proc = subprocess.run([sys.executable, "-m", "analysis", str(run), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert f"{run / 'latencies.csv'}:1: header lacks" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_documents_nearest_rank():
    proc = subprocess.run([sys.executable, "-m", "analysis", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nearest-rank" in proc.stdout
    import analysis.cli

    assert "nearest-rank" in analysis.cli.__doc__


# ------------------------------------------------------------------ stages, end to end

def test_run_with_stages(tmp_path):
    from analysis.runs import STAGES

    run = load_run(make_run(tmp_path / "r", [100.0, 200.0, 300.0, None], stages=True))
    durations = run.stage_durations_ms()
    names = [s for s, _, _ in STAGES]
    assert durations[names[0]] == pytest.approx([20, 40, 60], abs=1e-3)   # sent -> received
    assert durations[names[1]] == pytest.approx([50, 100, 150], abs=1e-3)  # received -> inferred
    assert durations[names[3]] == pytest.approx([20, 40, 60], abs=1e-3)   # published -> result
    assert durations[names[4]] == pytest.approx([30, 60, 90], abs=1e-3)   # sent -> stored
    assert names[5] not in durations                           # no prediction_stored_at


def test_end_to_end_every_file(tmp_path, capsys):
    labels = [CLASSES[i % 10] for i in range(200)]
    runs = []
    for n, base in ((1, 30.0), (2, 45.0), (4, 80.0)):
        lat = [base + (i * 7919 % 200) * base / 200 for i in range(200)]
        # images 0-9, 50-59, 100-109, 150-159 mispredicted as the next class: 80 %
        preds = [CLASSES[(i + 1) % 10] if (i // 10) % 5 == 0 else lab
                 for i, lab in enumerate(labels)]
        runs.append(make_run(tmp_path / f"run-{n}p", lat, producers=n, labels=labels,
                             predictions=preds, stages=True,
                             summary={"throughput_img_s": 10.0 * n, "model": "resnet50-cifar10",
                                      "untrained_model": False}))
    out = tmp_path / "report"
    assert main([str(r) for r in reversed(runs)] + ["--out", str(out), "--log-x"]) == 0
    for name in ("latency_cdf.png", "stages.png", "throughput.png", "confusion.png"):
        assert_png(out / name)
    rows = read_csv(out / "percentiles.csv")
    assert [r["run"] for r in rows] == ["run-1p", "run-2p", "run-4p"]  # producer order
    assert [float(r["throughput_img_s"]) for r in rows] == [10.0, 20.0, 40.0]
    acc = json.loads((out / "accuracy.json").read_text())
    assert acc["meaningful"] is True
    one = acc["runs"]["run-1p"]
    assert one["n"] == 200 and one["overall_accuracy"] == pytest.approx(0.8)
    assert one["classes"] == list(CLASSES)
    assert one["per_class"]["airplane"] == {"n": 20, "correct": 16, "accuracy": 0.8}
    assert sum(map(sum, one["confusion"])) == 200
    assert one["confusion"][0][1] == 4  # airplane mistaken for automobile
    assert acc["all_runs"]["n"] == 600


def test_plot_cdf_api_single_curve(tmp_path):
    from analysis import plot_cdf

    path = plot_cdf([("demo", [float(v) for v in range(1, 301)])], tmp_path / "cdf.png",
                    title="Demo run")
    assert_png(path)
    assert_png(plot_cdf([("a", [1.0]), ("b", [])], tmp_path / "edge.png", log_x=True))


# ------------------------------------------------------------------ accuracy

def test_untrained_model_is_flagged(tmp_path):
    labels = ["cat", "dog", "cat", "ship"]
    run = make_run(tmp_path / "u", [5.0, 6.0, 7.0, None], model="resnet50-untrained",
                   labels=labels, predictions=["cat", "cat", "dog", None])
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out)]) == 0
    acc = json.loads((out / "accuracy.json").read_text())
    assert acc["meaningful"] is False and "NOT meaningful" in acc["note"]
    run_acc = acc["runs"]["u"]
    assert run_acc["meaningful"] is False
    assert run_acc["overall_accuracy"] == 0.25 and run_acc["no_prediction"] == 1
    assert run_acc["classes"] == ["bird", "cat", "dog", "ship"][1:]  # CIFAR order, used only
    assert run_acc["per_class"]["cat"]["accuracy"] == 0.5
    assert_png(out / "confusion.png", min_px=(400, 400))


def test_untrained_flag_from_summary(tmp_path):
    run = make_run(tmp_path / "s", [5.0, 6.0], model="resnet50", labels=["cat", "dog"],
                   predictions=["cat", "dog"], summary={"untrained_model": True})
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out)]) == 0
    acc = json.loads((out / "accuracy.json").read_text())
    assert acc["meaningful"] is False and acc["runs"]["s"]["overall_accuracy"] == 1.0


# ------------------------------------------------------------------ MongoDB

@pytest.fixture
def mongo_uri(tmp_path):
    server = venv_tool("nx-27017")  # the MongoDB wire-protocol server of requirements/stack.txt
    port = _free_port()
    d = tmp_path / "mongo"
    d.mkdir()
    proc = subprocess.Popen([server, "--db", str(d / "m.db"), "-p", str(port),
                             "--log-file", str(d / "nx.log"), "--pid-file", str(d / "nx.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # a hang guard: it listens within a second when idle
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = d / "nx.log"
                    pytest.fail(f"nx-27017 did not start: {log.read_text()[-2000:] if log.exists() else 'no log'}")
                time.sleep(0.1)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _insert_images(uri: str, docs: list[dict]) -> None:
    from pymongo import MongoClient

    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.iot.images.insert_many(docs)
    finally:
        client.close()


def test_from_mongo(tmp_path, mongo_uri, capsys):
    docs = []
    for i in range(1, 101):
        producer = "p1" if i <= 100 else "p2"
        docs.append({"_id": f"m-{i}", "producer_id": producer, "device_id": "cam-0", "seq": i,
                     "sent_at": T0 + i, "stored_at": T0 + i + i / 1000, "label": "cat",
                     "prediction": "cat" if i % 2 else "dog", "model": "resnet50-cifar10",
                     "received_at": T0 + i + 0.2 * i / 1000,
                     "inferred_at": T0 + i + 0.6 * i / 1000, "confidence": 0.9})
    # Another producer with huge latencies that the filter must leave out.
    docs += [{"_id": f"x-{i}", "producer_id": "p2", "sent_at": T0 + i, "stored_at": T0 + i + 9}
             for i in range(5)]
    docs.append({"_id": "unstored", "producer_id": "p1", "sent_at": T0})
    _insert_images(mongo_uri, docs)
    out = tmp_path / "out"
    assert main(["--from-mongo", mongo_uri, "--producer-id", "p1", "--run-name", "live",
                 "--out", str(out)]) == 0
    (row,) = read_csv(out / "percentiles.csv")
    assert row["run"] == "live" and row["count"] == "100"
    assert [float(row[k]) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")] == \
        pytest.approx([50, 90, 95, 99, 100])
    assert "| live | 1 | 100 |" in capsys.readouterr().out
    assert_png(out / "latency_cdf.png")
    assert_png(out / "stages.png")
    acc = json.loads((out / "accuracy.json").read_text())
    assert acc["runs"]["live"]["overall_accuracy"] == 0.5

    # Without the filter, p2's images count too.
    everything = load_mongo_run(mongo_uri)
    assert everything.name == "mongo" and len(everything.latencies_ms) == 105
    assert max(everything.latencies_ms) == pytest.approx(9000)
    assert len(everything.rows) == 106  # the unstored image has no latency


def test_mongo_stages_for_run_dirs(tmp_path, mongo_uri):
    run = make_run(tmp_path / "r", [100.0, 200.0])
    _insert_images(mongo_uri, [{"_id": f"img-r-{i}", "sent_at": T0 + i * 0.1,
                                "received_at": T0 + i * 0.1 + 0.01,
                                "inferred_at": T0 + i * 0.1 + 0.05,
                                "stored_at": T0 + i * 0.1 + 0.03} for i in range(2)])
    out = tmp_path / "out"
    assert main([str(run), "--mongo", mongo_uri, "--out", str(out)]) == 0
    assert_png(out / "stages.png")


def test_from_mongo_unreachable_exit_2(tmp_path, capsys):
    port = _free_port()
    uri = f"mongodb://user:secret@127.0.0.1:{port}/?serverSelectionTimeoutMS=300"
    assert main(["--from-mongo", uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "MongoDB" in err and "secret" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def postgres_dsn():
    """A real PostgreSQL (tests/pg.py) holding the pipeline's table, made by its own sink."""
    from common.store.postgres import PostgresSink
    from tests import pg

    d = pg.reachable_dir("iot-pg-analysis-")
    server = pg.PostgresServer(d)
    try:
        server.start()
        sink = PostgresSink.open(server.settings())
        sink.prepare()
        sink.close()
        yield server.dsn
    finally:
        server.stop()
        pg.remove(d)


def test_from_store_reads_the_store_store_names(tmp_path, postgres_dsn, monkeypatch, capsys):
    """--from-store with STORE=postgres: the pseudo-run comes from iot_image_data, named after
    the store; --stages-from-store fills a run directory's stages from it; --from-mongo (MongoDB
    at a URI, whatever STORE says) is refused beside it."""
    from tests import pg

    with pg.connect(postgres_dsn) as conn:
        for i in range(1, 51):
            conn.execute("INSERT INTO iot_image_data (image_id, producer_id, device_id, seq, sent_at, received_at, "
                         "stored_at, label, prediction) VALUES (%s, %s, 'cam-0', %s, %s, %s, %s, 'cat', 'cat')",
                         (f"img-r-{i - 1}" if i <= 2 else f"pg-{i}", "p1" if i <= 40 else "p2", i, T0 + i,
                          T0 + i + 0.001, T0 + i + i / 1000))
    monkeypatch.setenv("STORE", "postgres")
    monkeypatch.setenv("POSTGRES_DSN", postgres_dsn)
    out = tmp_path / "out"
    assert main(["--from-store", "--producer-id", "p1", "--out", str(out)]) == 0
    (row,) = read_csv(out / "percentiles.csv")
    assert row["run"] == "postgresql" and row["count"] == "40"
    assert float(row["max_ms"]) == pytest.approx(40)
    assert "| postgresql | 1 | 40 |" in capsys.readouterr().out

    run = make_run(tmp_path / "r", [100.0, 200.0])
    assert main([str(run), "--stages-from-store", "--out", str(tmp_path / "out2")]) == 0
    assert "PostgreSQL stage data for 2 image(s)" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["--from-store", "--from-mongo", "mongodb://127.0.0.1:1", "--out", str(tmp_path / "x")])
    assert "--from-store and --from-mongo: one of them" in capsys.readouterr().err


def test_from_store_unreachable_or_empty_exit_2(tmp_path, postgres_dsn, monkeypatch, capsys):
    monkeypatch.setenv("STORE", "postgres")
    monkeypatch.setenv("POSTGRES_DSN", f"postgresql://iot:secret@127.0.0.1:{_free_port()}/iot")
    assert main(["--from-store", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL" in err and "secret" not in err and "Traceback" not in err
    monkeypatch.setenv("POSTGRES_DSN", postgres_dsn)
    assert main(["--from-store", "--producer-id", "nobody", "--out", str(tmp_path / "out")]) == 2
    assert "no images with sent_at for producer(s) nobody" in capsys.readouterr().err
def test_every_accuracy_names_its_model_and_where_its_weights_come_from():
    """pretrained (published), trained here (a weights file), random (untrained): with the
    accuracy in the demo's table, summary.json and accuracy.json."""
    from analysis.report import weights_of
    from analysis.summary import format_table

    assert weights_of("cifar10_resnet20-pretrained-32") == "pretrained"
    assert weights_of("resnet50-imagenet-224") == "pretrained"
    assert weights_of("resnet50-untrained-32") == weights_of("cifar10_resnet56-untrained-32") == "random"
    assert weights_of("cifar10_resnet20-1a2b3c4d-32") == weights_of("resnet50-cifar10-1a2b3c4d-32") == "trained here"
    assert weights_of("resnet50-untrained-32,resnet50-imagenet-224") == "random, pretrained"
    assert weights_of(None) is None
    summary = {"sent": 2, "results": 2, "stored": 2, "stored_with_prediction": 2, "lost": 0,
               "model": "cifar10_resnet20-pretrained-32", "weights": "pretrained", "accuracy": 0.5,
               "throughput_img_s": None, "e2e_ms": {}}
    assert "50.0% (cifar10_resnet20-pretrained-32, weights pretrained)" in format_table(summary)
