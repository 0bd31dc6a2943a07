"""``raydino bench pyramids``: what the Ray Data pipeline buys, and how close to the model it gets.

Three throughputs of the same DINOv2 on the same device, same levels:

- **ceiling**: the encoder alone on random tensors already on the device, at
  the pipeline's batch size. Nothing can beat it. On a CPU-only machine, as
  many one-thread encoders at once as the pipeline has actors.
- **naive**: what one writes first: open each image, run the Hugging Face
  image processor once per level, one forward per level, batch of one.
- **ray**: :func:`raydino.pyramids.extract.build_pyramids` from PNG files to
  parquet shards. A streaming pipeline pays a fixed start-up (actors, model
  load), so it runs on a quarter and on all the images, and the steady rate is
  the difference: (N - N/4) / (t(N) - t(N/4)). End to end is printed too.

Three more figures locate a bottleneck where Ray is missing: **decode**, one
core's rate through the decode stage alone (cores x that rate is what the
CPUs can feed the encoder), **encoder**, the actor's own work
(``ArrowPyramidEncoder`` on uint8 batches in host memory), which bounds the
pipeline on that device, and **write**, one core writing an encoder batch's
shard with pyarrow's default parquet settings and with the pipeline's
(:data:`~raydino.pyramids.extract.PARQUET_WRITE`).

Each phase runs in a fresh process, so its peak memory is its own. Only the
ray phase imports Ray: the other two run where Ray is not installed. Models
are random-weight DINOv2 architectures (speed does not depend on weights),
saved and loaded through the normal loader.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from raydino.bench.record import header, save

ARCHS = {
    "vits14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                   image_size=518),
    "vitb14": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
                   image_size=518),
}
WARMUP = 2
PHASES = ("ceiling", "naive", "decode", "encoder", "write", "ray")


def save_random_dino(arch: str, out: Path) -> Path:
    """A random-weight DINOv2 of a named size, in the layout :func:`load_dino` reads.

    ``save_tiny_dino`` writes the image-processor config (the one the hub
    DINOv2 models use) and the random-weights marker; the named architecture
    then replaces its tiny model.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from raydino.models.tiny import save_tiny_dino

    save_tiny_dino(out)
    if arch != "tiny":
        torch.manual_seed(0)
        Dinov2Model(Dinov2Config(**ARCHS[arch])).save_pretrained(out)
    return out


def _autocast(device: str):
    """bf16 autocast on CUDA, as :class:`PyramidEncoder` does; fp32 on CPU."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _peaks(device: str) -> dict[str, float]:
    import torch

    peaks = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        peaks["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def ceiling(dino_dir: str, sizes: list[int], batch_size: int, count: int, device: str, threads: int | None = None,
            barrier: Any = None) -> dict[str, float]:
    """Model-only images/s: every level of a batch of tensors already on the device.

    ``threads`` limits torch's CPU threads; ``barrier`` (shared with other
    processes) makes parallel copies start timing together.
    """
    import torch

    from raydino.models.loading import load_dino
    from raydino.pyramids.features import dino_levels

    if threads:
        torch.set_num_threads(threads)
    dino = load_dino(dino_dir, device)
    x = torch.rand(batch_size, 3, max(sizes), max(sizes), device=device)
    steps = max(1, math.ceil(count / batch_size))
    with torch.inference_mode(), _autocast(device):
        for _ in range(WARMUP):
            dino_levels(dino, x, sizes)
        _sync(device)
        if barrier is not None:
            barrier.wait()
        start = time.perf_counter()
        for _ in range(steps):
            dino_levels(dino, x, sizes)
        _sync(device)
    return {"images_per_s": steps * batch_size / (time.perf_counter() - start), **_peaks(device)}


def cpu_ceiling(dino_dir: str, sizes: list[int], batch_size: int, count: int, processes: int) -> dict[str, Any]:
    """The CPU ceiling as the pipeline runs there: ``processes`` one-thread encoders at once, rates summed.

    On a CPU-only machine the pipeline runs one one-thread actor per core, and
    one process with a thread per core is no bound for that: on the 2-core
    development machine it measured below the pipeline.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            parts = [pool.submit(ceiling, dino_dir, sizes, batch_size, math.ceil(count / processes), "cpu", 1, barrier)
                     for _ in range(processes)]
            rates = [part.result()["images_per_s"] for part in parts]
    return {"images_per_s": sum(rates), "processes": processes, "per_process_images_per_s": rates,
            **_peaks("cpu")}


def encoder(dino_dir: str, sizes: list[int], batch_size: int, count: int, device: str) -> dict[str, float]:
    """The actor stage alone, no Ray: uint8 crops in host memory -> Arrow table of every level."""
    import numpy as np

    from raydino.pyramids.extract import ArrowPyramidEncoder

    enc = ArrowPyramidEncoder(dino_dir, sizes, device=device)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (batch_size, max(sizes), max(sizes), 3), dtype=np.uint8),
             "id": np.array([f"{i}" for i in range(batch_size)], dtype=object)}
    batch["path"] = batch["id"]
    steps = max(1, math.ceil(count / batch_size))
    for _ in range(WARMUP):
        enc(batch)
    start = time.perf_counter()
    for _ in range(steps):
        enc(batch)
    return {"images_per_s": steps * batch_size / (time.perf_counter() - start), **_peaks(device)}


def naive(dino_dir: str, sizes: list[int], files: list[str], device: str) -> dict[str, Any]:
    """Per image: PIL open, the HF image processor at each level's size, one forward per level."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, Dinov2Model

    processor = AutoImageProcessor.from_pretrained(dino_dir)
    model = Dinov2Model.from_pretrained(dino_dir).eval().to(device)

    def one(path: str) -> None:
        img = Image.open(path)
        for s in sizes:
            inputs = processor(images=img, size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                               return_tensors="pt")
            model(pixel_values=inputs["pixel_values"].to(device)).last_hidden_state.float().cpu()

    with torch.inference_mode(), _autocast(device):
        for path in files[:WARMUP]:
            one(path)
        _sync(device)
        start = time.perf_counter()
        for path in files:
            one(path)
        _sync(device)
    return {"images_per_s": len(files) / (time.perf_counter() - start), "processor": type(processor).__name__,
            **_peaks(device)}


def decode(sizes: list[int], files: list[str]) -> dict[str, Any]:
    """One core's images/s of the decode stage (read, decode, crop): how many cores feed the encoder."""
    from raydino.config import PyramidConfig
    from raydino.pyramids.decode import decode_image

    cfg = PyramidConfig()
    start = time.perf_counter()
    for path in files:
        decode_image(Path(path).read_bytes(), max(sizes), min_side=cfg.min_side, max_pixels=cfg.max_pixels)
    return {"images_per_s": len(files) / (time.perf_counter() - start), **_peaks("cpu")}


def write(dim: int, patch: int, sizes: list[int], batch_size: int, repeats: int = 3) -> dict[str, Any]:
    """One core's images/s writing an encoder batch's shard (random float16 tokens of the model's shape):
    pyarrow's default parquet settings against the pipeline's, the Arrow table built as the actor builds it."""
    import numpy as np
    import pyarrow.parquet as pq

    from raydino.pyramids import schema
    from raydino.pyramids.extract import PARQUET_WRITE

    rng = np.random.default_rng(0)
    batch: dict[str, Any] = {"id": [f"{i:016x}" for i in range(batch_size)], "path": [f"/x/{i}.png" for i in range(batch_size)]}
    for s in sizes:
        batch[schema.tokens_col(s)] = rng.standard_normal((batch_size, (s // patch) ** 2, dim)).astype(np.float16)
        batch[schema.cls_col(s)] = rng.standard_normal((batch_size, dim)).astype(np.float16)
    batch[schema.THUMB] = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
    table = schema.make_table(batch)  # the first call pays one-off imports: not the actor's steady cost
    start = time.perf_counter()
    for _ in range(repeats):
        table = schema.make_table(batch)
    result: dict[str, Any] = {"table_mb": table.nbytes / 1e6,
                              "make_table_images_per_s": repeats * batch_size / (time.perf_counter() - start)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in (("default", {}), ("pipeline", PARQUET_WRITE)):
            start = time.perf_counter()
            for _ in range(repeats):
                pq.write_table(table, Path(tmp) / f"{name}.parquet", **settings)
            rate = repeats * batch_size / (time.perf_counter() - start)
            result[f"{name}_images_per_s"] = rate
            result[f"{name}_mb_per_s"] = rate / batch_size * result["table_mb"]
            result[f"{name}_file_mb"] = (Path(tmp) / f"{name}.parquet").stat().st_size / 1e6
    return {"images_per_s": result["pipeline_images_per_s"], **result, **_peaks("cpu")}


class _TreeMemory:
    """Peak summed PSS of this process and its descendants (the local Ray node), polled.

    PSS shares each shared page (the object store) among the processes
    mapping it, so the sum does not count the store once per worker. GPU
    memory in use on the device is polled too when ``device`` is cuda.
    """

    def __init__(self, device: str, every_s: float = 0.25):
        self.device, self.every_s = device, every_s
        self.peak_pss_mib = 0.0
        self.peak_gpu_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _tree(pid: int) -> list[int]:
        pids, todo = [], [pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            for children in Path(f"/proc/{p}/task").glob("*/children"):
                try:
                    todo.extend(int(c) for c in children.read_text().split())
                except OSError:
                    continue
        return pids

    @staticmethod
    def _pss_kib(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _poll(self) -> None:
        import torch

        while not self._stop.wait(self.every_s):
            pss = sum(self._pss_kib(p) for p in self._tree(os.getpid())) / 1024
            self.peak_pss_mib = max(self.peak_pss_mib, pss)
            if self.device == "cuda":
                self.peak_gpu_mib = max(self.peak_gpu_mib, torch.cuda.device_memory_used() / 2**20)


def operator_rates(stats: str) -> dict[str, float]:
    """Input rows per second of each Ray Data operator over its active span, from ``Dataset.stats()``.

    Unlike the end-to-end rate, these leave out the start-up (actor start,
    model load) that dominates short runs: on an H200 the encoder started
    10 s after decoding, and 8,192 images then took 5 s. The slowest is a
    conservative steady rate: a stage held back by another (decode waiting
    for the actor to start, say) shows the rate it was allowed.
    """
    rates, name = {}, None
    for line in stats.splitlines():
        head = re.match(r"Operator \d+ (.+?): \d+ tasks executed, \d+ blocks produced in ([\d.]+)s", line)
        if head:
            name, span = head[1], float(head[2])
            continue
        rows = re.search(r"Total input num rows: (\d+) rows", line)
        if name and rows and span > 0 and int(rows[1]):
            rates[name] = int(rows[1]) / span
            name = None
    return rates


def ray_pipeline(dino_dir: str, sizes: list[int], batch_size: int, images: str, device: str,
                 actors: int) -> dict[str, Any]:
    """Steady and end-to-end images/s of ``build_pyramids`` on all images, and on a quarter of them."""
    import ray

    from raydino.config import PyramidConfig
    from raydino.pyramids.extract import STATS, build_pyramids

    ray.init(include_dashboard=False, log_to_driver=False)
    cfg = PyramidConfig(dino=dino_dir, sizes=sizes, batch_size=batch_size, actors=actors,
                        num_gpus=1.0 if device == "cuda" else 0.0)
    files = sorted(Path(images).glob("*.png"))
    quarter = Path(images).parent / "quarter"
    quarter.mkdir()
    # enough batches for every actor, so both runs pay the same start-up
    for f in files[: max(len(files) // 4, actors * batch_size)]:
        os.link(f, quarter / f.name)
    out = Path(images).parent / "pyramids"
    small = build_pyramids(cfg, str(quarter), out / "quarter")
    with _TreeMemory(device) as memory:
        full = build_pyramids(cfg, str(images), out / "full")
    ray.shutdown()
    # a full run no slower than the quarter means start-up jitter swamped the difference: no steady rate
    steady = ((full["rows"] - small["rows"]) / (full["seconds"] - small["seconds"])
              if full["seconds"] > small["seconds"] else float("nan"))
    stats = (out / "full" / STATS).read_text()
    rates = operator_rates(stats)
    result = {"images_per_s": steady, "end_to_end_images_per_s": full["images_per_s"], "rows": full["rows"],
              "seconds": full["seconds"], "quarter_seconds": small["seconds"], "peak_pss_mib": memory.peak_pss_mib,
              "operator_images_per_s": rates, "slowest_operator_images_per_s": min(rates.values(), default=None),
              "ray_data_stats": stats}
    if device == "cuda":
        result["peak_gpu_used_mib"] = memory.peak_gpu_mib
    return result


def _dims(dino_dir: str) -> tuple[int, int]:
    """Token width and patch size of the model the bench uses."""
    config = json.loads((Path(dino_dir) / "config.json").read_text())
    return config["hidden_size"], config["patch_size"]


def _isolated(fn: Callable[..., dict], *args: Any) -> dict:
    """Run one phase in a fresh process: its own peak memory, no state from the others.

    The 1-minute load average before and after says whether other work shared
    the machine during the phase (on a shared 2-core machine it decides
    whether a ratio means anything).
    """
    before = os.getloadavg()[0]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(fn, *args).result()
    return {**result, "load_average": [before, os.getloadavg()[0]]}


def _report(results: dict[str, Any]) -> str:
    m, cfg, ph = results["machine"], results["config"], results["phases"]
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores), GPU: {m['gpu'] or 'none'}, load average {m['load_average']:.1f}; "
        f"torch {m['torch']}, transformers {m['transformers']}",
        f"model: {cfg['arch']} ({cfg['dino']}), sizes {cfg['sizes']}, batch {cfg['batch_size']}, "
        f"{cfg['count']} faces of {cfg['image_size']} px, device {cfg['device']}",
    ]
    names = {"ceiling": "ceiling (model only, tensors on device)", "naive": "naive (HF processor + forward per image)",
             "ray": "ray data (files -> decode -> encode -> parquet)", "decode": "decode stage alone, one core",
             "encoder": "encoder stage alone (actor's work, no Ray)",
             "write": "parquet write of a batch, one core, pipeline settings"}
    for name, r in ph.items():
        mem = ", ".join(f"{k.removesuffix('_mib')} {v / 1024:.2f} GiB" for k, v in r.items() if k.endswith("_mib"))
        extra = (f" steady ({r['end_to_end_images_per_s']:.1f} end to end; slowest operator over its span "
                 f"{r['slowest_operator_images_per_s'] or float('nan'):.1f})") if name == "ray" else ""
        if name == "write":
            extra = (f" ({r['pipeline_mb_per_s']:.0f} MB/s; pyarrow defaults {r['default_images_per_s']:.1f} images/s, "
                     f"{r['default_mb_per_s']:.0f} MB/s; Arrow table {r['make_table_images_per_s']:.0f} images/s)")
        load = "load {:.1f} -> {:.1f}".format(*r["load_average"]) if "load_average" in r else ""
        lines.append(f"{names[name]:<50} {r['images_per_s']:9.1f} images/s{extra}; {mem}; {load}")
    for top, base in (("ray", "naive"), ("ray", "ceiling"), ("encoder", "ceiling"), ("naive", "ceiling")):
        if {top, base} <= set(ph):
            lines.append(f"{top} / {base}: {ph[top]['images_per_s'] / ph[base]['images_per_s']:.3f}")
    if {"ray", "ceiling"} <= set(ph) and ph["ray"].get("slowest_operator_images_per_s"):
        lines.append(f"ray slowest operator / ceiling: "
                     f"{ph['ray']['slowest_operator_images_per_s'] / ph['ceiling']['images_per_s']:.3f}")
    return "\n".join(lines)


def run_bench(arch: str = "vits14", dino: str | None = None, count: int = 256, naive_count: int | None = None,
              batch_size: int = 64, sizes: list[int] | None = None, image_size: int = 256, device: str | None = None,
              actors: int | None = None, phases: list[str] | None = None, out: str | None = None) -> dict[str, Any]:
    """Measure the chosen phases, print the figures and ratios, return them (and write JSON to ``out``)."""
    import torch

    from raydino.data.synth_faces import write_faces

    sizes = sizes or [56, 112, 224]
    phases = phases or list(PHASES)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown bench phases {unknown} (known: {', '.join(PHASES)})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = header("pyramids")
    actors = actors or (torch.cuda.device_count() if device == "cuda" else info["machine"]["cores"])
    with tempfile.TemporaryDirectory(prefix="raydino-bench-") as tmp:
        dino_dir = dino or str(save_random_dino(arch, Path(tmp) / f"dinov2-{arch}"))
        needed = count if "ray" in phases else (naive_count or count) if {"naive", "decode"} & set(phases) else 0
        faces = write_faces(Path(tmp) / "faces", needed, size=image_size)
        files = sorted(str(p) for p in faces.glob("*.png"))[: naive_count or count]
        jobs = {
            "ceiling": ((ceiling, dino_dir, sizes, batch_size, count, device) if device == "cuda" or actors == 1
                        else (cpu_ceiling, dino_dir, sizes, batch_size, count, actors)),
            "naive": (naive, dino_dir, sizes, files, device),
            "decode": (decode, sizes, files),
            "write": (write, *_dims(dino_dir), sizes, batch_size),
            "encoder": (encoder, dino_dir, sizes, batch_size, count, device),
            "ray": (ray_pipeline, dino_dir, sizes, batch_size, str(faces), device, actors),
        }
        results = {
            **info,
            "config": {"arch": "given" if dino else arch, "dino": dino or f"random {arch}", "sizes": sizes,
                       "batch_size": batch_size, "count": count, "naive_count": len(files),
                       "image_size": image_size, "device": device, "actors": actors},
            "phases": {name: _isolated(*jobs[name]) for name in phases},
        }
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    print(_report(results), flush=True)
    save(results, out)
    return results
