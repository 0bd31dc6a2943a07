"""Ray Train wiring: the driver builds a ``TorchTrainer``, every worker runs ``loop.fit_generator``.

Ray stays at this edge. The driver checks the pyramid against the config
before any worker starts, hands the parquet to Ray Data (tensor columns
only) and configures DDP, checkpoints and failure handling; the worker side
is a :class:`RaySession` that gives the loop its shard, its device and
Ray's checkpoints.

The data side (the pyramid as a Ray Data dataset, in the same order on
every epoch and every run) is :mod:`raydino.train.ray_data`. A resumed run
recreates the epoch's iterator and skips the batches already consumed, so
it sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import ray.data
import ray.train
import ray.train.torch
import ray.util
import torch
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
    WorkerGroupError,
)
from ray.train.torch import TorchTrainer
from torch import nn

from raydino.config import Config, RayWorkers, from_dict, save_config, to_dict
from raydino.data_fit import fit_to_rows
from raydino.layout import Checkpoint, Run
from raydino.pyramids import schema
from raydino.pyramids.batch import columns
from raydino.train import checkpoint
from raydino.train.preflight import bind_pyramid, corrupt_pyramid, holdout_payload, run_exists
from raydino.train.ray_data import ordered_ingest, training_dataset
from raydino.train.session import epoch_seed

with contextlib.suppress(ImportError):
    # Ray Data imports this lazily from whichever thread first resolves a path; two threads doing it at
    # once can see a half-initialised module ("cannot import name 'HTTPFileSystem'").
    import fsspec.implementations.http  # noqa: F401

log = logging.getLogger(__name__)
T = TypeVar("T")

FAIL_ENV = "RAYDINO_FAIL_AT_STEP"


class TrainingError(RuntimeError):
    """A training run that failed on its workers (the message names each worker's error)."""


class RaySession:
    """The loop's view of a Ray Train worker: its shard shuffled by (``seed``, epoch), DDP, Ray's checkpoints."""

    def __init__(self, seed: int, shuffle_buffer: int, find_unused_parameters: bool = False):
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.seed, self.shuffle_buffer, self.find_unused_parameters = seed, shuffle_buffer, find_unused_parameters

    def batches(self, epoch: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        return ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=batch_size, drop_last=True, local_shuffle_buffer_size=self.shuffle_buffer,
            local_shuffle_seed=epoch_seed(self.seed, epoch), device="cpu",
        )

    def prepare(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": self.find_unused_parameters})

    def checkpoint_dirs(self) -> Iterator[Path]:
        latest = ray.train.get_checkpoint()
        if latest is None:
            return
        kept = sorted(ray.train.get_all_reported_checkpoints(), key=lambda r: r.metrics.get("step", -1), reverse=True)
        candidates = [latest] + [r.checkpoint for r in kept if r.checkpoint.path != latest.path]
        for ckpt in candidates:
            with ckpt.as_directory() as d:
                yield Path(d)

    def wait_for_checkpoints(self) -> None:
        # Ray commits a report when its controller next polls the workers (every 2 s by default)
        ray.train.get_all_reported_checkpoints()

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                         checkpoint_dir_name=Checkpoint.folder(metrics["step"]))


def worker_setup(workers: RayWorkers) -> None:
    """Threads (one per CPU the worker holds) and log levels of a Ray Train worker process."""
    torch.set_num_threads(max(1, int(workers.cpus_per_worker)))
    # Train V2 logs each report at INFO through a logger named by its file path (so its LoggingConfig
    # does not reach it) into the root logger's console handler; raydino's own lines stay at INFO.
    logging.getLogger().setLevel(workers.ray_log_level)
    logging.getLogger("raydino").setLevel(logging.INFO)


def _train_fn(loop_config: dict) -> dict:
    """Runs on every Ray Train worker."""
    from raydino.train import loop

    cfg = from_dict(loop_config["cfg"])
    worker_setup(cfg.train)
    if loop_config["record_placement_group"] and ray.train.get_context().get_world_rank() == 0:
        record_placement_group(Run(loop_config["run_dir"]))
    # blocks above the current stage get no gradient yet
    session = RaySession(cfg.train.seed, cfg.train.shuffle_buffer, find_unused_parameters=True)
    return loop.fit_generator(cfg, loop_config["pyramids"], loop_config["run_dir"], session,
                    fail_at_step=loop_config["fail_at_step"], holdout=loop_config["holdout"])


def record_placement_group(run: Run) -> None:
    """Append this worker's placement group to ``run.placement_groups``.

    A sweep trial's worker group outlives the trial when ASHA stops it (see
    :mod:`raydino.sweep.placement`); only the workers can name their group
    through Ray's public API, and a restarted worker group appends its own.
    """
    if (pg := ray.util.get_current_placement_group()) is not None:
        with open(run.placement_groups, "a") as f:
            f.write(pg.id.hex() + "\n")


def build_trainer(cfg: Config, pyramids_dir: str | Path, run_dir: str | Path, *, name: str | None = None,
                  storage_path: str | None = None, callbacks: list | None = None,
                  dataset: ray.data.Dataset | None = None, holdout: str | Path | None = None,
                  manifest: dict | None = None, record_placement_group: bool = False):
    """A ``TorchTrainer`` for ``cfg`` (Ray Tune calls this inside a trial with its own name/storage/callbacks).

    Checkpoints go to ``storage_path/name`` (default ``RUN_DIR/checkpoints``);
    rank 0 writes TensorBoard and grids to ``run_dir`` (a shared filesystem
    on a multi-node cluster). ``dataset`` is a ``training_dataset`` built
    once and shared, as a sweep's trials do. ``holdout``: a held-out
    pyramid, for the ``heldout/*`` figures at each stage end. ``manifest``:
    the pyramid's, when the caller has bound ``cfg`` to it already
    (:func:`bind_pyramid` loads the DINOv2 once more otherwise).
    ``record_placement_group``: rank 0 records its worker group in the run
    folder (a sweep's trials, :mod:`raydino.sweep.placement`).
    """
    if manifest is None:
        cfg, manifest = bind_pyramid(cfg, pyramids_dir)
    cfg, _ = fit_to_rows(cfg, manifest["rows"], quiet=True)  # its caller logged the changes
    run_dir = Path(run_dir).resolve()
    loop_config = {"cfg": to_dict(cfg), "pyramids": str(Path(pyramids_dir).resolve()), "run_dir": str(run_dir),
                   "fail_at_step": fail_at_step(), "holdout": holdout_payload(cfg, holdout, manifest["dino"]["hash"]),
                   "record_placement_group": record_placement_group}
    dataset = dataset if dataset is not None else training_dataset(cfg, pyramids_dir, manifest["rows"])
    return torch_trainer(_train_fn, loop_config, cfg.train, name=name or Run(run_dir).experiment(),
                         storage_path=storage_path or str(run_dir), dataset=dataset, callbacks=callbacks)


def cpus_short(num_workers: int, cpus_per_worker: float, cluster_cpus: float) -> str | None:
    """What to say when the workers ask for more CPUs than the cluster has, else None.

    Ray Train then waits, silently, until they exist: right on an
    autoscaling cluster, a hang on a fixed one (two workers of the demo
    prior's two CPUs on a 2-core machine). So a warning, not an error.
    """
    need = num_workers * cpus_per_worker
    if need <= cluster_cpus:
        return None
    return (f"{num_workers} workers x {cpus_per_worker:g} CPUs = {need:g} CPUs, and the cluster has {cluster_cpus:g}: "
            "Ray Train waits until it has them (an autoscaler may add nodes; otherwise lower num_workers or "
            "cpus_per_worker of train or prior)")


def fail_at_step() -> int:
    """The step at which fault injection kills a worker (env ``RAYDINO_FAIL_AT_STEP``; 0: never)."""
    return int(os.environ.get(FAIL_ENV, "0") or 0)


def torch_trainer(train_fn, loop_config: dict, workers: RayWorkers, *, name: str, storage_path: str,
                  dataset: ray.data.Dataset, callbacks: list | None = None) -> TorchTrainer:
    """The ``TorchTrainer`` the generator (``workers``: ``train.*``) and the prior (``prior.*``) both train in.

    DDP workers, ``FailureConfig`` retries and kept checkpoints as
    ``workers`` says, and a dataset split in the same order on every epoch
    and every run.
    """
    # one progress line per print: Train V2 otherwise routes worker prints through a logger that echoes them twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    short = cpus_short(workers.num_workers, workers.cpus_per_worker, ray.cluster_resources().get("CPU", 0.0))
    if short:
        log.warning("%s: %s", name, short)
    return TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker={"CPU": workers.cpus_per_worker,
                                                           **({"GPU": workers.gpus_per_worker} if workers.use_gpu else {})}),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=workers.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=workers.num_to_keep),
                             # Ray Train's INFO lines (a recovered failure's traceback among them) stay in the
                             # session's log files; the loop says in one line what a restart resumed from
                             logging_config=LoggingConfig(log_level=workers.ray_log_level),
                             callbacks=callbacks),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=ordered_ingest(), enable_shard_locality=False),
    )


def interruptible(call: Callable[[], T]) -> T:
    """``call()`` in a helper thread while the main thread waits, so Ctrl-C and SIGTERM reach raydino.

    Ray Train and Ray Tune install their own SIGINT handlers when they run in
    the main thread: Train's aborts the run and ends the process with
    ``sys.exit``, past the CLI's one line saying how to resume; Tune's ends
    the sweep early and returns, as if it had finished. From a helper thread
    they install none; the workers end with the driver, and a rerun resumes
    from the last committed checkpoint or trial state.
    """
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="ray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def fit(trainer: TorchTrainer) -> ray.train.Result:
    """Run a trainer (:func:`interruptible`); a failure on the workers becomes a :class:`TrainingError`."""
    try:
        return interruptible(trainer.fit)
    except WorkerGroupError as exc:
        failures = "; ".join(f"worker {rank}: {str(err).strip()[:300]}" for rank, err in sorted(exc.worker_failures.items()))
        raise TrainingError(f"training failed ({failures})") from exc
    except TrainingFailedError as exc:
        raise TrainingError(f"training failed: {exc}") from exc


def train(cfg: Config, pyramids_dir: str | Path, run_dir: str | Path, resume: bool = False,
          holdout: str | Path | None = None) -> dict:
    """Train to the end of ``train.stages``; write ``generator.safetensors``, ``config.yaml``, ``metrics.json``.

    ``resume=True`` continues the run already in ``run_dir`` (same Ray
    storage path and name, so Ray hands the workers its latest checkpoint);
    without it an existing run there is an error rather than silently mixed.
    """
    run_dir = Path(run_dir).resolve()
    run = Run(run_dir)
    run_exists(run, "generator", resume)
    cfg, manifest = bind_pyramid(cfg, pyramids_dir)
    cfg, _ = fit_to_rows(cfg, manifest["rows"])
    names = columns(cfg.pyramids.sizes)
    try:
        trainer = build_trainer(cfg, pyramids_dir, run_dir, holdout=holdout, manifest=manifest)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
        start = time.time()
        result = fit(trainer)
    except Exception as exc:  # a shard whose pages do not decode fails in Ray Data: say which one
        if damaged := schema.damaged_shards(pyramids_dir, names):
            raise corrupt_pyramid(pyramids_dir, damaged, "its shards cannot be trained on") from exc
        raise
    if step := (result.return_value or {}).get("nonfinite_input_step"):
        raise corrupt_pyramid(pyramids_dir, schema.damaged_shards(pyramids_dir, names) or {"no shard": "re-read clean"},
                              f"training met rows with non-finite values at step {step}")
    with result.checkpoint.as_directory() as d:
        checkpoint.export_generator(d, run_dir)
    metrics = dict(result.return_value or {}) | {"time_s": round(time.time() - start, 1),
                                                 "pyramids": str(Path(pyramids_dir).resolve()),
                                                 "holdout": str(Path(holdout).resolve()) if holdout else None}
    run.metrics.write_text(json.dumps(metrics, indent=1))
    log.info("trained generator: %s", run.generator)
    return metrics
