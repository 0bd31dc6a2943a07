"""``raydino bench train``: training throughput, FLOPs per step and MFU.

Two phases, each timing the real training step (``train.step.train_step``:
generator, multi-level DINOv2 loss, backward through the frozen encoder,
clipping, AdamW):

- ``device`` (no Ray, so it runs where Ray is not installed): one process,
  batches already on the device, for each batch size given and optionally
  compiled or channels-last. It counts the FLOPs of one step with
  ``torch.utils.flop_counter.FlopCounterMode`` and, on CUDA, reports MFU =
  counted FLOPs x steps/s / the GPU's dense bf16 peak (datasheet), and the
  same rate against a bf16 matrix product measured in the same run.
- ``ray``: the same step under Ray Train (2 gloo workers on CPU; 1 worker,
  NCCL, bf16 on a GPU machine), fed from the pyramid through Ray Data
  (``get_dataset_shard`` -> ``iter_torch_batches``, a new iterator per
  epoch, as training does) and from one batch kept on the device, in the
  same workers. Reported apart: the steady rate inside an epoch, the wait
  for an epoch's first batch (a fixed cost per epoch), and the ratio of both
  to the in-memory rate (the input-pipeline ratio). The pyramid is written
  first with ``PyramidEncoder`` on synthetic faces, so it is real pyramid data.

Speed does not depend on weights: the DINOv2 is a random model of the named
size (``--arch``), saved and loaded through the normal loader.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from raydino.bench.measure import default_device, peak_gpu_mib, save_random_dino, seconds_per_call
from raydino.bench.record import header, save
from raydino.config import Config, StageConfig, load_config
from raydino.losses import DinoPyramidLoss
from raydino.models.generator import Noise, draw_noise
from raydino.models.loading import load_dino
from raydino.pyramids.batch import Targets
from raydino.train.step import train_step

if TYPE_CHECKING:
    from raydino.train.trainer import RaySession

WARMUP = 3
# dense bf16 tensor-core peaks from the vendors' spec sheets (SXM parts), FLOP/s
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def bench_config(arch: str, resolutions: list[int], batch_size: int) -> Config:
    """The demo preset's sizes for the tiny model, ffhq256's for the real-size ones."""
    stages = ", ".join(f"{{resolution: {r}, images: {batch_size}, batch_size: {batch_size}, lr: 0.001}}"
                       for r in resolutions)
    return load_config("demo" if arch == "tiny" else "ffhq256",
                       overrides=[f"train.stages=[{stages}]", f"model.max_resolution={max(max(resolutions), 32)}"])


def synthetic_targets(cfg: Config, dim: int, batch: int, device: torch.device) -> Targets:
    """Random tokens and thumbnails of the pyramid's shapes, already on ``device``."""
    g = torch.Generator().manual_seed(0)
    sizes = cfg.pyramids.sizes
    return Targets(tokens=[torch.randn(batch, (s // 14) ** 2, dim, generator=g).to(device) for s in sizes],
                   cls=[torch.randn(batch, dim, generator=g).to(device) for _ in sizes],
                   thumb=torch.rand(batch, 3, cfg.pyramids.thumb_size, cfg.pyramids.thumb_size, generator=g).to(device))


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step``, as PyTorch's ``FlopCounterMode`` counts them.

    Its table has no entry for the CPU's fused attention kernel, so on CPU a
    ViT's attention would count zero; the entries below use PyTorch's own SDPA
    formulas, the ones it applies to the CUDA kernels. The backward's count
    includes the attention scores that the fused kernels recompute (about 2%
    of a ViT-B/14 step's FLOPs): hardware FLOPs, not model FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    cpu_sdpa = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(g, q, k, v),
    }
    counter = FlopCounterMode(display=False, custom_mapping=cpu_sdpa)
    with counter:
        step()
    return counter.get_total_flops()


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Measured dense bf16 matrix-product rate on random data: the ceiling the step can be held to."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / seconds_per_call(lambda: a @ b, repeats, device, warmup=3) / 1e12


def device_phase(cfg: Config, dino_dir: str, batches: list[int], steps: int, device: torch.device,
                 compile_mode: str = "none", channels_last: bool = False) -> list[dict[str, Any]]:
    """Per stage and batch size: images/s on in-device batches, FLOPs per step, MFU on CUDA.

    ``compile_mode``: ``generator`` compiles the generator, ``all`` the DINOv2
    loss encoder too. FLOPs are counted on the eager models (the same
    arithmetic), since the counter does not see inside compiled graphs.
    """
    from raydino.train.loop import build_models

    dino = load_dino(dino_dir, device)
    model, _, opt = build_models(cfg, dino, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    eager_dino = dino.model
    loss_fn = DinoPyramidLoss(dino, cfg.pyramids.sizes, cfg.loss)
    bf16 = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    measured = matmul_tflops(device) if device.type == "cuda" else None
    rows = []
    for batch in batches:
        targets = synthetic_targets(cfg, dino.dim, batch, device)
        noise = model.draw_noise(batch * loss_fn.draws, cfg.model.max_resolution, device=device)
        for stage in cfg.train.stages:
            def step(net: torch.nn.Module = model, res: int = stage.resolution, targets: Targets = targets,
                     noise: Noise = noise) -> None:
                train_step(net, opt, loss_fn, targets, noise, res, 1.0, grad_clip=1.0, bf16=bf16)

            dino.model = eager_dino
            step()
            flops = count_flops(step)
            net = model
            if compile_mode != "none":
                net = torch.compile(model)
                if compile_mode == "all":
                    dino.model = torch.compile(eager_dino)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = seconds_per_call(lambda net=net, step=step: step(net), steps, device, WARMUP)
            row = {"resolution": stage.resolution, "batch": batch, "compile": compile_mode,
                   "channels_last": channels_last, "bf16": bf16, "ms_per_step": 1e3 * seconds,
                   "images_per_s": batch / seconds, "gflop_per_step": flops / 1e9,
                   "tflop_per_s": flops / seconds / 1e12}
            if peak:
                row["mfu"] = flops / seconds / peak
            if measured:
                row["matmul_tflop_per_s"] = measured
                row["fraction_of_measured_matmul"] = flops / seconds / 1e12 / measured
            if device.type == "cuda":
                row["peak_gpu_mib"] = peak_gpu_mib(device)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _time_feeds(cfg: Config, stage: StageConfig, session: RaySession, net: torch.nn.Module,
                opt: torch.optim.Optimizer, loss_fn: DinoPyramidLoss, epochs: int) -> dict[str, float]:
    """The step fed by the worker's Ray Data shard (per epoch: the wait for its first batch, then the
    steady steps), and the same step on one batch kept in memory. The first epoch is the warm-up."""
    per_worker = stage.batch_size // session.world_size
    device = session.device
    noise = draw_noise(per_worker * loss_fn.draws, cfg.model.noise_dim, stage.resolution, device=device)

    def step(batch: dict | Targets) -> None:
        targets = batch if isinstance(batch, Targets) else Targets.from_batch(batch, cfg.pyramids.sizes, device)
        train_step(net, opt, loss_fn, targets, noise, stage.resolution, 1.0, grad_clip=1.0,
                   bf16=device.type == "cuda")

    waits, steady_s, steady_n, fixed = [], 0.0, 0, None
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        batches = iter(session.batches(epoch, per_worker))
        fixed = next(batches)
        wait = time.perf_counter() - start
        step(fixed)
        start, n = time.perf_counter(), 0
        for batch in batches:
            step(batch)
            n += 1
        if epoch:  # epoch 0 warms up
            waits.append(wait)
            steady_s, steady_n = steady_s + time.perf_counter() - start, steady_n + n
    resident = Targets.from_batch(fixed, cfg.pyramids.sizes, device)  # the device phase's input: no copy per step
    in_memory = seconds_per_call(lambda: step(resident), steady_n // epochs, device, WARMUP)
    steady = steady_s / steady_n
    steps_per_epoch = steady_n // epochs + 1
    epoch_wait = sum(waits) / len(waits)
    return {"steps_per_epoch": steps_per_epoch, "epoch_start_wait_s": epoch_wait,
            "ray_data_images_per_s": stage.batch_size / steady, "in_memory_images_per_s": stage.batch_size / in_memory,
            "ratio_steady": in_memory / steady,
            "ratio_with_epoch_start": steps_per_epoch * in_memory / (steps_per_epoch * steady + epoch_wait)}


def _ray_worker(config: dict) -> list[dict[str, Any]]:
    """In each Ray Train worker: the step fed by Ray Data, then by one in-memory batch."""
    import ray.train

    from raydino.config import from_dict
    from raydino.train.loop import build_models
    from raydino.train.trainer import RaySession

    cfg = from_dict(config["cfg"])
    torch.set_num_threads(1)
    session = RaySession(cfg.train.seed, cfg.train.shuffle_buffer, find_unused_parameters=True)
    dino = load_dino(cfg.pyramids.dino, session.device)
    model, _, opt = build_models(cfg, dino, session.device)
    net = session.prepare(model)
    loss_fn = DinoPyramidLoss(dino, cfg.pyramids.sizes, cfg.loss)
    rows = []
    for stage in cfg.train.stages:
        rows.append({"resolution": stage.resolution, "batch": stage.batch_size, "workers": session.world_size,
                     **_time_feeds(cfg, stage, session, net, opt, loss_fn, config["epochs"])})
        ray.train.report({"resolution": stage.resolution})
    return rows


def ray_phase(cfg: Config, dino_dir: str, rows: int, epochs: int, workdir: Path) -> list[dict[str, Any]]:
    """Each stage's step under Ray Train, fed by Ray Data from a real pyramid: the input pipeline's cost."""
    import ray
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydino.config import to_dict
    from raydino.data.synth_faces import write_faces
    from raydino.train.ray_data import ordered_ingest, training_dataset

    pyramid = workdir / "pyramid"
    pyramid.mkdir()
    faces = write_faces(workdir / "faces", rows, seed=0, size=128)
    _write_pyramid(faces, pyramid, dino_dir, cfg.pyramids.sizes)
    gpu = torch.cuda.is_available()
    workers = 1 if gpu else 2
    if not ray.is_initialized():
        ray.init(num_cpus=None if gpu else 2, include_dashboard=False, log_to_driver=False)
    cfg.pyramids.dino, cfg.train.num_workers, cfg.train.use_gpu = dino_dir, workers, gpu
    trainer = TorchTrainer(
        _ray_worker, train_loop_config={"cfg": to_dict(cfg), "epochs": epochs},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
        datasets={"train": training_dataset(cfg, pyramid, rows)},
        dataset_config=DataConfig(execution_options=ordered_ingest(), enable_shard_locality=False),
        run_config=RunConfig(storage_path=str(workdir), name="bench"),
    )
    out = trainer.fit().return_value
    for row in out:
        print(json.dumps(row), flush=True)
    return out


def _write_pyramid(faces: Path, out: Path, dino_dir: str, sizes: list[int]) -> None:
    """The pyramid of ``faces`` through ``PyramidEncoder``, as the extraction actors write it."""
    import numpy as np
    import pyarrow.parquet as pq

    from raydino.data.images import read_image
    from raydino.pyramids import schema
    from raydino.pyramids.features import PyramidEncoder

    encoder = PyramidEncoder(dino_dir, sizes)
    paths = sorted(str(p) for p in faces.glob("*.png"))
    images = np.stack([read_image(p, max(sizes)) for p in paths])
    batch = encoder({"image": images, "id": [schema.stable_id(p) for p in paths], "path": paths})
    pq.write_table(schema.make_table(batch), out / "part-00000.parquet")


def run_bench(arch: str = "tiny", resolution: list[int] | tuple[int, ...] = (16, 32),
              batch_size: list[int] | tuple[int, ...] = (16,), steps: int = 20, rows: int = 256, epochs: int = 2,
              device: str | None = None, phases: list[str] | tuple[str, ...] = ("device", "ray"),
              out: str | None = None, compile_mode: str = "none", channels_last: bool = False,
              materialize: bool = True) -> dict[str, Any]:
    """Run the phases, print one JSON line per stage and phase, return (and optionally save) everything.

    The device phase times every batch size in ``batch_size``; the ray phase
    uses the first as its global batch.
    """
    dev = torch.device(default_device(device))
    cfg = bench_config(arch, list(resolution), batch_size[0])
    cfg.train.materialize = materialize
    results: dict[str, Any] = {**header("train"), "arch": arch, "sizes": cfg.pyramids.sizes,
                               "channels": cfg.model.channels, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        dino_dir = str(save_random_dino(arch, Path(tmp) / "dino"))
        if "device" in phases:
            results["device"] = device_phase(cfg, dino_dir, list(batch_size), steps, dev, compile_mode, channels_last)
        if "ray" in phases:
            results["ray"] = ray_phase(cfg, dino_dir, rows, epochs, Path(tmp))
    save(results, out)
    return results
