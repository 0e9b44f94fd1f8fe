"""The Grafana dashboard: importable by hand and by Grafana's sidecar, a panel for each thing
issue 5 asks to see, every PromQL expression accepted by Prometheus's own parser (promtool), and
every metric it reads exported by a live server after traffic (or recorded by the rule file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.observability import (
    NO_PROMTOOL,
    PROMTOOL,
    all_rules,
    dashboard_queries,
    exported_names,
    load_dashboard,
    metric_names,
    panels,
    promtool,
    substitute,
    variable_selectors,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Values for Grafana's variables when a query is checked outside Grafana.
PARSE_VALUES = {"datasource": "prometheus", "job": ".*", "model": ".+", "__rate_interval": "1m"}

#: Labels Prometheus adds to every scraped series (the server never exports them).
TARGET_LABELS = {"job", "instance", "namespace", "pod"}

_SELECTOR = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def test_dashboard_has_datasource_job_and_model_variables() -> None:
    dashboard = load_dashboard()
    assert "__inputs" not in dashboard, "the sidecar cannot fill __inputs: use the datasource variable"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "model"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "model"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["definition"] == variable["query"]["query"]
        assert variable["definition"].startswith("label_values(") and variable["definition"].endswith(f", {name})")
        assert variable["includeAll"] and variable["multi"]
    # "All" models means every named model: requests that named no servable model carry model="".
    assert variables["model"]["allValue"] == ".+"


def test_every_panel_queries_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "tensorgate-overview" and dashboard["title"] == "TensorGate"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_tile_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_what_issue_5_asks_for() -> None:
    by_title = {panel["title"]: panel for panel in panels(load_dashboard())}
    for wanted in ("Request rate per model", "Error ratio per model", "Request latency p50 / p95 / p99",
                   "Queue wait vs compute (mean)", "Batch size distribution", "Mean batch size",
                   "Queue depth (busiest server)", "In-flight requests", "Model state", "Workers up",
                   "Worker restarts", "Resident memory per process", "CPU per process"):
        assert wanted in by_title, wanted
    latency = [target["expr"] for target in by_title["Request latency p50 / p95 / p99"]["targets"]]
    assert [re.match(r"histogram_quantile\(([\d.]+),", expr)[1] for expr in latency] == ["0.5", "0.95", "0.99"]  # type: ignore[index]
    assert by_title["Batch size distribution"]["type"] == "heatmap"
    assert by_title["Batch size distribution"]["targets"][0]["format"] == "heatmap"
    phases = " ".join(target["expr"] for target in by_title["Queue wait vs compute (mean)"]["targets"])
    assert "tensorgate_queue_duration_seconds" in phases and "tensorgate_compute_duration_seconds" in phases


def test_dashboard_shows_loads_and_versions_served() -> None:
    """Issue 10: loads by outcome (and unloads), and how many versions of each model serve."""
    by_title = {panel["title"]: panel for panel in panels(load_dashboard())}
    loads = [target["expr"] for target in by_title["Model loads and unloads"]["targets"]]
    assert any("tensorgate_model_loads_total" in expr and "outcome" in expr for expr in loads)
    assert any("tensorgate_model_unloads_total" in expr for expr in loads)
    [versions] = [target["expr"] for target in by_title["Versions served per model"]["targets"]]
    assert 'tensorgate_model_state{' in versions and 'state="READY"' in versions


def _write_as_rules(path: Path, expressions: list[str]) -> None:
    """Each expression as a recording rule: promtool check rules parses every one with Prometheus's parser."""
    rules = [{"record": f"dashboard:query_{i}:check", "expr": expr} for i, expr in enumerate(expressions)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    dashboard = load_dashboard()
    expressions = [substitute(expr, PARSE_VALUES) for _, expr in dashboard_queries(dashboard)]
    expressions += [substitute(selector, PARSE_VALUES) for _, selector in variable_selectors(dashboard)]
    _write_as_rules(tmp_path / "dashboard.yaml", expressions)
    result = promtool("check", "rules", str(tmp_path / "dashboard.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_the_parse_check_rejects_a_broken_query(tmp_path: Path) -> None:
    _write_as_rules(tmp_path / "broken.yaml", ["sum by (model (rate(tensorgate_requests_total[1m]))"])
    result = promtool("check", "rules", str(tmp_path / "broken.yaml"))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def _recorded_labels() -> dict[str, set[str]]:
    """Recorded series name -> the labels it keeps (the level part of level:metric:operation)."""
    return {rule["record"]: set(rule["record"].split(":")[0].split("_")) for rule in all_rules() if "record" in rule}


@pytest.mark.slow
def test_every_metric_and_label_the_dashboard_reads_exists(exercised_metrics: str) -> None:
    """Each metric name in the dashboard is exported by a live server after traffic, or recorded by
    the rule file; each label a selector matches on is one that metric carries."""
    exported = exported_names(exercised_metrics)
    recorded = _recorded_labels()
    labels_of: dict[str, set[str]] = {**exported, **recorded}
    dashboard = load_dashboard()
    queries = dashboard_queries(dashboard) + variable_selectors(dashboard)
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= set(labels_of), f"{title}: {names - set(labels_of)} neither exported nor recorded"
        for name, matchers in _SELECTOR.findall(expr):
            used = set(_MATCHER.findall(matchers)) - TARGET_LABELS
            assert used <= labels_of[name], f"{title}: {name} has no label {used - labels_of[name]}"


def test_dashboard_json_is_the_one_the_chart_ships() -> None:
    """The chart reads files/grafana-dashboard.json with .Files.Get: no second copy to drift."""
    chart = Path(__file__).resolve().parents[2] / "helm" / "tensorgate"
    copies = [path for path in chart.rglob("*.json") if _is_dashboard(path)]
    assert copies == [chart / "files" / "grafana-dashboard.json"]


def _is_dashboard(path: Path) -> bool:
    try:
        text: Any = path.read_text()
    except OSError:
        return False
    return '"panels"' in text and '"templating"' in text
