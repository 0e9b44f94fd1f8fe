"""Render the Grafana dashboard's panels from real data: a picture for the README.

Starts ``tensorgate serve`` on a model repository and a real Prometheus (``prometheus`` on PATH,
Debian: ``apt-get install prometheus``) that scrapes it every 5 s and evaluates
helm/tensorgate/files/prometheus-rules.yaml; drives closed-loop REST clients against every model
at a few concurrencies (every 40th request of a client is malformed, and one runtime worker is
killed during the last step, so the error, restart and state panels have something to show);
then runs every query of helm/tensorgate/files/grafana-dashboard.json over Prometheus's
query_range API and draws the panels with matplotlib in the dashboard's own grid layout.

    python scripts/render_dashboard.py --show digits_onnx,digits_torchscript   # ./model_repo, 10 minutes
    python scripts/render_dashboard.py --levels 1,4 --step-seconds 30 --out /tmp/dashboard.png

Needs the ``bench`` extra (matplotlib). Template variables get: job = this run's job, model =
the models of --show (default: all driven), $__rate_interval = 4 scrape intervals (Grafana's rule
for it). --save keeps the fetched data and --redraw draws it again without a new run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.server import BenchServer, free_port
from benchmarks.system import cmdline

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "helm" / "tensorgate" / "files" / "grafana-dashboard.json"
RULES = ROOT / "helm" / "tensorgate" / "files" / "prometheus-rules.yaml"
JOB = "tensorgate"
SCRAPE_SECONDS = 5
#: Every n-th request of a client names a wrong input (400): the error panel's client errors.
BAD_REQUEST_EVERY = 40


def wait_until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} after {timeout} s")


# --- the server and Prometheus ------------------------------------------------------------------

@dataclass
class Prometheus:
    workdir: Path
    target: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise SystemExit("prometheus is not on PATH (Debian: apt-get install prometheus)")
        interval = f"{SCRAPE_SECONDS}s"
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [self.target]}]}]}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        command = [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                   f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                   "--log.level=warn"]
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: httpx.get(f"{self.url}/-/ready").status_code == 200, "prometheus is not ready", 60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query_range", timeout=60,
                          params={"query": expr, "start": str(start), "end": str(end), "step": str(SCRAPE_SECONDS)})
        body = reply.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{expr!r}: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=60).json()
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@contextmanager
def running(server: BenchServer, prometheus: Prometheus) -> Iterator[None]:
    try:
        server.start(timeout=600)  # five frameworks on two busy cores
        prometheus.start()
        yield
    finally:
        prometheus.stop()
        server.stop()


def worker_pid(server: BenchServer, framework: str) -> int:
    """The pid of the server's runtime worker for ``framework``."""
    for pid in server.worker_pids():
        if framework in cmdline(pid).split():
            return pid
    raise LookupError(f"no {framework} worker")


# --- load ---------------------------------------------------------------------------------------

def request_bodies(url: str, model: str) -> tuple[bytes, bytes]:
    """A one-row request of zeros for the model's first input, and one naming a wrong input."""
    metadata = httpx.get(f"{url}/v2/models/{model}").json()
    spec = metadata["inputs"][0]
    shape = [1 if dim == -1 else dim for dim in spec["shape"]]
    count = 1
    for dim in shape:
        count *= dim
    tensor = {"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": [0] * count}
    good = json.dumps({"inputs": [tensor]}).encode()
    bad = json.dumps({"inputs": [{**tensor, "name": "no_such_input"}]}).encode()
    return good, bad


def client(url: str, bodies: tuple[bytes, bytes], stop: threading.Event) -> None:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=60) as http:
        turn = 0
        while not stop.is_set():
            turn += 1
            body = bodies[1] if turn % BAD_REQUEST_EVERY == 0 else bodies[0]
            with suppress(httpx.HTTPError):
                http.post(url, content=body, headers=headers)


def drive(server: BenchServer, models: list[str], levels: list[int], step: float,
          kill: str | None) -> list[tuple[float, str]]:
    """Run each concurrency level for ``step`` seconds; return (time, label) of each event."""
    bodies = {model: request_bodies(server.http_url, model) for model in models}
    events = []
    for index, level in enumerate(levels):
        stop = threading.Event()
        threads = [threading.Thread(target=client, daemon=True,
                                    args=(f"{server.http_url}/v2/models/{model}/infer", bodies[model], stop))
                   for model in models for _ in range(level)]
        events.append((time.time(), f"{level} client{'s' if level > 1 else ''}/model"))
        print(f"{datetime.now():%H:%M:%S} {level} concurrent clients per model for {step:.0f} s", flush=True)
        for thread in threads:
            thread.start()
        if kill and index == len(levels) - 1:
            time.sleep(step / 2)
            os.kill(worker_pid(server, kill), signal.SIGKILL)
            events.append((time.time(), f"{kill} worker killed"))
            print(f"{datetime.now():%H:%M:%S} killed the {kill} worker", flush=True)
            time.sleep(step / 2)
        else:
            time.sleep(step)
        stop.set()
        for thread in threads:
            thread.join()
    events.append((time.time(), "idle"))
    return events


# --- the dashboard's queries --------------------------------------------------------------------

def substitute(expr: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], expr)


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template).strip()


@dataclass
class Series:
    label: str
    times: list[float]
    values: list[float]


def fetch(prometheus: Prometheus, dashboard: dict[str, Any], models: list[str], start: float,
          end: float) -> dict[int, list[list[Series]]]:
    """Panel id -> for each target, its series over [start, end], with ``models`` selected."""
    values = {"job": JOB, "model": "|".join(re.escape(m) for m in models), "__rate_interval": f"{4 * SCRAPE_SECONDS}s"}
    data: dict[int, list[list[Series]]] = {}
    for panel in panels(dashboard):
        data[panel["id"]] = []
        for target in panel["targets"]:
            result = prometheus.query_range(substitute(target["expr"], values), start, end)
            data[panel["id"]].append([
                Series(legend(target.get("legendFormat", ""), item["metric"]),
                       [float(t) for t, _ in item["values"]], [float(v) for _, v in item["values"]])
                for item in sorted(result, key=lambda item: sorted(item["metric"].items()))])
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return found


# --- drawing ------------------------------------------------------------------------------------

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
           "#37872d", "#fade2a", "#c4162a", "#1f60c4", "#ff9830", "#96d98d", "#ca95e5"]


def draw(dashboard: dict[str, Any], data: dict[int, list[list[Series]]], events: list[tuple[float, str]],
         out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    span = events[-1][0] - events[0][0] + 60
    tick = 60 * next((m for m in (1, 2, 5, 10, 15, 30, 60) if span / (60 * m) <= 8), 120)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    figure = plt.figure(figsize=(24 * 0.95, rows * 0.42 + 1.0), facecolor=BACKGROUND)
    grid = GridSpec(rows, 24, figure=figure, left=0.03, right=0.99, top=1 - 0.9 / (rows * 0.42 + 1.0),
                    bottom=0.02, hspace=2.2, wspace=1.6)
    figure.suptitle(title, color=TEXT, fontsize=13, x=0.03, ha="left")
    plt.rcParams.update({"font.size": 8})
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            ax = figure.add_subplot(grid[pos["y"], :])
            ax.set_axis_off()
            ax.text(0, 0.2, panel["title"], color=TEXT, fontsize=11, fontweight="bold", transform=ax.transAxes)
            continue
        ax = figure.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=7)
        ax.set_title(panel["title"], color=TEXT, fontsize=9, loc="left", fontweight="bold")
        if panel["type"] == "heatmap":
            _heatmap(ax, data[panel["id"]][0], figure)
        elif panel["type"] == "state-timeline":
            _state_timeline(ax, panel, data[panel["id"]][0])
        else:
            _timeseries(ax, panel, data[panel["id"]])
        for when, label in events[1:-1]:
            ax.axvline(when, color="#f2495c" if "killed" in label else "#888888", linewidth=0.8, linestyle=":")
        ax.xaxis.set_major_locator(MultipleLocator(tick))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{datetime.fromtimestamp(v):%H:%M}"))
        ax.set_xlim(events[0][0] - 30, events[-1][0] + 30)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90, facecolor=BACKGROUND)
    plt.close(figure)


def _unit_formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter

    def seconds(v: float, _: Any) -> str:
        if v == 0:
            return "0"
        if abs(v) < 1e-3:
            return f"{v * 1e6:.0f} µs"
        return f"{v * 1e3:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"

    formats = {
        "s": seconds,
        "percentunit": lambda v, _: f"{v * 100:.3g}%",
        "bytes": lambda v, _: f"{v:.0f} MiB",  # plotted in MiB
        "reqps": lambda v, _: f"{v:.3g} req/s",
    }
    return FuncFormatter(formats.get(unit, lambda v, _: f"{v:.3g}"))


def _timeseries(ax: Any, panel: dict[str, Any], targets: list[list[Series]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    custom = defaults.get("custom", {})
    unit = defaults.get("unit", "short")
    scale = 2**20 if unit == "bytes" else 1
    dashed = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]
              if o["matcher"]["id"] == "byFrameRefID"
              and any(p["id"] == "custom.lineStyle" and p["value"]["fill"] == "dash" for p in o["properties"])}
    colour = 0
    for target, series_list in zip(panel["targets"], targets, strict=True):
        for series in series_list:
            points = [(t, v / scale) for t, v in zip(series.times, series.values, strict=True) if v == v]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=PALETTE[colour % len(PALETTE)], linewidth=1.1, label=series.label,
                    linestyle="--" if target["refId"] in dashed else "-",
                    drawstyle="steps-post" if custom.get("lineInterpolation") == "stepAfter" else "default")
            colour += 1
    if custom.get("scaleDistribution", {}).get("type") == "log":
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    if custom.get("thresholdsStyle", {}).get("mode") == "dashed":
        for step in defaults["thresholds"]["steps"]:
            if step["value"] is not None:
                ax.axhline(step["value"], color=PALETTE[4] if step["color"] == "red" else PALETTE[3],
                           linestyle="--", linewidth=0.9)
    ax.yaxis.set_major_formatter(_unit_formatter(unit))
    if custom.get("axisLabel"):
        ax.set_ylabel(custom["axisLabel"], color=TEXT, fontsize=7)
    ax.grid(color=GRID, linewidth=0.5)
    if colour:
        ax.legend(loc="upper left", fontsize=6, ncol=3 if colour > 6 else 1, facecolor=PANEL, edgecolor=GRID,
                  labelcolor=TEXT, framealpha=0.8)


def _state_timeline(ax: Any, panel: dict[str, Any], series_list: list[Series]) -> None:
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    colours = {"green": PALETTE[0], "red": PALETTE[4]}
    for row, series in enumerate(series_list):
        for t, v in zip(series.times, series.values, strict=True):
            state = mapping[str(int(v))]
            ax.barh(row, SCRAPE_SECONDS, left=t, height=0.7, color=colours[state["color"]],
                    linewidth=0)
    for row, series in enumerate(series_list):
        if series.times:
            ax.text(series.times[0] + SCRAPE_SECONDS, row, series.label, color=BACKGROUND, fontsize=7, va="center")
    ax.set_yticks([])
    ax.set_ylim(len(series_list) - 0.5, -0.5)


def _heatmap(ax: Any, series_list: list[Series], figure: Any) -> None:
    """Grafana's heatmap format: cumulative `le` series become per-bucket counts."""
    import numpy as np

    by_le = sorted(series_list, key=lambda s: float(s.label.replace("+Inf", "inf")))
    if not by_le:
        return
    times = by_le[0].times
    cumulative = np.array([s.values for s in by_le if len(s.values) == len(times)])
    cumulative = np.nan_to_num(cumulative)
    counts = np.diff(cumulative, axis=0, prepend=0)
    labels = [s.label for s in by_le]
    keep = [i for i in range(len(labels)) if counts[i].max() > 0 or i < 5]
    cells = np.ma.masked_less_equal(counts[keep][:, :-1], 0)
    mesh = ax.pcolormesh(times, np.arange(len(keep) + 1), cells, cmap="viridis", shading="flat")
    ax.set_yticks(np.arange(len(keep)) + 0.5, [labels[i] for i in keep])
    ax.set_ylabel("rows per batch (le)", color=TEXT, fontsize=7)
    bar = figure.colorbar(mesh, ax=ax, pad=0.01)
    bar.ax.tick_params(colors=TEXT, labelsize=6)
    bar.set_label("batches/s", color=TEXT, fontsize=7)


# --- main ---------------------------------------------------------------------------------------

def summary(dashboard: dict[str, Any], data: dict[int, list[list[Series]]],
            events: list[tuple[float, str]]) -> list[str]:
    """Each panel line's value at the end of each step (the figures the README quotes)."""
    wanted = {"Request rate per model": "req/s", "Request latency p50 / p95 / p99": "s", "Mean batch size": "rows",
              "Queue wait vs compute (mean)": "s"}
    lines = []
    steps = [(when, label) for when, label in events if "killed" not in label]
    for (_, label), (end, _) in itertools.pairwise(steps):
        for panel in panels(dashboard):
            if panel["title"] not in wanted:
                continue
            for series in (s for target in data[panel["id"]] for s in target):
                values = [v for t, v in zip(series.times, series.values, strict=True) if t <= end - 1 and v == v]
                if values:
                    lines.append(f"{label:>16}  {series.label:<40} {values[-1]:.4g} {wanted[panel['title']]}")
    return lines


def record(args: argparse.Namespace, dashboard: dict[str, Any]) -> dict[str, Any]:
    """Run the server, Prometheus and the load; return what the picture needs."""
    levels = [int(level) for level in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="render-dashboard-") as tmp:
        workdir = Path(tmp)
        server = BenchServer(args.model_repo.resolve(), workdir / "server.log")
        prometheus = Prometheus(workdir, f"127.0.0.1:{server.metrics_port}")
        with running(server, prometheus):
            index = httpx.get(f"{server.http_url}/v2/models").json()["models"]
            models = args.models.split(",") if args.models else sorted(
                {m["name"] for m in index if m["state"] == "READY"})
            time.sleep(2 * SCRAPE_SECONDS)
            events = drive(server, models, levels, args.step_seconds, args.kill_worker or None)
            time.sleep(args.tail_seconds)
            start, end = events[0][0] - 30, time.time()
            shown = args.show.split(",") if args.show else models
            data = fetch(prometheus, dashboard, shown, start, end)
            for alert in prometheus.query("ALERTS"):
                labels = alert["metric"]
                print("alert at the end:", labels["alertname"], labels.get("model") or labels.get("framework", ""),
                      labels["alertstate"])
    title = (f"TensorGate dashboard from a real Prometheus: {len(models)} models served "
             f"({', '.join(models)}) on {os.cpu_count()} CPU cores,\n"
             f"{' → '.join(str(level) for level in levels)} closed-loop REST clients per model, "
             f"{args.step_seconds:.0f} s each (grey dotted lines)"
             + (f"; the {args.kill_worker} worker killed at the red dotted line" if args.kill_worker else "")
             + f". Model variable: {', '.join(shown)}.")
    return {"title": title, "events": events,
            "data": {str(panel): [[vars(series) for series in target] for target in targets]
                     for panel, targets in data.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--models", help="comma-separated models to drive (default: every model)")
    parser.add_argument("--show", help="models selected in the dashboard's model variable (default: all driven)")
    parser.add_argument("--levels", default="1,4,8", help="concurrent clients per model, one step each")
    parser.add_argument("--step-seconds", type=float, default=180.0)
    parser.add_argument("--kill-worker", default="onnxruntime",
                        help="framework whose worker is killed halfway through the last step ('' for none)")
    parser.add_argument("--tail-seconds", type=float, default=30.0, help="idle time drawn after the load")
    parser.add_argument("--save", type=Path, help="also write the fetched data here (JSON), for --redraw")
    parser.add_argument("--redraw", type=Path, help="draw from data saved by --save instead of running")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    dashboard = json.loads(DASHBOARD.read_text())
    recording = json.loads(args.redraw.read_text()) if args.redraw else record(args, dashboard)
    if args.save:
        args.save.write_text(json.dumps(recording))
    data = {int(panel): [[Series(**series) for series in target] for target in targets]
            for panel, targets in recording["data"].items()}
    events = [(float(when), str(label)) for when, label in recording["events"]]
    draw(dashboard, data, events, args.out, recording["title"])
    print(f"wrote {args.out}")
    print("\n".join(summary(dashboard, data, events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
