"""`segmote serve` responsiveness (issue 24): prompt-to-overlay latency through the HTTP API.

    python benchmarks/bench_serve.py [--repeats 40]

A real uvicorn server in this process, an HTTP client, the bundled CT: after the slice is
encoded, each prompt is one `POST /segment` (a box, jittered by a few pixels so no answer is
cached anywhere) plus the `GET /labels?format=raw` the page makes to redraw the overlay. The
baseline is `Segmenter.predict` with the same box on the same model, timed in this process right
before each request (interleaved, so both see the same load on a shared machine); the
difference is what the server adds (JSON, the label-map update, the transfer).
Base model and the shipped default adapter.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, write_result  # noqa: E402

K, BOX = 7, (83, 93, 173, 162)


def _boxes(n: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [[float(v + d) for v, d in zip(BOX, rng.integers(-3, 4, 4))] for _ in range(n)]


def _serve(app) -> tuple[object, threading.Thread, str]:  # noqa: ANN001
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def measure(adapter: str | None, repeats: int) -> dict:
    import httpx

    import segmote
    from segmote.slicing import volume_slice
    from segmote.samples import bundled_sample_path
    from segmote.serve import ServeConfig, create_app

    model = segmote.load_model(adapter=adapter)
    ct = bundled_sample_path("lung2_ct_crop")
    seg = segmote.Segmenter(model)
    image = volume_slice(segmote.read_image(ct).array, K, 2)
    encoder = median_time(lambda: seg.set_image(image, modality="CT"), 3)
    guard = create_app(ServeConfig(prefetch=0), model=model)
    server, thread, url = _serve(guard)
    latencies, server_ms, direct = [], [], []
    load = os.getloadavg()[0]
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            with open(ct, "rb") as f:
                sid = client.post("/api/images", files={"file": (ct.name, f)}).json()["id"]
            guard.app.state.engine.idle(timeout=600)  # the slice shown on opening is encoded
            for n, box in enumerate(_boxes(repeats + 3)):
                t0 = time.perf_counter()
                seg.predict(box=box)
                t1 = time.perf_counter()
                answer = client.post(f"/api/images/{sid}/segment",
                                     json={"slice": K, "box": box, "label": 1})
                overlay = client.get(f"/api/images/{sid}/labels",
                                     params={"slice": K, "format": "raw"})
                t2 = time.perf_counter()
                assert answer.status_code == 200 and overlay.status_code == 200, answer.text
                if n >= 3:  # warm-up
                    direct.append(1000 * (t1 - t0))
                    latencies.append(1000 * (t2 - t1))
                    server_ms.append(answer.json()["ms"])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    q = statistics.quantiles(latencies, n=10)
    return {"adapter": adapter or "none", "n": len(latencies),
            "median_ms": statistics.median(latencies), "p90_ms": q[8],
            "server_median_ms": statistics.median(server_ms),
            "predict_median_ms": statistics.median(direct),
            "encoder_ms": 1000 * encoder,
            "load_average": round((load + os.getloadavg()[0]) / 2, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    rows = [measure(adapter, args.repeats) for adapter in (None, "default")]
    for r in rows:
        print(f"{r['adapter']}: median {r['median_ms']:.0f} ms, p90 {r['p90_ms']:.0f} ms "
              f"(Segmenter.predict {r['predict_median_ms']:.0f} ms, n={r['n']})")
    print(write_result("serve", {"machine": machine(), "target_ms": 150, "rows": rows}))


if __name__ == "__main__":
    main()
