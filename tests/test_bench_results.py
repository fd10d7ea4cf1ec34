"""benchmarks/common.update_result: benchmark processes that store parts of one results file
(engine.json, gpu.json) at the same time keep each other's parts."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _writer(results: str, key: str, n: int) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import common

    common.RESULTS = Path(results)

    def add(data: dict, i: int) -> None:
        time.sleep(0.01)  # between read and write: where an unlocked writer loses the other's
        data[f"{key}{i}"] = i

    for i in range(n):
        common.update_result("shared", lambda data, i=i: add(data, i))


def test_concurrent_updates_keep_every_part(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, 15)) for key in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads((tmp_path / "shared.json").read_text())
    assert data == {f"{k}{i}": i for k in "ab" for i in range(15)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared.json"]
