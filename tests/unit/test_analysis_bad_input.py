"""Bad input to python -m analysis: an experiment or a run directory with missing files,
truncated CSVs, mixed configurations or a trial with no image is refused with exit status 2
and a message naming the file (and line), and no figure is drawn from it."""

from __future__ import annotations

import json
import shutil

import pytest

from analysis.cli import main
from common.rundir import RunDir
from tests.support import write_experiment


def cut_last_line(path):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")


def cut_mid_line(path):
    path.write_text(path.read_text()[:-25])


def set_rate(path):
    run = RunDir(path.parent)
    run.write_summary({**run.summary(), "rate": 55.0})


def no_results(path):
    text = path.read_text().splitlines()
    header, rows = text[0].split(","), [r.split(",") for r in text[1:]]
    for r in rows:
        r[header.index("result_at")] = r[header.index("e2e_ms")] = ""
    path.write_text("\n".join([text[0]] + [",".join(r) for r in rows]) + "\n")


CASES = {
    "a trial without its latencies.csv": ("2-producers/trial-2/latencies.csv", lambda p: p.unlink(),
                                          "2-producers/trial-2/latencies.csv: no such file"),
    "a trial directory gone": ("2-producers/trial-3", shutil.rmtree, "2-producers/trial-3: no such trial directory"),
    "a pooled CSV cut at a line": ("2-producers/latencies.csv", cut_last_line,
                                   "2-producers/latencies.csv:30: 9 row(s) of trial 3, but"),
    "a pooled CSV cut mid-line": ("2-producers/latencies.csv", cut_mid_line,
                                  "2-producers/latencies.csv:31: expected 10 fields"),
    "a trial's CSV cut at a line": ("1-producer/trial-1/latencies.csv", cut_last_line,
                                    "1-producer/trial-1/latencies.csv:9: 8 row(s), but"),
    "mixed configurations": ("2-producers/trial-3/summary.json", set_rate, "rate 55.0, but trial 1 has 10.0"),
    "a trial with no image": ("1-producer/trial-2/latencies.csv", lambda p: p.write_text(p.read_text().splitlines()[0]),
                              "1-producer/trial-2/latencies.csv"),
    "a trial with no result": ("1-producer/trial-2/latencies.csv", no_results, "trial 2 has no end-to-end latency"),
    "a broken trials.json": ("2-producers/trials.json", lambda p: p.write_text("{"), "trials.json: invalid JSON"),
    "a broken experiment.json": ("experiment.json", lambda p: p.write_text("[]"), "experiment.json: expected an object"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_naming_the_file(tmp_path, capsys, case):
    where, damage, words = CASES[case]
    exp = write_experiment(tmp_path / "exp", {1: [[float(10 + i) for i in range(9)]] * 3,
                                              2: [[float(20 + i) for i in range(10)]] * 3})
    if case == "a trial with no image":
        # the trial's summary must agree (else the cut shows as truncation first): 0 sent
        run = RunDir(exp / "1-producer" / "trial-2")
        run.write_summary({**run.summary(), "sent": 0})
    if case == "a trial with no result":
        (exp / "1-producer" / "latencies.csv").write_text("")  # rewritten from the trials below
    damage(exp / where)
    if case == "a trial with no result":
        from common.trials import Pool

        Pool(exp / "1-producer").write(json.loads((exp / "1-producer" / "trials.json").read_text())["trials"])
    out = tmp_path / "report"
    assert main([str(exp), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and str(exp) in err and "Traceback" not in err, err
    assert not (out / "latency_cdf.png").exists() and not (out / "report.html").exists()
