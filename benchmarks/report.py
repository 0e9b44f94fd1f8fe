"""A run's results: one ``Point`` per (model, protocol, concurrency), compared with the offline
limit, written as markdown tables, JSON and a PNG plot of throughput against p99 latency."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.processes import ProcessCpu, short_command


@dataclass
class Offline:
    """The framework alone: time per batch at each batch size (ms)."""

    framework: str
    threads: int
    batch_ms: dict[int, float]

    def rows_per_s(self, size: int) -> float:
        return size / self.batch_ms[size] * 1e3


@dataclass
class Comparison:
    """One served point against the model's offline limit."""

    #: The batch size "= concurrency" (capped at max_batch_size): the target's reference batch.
    reference_batch: int
    offline_ms_at_reference: float
    offline_rows_s_at_reference: float
    served_vs_reference: float
    p99_vs_reference_ms: float
    #: The offline throughput at the mix of batch sizes the server actually executed.
    offline_rows_s_at_server_batches: float
    served_vs_server_batches: float
    #: The offline time of the batches the server executed, averaged over them.
    offline_ms_per_server_batch: float
    #: Served p50 minus that: what serving added to a request.
    overhead_p50_ms: float


@dataclass
class Point:
    model: str
    base_model: str
    format: str
    protocol: str
    concurrency: int
    rows_per_request: int
    generator: str
    requests: int
    errors: int
    elapsed_s: float
    requests_per_s: float
    inferences_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    #: From the server's statistics, over the run.
    executions: int
    mean_batch: float
    batch_histogram: dict[int, int]
    server_queue_ms: float
    server_compute_ms: float
    server_failures: int
    #: CPU seconds (user + system) during the run: the load generator, the server's processes other than
    #: its model workers (the gateway: supervisor, frontends, helpers), and its model workers.
    loadgen_cpu_s: float
    gateway_cpu_s: float | None
    workers_cpu_s: float | None
    #: The machine's busy CPU seconds during the run minus the three above: other work sharing the cores.
    other_cpu_s: float | None
    error_samples: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    profile: dict[str, Any] | None = None
    #: Each of the server's processes (the root and everything below it) and its CPU seconds over the run.
    processes: list[ProcessCpu] = field(default_factory=list)
    #: Server processes that exited during the run (their last CPU is not counted).
    exited_pids: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} {self.protocol} c={self.concurrency}"

    @property
    def compute_busy(self) -> float | None:
        """The model's compute time over the run's wall time: the share of the run an instance was busy
        (summed over instances, so it can pass 1 with several)."""
        if not self.elapsed_s or not self.executions:
            return None
        return self.executions * self.server_compute_ms / 1e3 / self.elapsed_s


def compare(point: Point, offline: Offline, max_batch_size: int) -> Comparison:
    reference = min(point.concurrency * point.rows_per_request, max_batch_size)
    ref_ms = offline.batch_ms[reference]
    ref_rows = offline.rows_per_s(reference)
    hist = {b: n for b, n in point.batch_histogram.items() if b in offline.batch_ms}
    batches = sum(hist.values())
    total_ms = sum(n * offline.batch_ms[b] for b, n in hist.items())
    rows = sum(n * b for b, n in hist.items())
    mix_rows_s = rows / total_ms * 1e3 if total_ms else 0.0
    per_batch = total_ms / batches if batches else ref_ms
    return Comparison(
        reference_batch=reference,
        offline_ms_at_reference=ref_ms,
        offline_rows_s_at_reference=ref_rows,
        served_vs_reference=point.inferences_per_s / ref_rows if ref_rows else 0.0,
        p99_vs_reference_ms=point.p99_ms / ref_ms if ref_ms else 0.0,
        offline_rows_s_at_server_batches=mix_rows_s,
        served_vs_server_batches=point.inferences_per_s / mix_rows_s if mix_rows_s else 0.0,
        offline_ms_per_server_batch=per_batch,
        overhead_p50_ms=point.p50_ms - per_batch,
    )


@dataclass
class Report:
    title: str
    command: str
    started: str
    machine: dict[str, str]
    versions: dict[str, str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    server: str
    serving: str
    generators: list[str]
    points: list[Point]
    offline: dict[str, Offline]
    notes: list[str] = field(default_factory=list)
    #: Served model -> its platform, batch dim and the inputs the harness generated for it.
    models: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def served_table(points: list[Point]) -> str:
    head = ("| model | protocol | conc | generator | requests | errors | req/s | infer/s | p50 ms | p90 ms "
            "| p99 ms | mean batch | queue ms | compute ms/batch | compute busy | CPU s loadgen | CPU s gateway "
            "| CPU s workers | CPU s other | gateway CPU µs/req |")
    rows = [head, _rule(head)]
    for p in points:
        rows.append(f"| {p.model} | {p.protocol} | {p.concurrency} | {p.generator} | {p.requests:,} | {p.errors:,} "
                    f"| {_f(p.requests_per_s)} | {_f(p.inferences_per_s)} | {_f(p.p50_ms, 2)} | {_f(p.p90_ms, 2)} "
                    f"| {_f(p.p99_ms, 2)} | {_f(p.mean_batch, 2)} | {_f(p.server_queue_ms, 2)} "
                    f"| {_f(p.server_compute_ms, 2)} | {_percent(p.compute_busy)} | {_f(p.loadgen_cpu_s)} "
                    f"| {_f(p.gateway_cpu_s)} "
                    f"| {_f(p.workers_cpu_s)} | {_f(p.other_cpu_s)} "
                    f"| {_f(_per_request_us(p.gateway_cpu_s, p.requests), 0)} |")
    return "\n".join(rows)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _per_request_us(cpu_s: float | None, requests: int) -> float | None:
    return None if cpu_s is None or not requests else cpu_s / requests * 1e6


def cpu_table(points: list[Point]) -> str:
    """One row per server process per point, then the workers', the gateway's (all the rest) and the total."""
    head = "| point | pid | role | command | CPU s | CPU µs/req |"
    rows = [head, _rule(head)]
    for p in points:
        if not p.processes:
            continue
        for c in p.processes:
            note = f" ({c.note})" if c.note else ""
            rows.append(f"| {p.label} | {c.pid} | {c.role}{note} | `{short_command(c.command)}` | {c.cpu_s:.2f} "
                        f"| {_f(_per_request_us(c.cpu_s, p.requests), 0)} |")
        total = sum(c.cpu_s for c in p.processes)
        for what, seconds in (("**workers**", p.workers_cpu_s), ("**gateway** (all but the workers)", p.gateway_cpu_s),
                              ("**total**", total)):
            per_request = _f(_per_request_us(seconds, p.requests), 0)
            rows.append(f"| {p.label} | | {what} | | {_f(seconds, 2)} | {per_request} |")
        if p.exited_pids:
            rows.append(f"| {p.label} | {', '.join(map(str, p.exited_pids))} | exited during the run (not counted) "
                        "| | | |")
    return "\n".join(rows)


def _rule(head: str) -> str:
    return "|" + "---|" * (head.count("|") - 1)


def comparison_table(points: list[Point]) -> str:
    head = ("| model | protocol | conc | ref batch | offline ms (ref) | offline rows/s (ref) | served / offline (ref) "
            "| p99 / offline ms (ref) | offline rows/s at server's batches | served / that "
            "| offline ms per server batch | p50 - that (ms) |")
    rows = [head, _rule(head)]
    for p in points:
        c = p.comparison
        if c is None:
            continue
        rows.append(f"| {p.model} | {p.protocol} | {p.concurrency} | {c.reference_batch} "
                    f"| {_f(c.offline_ms_at_reference, 3)} | {_f(c.offline_rows_s_at_reference)} "
                    f"| {c.served_vs_reference:.0%} | {c.p99_vs_reference_ms:.2f}x "
                    f"| {_f(c.offline_rows_s_at_server_batches)} | {c.served_vs_server_batches:.0%} "
                    f"| {_f(c.offline_ms_per_server_batch, 3)} | {_f(c.overhead_p50_ms, 3)} |")
    return "\n".join(rows)


def offline_table(offline: dict[str, Offline]) -> str:
    head = "| model | framework | threads | batch | median ms | rows/s |"
    rows = [head, _rule(head)]
    for model, o in offline.items():
        for size, ms in sorted(o.batch_ms.items()):
            rows.append(f"| {model} | {o.framework} | {o.threads} | {size} | {ms:.3f} | {_f(o.rows_per_s(size))} |")
    return "\n".join(rows)


def histogram_text(point: Point, width: int = 40) -> str:
    """Executed batch sizes as text bars, largest counts shown in full."""
    if not point.batch_histogram:
        return f"{point.label}: no batches"
    top = max(point.batch_histogram.values())
    lines = [f"{point.label}: {point.executions:,} batches, mean {point.mean_batch:.2f} rows"]
    for size, count in sorted(point.batch_histogram.items()):
        bar = "#" * max(1, round(count / top * width))
        lines.append(f"  {size:>3} | {bar} {count:,}")
    return "\n".join(lines)


def profile_text(profile: dict[str, Any]) -> str:
    lines = []
    for process, summary in profile.items():
        lines.append(f"{process}: {summary['samples']:,} samples, busy {summary['busy']:.0%} of the run "
                     f"(non-idle samples / (rate x duration))")
        lines.append("  self time (leaf function):")
        lines += [f"    {share:6.1%}  {name}" for name, share in summary["self"]]
        lines.append("  inclusive:")
        lines += [f"    {share:6.1%}  {name}" for name, share in summary["inclusive"]]
    return "\n".join(lines)


def markdown(report: Report, png_name: str | None) -> str:
    m = report.machine
    out = [f"# {report.title}", "",
           f"- Command: `{report.command}`",
           f"- Started: {report.started}",
           f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB memory, Linux {m['kernel']}",
           f"- Load average (1, 5, 15 min) before: {_load(report.load_before)}; after: {_load(report.load_after)}. "
           "The load generator, the server and the offline measurement share these cores; other work on the "
           "machine may have been running.",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
           f"- Server: {report.server}",
           f"- Serving options: {report.serving}",
           "- Load generators: " + "; ".join(report.generators),
           ]
    out += [f"- Model {model}: {text}" for model, text in report.models.items()]
    out += [f"- {note}" for note in report.notes]
    out += ["", "## Served", "", "Closed loop: each client sends its next request when its reply arrives. "
            "Latency is measured by the load generator; batch sizes, queue and compute times come from the "
            "server's statistics (`/v2/models/{m}/stats`) over the run; CPU seconds are user + system "
            "from `/proc`, each process with all its threads: the load generator, the server's model workers, and "
            "the gateway (every other process of the server: supervisor, frontends, helpers); *gateway CPU µs/req* "
            "is the gateway's CPU seconds divided by the requests, the protocol work a request costs the server "
            "outside the model. *compute busy* is the model's compute time (the statistics' compute_infer) over "
            "the run's wall time: how much of the run an instance was computing (summed over instances). "
            "*CPU s other* is the machine's busy time during the run minus those three: other "
            "work that shared the cores (the harness's own once-a-second progress poll included).",
            "", served_table(report.points)]
    if any(p.processes for p in report.points):
        out += ["", "## Server CPU per process", "",
                "Every process of the server's tree (the process listening on its port, or the one the harness "
                "started, or --server-pid, and all its descendants), with its role from its command line. `/proc` "
                "counts in clock ticks (10 ms): a point needs seconds of load for µs per request to mean much.",
                "", cpu_table(report.points)]
    if report.offline:
        out += ["", "## Against the model's offline limit", "",
                "*ref batch* is the concurrency (capped at max_batch_size): the batch a perfect batcher would "
                "form. *At server's batches*: the offline rows/s over the mix of batch sizes the server "
                "actually executed (its histogram below). *p50 - that*: served median latency minus the "
                "offline time of an executed batch (averaged over the server's batches): what serving adds.",
                "", comparison_table(report.points),
                "", "## Offline: the framework called directly, one process", "", offline_table(report.offline)]
    out += ["", "## Executed batch sizes", "", "```"]
    out += [histogram_text(p) for p in report.points]
    out += ["```"]
    errors = [p for p in report.points if p.error_samples and p.errors]
    if errors:
        out += ["", "## Errors", ""] + [f"- {p.label}: {'; '.join(p.error_samples)}" for p in errors]
    profiled = [p for p in report.points if p.profile]
    if profiled:
        out += ["", "## Profiles (py-spy, during the measured run)", ""]
        for p in profiled:
            assert p.profile is not None
            out += [f"### {p.label}", "", "```", profile_text(p.profile), "```", ""]
    if png_name:
        out += ["", "## Throughput against p99 latency", "", f"![throughput vs p99]({png_name})"]
    return "\n".join(out) + "\n"


def _load(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def plot(report: Report, path: Path) -> None:
    """Inferences/s against p99 latency, one line per (model, protocol), points labelled by concurrency;
    dashed lines: the offline rows/s at the largest reference batch of each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    series: dict[tuple[str, str], list[Point]] = {}
    for p in report.points:
        series.setdefault((p.model, p.protocol), []).append(p)
    for (model, protocol), points in series.items():
        points = sorted(points, key=lambda p: p.concurrency)
        line = ax.plot([p.p99_ms for p in points], [p.inferences_per_s for p in points], marker="o",
                       label=f"{model} {protocol}")[0]
        for p in points:
            ax.annotate(f"c={p.concurrency}", (p.p99_ms, p.inferences_per_s), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color=line.get_color())
    served_top = max((p.inferences_per_s for p in report.points), default=0.0)
    for model, offline in report.offline.items():
        references = [p.comparison.reference_batch for p in report.points if p.model == model and p.comparison]
        if not references:
            continue
        size = max(references)
        limit = offline.rows_per_s(size)
        text = f"{model} offline, batch {size}: {limit:,.0f}/s"
        if limit <= 3 * served_top:
            ax.axhline(limit, linestyle="--", linewidth=1, color="grey")
            ax.annotate(text, (0, limit), xycoords=("axes fraction", "data"), xytext=(4, 2),
                        textcoords="offset points", fontsize=8, color="grey")
        else:  # far above what was served: say it rather than squash the served curves
            ax.plot([], [], linestyle="--", color="grey", label=f"{text} (off the scale)")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("inferences / s")
    ax.set_title(report.title, fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
