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
ray phase (this module) imports Ray: the others
(:mod:`raydino.bench.pyramids_phases`) run where Ray is not installed. Models
are random-weight DINOv2 architectures (speed does not depend on weights),
saved and loaded through the normal loader.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from raydino.bench.measure import Peaks, default_device, descendants, save_random_dino
from raydino.bench.pyramids_phases import ceiling, cpu_ceiling, decode, encoder, naive, write
from raydino.bench.record import header, save

PHASES = ("ceiling", "naive", "decode", "encoder", "write", "ray")


def _pss_kib(pid: int) -> int:
    """A process's proportional set size: each shared page (the object store) split among the processes mapping it."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _node_memory(device: str) -> dict[str, float]:
    """Summed PSS of this process and its descendants (the local Ray node), which counts the store once,
    not once per worker; and GPU memory in use on the device when ``device`` is cuda."""
    import torch

    me = os.getpid()
    figures = {"pss_mib": sum(_pss_kib(p) for p in [me, *descendants(me)]) / 1024}
    if device == "cuda":
        figures["gpu_mib"] = torch.cuda.device_memory_used() / 2**20
    return figures


def operator_rates(stats: str) -> dict[str, float]:
    """Input rows per second of each Ray Data operator over its active span, from ``Dataset.stats()``.

    Unlike the end-to-end rate, these leave out the start-up (actor start,
    model load), which dominates short runs: on a fast GPU the encoder can
    start later after decoding than the whole set then takes. The slowest is
    a conservative steady rate: a stage held back by another (decode waiting
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
    with Peaks(lambda: _node_memory(device), every_s=0.25) as memory:
        full = build_pyramids(cfg, str(images), out / "full")
    ray.shutdown()
    # a full run no slower than the quarter means start-up jitter swamped the difference: no steady rate
    steady = ((full["rows"] - small["rows"]) / (full["seconds"] - small["seconds"])
              if full["seconds"] > small["seconds"] else float("nan"))
    stats = (out / "full" / STATS).read_text()
    rates = operator_rates(stats)
    result = {"images_per_s": steady, "end_to_end_images_per_s": full["images_per_s"], "rows": full["rows"],
              "seconds": full["seconds"], "quarter_seconds": small["seconds"],
              "peak_pss_mib": memory.peaks.get("pss_mib", 0.0),
              "operator_images_per_s": rates, "slowest_operator_images_per_s": min(rates.values(), default=None),
              "ray_data_stats": stats}
    if device == "cuda":
        result["peak_gpu_used_mib"] = memory.peaks.get("gpu_mib", 0.0)
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
    device = default_device(device)
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
