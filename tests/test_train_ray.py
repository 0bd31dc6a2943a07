"""Ray Train end to end on CPU: 2 workers with gloo, tiny DINOv2, 2 stages (16 -> 32 px).

One uninterrupted reference run; the interrupted runs must end with
bitwise-equal weights and the same step count.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from raydino.cli import main
from raydino.config import load_config, save_config
from raydino.layout import Checkpoint, Run
from raydino.models.loading import EncoderMismatch
from raydino.models.saved import load_generator
from raydino.pyramids.schema import ManifestMismatch
from raydino.train.runtime import FAULT_MARKER
from raydino.train.trainer import FAIL_ENV, train

STEPS = 16  # 8 per stage; checkpoints every 5 steps and at each stage end: 5, 8, 10, 15, 16


def tiny_overrides(dino: str, **train_overrides) -> list[str]:
    """The tiny run's ``key=value`` overrides of the demo preset, as the command line takes them."""
    return [
        f"pyramids.dino={dino}", "model.channels=[32,24]", "model.code_dim=16", "model.noise_dim=8",
        "train.stages=[{resolution: 16, images: 64, batch_size: 8, lr: 0.005},"
        " {resolution: 32, images: 64, batch_size: 8, lr: 0.003, fade_images: 24}]",
        "train.num_workers=2", "train.checkpoint_every=5", "train.num_to_keep=3", "train.log_every=4",
        "train.sample_every=6", "train.val_count=8", "train.materialize=true", "train.ema_beta=0.9",
    ] + [f"{k if '.' in k else 'train.' + k}={v}" for k, v in train_overrides.items()]


def tiny_cfg(dino: str, **train_overrides):
    return load_config("demo", overrides=tiny_overrides(dino, **train_overrides))


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / Run.GENERATOR))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(ray_local, train_pyramids, holdout_pyramids, tiny_models, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "reference"
    cfg = tiny_cfg(str(tiny_models["dino"]), **{"eval.fd_encoder": str(tiny_models["fd"])})
    return run_dir, train(cfg, train_pyramids, run_dir, holdout=holdout_pyramids)


def test_two_stage_run_improves_and_leaves_a_loadable_generator(reference):
    run_dir, metrics = reference
    assert metrics["step"] == STEPS and metrics["stage"] == 32 and metrics["images_seen"] == 128
    assert metrics["resumed_from_step"] is None and metrics["bad_steps"] == 0
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == STEPS
    final, step0 = metrics["val/dist_unweighted"], metrics["step0/dist_unweighted"]
    # (16 steps do not beat the mean image under the trained tiny encoders: that baseline is for the demo's report)
    assert final < 0.6 * step0, (final, step0)
    for size in (56, 84, 112):
        assert metrics[f"val/dist_{size}"] < metrics[f"step0/dist_{size}"]
    # held-out images the run never saw, under the other encoder: better than at step 0, and labelled so
    assert metrics["heldout/eval_dist"] < 0.8 * metrics["step0/heldout_eval_dist"], metrics
    assert metrics["heldout/n"] == 8 and "dinov2-tiny-fd" in metrics["eval_encoder"]
    assert metrics["heldout_set"].startswith("all 16 images of ")
    for name in ("grids/stage_16.png", "grids/stage_32.png", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

    model, cfg = load_generator(run_dir)  # no Ray involved
    code = torch.randn(2, model.grid * model.grid, model.code_tokens_dim)
    image = model(code, model.draw_noise(2, 32), 32)
    assert image.shape == (2, 3, 32, 32) and 0 <= image.min() and image.max() <= 1


def test_a_killed_run_resumes_through_the_command_line_past_a_corrupt_checkpoint_and_a_lost_worker(
        reference, train_pyramids, tiny_models, tmp_path, monkeypatch, capsys):
    """`raydino train` killed mid stage 2, then `raydino train --resume`, which loses a worker and recovers: the
    reference's weights, bit for bit.

    One Ray Train run per recovery path (the suite's budget): the resume falls
    back past a truncated checkpoint, and Ray Train restarts the lost worker's
    group from the last checkpoint the resumed run reported.
    """
    run_dir = tmp_path / "killed"
    command = ["train", "--pyramids", str(train_pyramids), "--out", str(run_dir),
               *tiny_overrides(str(tiny_models["dino"]), max_failures=0)]
    monkeypatch.setenv(FAIL_ENV, "12")  # mid stage 2, after the checkpoints at steps 5, 8, 10
    with pytest.raises(SystemExit, match="raydino train: error: .*training failed"):
        main(command)
    assert main(command) == 2 and "pass --resume to continue it" in capsys.readouterr().err

    checkpoints = run_dir / Run.EXPERIMENTS["generator"]
    newest = sorted(checkpoints.glob("step_*"))[-1]
    assert newest.name == "step_00000010"
    ema = newest / Checkpoint.EMA
    ema.write_bytes(ema.read_bytes()[:1000])  # truncated: the resume falls back to step 8 (or the run fails)

    (run_dir / FAULT_MARKER).unlink()
    monkeypatch.setenv(FAIL_ENV, "14")  # the resumed run loses a worker after its own step-10 checkpoint
    assert load_config("demo").train.max_failures >= 1  # the preset retries; this run's config said 0
    assert main(["train", "--pyramids", str(train_pyramids), "--out", str(run_dir), "--resume",
                 "train.max_failures=2"]) == 0
    assert (run_dir / FAULT_MARKER).read_text().startswith("worker 1 killed at step 14")  # it really died
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == STEPS and metrics["images_seen"] == 128
    assert metrics["resumed_from_step"] == 10  # Ray's restart, from the step 10 the resumed run wrote again
    assert_bitwise_equal(weights(run_dir), weights(reference[0]))


def test_resume_with_nothing_to_resume_is_refused_before_ray(train_pyramids, tiny_models, tmp_path, capsys):
    resume = ["train", "--pyramids", str(train_pyramids), "--resume", "--out"]
    assert main([*resume, str(tmp_path / "fresh")]) == 2
    assert f"nothing to resume in {tmp_path / 'fresh'}: no config.yaml" in capsys.readouterr().err
    started = tmp_path / "configured"  # a config but no Ray Train record: the run never reached a worker
    started.mkdir()
    save_config(tiny_cfg(str(tiny_models["dino"])), started / "config.yaml")
    assert main([*resume, str(started)]) == 2
    assert "nothing to resume (no Ray Train record in" in capsys.readouterr().err
    assert sorted(p.name for p in started.iterdir()) == ["config.yaml"]


def test_manifest_mismatch_stops_before_any_worker(train_pyramids, tiny_models, tmp_path):
    cfg = tiny_cfg(str(tiny_models["dino"]))
    cfg.pyramids.sizes = [56, 112]
    with pytest.raises(ManifestMismatch, match="'levels'"):
        train(cfg, train_pyramids, tmp_path / "run")
    other = tiny_cfg(str(tiny_models["fd"]))  # same architecture, other weights
    with pytest.raises(EncoderMismatch, match="hash"):
        train(other, train_pyramids, tmp_path / "run")
    assert not (tmp_path / "run" / Run.EXPERIMENTS["generator"]).exists()
