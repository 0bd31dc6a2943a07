"""Ray Tune sweeps of the per-scale loss weights (``raydino tune``).

Each trial is a function that builds the generator's ``TorchTrainer`` with the
sampled weights and runs it; Train's ``TuneReportCallback`` forwards rank 0's
reports to Tune, where ASHA stops weak trials early. Trials are judged by a
figure no swept key enters (``tune.metric``, by default
``heldout/eval_dist``: held-out images against their reconstructions under
the evaluation encoder, measured at each stage end), never by the loss or a
distance under the encoder the loss uses. ASHA counts time in finished
stages, so it compares trials only where that figure was just measured, and
the best trial is chosen among those that finished the most stages. All
trials read the same pyramid files; none copies them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

from raydino.config import Config, ConfigError, from_dict, lookup, override, save_config, to_dict
from raydino.data_fit import fit_to_rows
from raydino.layout import Run, Sweep
from raydino.progress import Tracker, counted

log = logging.getLogger(__name__)


def check_used(cfg: Config) -> None:
    """A swept key that some stage ignores is an error: trials would differ there by chance alone."""
    overridden = cfg.loss.stage_level_weights
    for key in cfg.tune.search:
        if key.startswith("loss.level_weights.") and overridden:
            ignored = [s.resolution for s in cfg.train.stages if str(s.resolution) in overridden]
            if ignored:
                raise ConfigError(f"tune.search: '{key}' is ignored at stages {ignored} px, where "
                                  f"loss.stage_level_weights replaces loss.level_weights: search "
                                  "loss.stage_level_weights.<px>.<level> for those stages, or add "
                                  "'loss.stage_level_weights={}' to tune.overrides")


def search_space(cfg: Config) -> dict:
    """``tune.search`` as Tune distributions; a bad key or bound is an error before anything starts."""
    from ray import tune

    if not cfg.tune.search:
        raise ConfigError("tune.search is empty: name at least one key to search")
    check_used(trial_config(cfg, {}))
    space = {}
    for key, bounds in cfg.tune.search.items():
        try:
            value = lookup(cfg, key)
        except ConfigError as exc:
            raise ConfigError(f"tune.search: {exc}") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"tune.search: '{key}' is {value!r}, not a number")
        if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
            raise ConfigError(f"tune.search: '{key}' bounds {bounds} must be [low, high] with 0 < low < high "
                              "(sampled log-uniformly)")
        space[key] = tune.loguniform(bounds[0], bounds[1])
    return space


def check_sweep(cfg: Config, holdout: str | Path | None) -> dict:
    """The sweep's search space, refused before Ray starts when a key, a bound or the metric's input is missing."""
    space = search_space(cfg)
    if cfg.tune.metric.startswith("heldout/") and holdout is None:
        raise ConfigError(f"tune.metric={cfg.tune.metric} is measured on held-out images: pass --holdout "
                          "HELD_OUT_PYRAMIDS (a pyramid of images the trials do not train on)")
    return space


def trial_config(cfg: Config, params: dict) -> Config:
    """The base config with one trial's sampled values and the per-trial resources.

    A trial's own Ray Train run never restarts its workers (``max_failures``
    0): Tune retries the whole trial instead (:func:`tune_sweep`), which
    resumes from the trial's last checkpoint. A Train controller that
    restarts its workers while Tune is stopping its trial makes a placement
    group no worker lives to record (:mod:`raydino.sweep.placement`).
    """
    tc = cfg.tune
    return override(cfg, tc.overrides, {**params, "train.num_workers": tc.workers_per_trial,
                                        "train.use_gpu": tc.gpus_per_trial > 0,
                                        "train.cpus_per_worker": tc.cpus_per_trial / tc.workers_per_trial,
                                        "train.gpus_per_worker": tc.gpus_per_trial / tc.workers_per_trial,
                                        "train.max_failures": 0})


def _trial(params: dict, base: dict, pyramids: str, holdout: str | None, sweep_dir: str, dataset,
           manifest: dict) -> None:
    """One trial: a full training run in ``SWEEP_DIR/trials/<trial_id>``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydino.train.trainer import build_trainer

    cfg = trial_config(from_dict(base), params)
    run = Sweep(sweep_dir).trial(ray.tune.get_context().get_trial_id())
    run.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    build_trainer(cfg, pyramids, run.path, callbacks=[TuneReportCallback()], dataset=dataset, holdout=holdout,
                  manifest=manifest, record_placement_group=True).fit()


def tune_sweep(cfg: Config, pyramids: str | Path, sweep_dir: str | Path, holdout: str | Path | None = None) -> dict:
    """Run (or resume) a sweep; write ``results.csv``, ``best.yaml`` and return the best trial's figures.

    ``holdout``: the held-out pyramid the default metric is measured on
    (required for any ``heldout/*`` metric).
    """
    import ray.tune
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from raydino.sweep import placement
    from raydino.train.preflight import bind_pyramid
    from raydino.train.ray_data import training_dataset
    from raydino.train.trainer import interruptible

    space = check_sweep(cfg, holdout)
    cfg, manifest = bind_pyramid(cfg, pyramids)
    rows = manifest["rows"]
    cfg, _ = fit_to_rows(cfg, rows)
    sweep_dir = Path(sweep_dir).resolve()
    sweep = Sweep(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, sweep.config)
    # One dataset for all trials, built here: with train.materialize its blocks sit once in the object
    # store, and no trial runs read tasks of its own, which would wait for a whole free CPU while
    # the other trials' workers hold the rest.
    dataset = training_dataset(trial_config(cfg, {}), pyramids, rows)
    trainable = tune.with_parameters(_trial, base=to_dict(cfg), pyramids=str(Path(pyramids).resolve()),
                                     holdout=str(Path(holdout).resolve()) if holdout else None,
                                     sweep_dir=str(sweep_dir), dataset=dataset, manifest=manifest)
    # the trial function only waits on its TorchTrainer, whose workers hold the real resources
    # (Tune refuses an empty request, hence a token fraction of a CPU)
    trainable = tune.with_resources(trainable, {"CPU": 0.01})
    path = sweep.state
    if tune.Tuner.can_restore(str(path)):
        log.info("resuming the sweep in %s (finished trials are not rerun)", path)
        # the run config, GiveBack included, comes back from the sweep's saved state
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric, mode="min", num_samples=cfg.tune.trials,
                # the same weights on every run of the same config: with train.seed, the same trials.
                # The generator limits concurrency itself: TuneConfig's max_concurrent_trials only
                # wraps a Searcher, and beside a generator Tune ignores it with a warning.
                search_alg=BasicVariantGenerator(random_state=cfg.train.seed,
                                                 max_concurrent=cfg.tune.max_concurrent_trials),
                # time in finished stages: rungs fall on stage ends, where the held-out figure is fresh
                scheduler=ASHAScheduler(time_attr="stages_done", grace_period=max(1, cfg.tune.grace_period),
                                        reduction_factor=cfg.tune.reduction_factor,
                                        max_t=len(cfg.train.stages)),
            ),
            run_config=ray.tune.RunConfig(name=Sweep.EXPERIMENT, storage_path=str(sweep_dir),
                                          failure_config=ray.tune.FailureConfig(max_failures=cfg.train.max_failures),
                                          callbacks=[placement.GiveBack(str(sweep_dir))]),
        )
    grid = interruptible(tuner.fit)
    if held := placement.wait_released(sweep.trial_runs()):
        log.warning("placement groups %s of the sweep's trials are still held", sorted(held))
    return _write_results(cfg, grid, sweep)


def _write_results(cfg: Config, grid, sweep: Sweep) -> dict:
    """``results.csv`` (every trial), ``best.yaml`` (a config `raydino train --config` takes), ``best.json``."""
    metric, keys = cfg.tune.metric, list(cfg.tune.search)
    rows = []
    for result in grid:
        m = result.metrics or {}
        rows.append({"trial_id": m.get("trial_id") or Path(result.path).name,
                     **{k: result.config.get(k) for k in keys}, metric: m.get(metric), "stage": m.get("stage"),
                     "stages_done": m.get("stages_done") or 0, "images_seen": m.get("images_seen"),
                     "error": str(result.error).splitlines()[0] if result.error else "",
                     "_config": result.config})
    longest = max(r["stages_done"] for r in rows)
    for r in rows:
        r["stopped_early"] = not r["error"] and r["stages_done"] < longest
    # the best among the trials that reached the same (largest) budget: others were measured earlier
    rows.sort(key=lambda r: (r["stages_done"] < longest or r[metric] is None, r[metric] or 0.0))
    best = rows[0]
    configs = [r.pop("_config") for r in rows]
    with open(sweep.results, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best_cfg = dataclasses.replace(trial_config(cfg, configs[0]), train=cfg.train)  # the preset's resources
    save_config(best_cfg, sweep.best_config)
    summary = {"metric": metric, "best_trial": best["trial_id"], "best_value": best[metric],
               "best_stages_done": best["stages_done"], "set": "held-out" if metric.startswith("heldout/") else "",
               "best": {k: configs[0][k] for k in keys}, "default": {k: lookup(cfg, k) for k in keys},
               "trials": len(rows), "stopped_early": sum(r["stopped_early"] for r in rows)}
    sweep.best.write_text(json.dumps(summary, indent=1))
    for r in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if v != ""))
    print(f"best {metric} {summary['best_value']:.4f} with {summary['best']} (default {summary['default']}); "
          f"{summary['stopped_early']} of {len(rows)} trials stopped early; config: {sweep.best_config}")
    return summary


def sweep_progress(cfg: Config, sweep: Sweep) -> Tracker:
    """Images seen by all trials against all trials' full schedules (ASHA stops some early: the bar ends short)."""
    return counted("sweep", cfg.tune.trials * trial_config(cfg, {}).train.images, "images", sweep.trials,
                   f"*/{Run.PROGRESS}")
