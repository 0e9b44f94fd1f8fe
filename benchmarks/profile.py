"""Sampling profiles of the server's processes during a measured run, with ``py-spy``.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); the summary
ranks functions by self time (the leaf frame) and inclusive time. Idle threads are not sampled,
so samples / (rate x duration) is the share of the run that the process's Python threads were busy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 100
#: Inclusive listings skip frames found in at least this share of the samples (the stack's root).
ROOT_SHARE = 0.9


def executable() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, duration: float, output: Path, native: bool = False) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``duration`` seconds into ``output``; None if py-spy is not installed."""
    spy = executable()
    if spy is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))), "--rate", str(RATE),
               "--format", "raw", "--nolineno", "--nonblocking", "--output", str(output)]
    if native:
        command.append("--native")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path, duration: float, top: int = 12) -> dict[str, Any]:
    """Top functions by self and inclusive samples, as shares of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"samples": 0, "busy": 0.0, "self": [], "inclusive": []}
    # Frames on (nearly) every stack (runpy, main, the event loop's run) say nothing: leave them out.
    telling = [(name, n) for name, n in inclusive.most_common() if n < ROOT_SHARE * total]
    return {
        "samples": total,
        "busy": total / (RATE * max(1, round(duration))),
        "self": [(name, n / total) for name, n in own.most_common(top)],
        "inclusive": [(name, n / total) for name, n in telling[:top]],
    }
