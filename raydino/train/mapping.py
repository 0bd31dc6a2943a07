"""Fit the coarse-code prior and the CLIP -> coarse-code mapping of a run.

The prior is a closed-form PCA fit on the driver. The mapping trains as a Ray
Train job of its own (it reads the pyramid's CLIP embeddings and coarse codes
through Ray Data, like the generator), checkpointed every epoch so a restart
resumes, and its weights land beside the generator as safetensors.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from raydino.config import Config
from raydino.models.mapping import TextToCode, perturb
from raydino.models.prior import PCAGaussianPrior
from raydino.progress import CountFile
from raydino.pyramids import schema

PRIOR_FILE, MAPPING_FILE, MAPPING_META = "prior.safetensors", "mapping.safetensors", "mapping.json"
MAPPING_PROGRESS = "mapping-progress.json"  # steps done, for the driver's progress line (rank 0 writes it)
BATCH = 64
CHUNK = 100  # steps between checkpoints


def coarse_codes(pyramid_dir: str | Path, cfg: Config) -> torch.Tensor:
    """All coarse codes (the coarsest level's patch tokens) of a pyramid, float32."""
    col = schema.tokens_col(cfg.pyramids.sizes[0])
    return torch.tensor(schema.load_arrays(pyramid_dir, [col])[col], dtype=torch.float32)


def fit_prior(cfg: Config, pyramid_dir: str | Path, run_dir: str | Path) -> Path:
    prior = PCAGaussianPrior.fit(coarse_codes(pyramid_dir, cfg), cfg.sample.prior_components)
    path = Path(run_dir) / PRIOR_FILE
    prior.save(path)
    return path


def _shard_tensors(shard) -> tuple[torch.Tensor, torch.Tensor]:
    """Read this worker's shard once: the mapping's data is small, its epochs many."""
    embs, codes = [], []
    for batch in shard.iter_torch_batches(batch_size=1024, dtypes=torch.float32):
        embs.append(F.normalize(batch["clip"], dim=-1))
        codes.append(batch["code"])
    return torch.cat(embs), torch.cat(codes)


def _train_loop(loop: dict) -> None:
    """Runs on every Ray Train worker: ``steps`` minibatch steps, a checkpoint per chunk."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(loop["seed"])
    model = TextToCode(loop["clip_dim"], loop["tokens"], loop["dim"])
    model.code_mean.copy_(loop["code_mean"])
    model.code_std.copy_(loop["code_std"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = 0
    if ckpt := ray.train.get_checkpoint():
        with ckpt.as_directory() as d:
            model.load_state_dict(load_file(str(Path(d) / MAPPING_FILE)))
            state = torch.load(Path(d) / "state.pt", weights_only=True)
            opt.load_state_dict(state["opt"])
            step = state["step"]
    net = ray.train.torch.prepare_model(model)
    emb, target = _shard_tensors(ray.train.get_dataset_shard("train"))
    target = model.standardise(target)
    gen = torch.Generator().manual_seed(loop["seed"] * 1000 + rank * 100_000 + step)
    counter = CountFile(loop["progress"])
    while step < loop["steps"]:
        chunk_end = min(step + CHUNK, loop["steps"])
        total = 0.0
        for i in range(step, chunk_end):
            idx = torch.randint(len(emb), (BATCH,), generator=gen)
            loss = F.mse_loss(net(perturb(emb[idx], loop["noise"], gen)), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            if rank == 0:
                counter.update(i + 1, force=i + 1 == chunk_end)
        step = chunk_end
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                save_file(model.state_dict(), str(Path(d) / MAPPING_FILE))
                torch.save({"opt": opt.state_dict(), "step": step}, Path(d) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"step": step, "loss": total / CHUNK}, checkpoint=checkpoint)


def fit_mapping(cfg: Config, pyramid_dir: str | Path, run_dir: str | Path, num_workers: int = 1) -> Path:
    """Train the mapping with Ray Train and copy its weights into ``run_dir``."""
    import ray.data
    import ray.train
    from ray.train import DataConfig
    from ray.train.torch import TorchTrainer

    from raydino.train.trainer import ordered_ingest

    manifest = schema.read_manifest(pyramid_dir)
    if not manifest.get("clip"):
        raise ValueError(f"{pyramid_dir}: the pyramid has no CLIP embeddings; recompute it with --clip")
    codes = coarse_codes(pyramid_dir, cfg)
    stats = TextToCode(1, codes.shape[1], codes.shape[2])
    stats.set_code_stats(codes)
    col = schema.tokens_col(cfg.pyramids.sizes[0])
    ds = ray.data.read_parquet(schema.shard_files(pyramid_dir), columns=[schema.CLIP, col]).rename_columns({col: "code"})
    clip_dim = int(manifest["clip"]["dim"])
    loop = {
        "seed": cfg.sample.seed, "clip_dim": clip_dim, "tokens": codes.shape[1], "dim": codes.shape[2],
        "code_mean": stats.code_mean, "code_std": stats.code_std, "noise": cfg.sample.mapping_noise,
        "steps": cfg.sample.mapping_steps, "progress": str(Path(run_dir).resolve() / MAPPING_PROGRESS),
    }
    run_dir = Path(run_dir).resolve()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=False),
        run_config=ray.train.RunConfig(
            name="mapping", storage_path=str(run_dir / "ray_results"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
        datasets={"train": ds},
        dataset_config=DataConfig(execution_options=ordered_ingest(), enable_shard_locality=False),  # same rows, same order
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        shutil.copy(Path(d) / MAPPING_FILE, run_dir / MAPPING_FILE)
    meta = {"clip": manifest["clip"], "noise": cfg.sample.mapping_noise, "steps": loop["steps"],
            "final_loss": result.metrics.get("loss")}
    (run_dir / MAPPING_META).write_text(json.dumps(meta, indent=2))
    return run_dir / MAPPING_FILE


def load_mapping(run_dir: str | Path) -> TextToCode:
    run_dir = Path(run_dir)
    path = run_dir / MAPPING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this run has no text mapping (fit one with `raydino fit-codes`)")
    state = load_file(str(path))
    clip_dim = state["net.0.weight"].shape[1]
    dim = state["code_mean"].shape[0]
    tokens = state["net.4.weight"].shape[0] // dim
    model = TextToCode(clip_dim, tokens, dim)
    model.load_state_dict(state)
    return model.eval()
