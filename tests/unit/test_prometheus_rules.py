"""The Prometheus configuration: rules valid (promtool check rules), rules that do what
they say (promtool test rules, monitoring/prometheus/tests/), and the local stack's
generated scrape configuration valid (promtool check config)."""

from __future__ import annotations

import subprocess

from stack.monitoring import JOBS, RULES_DIR, rule_files, scrape_config
from tests.binaries import required_binary
from tests.support import ROOT

TESTS_DIR = ROOT / "monitoring" / "prometheus" / "tests"


def promtool(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([required_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_rule_files_are_valid():
    files = rule_files()
    assert files, f"no rule files in {RULES_DIR}"
    out = promtool("check", "rules", *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_pass_their_unit_tests():
    tests = sorted(TESTS_DIR.glob("*_test.yml"))
    assert tests
    out = promtool("test", "rules", *[t.name for t in tests], cwd=TESTS_DIR)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test():
    import yaml

    alerts = {r["alert"] for f in rule_files() for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {a["alertname"] for t in TESTS_DIR.glob("*_test.yml")
              for case in yaml.safe_load(t.read_text())["tests"] for a in case.get("alert_rule_test", [])}
    assert alerts and alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_the_local_stacks_scrape_config_is_valid(tmp_path):
    targets = {job: [f"127.0.0.1:{9100 + i}"] for i, job in enumerate(JOBS)}
    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(targets, scrape_interval="1s"))
    out = promtool("check", "config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in out.stdout + out.stderr
