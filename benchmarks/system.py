"""What the results file says about the machine: CPU, memory, load, versions, and CPU time per process."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Distributions whose versions a results file quotes (absent ones are skipped).
VERSIONED = ("numpy", "onnxruntime", "onnx", "torch", "grpcio", "protobuf", "uvicorn", "uvloop", "fastapi",
             "orjson", "matplotlib")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (all its threads); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (everything in /proc/stat but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system_, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system_ + irq + softirq + steal) / _CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu_model(),
        "memory_gib": f"{memory_gib():.1f}",
        "kernel": platform.release(),
    }
