"""``raydino bench prior``: the prior's training memory against the row count, and its step time at a preset's size.

- ``memory``: synthetic pyramids of random codes (``[16, 768]`` float16 and a
  512-wide CLIP column, ``--rows`` rows each) go through ``train_prior`` as a
  user's would (Ray Data streaming, one Ray Train worker, the same number of
  steps for every size: enough to read every row of the largest). Each size
  runs in a fresh process with a Ray of its own, so the driver's peak RSS
  (``ru_maxrss``) and the worker's (``VmHWM``, polled from ``/proc``) belong
  to that size alone. Flat figures: nothing holds every code.
- ``step``: one optimizer step (forward, backward, AdamW) of the preset's
  prior on random codes, timed after warm-up: what a step costs on this device.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from raydino.bench.measure import Peaks, default_device, descendants, median_seconds, peak_rss_mib
from raydino.bench.record import header, save
from raydino.config import load_config
from raydino.models.flow_prior import FlowPrior, flow_matching_loss
from raydino.pyramids import schema

TOKENS, DIM, CLIP_DIM = 16, 768, 512  # the ffhq256 preset's coarse code and CLIP width


def write_codes(out: Path, rows: int, shard_rows: int = 1000) -> Path:
    """A pyramid holding only random coarse codes and CLIP vectors, in shards of ``shard_rows``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for start in range(0, rows, shard_rows):
        n = min(shard_rows, rows - start)
        pq.write_table(schema.make_table({
            "id": [f"{i:08d}" for i in range(start, start + n)],
            schema.tokens_col(56): rng.standard_normal((n, TOKENS, DIM), dtype=np.float32).astype(np.float16),
            schema.CLIP: rng.standard_normal((n, CLIP_DIM), dtype=np.float32).astype(np.float16)}),
            out / f"part-{start // shard_rows:05d}.parquet")
    schema.write_manifest(out, schema.new_manifest(source="random", rows=rows, levels=[56, 112, 224], dim=DIM,
                                                   dino={"source": "random", "hash": "-"},
                                                   clip={"source": "random", "hash": "-", "dim": CLIP_DIM}))
    return out


def _worker_memory() -> dict[str, float]:
    """The largest of this process's Ray Train workers' peak RSS (VmHWM), private (RssAnon) and shared memory.

    RSS also counts the pages of Ray's shared-memory object store that the
    worker has touched (the blocks it was fed); RssAnon is what the process
    itself holds.
    """
    figures: dict[str, float] = {}
    for pid in descendants(os.getpid()):
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                continue
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except OSError:
            continue
        for key, name in (("VmHWM", "worker_peak_rss_mib"), ("RssAnon", "worker_peak_private_mib"),
                          ("RssShmem", "worker_peak_shared_mib")):
            figures[name] = max(figures.get(name, 0.0), int(fields[key].split()[0]) / 1024)
    return figures


def _memory_run(pyramid: str, run_dir: str, steps: int, result: mp.Queue) -> None:
    """In a fresh process: a Ray of its own, one prior training, its peak RSS figures."""
    import ray

    from raydino.train.prior_trainer import train_prior

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = load_config("demo", overrides=[f"prior.steps={steps}", "prior.checkpoint_every=1000000",
                                         "prior.log_every=1000000", "prior.materialize=false", "prior.fit_rows=1024",
                                         "pyramids.sizes=[56,112,224]"])
    start = time.time()
    with Peaks(_worker_memory, every_s=0.2) as workers:
        figures = train_prior(cfg, pyramid, run_dir)
    result.put({"driver_peak_rss_mib": peak_rss_mib(), **workers.peaks,
                "steps": figures["step"], "codes_seen": figures["codes_seen"],
                "time_s": round(time.time() - start, 1)})
    ray.shutdown()


def memory_phase(rows: list[int], batch_size: int = 64) -> dict:
    """The memory figures for each row count, each from its own process: a peak RSS never goes down."""
    out = {}
    steps = -(-max(rows) // batch_size) + 10  # the largest set's epoch and a bit, for every size: same work
    for n in rows:
        with tempfile.TemporaryDirectory() as tmp:
            pyramid = write_codes(Path(tmp) / "codes", n)
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=_memory_run, args=(str(pyramid), str(Path(tmp) / "run"), steps, queue))
            proc.start()
            out[n] = queue.get()
            proc.join()
        m = out[n]
        print(f"memory, {n} rows: driver peak RSS {m['driver_peak_rss_mib']:.0f} MiB; worker peak RSS "
              f"{m['worker_peak_rss_mib']:.0f} MiB, of which private at most {m['worker_peak_private_mib']:.0f} MiB "
              f"and object-store pages at most {m['worker_peak_shared_mib']:.0f} MiB ({m['steps']} steps, "
              f"{m['time_s']} s)", flush=True)
    return out


def step_phase(preset: str, batch_size: int, device: torch.device, repeats: int) -> dict:
    """Median time of one training step: forward, backward and AdamW, so the figure is the training cost."""
    cfg = load_config(preset)
    torch.manual_seed(0)
    model = FlowPrior(cfg.prior, TOKENS, DIM, CLIP_DIM).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.prior.lr)
    x = torch.randn(batch_size, TOKENS, DIM, device=device)
    cond = torch.nn.functional.normalize(torch.randn(batch_size, CLIP_DIM, device=device), dim=-1)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = flow_matching_loss(model, x, cond, gen, cfg.prior.clip_noise, cfg.prior.cond_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_seconds(step, device, warmup=1, repeats=repeats)
    params = sum(p.numel() for p in model.parameters())
    print(f"{preset} prior ({params / 1e6:.1f} M parameters), batch {batch_size} on {device}: "
          f"{seconds * 1e3:.0f} ms per step, {batch_size / seconds:.0f} codes/s", flush=True)
    return {"preset": preset, "params": params, "batch": batch_size, "device": str(device),
            "step_ms": seconds * 1e3, "codes_per_s": batch_size / seconds}


def run_bench(phases: list[str], rows: list[int], preset: str = "ffhq256", batch_size: int = 256,
              repeats: int = 3, device: str | None = None, out: str | None = None) -> dict:
    dev = torch.device(default_device(device))
    figures: dict = header("prior")
    if "memory" in phases:
        figures["memory"] = memory_phase(rows)
    if "step" in phases:
        figures["step"] = step_phase(preset, batch_size, dev, repeats)
    save(figures, out)
    print(json.dumps({k: v for k, v in figures.items() if k in ("memory", "step")}, indent=1))
    return figures
