"""What the observability tests share: the dashboard and rule files, their PromQL, promtool and a
real Prometheus server in a subprocess, and a server that has seen every kind of traffic.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.server import free_port
from tests.server import ROOT, ServerProcess

FILES = ROOT / "helm" / "tensorgate" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
RULES = FILES / "prometheus-rules.yaml"
RULES_TEST = Path(__file__).resolve().parent / "rules_test.yaml"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = "promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
NO_PROMETHEUS = "prometheus is not installed (Debian: apt-get install prometheus; .ci/run installs it)"

#: The batching model of the tests' server: 5 ms of work per batch of up to 16 rows, so concurrent
#: clients share batches; and a model whose every request fails inside the runtime.
BATCHING_MODEL = "delay"
MAX_BATCH_SIZE = 16
FAILING_MODEL = "failing"

#: Seconds any one HTTP call of these tests may take; latencies Prometheus reports must stay below it.
REQUEST_TIMEOUT = 30.0


# --- the dashboard and the rules ------------------------------------------------------------------

def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return rules


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows and the panels folded into them, rows left out)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with template variables) of every panel query."""
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel["targets"]]


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def variable_selectors(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, the series selector inside its ``label_values(selector, label)`` query)."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        assert match and match["selector"], f"variable {variable['name']}: not label_values(selector, label)"
        found.append((variable["name"], match["selector"]))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's template variables ($name and ${name}) by values, as Grafana does."""
    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{(?P<braced>\w+)\}|\$(?P<plain>\w+)", replace, expr)


# --- PromQL lexing: the metric names an expression reads ------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects. Strings, label matchers, ranges and grouping
    clauses are removed first; what remains is functions (followed by a parenthesis), keywords,
    numbers and metric names."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


# --- promtool --------------------------------------------------------------------------------------

def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --- a live server and its /metrics ---------------------------------------------------------------

def exported_names(metrics_text: str) -> dict[str, set[str]]:
    """Sample name (``_bucket``, ``_total`` ... included) -> the label names its samples carry."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def infer_body(rows: int = 1, name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * (4 * rows)}]}


@dataclass
class Traffic:
    """Requests sent to a server, counted by model and outcome."""

    server: ServerProcess
    sent: dict[tuple[str, str], int] = field(default_factory=dict)

    def _count(self, model: str, outcome: str, n: int = 1) -> None:
        self.sent[(model, outcome)] = self.sent.get((model, outcome), 0) + n

    def successes(self, model: str, clients: int, per_client: int) -> None:
        """``clients`` closed-loop REST clients send ``per_client`` requests each; all must succeed."""
        url = f"{self.server.http_url}/v2/models/{model}/infer"

        def client(_: int) -> None:
            with httpx.Client(timeout=REQUEST_TIMEOUT) as http:
                for _ in range(per_client):
                    reply = http.post(url, json=infer_body())
                    assert reply.status_code == 200, reply.text

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        self._count(model, "success", clients * per_client)

    def errors(self, model: str, failing_model: str) -> None:
        """A bad request (400) to ``model``, and a request that fails inside ``failing_model`` (500)."""
        with httpx.Client(timeout=REQUEST_TIMEOUT) as http:
            reply = http.post(f"{self.server.http_url}/v2/models/{model}/infer", json=infer_body(name="nope"))
            assert reply.status_code == 400, reply.text
            self._count(model, "client_error")
            reply = http.post(f"{self.server.http_url}/v2/models/{failing_model}/infer",
                              json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
            assert reply.status_code == 500, reply.text
            self._count(failing_model, "server_error")

    def restart_worker(self, models: list[str]) -> None:
        """kill -9 the (idle) runtime worker and wait until it is back with its models ready."""
        [pid] = self.server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while self.server.worker_pids() in ([], [pid]):
            assert time.monotonic() < deadline, f"the worker did not come back:\n{self.server.log()}"
            time.sleep(0.05)
        for model in models:
            self.server.wait_until_ready(model)


# --- a real Prometheus ----------------------------------------------------------------------------

@dataclass
class Prometheus:
    """``prometheus`` in a subprocess: its own TSDB in ``workdir``, a free loopback port, scraping
    ``targets`` every second and evaluating ``rule_files`` every second."""

    workdir: Path
    targets: list[str]
    rule_files: list[Path]
    job: str = "tensorgate"
    port: int = field(default_factory=free_port)
    scrape_interval: str = "1s"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        assert PROMETHEUS is not None
        config = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        command = [PROMETHEUS, f"--config.file={self.workdir / 'prometheus.yml'}",
                   f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                   "--storage.tsdb.retention.time=1d", "--log.level=warn"]
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=REQUEST_TIMEOUT)
        body = reply.json()
        assert reply.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The value of a query that must return exactly one series."""
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Query until ``expr`` returns a non-empty vector (e.g. ``x > 3`` once x has grown past 3)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr!r} stayed empty for {timeout} s:\n{self.log()}")
            time.sleep(0.2)


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
