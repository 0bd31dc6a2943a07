"""``raydino bench serve``: ``raydino serve``'s latency and throughput under load, on 127.0.0.1 only.

A bounded load generator: for each concurrency level, that many client
threads share a fixed count of ``POST /generate`` requests (one image each,
a seed per request, keep-alive connections), and the figures are the
clients' p50 and p99 latency, images/s, failed requests, and the share of
requests the replica served in a batch of more than one (from ``/stats``).

Two baselines, from the same run: the same server at one client (the
ratio says what dynamic batching buys), and, where the run has a distilled
student, the same server on the teacher (``serve.teacher=true``, K guided
Heun steps) at every level (the ratio says what the student buys).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np

from raydino.bench.record import header, save
from raydino.config import load_config
from raydino.layout import Run

GOALS = {"p50_ms_one_client": 40.0, "images_per_s_32": 60.0, "failed": 0}


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


def _levels(run: str | Path, cfg, clients: list[int], requests: int, prompt: str | None, port: int,
            steps: int | None) -> list[dict]:
    """One deployment of ``run`` as ``cfg.serve`` says, loaded at each concurrency; the ratio to one client."""
    from ray import serve

    from raydino.serve.app import APP_NAME, application

    serve.run(application(run, cfg), name=APP_NAME, route_prefix="/")
    load(port, 4, 16, prompt, steps)  # warm-up: the replica's first passes allocate
    levels = [load(port, c, max(requests, 4 * c), prompt, steps) for c in clients]
    serve.delete(APP_NAME)
    base = levels[0]["images_per_s"]
    for level in levels:
        level["throughput_ratio"] = round(level["images_per_s"] / base, 2) if base else None
    return levels


def _table(title: str, levels: list[dict], teacher: list[dict] | None = None) -> None:
    print(title)
    print(f"{'clients':>8} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9} {'vs 1 client':>12} {'batched':>8} "
          f"{'mean batch':>11} {'failed':>7}" + (f" {'vs teacher':>11}" if teacher else ""))
    for i, lv in enumerate(levels):
        ratio = f" {lv['images_per_s'] / teacher[i]['images_per_s']:>10.1f}x" if teacher else ""
        print(f"{lv['clients']:>8} {lv['p50_ms']:>8} {lv['p99_ms']:>8} {lv['images_per_s']:>9} "
              f"{lv['throughput_ratio']:>11}x {lv['batched_share']:>8} {lv['mean_batch']:>11} {lv['failed']:>7}{ratio}")


def run_bench(run: str | Path, clients: list[int], requests: int, prompt: str | None, port: int,
              overrides: list[str], out: str | None, steps: int | None = None) -> dict:
    """Start ``raydino serve`` on ``run`` in a local Ray, load it at each concurrency, print and record the figures.

    The run's default prior first (its student where it has one), then the teacher on the same levels.
    """
    import ray
    from ray import serve

    from raydino.models.saved import load_prior

    cfg = load_config(config_file=str(Run(run).config), overrides=overrides)
    teacher_cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, teacher=True))
    served = load_prior(Run(run), teacher=cfg.serve.teacher)
    has_student = served.student
    results = header("serve") | {"run": str(Path(run).resolve()), "serve": vars(cfg.serve), "prompt": prompt,
                                 "prior": served.describe(steps, conditioned=bool(prompt)), "goals": GOALS}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        results["levels"] = _levels(run, cfg, clients, requests, prompt, port, steps)
        if has_student:
            teacher = load_prior(Run(run), teacher=True)
            results["teacher"] = teacher.describe(conditioned=bool(prompt))
            results["teacher_levels"] = _levels(run, teacher_cfg, clients, requests, prompt, port, None)
    finally:
        serve.shutdown()
        ray.shutdown()
    m = results["machine"]
    print(f"raydino serve on {m['cpu']} ({m['cores']} cores), run {run}, prompt {prompt!r}")
    _table(f"prior: {results['prior']}", results["levels"], results.get("teacher_levels"))
    if has_student:
        _table(f"baseline, the teacher: {results['teacher']}", results["teacher_levels"])
    save(results, out)
    return results
