"""`raydino tune`: an ASHA sweep of loss weights on 2 CPUs, its outputs, and its restore."""

from __future__ import annotations

import csv
import time
from types import SimpleNamespace

import pytest

from raydino.config import ConfigError, load_config
from raydino.sweep.tune import search_space, tune_sweep


def sweep_cfg(dino: str, **extra):
    overrides = [
        f"pyramids.dino={dino}", "pyramids.clip=", "model.channels=[32,24]", "model.code_dim=16", "model.noise_dim=8",
        "train.stages=[{resolution: 16, images: 32, batch_size: 8, lr: 0.005},"
        " {resolution: 32, images: 32, batch_size: 8, lr: 0.003, fade_images: 16}]",
        "train.num_workers=1", "train.checkpoint_every=2", "train.sample_every=1000", "train.val_count=8",
        "train.materialize=true", "tune.trials=4", "tune.max_concurrent_trials=1", "tune.cpus_per_trial=0.5",
        "tune.grace_period=1", "tune.reduction_factor=2", "tune.overrides=[]", "train.seed=1",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config("demo", overrides=overrides)


def free_cpus(ray, expected: float, timeout_s: float = 10) -> float:
    """The free CPUs once they equal ``expected``, or after ``timeout_s``: Ray's resource view lags a little."""
    deadline = time.time() + timeout_s
    while ray.available_resources().get("CPU", 0) != pytest.approx(expected) and time.time() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0)


def test_bad_search_space_is_refused_before_anything_starts(tiny_models):
    dino = str(tiny_models["dino"])
    with pytest.raises(ConfigError, match="must be"):
        search_space(sweep_cfg(dino, **{"tune.search": "{loss.color_weight: [-1, 2]}"}))
    with pytest.raises(ConfigError, match="loss.nope"):
        search_space(sweep_cfg(dino, **{"tune.search": "{loss.nope: [0.1, 2]}"}))
    with pytest.raises(ConfigError, match="not a number"):
        search_space(sweep_cfg(dino, **{"tune.search": "{pyramids.dino: [0.1, 2]}"}))


def test_recorded_groups_of_ended_trials_are_given_back_and_no_others(ray_local, tmp_path):
    """What frees an early-stopped trial's CPUs: its Train controller died, its worker group stayed (raydino.sweep.placement)."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raydino.layout import Run, Sweep
    from raydino.sweep import placement
    from raydino.train.trainer import record_placement_group

    @ray_local.remote
    class Worker:
        def record(self, run_dir: str) -> None:
            record_placement_group(Run(run_dir))

    @ray_local.remote(num_cpus=0)
    class Controller:  # as Ray Train's: it makes the group and starts a worker in it, which records the group
        def start(self, run_dir: str) -> str:
            pg = placement_group([{"CPU": 0.5}])
            ray_local.get(pg.ready())
            self.worker = Worker.options(num_cpus=0.5, scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
            ray_local.get(self.worker.record.remote(run_dir))
            return pg.id.hex()

    cpus = free_cpus(ray_local, 2)
    sweep = Sweep(tmp_path)
    stopped, running = sweep.trial("stopped"), sweep.trial("running")
    for run in (stopped, running):
        run.path.mkdir(parents=True)
    controllers = [Controller.remote(), Controller.remote()]
    stopped_pg, running_pg = ray_local.get([c.start.remote(str(r.path)) for c, r in zip(controllers, (stopped, running), strict=True)])
    assert stopped.placement_groups.read_text().split() == [stopped_pg]
    ray_local.kill(controllers[0])  # its worker dies with it; its group stays
    assert placement.held([stopped, running]) == {stopped_pg, running_pg}
    assert free_cpus(ray_local, cpus - 1) == pytest.approx(cpus - 1)
    # the Tune callback: the ended trial's group goes once its grace has passed, the running one's stays
    give_back = placement.GiveBack(str(sweep.path), grace_s=1.0, every_s=0.0)
    give_back.on_trial_complete(0, [], SimpleNamespace(trial_id="stopped"))
    give_back.on_step_end(0, [])
    assert placement.held([stopped, running]) == {stopped_pg, running_pg}
    time.sleep(1.1)
    give_back.on_step_end(1, [])
    assert placement.held([stopped, running]) == {running_pg}
    assert free_cpus(ray_local, cpus - 0.5) == pytest.approx(cpus - 0.5)
    ray_local.kill(controllers[1])
    assert placement.wait_released([stopped, running], grace_s=0, quiet_s=1, timeout_s=30) == set()
    assert free_cpus(ray_local, cpus) == pytest.approx(cpus)


def test_sweep_stops_trials_early_writes_best_and_restores_without_rerunning(
        ray_local, train_pyramids, holdout_pyramids, tiny_models, tmp_path):
    cfg = sweep_cfg(str(tiny_models["dino"]), **{"eval.fd_encoder": str(tiny_models["fd"])})
    sweep = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="--holdout"):
        tune_sweep(cfg, train_pyramids, sweep)
    summary = tune_sweep(cfg, train_pyramids, sweep, holdout=holdout_pyramids)
    rows = list(csv.DictReader(open(sweep / "results.csv")))
    assert len(rows) == 4 and summary["trials"] == 4
    assert all(not r["error"] for r in rows)
    # tune.max_concurrent_trials=1 holds: each trial reports only after the one before has ended
    spans = sorted((min(ts), max(ts)) for ts in (
        [int(r["timestamp"]) for r in csv.DictReader(open(p))] for p in (sweep / "tune").glob("*/progress.csv")))
    assert len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert summary["stopped_early"] >= 1, rows
    assert cfg.tune.metric == "heldout/eval_dist" and summary["set"] == "held-out"
    # ranked among the trials that finished every stage, by the figure measured at their end
    finished = [r for r in rows if int(r["stages_done"]) == 2]
    assert rows[0] in finished and summary["best_stages_done"] == 2
    assert float(rows[0]["heldout/eval_dist"]) == min(float(r["heldout/eval_dist"]) for r in finished)
    assert float(rows[0]["heldout/eval_dist"]) == pytest.approx(summary["best_value"])
    # every trial's CPUs are back once the sweep returns, early-stopped ones too
    assert free_cpus(ray_local, 2) == 2
    for key in cfg.tune.search:
        assert float(rows[0][key]) == pytest.approx(summary["best"][key])
    assert list((sweep / "trials").glob("*/tb/events.out.tfevents.*"))

    best = load_config(config_file=str(sweep / "best.yaml"))
    assert best.loss.color_weight == pytest.approx(summary["best"]["loss.color_weight"])
    assert best.train == cfg.train  # the preset's schedule and resources, not the trial's

    events = sorted(p.name for p in sweep.rglob("events.out.tfevents.*"))
    again = tune_sweep(cfg, train_pyramids, sweep, holdout=holdout_pyramids)  # finished: restored, nothing rerun
    assert sorted(p.name for p in sweep.rglob("events.out.tfevents.*")) == events
    assert again["best"] == summary["best"]

