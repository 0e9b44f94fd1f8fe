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
#: Inclusive listings skip frames found in at least this share of the samples under their stack's root.
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
               "--format", "raw", "--nolineno", "--output", str(output)]
    # Native stacks need the process paused at each sample (slower runs); Python stacks do not.
    command.append("--native" if native else "--nonblocking")
    log = output.with_suffix(".log").open("wb")
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


#: Native leaf frames that are a thread waiting, not working: py-spy's idle filter does not see
#: through native stacks, so these samples are dropped from native profiles here.
NATIVE_WAITS = ("epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect", "nanosleep",
                "clock_nanosleep", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait", "sem_timedwait")
#: A native stack through this frame is a Python thread blocked on a lock or queue.
LOCK_WAIT = "PyThread_acquire_lock_timed"
#: A blocking ``recv`` under this frame is a runtime worker waiting for its next call.
BLOCKING_READ = "SocketChannel._read_exactly"


def _waiting(frames: list[str]) -> bool:
    leaf = frames[-1].split(" (", 1)[0]
    if leaf in NATIVE_WAITS:
        return True
    if leaf.startswith("0x") and any(f.startswith(LOCK_WAIT) for f in frames):
        return True
    return leaf == "recv" and any(f.startswith(BLOCKING_READ) for f in frames)


def summarize(path: Path, duration: float, top: int = 12, native: bool = False) -> dict[str, Any]:
    """Top functions by self and inclusive samples, as shares of all (busy) samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    per_root: Counter[str] = Counter()
    under_root: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if native and _waiting(frames):
            continue
        total += count
        own[frames[-1]] += count
        per_root[frames[0]] += count
        for frame in set(frames):
            inclusive[frame] += count
            under_root[frames[0], frame] += count
    if not total:
        return {"samples": 0, "busy": 0.0, "self": [], "inclusive": []}
    # Frames on (nearly) every stack of their thread's root (runpy, main, the event loop's run,
    # a thread's bootstrap) say nothing: leave them out.
    trivial = {frame for (root, frame), n in under_root.items() if n >= ROOT_SHARE * per_root[root]}
    telling = [(name, n) for name, n in inclusive.most_common() if name not in trivial]
    return {
        "samples": total,
        "busy": total / (RATE * max(1, round(duration))),
        "self": [(name, n / total) for name, n in own.most_common(top)],
        "inclusive": [(name, n / total) for name, n in telling[:top]],
    }
