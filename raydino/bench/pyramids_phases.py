"""The phases of ``raydino bench pyramids`` that run without Ray: the baselines and each stage alone.

Each is a plain function of picklable arguments returning its figures, since
the bench runs each in a fresh process (see :mod:`raydino.bench.pyramids`).
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from raydino.bench.measure import peak_gpu_mib, peak_rss_mib, seconds_per_call

WARMUP = 2


def _autocast(device: str) -> AbstractContextManager:
    """bf16 autocast on CUDA, as :class:`PyramidEncoder` does; fp32 on CPU."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()


def peaks(device: str) -> dict[str, float]:
    """The phase process's peak memory: RSS, and on CUDA what PyTorch allocated."""
    figures = {"peak_rss_mib": peak_rss_mib()}
    if device == "cuda":
        figures["peak_gpu_mib"] = peak_gpu_mib()
    return figures


def ceiling(dino_dir: str, sizes: list[int], batch_size: int, count: int, device: str, threads: int | None = None,
            barrier: Any = None) -> dict[str, float]:
    """Model-only images/s: every level of a batch of tensors already on the device.

    ``threads`` limits torch's CPU threads; ``barrier`` (shared with other
    processes) makes parallel copies start timing together.
    """
    import torch

    from raydino.models.encoders import dino_levels
    from raydino.models.loading import load_dino

    if threads:
        torch.set_num_threads(threads)
    dino = load_dino(dino_dir, device)
    x = torch.rand(batch_size, 3, max(sizes), max(sizes), device=device)
    steps = max(1, math.ceil(count / batch_size))
    with torch.inference_mode(), _autocast(device):
        seconds = seconds_per_call(lambda: dino_levels(dino, x, sizes), steps, device, WARMUP,
                                   ready=barrier.wait if barrier is not None else None)
    return {"images_per_s": batch_size / seconds, **peaks(device)}


def cpu_ceiling(dino_dir: str, sizes: list[int], batch_size: int, count: int, processes: int) -> dict[str, Any]:
    """The CPU ceiling as the pipeline runs there: ``processes`` one-thread encoders at once, rates summed.

    On a CPU-only machine the pipeline runs one one-thread actor per core, and
    one process with a thread per core is no bound for that: it can run
    slower than the pipeline itself.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            parts = [pool.submit(ceiling, dino_dir, sizes, batch_size, math.ceil(count / processes), "cpu", 1, barrier)
                     for _ in range(processes)]
            rates = [part.result()["images_per_s"] for part in parts]
    return {"images_per_s": sum(rates), "processes": processes, "per_process_images_per_s": rates, **peaks("cpu")}


def encoder(dino_dir: str, sizes: list[int], batch_size: int, count: int, device: str) -> dict[str, float]:
    """The actor stage alone, no Ray: uint8 crops in host memory -> Arrow table of every level."""
    import numpy as np

    from raydino.pyramids import schema
    from raydino.pyramids.extract import ArrowPyramidEncoder

    enc = ArrowPyramidEncoder(dino_dir, sizes, device=device)
    rng = np.random.default_rng(0)
    ids = np.array([f"{i}" for i in range(batch_size)], dtype=object)
    batch = {schema.IMAGE: rng.integers(0, 256, (batch_size, max(sizes), max(sizes), 3), dtype=np.uint8),
             schema.ID: ids, schema.PATH: ids}
    seconds = seconds_per_call(lambda: enc(batch), max(1, math.ceil(count / batch_size)), device, WARMUP)
    return {"images_per_s": batch_size / seconds, **peaks(device)}


def naive(dino_dir: str, sizes: list[int], files: list[str], device: str) -> dict[str, Any]:
    """Per image: PIL open, the HF image processor at each level's size, one forward per level."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, Dinov2Model

    processor = AutoImageProcessor.from_pretrained(dino_dir)
    model = Dinov2Model.from_pretrained(dino_dir).eval().to(device)

    def one(path: str) -> None:
        # the baseline measures the loop one writes first, so it opens files with bare PIL, not read_image
        img = Image.open(path)
        for s in sizes:
            inputs = processor(images=img, size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                               return_tensors="pt")
            model(pixel_values=inputs["pixel_values"].to(device)).last_hidden_state.float().cpu()

    with torch.inference_mode(), _autocast(device):
        for path in files[:WARMUP]:
            one(path)
        seconds = seconds_per_call(lambda: [one(path) for path in files], 1, device)
    return {"images_per_s": len(files) / seconds, "processor": type(processor).__name__, **peaks(device)}


def decode(sizes: list[int], files: list[str]) -> dict[str, Any]:
    """One core's images/s of the decode stage (read, decode, crop): how many cores feed the encoder."""
    from raydino.config import PyramidConfig
    from raydino.data.images import decode_image

    cfg = PyramidConfig()

    def decode_all() -> None:
        for path in files:
            decode_image(Path(path).read_bytes(), max(sizes), min_side=cfg.min_side, max_pixels=cfg.max_pixels)

    return {"images_per_s": len(files) / seconds_per_call(decode_all, 1, "cpu"), **peaks("cpu")}


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
    result: dict[str, Any] = {"table_mb": table.nbytes / 1e6,
                              "make_table_images_per_s": batch_size / seconds_per_call(
                                  lambda: schema.make_table(batch), repeats, "cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in (("default", {}), ("pipeline", PARQUET_WRITE)):
            path = Path(tmp) / f"{name}.parquet"
            rate = batch_size / seconds_per_call(lambda path=path, settings=settings:
                                                 pq.write_table(table, path, **settings), repeats, "cpu")
            result[f"{name}_images_per_s"] = rate
            result[f"{name}_mb_per_s"] = rate / batch_size * result["table_mb"]
            result[f"{name}_file_mb"] = path.stat().st_size / 1e6
    return {"images_per_s": result["pipeline_images_per_s"], **result, **peaks("cpu")}
