"""Helpers shared by the benchmark scripts: machine description, timing, JSON output."""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from segmote.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def machine_line(m: dict | None) -> str:
    """One line naming the machine of a result's `machine()` dict (for the report)."""
    if not m:
        return "unknown machine"
    return (f"{m.get('cores')}-core {m.get('cpu')} CPU, torch {m.get('torch')} "
            f"({m.get('torch_threads')} thread{'' if m.get('torch_threads') == 1 else 's'}), "
            f"{m.get('date')}")


def status_mb(key: str = "VmHWM") -> float:
    """A memory line of /proc/self/status in MB: "VmHWM" (peak resident) or "VmRSS" (now).
    VmHWM, not getrusage's ru_maxrss, for peaks: Linux carries ru_maxrss over fork + exec, so
    a child would report its parent's peak (the models loaded there)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"no {key} in /proc/self/status")


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def update_result(name: str, update: Callable[[dict], None]) -> Path:
    """Read benchmarks/results/NAME.json ({} if missing), let `update` change it in place and
    write it back, all under an exclusive lock (a `.NAME.lock` file beside it): benchmarks that
    store parts of one file (engine.json, gpu.json) may run at once and keep each other's parts."""
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        data = load_result(name) or {}
        update(data)
        return write_result(name, data)


def load_result(name: str) -> dict | None:
    """benchmarks/results/NAME.json, or None if it was not written yet."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


SHIPPED = RESULTS.parent.parent / "src" / "segmote" / "assets" / "adapters" / "default.safetensors"


def shipped_label(r: dict) -> str:
    """The packaged adapter's path when the report's adapter is that file (or an earlier version
    of it whose tensors it keeps: its header's "earlier_versions"), else the report's own path."""
    if r["adapter_sha256"] in shipped_versions(SHIPPED):
        return str(SHIPPED.relative_to(RESULTS.parent.parent))
    return r["adapter"]


@functools.lru_cache(maxsize=None)
def shipped_versions(shipped: Path) -> dict[str, str]:
    """sha256 -> "" for the adapter file itself, -> what changed since for each earlier version
    its header lists (header-only rewrites: the same tensors); {} when the file is missing.
    Cached: a report asks several times and the file does not change while it is written."""
    if not shipped.is_file():
        return {}
    from segmote.adapter import read_adapter_card
    from segmote.checkpoint import sha256_file

    return {sha256_file(shipped): "", **read_adapter_card(shipped).earlier_versions}


def sha_words(r: dict) -> str:
    """ "sha256 0123456789ab" of the report's adapter, plus what changed since in the shipped
    file when the report was made on an earlier version of it with the same tensors."""
    change = shipped_versions(SHIPPED).get(r["adapter_sha256"])
    words = f"sha256 {r['adapter_sha256'][:12]}"
    return f"{words}; the shipped file since: {change}" if change else words
