"""HTTP load from ``wrk`` (Debian package ``wrk``) with ``benchmarks/infer.lua`` sending the bodies."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "infer.lua"
#: What each wrk thread prints when it has its count of replies (see infer.lua).
DONE_MARKER = b"TGDONE\n"


def available() -> bool:
    return shutil.which("wrk") is not None


def threads_for(concurrency: int, threads: int) -> int:
    return max(1, min(threads, concurrency))


def command(url: str, body_file: Path, content_type: str, headers: dict[str, str], concurrency: int,
            duration: float | None, requests: int | None, threads: int = 1, timeout_s: float = 60.0,
            key_header: str | None = None) -> list[str]:
    """The wrk command line: ``concurrency`` connections over ``threads`` threads (1 leaves the
    other core to the server on a 2-core machine); ``key_header`` carries $TENSORGATE_BENCH_API_KEY."""
    threads = threads_for(concurrency, threads)
    header_length = headers.get("Inference-Header-Content-Length", "-")
    per_thread = math.ceil(requests / threads) if requests else 0
    # With a request count, -d is only a safety limit.
    seconds = max(1, math.ceil(duration)) if duration else 3600
    return ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s",
            "--timeout", f"{max(1, math.ceil(timeout_s))}s", "-s", str(LUA_SCRIPT), url, "--",
            str(body_file), content_type, header_length, str(per_thread), *([key_header] if key_header else [])]
