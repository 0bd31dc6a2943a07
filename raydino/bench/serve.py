"""``raydino bench serve``: ``raydino serve``'s latency and throughput under load, on 127.0.0.1 only.

A bounded load generator: for each concurrency level, that many client
threads share a fixed count of ``POST /generate`` requests (one image each,
a seed per request, keep-alive connections), and the figures are the
clients' p50 and p99 latency, images/s, failed requests, and the share of
requests the replica served in a batch of more than one (from ``/stats``).
The baseline is the same server at one client: the ratio says what dynamic
batching buys.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np

from raydino.bench.record import header, save
from raydino.config import load_config
from raydino.layout import Run

GOALS = {"p50_ms_one_client": 50.0, "throughput_ratio_32": 5.0, "failed": 0}


def _request(conn: http.client.HTTPConnection, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, (time.perf_counter() - start) * 1000


def _get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def load(port: int, clients: int, requests: int, prompt: str | None, steps: int | None = None) -> dict:
    """``requests`` one-image requests from ``clients`` threads at once; latencies as the clients saw them."""
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in iter(lambda: next(counter, None), None):
            body = {"n": 1, "seed": i} | ({"prompt": prompt} if prompt else {}) | ({"steps": steps} if steps else {})
            try:
                status, ms = _request(conn, body)
            except (OSError, http.client.HTTPException):
                status, ms = 0, 0.0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                if status == 200:
                    latencies.append(ms)
                else:
                    failed[0] += 1
        conn.close()

    before = _get(port, "/stats")
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = _get(port, "/stats")
    sizes = {int(k): after["batch_sizes"].get(k, 0) - before["batch_sizes"].get(k, 0) for k in after["batch_sizes"]}
    served = sum(k * v for k, v in sizes.items())
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "requests": requests, "ok": len(latencies), "failed": failed[0],
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "images_per_s": round(len(latencies) / wall, 2), "wall_s": round(wall, 2),
            "batched_share": round(sum(k * v for k, v in sizes.items() if k > 1) / served, 3) if served else 0.0,
            "mean_batch": round(served / max(1, sum(sizes.values())), 2)}


def run_bench(run: str | Path, clients: list[int], requests: int, prompt: str | None, port: int,
              overrides: list[str], out: str | None, steps: int | None = None) -> dict:
    """Start ``raydino serve`` on ``run`` in a local Ray, load it at each concurrency, print and record the figures."""
    import ray
    from ray import serve

    from raydino.serve.app import APP_NAME, application

    cfg = load_config(config_file=str(Run(run).config), overrides=overrides)
    results = header("serve") | {"run": str(Path(run).resolve()), "serve": vars(cfg.serve), "prompt": prompt,
                                 "steps": steps or cfg.prior.sample_steps, "solver": cfg.prior.solver, "goals": GOALS}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(run, cfg), name=APP_NAME, route_prefix="/")
        load(port, 4, 16, prompt, steps)  # warm-up: the replica's first passes allocate
        levels = [load(port, c, max(requests, 4 * c), prompt, steps) for c in clients]
    finally:
        serve.shutdown()
        ray.shutdown()
    base = levels[0]["images_per_s"]
    for level in levels:
        level["throughput_ratio"] = round(level["images_per_s"] / base, 2) if base else None
    results["levels"] = levels
    print(f"raydino serve on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
          f"run {run}, prompt {prompt!r}, K={results['steps']} {results['solver']}")
    print(f"{'clients':>8} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9} {'vs 1 client':>12} {'batched':>8} "
          f"{'mean batch':>11} {'failed':>7}")
    for lv in levels:
        print(f"{lv['clients']:>8} {lv['p50_ms']:>8} {lv['p99_ms']:>8} {lv['images_per_s']:>9} "
              f"{lv['throughput_ratio']:>11}x {lv['batched_share']:>8} {lv['mean_batch']:>11} {lv['failed']:>7}")
    save(results, out)
    return results
