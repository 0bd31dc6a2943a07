"""Data parallelism: DDP averages the workers' gradients, and Ray gives each worker its own rows.

The DDP check runs two gloo processes on CPU with the real generator, loss
and ``train_step``, each on its own half of a batch, against one process
on the whole batch. The shard check asks the trainer that ``build_trainer``
makes for its datasets and data config and splits them as Ray Train does
for its workers, then reads each split through ``RaySession.batches``.

The spawned DDP workers import this module: Ray, the trainer and the loop
(torchvision) are imported inside the tests that need them, which keeps a
worker's start to torch, transformers and the loss.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from raydino.config import load_config
from raydino.losses import DinoPyramidLoss
from raydino.models.generator import ProgressiveGenerator, draw_noise
from raydino.models.loading import load_dino
from raydino.pyramids import schema
from raydino.pyramids.batch import Targets, columns
from raydino.train.step import train_step

BATCH, WORKERS, LR = 8, 2, 0.5


def small_cfg(dino: str, *overrides: str):
    return load_config("demo", overrides=[f"pyramids.dino={dino}", "model.channels=[16,8]", "model.code_dim=8",
                                          "model.noise_dim=4", "loss.shift_px=0", "loss.kind=energy", *overrides])


def one_step(dino_dir: str, pyramid_dir: str, init: dict[str, torch.Tensor], rows: slice, wrap=lambda m: m) -> dict:
    """One ``train_step`` from weights ``init`` at 32 px mid fade-in (every block gets a gradient) on ``rows``.

    SGD without clipping: the update is linear in the gradient, so a sum
    instead of a mean, or one worker's own gradient, shows in the weights
    (Adam's first step is about ``lr * sign(g)`` and would hide the scale).
    """
    cfg = small_cfg(dino_dir)
    sizes = cfg.pyramids.sizes
    dino = load_dino(dino_dir)
    model = ProgressiveGenerator(cfg.model, dino.dim, sizes[0] // dino.patch_size)
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    arrays = schema.load_arrays(pyramid_dir, columns(sizes))
    targets = Targets.from_batch({k: np.array(v[:BATCH][rows]) for k, v in arrays.items()}, sizes)
    loss_fn = DinoPyramidLoss(dino, sizes, cfg.loss)
    draws = torch.arange(BATCH * loss_fn.draws).view(BATCH, loss_fn.draws)[rows].flatten()  # each target's own draws
    noise = draw_noise(BATCH * loss_fn.draws, cfg.model.noise_dim, 32, torch.Generator().manual_seed(1))[draws]
    out = train_step(wrap(model), opt, loss_fn, targets, noise, 32, 0.5,
                     grad_clip=1e9, bf16=False)
    return {"ok": out.ok, "grad": torch.cat([p.grad.flatten() for p in model.parameters()]),
            "weights": {k: v.clone() for k, v in model.state_dict().items()}}


def ddp_worker(rank: int, init_file: str, dino_dir: str, pyramid_dir: str, out_dir: str) -> None:
    """One of the spawned gloo workers: its half of the batch through DDP, as ``prepare_model`` wraps it."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORKERS)
    try:
        share = BATCH // WORKERS
        init = torch.load(f"{out_dir}/init.pt", weights_only=True)
        result = one_step(dino_dir, pyramid_dir, init, slice(rank * share, (rank + 1) * share),
                          lambda m: DistributedDataParallel(m, find_unused_parameters=True))
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def finite_worker(rank: int, init_file: str, out_dir: str) -> None:
    """A gloo worker that asks whether its batch is finite: rank 1's holds a NaN, rank 0's does not."""
    from raydino.train.runtime import all_finite, inputs_finite

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORKERS)
    try:
        batch = [torch.ones(4, 3), torch.tensor([1.0, float("nan") if rank == 1 else 2.0])]
        torch.save({"inputs": inputs_finite(batch), "loss": all_finite(batch[1].sum()),
                    "clean": inputs_finite([torch.ones(2)])}, f"{out_dir}/finite{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_workers(args: tuple, timeout_s: float = 120, worker=ddp_worker) -> None:
    ctx = mp.start_processes(worker, args=args, nprocs=WORKERS, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):  # raises with the worker's traceback if one fails
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers still running after {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def test_ddp_averages_gradients_across_workers(tiny_models, train_pyramids, tmp_path):
    from raydino.train.loop import build_models

    dino, pyramid = str(tiny_models["dino"]), str(train_pyramids)
    init = build_models(small_cfg(dino), load_dino(dino), torch.device("cpu"))[0].state_dict()
    torch.save(init, tmp_path / "init.pt")
    run_workers((str(tmp_path / "rendezvous"), dino, pyramid, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORKERS)]
    whole = one_step(dino, pyramid, init, slice(None))  # one process, the concatenated batch
    own = one_step(dino, pyramid, init, slice(0, BATCH // WORKERS))  # worker 0's half alone

    assert all(r["ok"] for r in ranks) and whole["ok"]
    assert torch.equal(ranks[0]["grad"], ranks[1]["grad"])  # the all-reduced gradient, bit for bit on each rank
    for k in whole["weights"]:
        assert torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]), k
        torch.testing.assert_close(ranks[0]["weights"][k], whole["weights"][k], rtol=1e-5, atol=1e-6, msg=k)
    rel = lambda g: ((g - whole["grad"]).norm() / whole["grad"].norm()).item()  # noqa: E731
    assert rel(ranks[0]["grad"]) < 1e-5  # the mean over workers: the whole batch's gradient
    assert rel(own["grad"]) > 0.05  # while one half's own gradient is far from it


def test_a_non_finite_batch_on_one_rank_stops_every_rank_at_once(tmp_path):
    """The loop stops on ``inputs_finite`` and skips a step on ``all_finite``: one rank's NaN must be every rank's
    answer, or the others would wait forever in the next all-reduce of gradients."""
    run_workers((str(tmp_path / "rendezvous"), str(tmp_path)), worker=finite_worker)
    ranks = [torch.load(tmp_path / f"finite{r}.pt", weights_only=True) for r in range(WORKERS)]
    assert [r["inputs"] for r in ranks] == [False, False]  # rank 0's own batch is finite: it stops with rank 1
    assert [r["loss"] for r in ranks] == [False, False]
    assert [r["clean"] for r in ranks] == [True, True]


def test_ray_workers_read_disjoint_shards_that_stay_theirs(ray_local, train_pyramids, tiny_models, tmp_path,
                                                           monkeypatch):
    import ray.train

    from raydino.train.trainer import RaySession, build_trainer

    cfg = small_cfg(str(tiny_models["dino"]), f"train.num_workers={WORKERS}",
                    "train.stages=[{resolution: 16, images: 48, batch_size: 8, lr: 0.005}]")
    trainer = build_trainer(cfg, train_pyramids, tmp_path / "run")
    node = ray_local.get_runtime_context().get_node_id()
    splits = trainer.data_config.configure(datasets=dict(trainer.datasets), world_size=WORKERS, worker_handles=None,
                                           worker_node_ids=[node] * WORKERS)
    cls_col = schema.cls_col(cfg.pyramids.sizes[0])  # one float16 vector per image: its identity
    every_row = {v.tobytes(): i for i, v in enumerate(schema.load_arrays(train_pyramids, [cls_col])[cls_col])}
    assert len(every_row) == 48

    def epoch_rows(epoch: int) -> list[list[int]]:
        """The rows each worker reads in ``epoch``, through the loop's own session code, workers side by side."""
        session = RaySession.__new__(RaySession)  # only its data order: no Ray Train context outside a worker
        session.seed, session.shuffle_buffer = cfg.train.seed, cfg.train.shuffle_buffer
        iterators = []
        for rank in range(WORKERS):
            monkeypatch.setattr(ray.train, "get_dataset_shard", lambda name, r=rank: splits[r][name])
            iterators.append(session.batches(epoch, batch_size=4))

        def read(batches) -> list[int]:
            return [every_row[np.asarray(v).tobytes()] for b in batches for v in b[cls_col].numpy()]

        with ThreadPoolExecutor(WORKERS) as pool:  # a streaming split serves its workers together
            return list(pool.map(read, iterators))

    first, second = epoch_rows(0), epoch_rows(1)
    for rows in first + second:
        assert len(rows) == len(set(rows)) == 48 // WORKERS  # every row of the shard once per epoch
    assert not set(first[0]) & set(first[1])
    assert set(first[0]) | set(first[1]) == set(range(48))
    for rank in range(WORKERS):  # the same rows every epoch (what a resumed run relies on), reshuffled
        assert set(first[rank]) == set(second[rank]) and first[rank] != second[rank]

