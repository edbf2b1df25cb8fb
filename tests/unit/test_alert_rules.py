"""The alerting rules (deploy/prometheus/alerts.yml) and where they are wired in.

- ``promtool check rules`` accepts the rules and ``promtool test rules`` passes
  deploy/prometheus/alerts_test.yml, in which every alert fires on synthetic series
  and stays silent on others (and while its ``for`` has not elapsed); ``promtool
  check config`` accepts prometheus.yml; ``amtool check-config`` accepts
  deploy/alertmanager/alertmanager.yml. Without the tools these are skipped with the
  reason (``make test-tools`` installs them as root);
- every alert has a severity, a ``for`` and the annotations an operator reads;
- docker-compose.yml mounts the rules where prometheus.yml loads them from, and
  Prometheus sends alerts to the compose Alertmanager, which reads this config;
- tests/promql.py reads PromQL selectors right (what the scrape test
  tests/integration/test_alert_metrics.py relies on).
"""

from __future__ import annotations

import posixpath
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.promql import ALERTS, Selector, rule_groups, selectors
from tests.unit.test_deploy import services, volume_mounts

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
SEVERITIES = {"critical", "warning"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} missing: run make test-tools")
    return path


def run(*args: str) -> str:
    result = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def flag(command: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"--{name}="))


# ---------------------------------------------------------------------------- tools


def test_promtool_accepts_the_rules() -> None:
    output = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert "SUCCESS" in output


def test_promtool_unit_tests_pass() -> None:
    output = run(tool("promtool"), "test", "rules", str(ALERTS_TEST))
    assert "SUCCESS" in output


def test_promtool_accepts_the_prometheus_config() -> None:
    # Offline the file_sd file (written by the controller at run time) is missing:
    # promtool only warns about that. The rule files are checked with the config.
    output = run(tool("promtool"), "check", "config", str(PROMETHEUS))
    rule_files = yaml.safe_load(PROMETHEUS.read_text())["rule_files"]
    assert f"SUCCESS: {len(rule_files)} rule files found" in output


def test_amtool_accepts_the_alertmanager_config() -> None:
    output = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in output


# ---------------------------------------------------------------------------- rules


def test_every_alert_says_how_bad_since_when_and_what_to_do() -> None:
    names = [a["alert"] for a in alerts()]
    assert names and len(names) == len(set(names))
    for alert in alerts():
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        assert alert.get("for"), f"{alert['alert']} has no `for`"
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), alert


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    """Each alert fires in some promtool test case and is expected silent in some
    other evaluation (besides the series of each firing case that must not fire)."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    names = {a["alert"] for a in alerts()}
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            assert check["alertname"] in names, f"{case['name']}: no such alert"
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert names - fires == set(), "never seen firing"
    assert names - silent == set(), "never expected silent"


# ---------------------------------------------------------------------------- wiring


def test_compose_mounts_the_rules_where_prometheus_loads_them() -> None:
    prometheus = services()["prometheus"]
    config_path = flag(prometheus["command"], "config.file")
    mounts = {target: source for source, target in volume_mounts(prometheus)}
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"], "prometheus.yml loads no rule files"
    for rule_file in config["rule_files"]:
        # Relative paths are read beside the configuration file.
        inside = posixpath.join(posixpath.dirname(config_path), rule_file)
        assert inside in mounts, f"{inside} is not mounted into prometheus"
        assert (ROOT / mounts[inside]).resolve() == ALERTS
        assert (PROMETHEUS_DIR / rule_file).resolve() == ALERTS  # promtool's view


def test_prometheus_alerts_the_compose_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        t
        for manager in config["alerting"]["alertmanagers"]
        for group in manager["static_configs"]
        for t in group["targets"]
    }
    alertmanager = services()["alertmanager"]
    command = alertmanager["command"]
    port = flag(command, "web.listen-address").rsplit(":", 1)[1]
    # Prometheus lives in the controller's network namespace, on the compose network:
    # it reaches Alertmanager by its service name.
    assert targets == {f"alertmanager:{port}"}
    mounts = {target: source for source, target in volume_mounts(alertmanager)}
    source = mounts[flag(command, "config.file")]
    assert (ROOT / source).resolve() == ALERTMANAGER
    assert str(alertmanager["image"]).startswith("prom/alertmanager:v")


# ---------------------------------------------------------------------------- promql


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", [Selector("up")]),
        (
            'sum by (model, le) (rate(x_bucket{a="1",b=~"p|q"}[5m])) / 1e6',
            [Selector("x_bucket", (("a", "=", "1"), ("b", "=~", "p|q")))],
        ),
        (
            "max by (m) (a) > on (m) group_left () max by (m) (b offset 10m)",
            [Selector("a"), Selector("b")],
        ),
        (
            'a{c!="x\\"}y"} unless on(n) count without (x) (b[$__rate_interval])',
            [Selector("a", (("c", "!=", 'x"}y'),)), Selector("b")],
        ),
        ("probe_x - time() < 14 * 86400 and bool nan", [Selector("probe_x")]),
        (
            "histogram_quantile(0.99, sum(rate(h_bucket[1h30m])) by (le))",
            [Selector("h_bucket")],
        ),
    ],
)
def test_promql_selectors(expr: str, expected: list[Selector]) -> None:
    assert selectors(expr) == expected


def test_promql_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="without a metric name"):
        selectors('{__name__="up"}')
