"""The training loop and checkpoints without Ray (LocalSession).

NaN guard, EMA, a stage that ends mid-epoch, checkpoints (corrupt ones too) and a bitwise resume.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import shutil
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from raydino.config import load_config
from raydino.layout import Checkpoint
from raydino.losses import DinoPyramidLoss
from raydino.models.generator import ProgressiveGenerator
from raydino.models.saved import CheckpointError, load_generator
from raydino.pyramids import schema
from raydino.pyramids.batch import columns
from raydino.train import checkpoint, loop
from raydino.train.checkpoint import Progress
from raydino.train.runtime import NonFiniteLossError
from raydino.train.session import LocalSession
from raydino.train.step import update_ema


def local_cfg(dino: str, **train):
    overrides = [f"pyramids.dino={dino}", "model.channels=[16,8]", "model.code_dim=8", "model.noise_dim=4",
                 "train.stages=[{resolution: 16, images: 24, batch_size: 8, lr: 0.005},"
                 " {resolution: 32, images: 16, batch_size: 8, lr: 0.003, fade_images: 16}]",
                 "train.num_workers=1", "train.checkpoint_every=4", "train.log_every=2", "train.sample_every=3",
                 "train.val_count=4"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config("demo", overrides=overrides)


class PoisonedSession(LocalSession):
    """Batches whose coarse code is NaN at the given global batch numbers (a damaged shard)."""

    def __init__(self, *args, bad: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.bad, self.served = bad, 0

    def batches(self, epoch, batch_size):
        for batch in super().batches(epoch, batch_size):
            self.served += 1
            if self.served in self.bad:
                code = schema.tokens_col(112)  # the demo's coarse code
                batch = dict(batch, **{code: torch.full_like(batch[code], math.nan)})
            yield batch


def poisoned_loss(monkeypatch, bad: set[int]) -> None:
    """The loop's loss is NaN at the given step numbers: a blow-up the step guard must absorb."""
    calls = iter(range(1, 10_000))

    class PoisonedLoss(DinoPyramidLoss):
        def __call__(self, *args, **kwargs):
            terms = super().__call__(*args, **kwargs)
            if next(calls) in bad:
                terms.total = terms.total * math.nan
            return terms

    monkeypatch.setattr(loop, "DinoPyramidLoss", PoisonedLoss)


def test_local_run_checkpoints_and_skips_a_nan_step(train_pyramids, tiny_models, tmp_path, monkeypatch):
    cfg = local_cfg(str(tiny_models["dino"]))
    poisoned_loss(monkeypatch, bad={2})
    session = LocalSession(train_pyramids, columns(cfg.pyramids.sizes), checkpoints=tmp_path / "ckpt")
    metrics = loop.fit_generator(cfg, train_pyramids, tmp_path / "run", session)
    assert metrics["step"] == 5 and metrics["bad_steps"] == 1 and metrics["images_seen"] == 40
    assert [r["step"] for r in session.reports] == [3, 4, 5]  # every 4 steps and at each stage end
    assert all(math.isfinite(r["val/dist_unweighted"]) for r in session.reports)
    assert (tmp_path / "run" / "grids" / "stage_32.png").is_file()


def test_too_many_non_finite_steps_in_a_row_stop_the_run(train_pyramids, tiny_models, tmp_path, monkeypatch):
    cfg = local_cfg(str(tiny_models["dino"]), max_bad_steps=2)
    poisoned_loss(monkeypatch, bad={2, 3})
    session = LocalSession(train_pyramids, columns(cfg.pyramids.sizes), checkpoints=tmp_path)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row .* train.max_bad_steps=2"):
        loop.fit_generator(cfg, train_pyramids, tmp_path / "run", session)


def _state(cfg, seed: int = 0, dim: int = 48):
    """A model, an EMA that differs from it, an optimizer with state and a used RNG, all set by ``seed``."""
    torch.manual_seed(seed)
    model = ProgressiveGenerator(cfg.model, dim, 4)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 16, dim), model.draw_noise(2, 16), 16).mean().backward()
    opt.step()
    rng = torch.Generator().manual_seed(seed + 3)
    torch.randn(5, generator=rng)
    return model, ema, opt, rng


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        assert same, f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where} keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where} lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


def state_of(model, ema, opt, rng) -> dict:
    return {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": rng.get_state()}


def test_checkpoint_round_trip_and_corrupt_files_named(tiny_models, tmp_path):
    cfg = local_cfg(str(tiny_models["dino"]))
    saved = _state(cfg, seed=0)
    old, new = tmp_path / "step_00000004", tmp_path / "step_00000008"
    for d, step in ((old, 4), (new, 8)):
        d.mkdir()
        checkpoint.save(d, rank=0, model=saved[0], ema=saved[1], opt=saved[2], progress=Progress(step=step),
                        rng=saved[3], cfg=cfg, metadata=checkpoint.generator_metadata(saved[0]))

    fresh = _state(cfg, seed=1)  # other weights, EMA, optimizer moments and RNG position
    for part in ("model", "ema", "opt", "rng"):
        with pytest.raises(AssertionError):
            assert_same(state_of(*saved)[part], state_of(*fresh)[part])
    kwargs = dict(rank=0, model=fresh[0], ema=fresh[1], opt=fresh[2], rng=fresh[3])
    assert checkpoint.restore_latest([new, old], **kwargs).step == 8
    assert_same(state_of(*saved), state_of(*fresh))

    (new / Checkpoint.OPTIMIZER).write_bytes((new / Checkpoint.OPTIMIZER).read_bytes()[:100])
    assert checkpoint.restore_latest([new, old], **kwargs).step == 4  # falls back
    with pytest.raises(CheckpointError, match=r"optimizer.pt is corrupt or truncated.*no earlier readable"):
        checkpoint.restore_latest([new], **kwargs)
    (old / Checkpoint.MODEL).write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match=r"step_00000004/model.safetensors is corrupt"):
        checkpoint.load(old, **kwargs)
    assert checkpoint.restore_latest([], **kwargs) is None


@pytest.mark.parametrize(("state", "problem"), [
    ('{"stage": 0, "step": 8', "JSONDecodeError"),  # cut off mid-write
    ('{"stage": 0, "step": 8, "lr": 0.1}', "unexpected keyword argument 'lr'"),  # another program's state file
    ("[8]", "argument after ** must be a mapping"),
])
def test_a_corrupt_state_file_is_named_and_the_previous_checkpoint_taken(tiny_models, tmp_path, state, problem):
    cfg = local_cfg(str(tiny_models["dino"]))
    saved = _state(cfg, seed=0)
    for step in (4, 8):
        (tmp_path / f"step_{step:08d}").mkdir()
        checkpoint.save(tmp_path / f"step_{step:08d}", rank=0, model=saved[0], ema=saved[1], opt=saved[2],
                        progress=Progress(step=step), rng=saved[3], cfg=cfg, metadata={})
    new, old = tmp_path / "step_00000008", tmp_path / "step_00000004"
    (new / Checkpoint.STATE).write_text(state)
    fresh = _state(cfg, seed=1)
    kwargs = dict(rank=0, model=fresh[0], ema=fresh[1], opt=fresh[2], rng=fresh[3])
    with pytest.raises(CheckpointError, match=r"step_00000008/state.json is corrupt or truncated") as refused:
        checkpoint.load(new, **kwargs)
    assert problem in str(refused.value)
    assert checkpoint.restore_latest([new, old], **kwargs).step == 4


def test_a_missing_rng_file_resumes_with_a_warning_naming_the_checkpoint_and_rank(tiny_models, tmp_path, caplog):
    """A checkpoint written by fewer workers than resume it has no RNG for the new ranks: a new stream, said so."""
    cfg = local_cfg(str(tiny_models["dino"]))
    saved = _state(cfg, seed=0)
    checkpoint.save(tmp_path, rank=0, model=saved[0], ema=saved[1], opt=saved[2], progress=Progress(step=8),
                    rng=saved[3], cfg=cfg, metadata={})
    (tmp_path / Checkpoint.rng(0)).unlink()
    fresh = _state(cfg, seed=1)
    stream = fresh[3].get_state()
    with caplog.at_level("WARNING"):
        progress = checkpoint.load(tmp_path, rank=0, model=fresh[0], ema=fresh[1], opt=fresh[2], rng=fresh[3])
    assert progress.step == 8
    assert_same(state_of(*saved)["model"], state_of(*fresh)["model"])  # the weights still come back
    assert torch.equal(fresh[3].get_state(), stream)  # the RNG keeps its own stream, not a made-up one
    assert f"{tmp_path} has no RNG state for rank 0" in caplog.text and "no longer bitwise reproducible" in caplog.text


def test_exported_generator_loads_without_ray(tiny_models, tmp_path):
    cfg = local_cfg(str(tiny_models["dino"]))
    model, ema, opt, rng = _state(cfg)
    checkpoint.save(tmp_path, rank=0, model=model, ema=ema, opt=opt, progress=Progress(), rng=rng, cfg=cfg,
                    metadata=checkpoint.generator_metadata(model))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint.export_generator(tmp_path, run_dir)
    loaded, loaded_cfg = load_generator(run_dir)
    assert loaded_cfg == cfg and loaded.grid == 4 and loaded.code_tokens_dim == 48
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), loaded.state_dict().values(), strict=True))


def test_ema_update_is_the_exponential_moving_average():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    p = {k: v.clone() for k, v in model.state_dict().items()}
    e0 = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, model, 0.9)
    for k in p:
        torch.testing.assert_close(ema.state_dict()[k], 0.9 * e0[k] + 0.1 * p[k], rtol=0, atol=1e-7)
        assert torch.equal(model.state_dict()[k], p[k])  # the model is only read
    for _ in range(4):
        update_ema(ema, model, 0.9)
    for k in p:  # a constant model: the EMA's distance to it shrinks by beta per update
        torch.testing.assert_close(ema.state_dict()[k], p[k] + 0.9**5 * (e0[k] - p[k]), rtol=0, atol=1e-6)


# Stage 1: 3 steps of 4 images, 3 of the 12 batches of epoch 0; stage 2: 4 steps of 8 images, 4 of the 6
# batches of epoch 1, fading in over 16 images. Reports (checkpoints) at steps 3, 5 and 7.
SWITCH_STAGES = ("[{resolution: 16, images: 12, batch_size: 4, lr: 0.005},"
                 " {resolution: 32, images: 32, batch_size: 8, lr: 0.003, fade_images: 16}]")
SWITCH_STEPS = 7


def switch_cfg(dino: str):
    return local_cfg(dino, stages=SWITCH_STAGES, checkpoint_every=5, log_every=1000, sample_every=1000)


@dataclass
class Step:
    resolution: int
    alpha: float
    code: torch.Tensor  # the batch's coarse code


def recording(steps: list[Step]):
    """``loop.train_step``, noting what each step trains on."""
    real = loop.train_step
    signature = inspect.signature(real)

    def train_step(*args, **kwargs):
        call = signature.bind(*args, **kwargs).arguments
        steps.append(Step(call["resolution"], call["alpha"], call["targets"].code.clone()))
        return real(*args, **kwargs)

    return train_step


@pytest.fixture(scope="module")
def switch_run(train_pyramids, tiny_models, tmp_path_factory):
    """An uninterrupted LocalSession run through a stage switch in the middle of an epoch."""
    cfg, out = switch_cfg(str(tiny_models["dino"])), tmp_path_factory.mktemp("switch")
    session = LocalSession(train_pyramids, columns(cfg.pyramids.sizes), checkpoints=out / "ckpt")
    steps: list[Step] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_step", recording(steps))
        metrics = loop.fit_generator(cfg, train_pyramids, out / "run", session)
    return cfg, out / "ckpt", steps, metrics


def test_a_stage_ending_mid_epoch_hands_over_at_a_new_epoch_and_resolution(switch_run, train_pyramids):
    cfg, _, steps, metrics = switch_run
    assert metrics["step"] == SWITCH_STEPS and metrics["images_seen"] == 12 + 32
    assert [s.resolution for s in steps] == [16] * 3 + [32] * 4
    assert [s.alpha for s in steps] == [1.0] * 3 + [0.0, 0.5, 1.0, 1.0]
    # the batches an independent reading of the pyramid gives at each (epoch, batch size): the 32 px stage
    # starts epoch 1 from its first batch, with its own batch size
    plain = LocalSession(train_pyramids, columns(cfg.pyramids.sizes))
    code = schema.tokens_col(cfg.pyramids.sizes[0])
    expected = [b[code] for b in plain.batches(0, 4)][:3] + [b[code] for b in plain.batches(1, 8)][:4]
    assert len(expected) == len(steps)
    for i, (step, batch) in enumerate(zip(steps, expected, strict=True)):
        assert torch.equal(step.code, batch.float()), f"step {i + 1} trained on another batch"


def test_a_stopped_run_resumes_bitwise(switch_run, train_pyramids, tmp_path):
    """Resumed from the step-5 checkpoint (mid-stage, mid-epoch), a run ends bitwise as the uninterrupted one.

    The checkpoints are the uninterrupted run's own: a run stopped after step 5
    leaves the same ones (every step is deterministic), so no stopped run is paid for.
    """
    cfg, reference_ckpt, reference_steps, _ = switch_run
    ckpt = tmp_path / "ckpt"
    for step in (3, 5):
        shutil.copytree(reference_ckpt / f"step_{step:08d}", ckpt / f"step_{step:08d}")

    steps: list[Step] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_step", recording(steps))
        metrics = loop.fit_generator(cfg, train_pyramids, tmp_path / "run", LocalSession(
            train_pyramids, columns(cfg.pyramids.sizes), checkpoints=ckpt))
    assert metrics["step"] == SWITCH_STEPS and metrics["resumed_from_step"] == 5
    assert len(steps) == SWITCH_STEPS - 5  # mid epoch 1: the resumed run skips the 2 batches steps 4 and 5 took
    for i, (step, ref) in enumerate(zip(steps, reference_steps[5:], strict=True), start=6):
        assert (step.resolution, step.alpha) == (ref.resolution, ref.alpha), f"step {i}"
        assert torch.equal(step.code, ref.code), f"step {i} trained on another batch"

    final, ref = ckpt / f"step_{SWITCH_STEPS:08d}", reference_ckpt / f"step_{SWITCH_STEPS:08d}"
    for name in (Checkpoint.MODEL, Checkpoint.EMA):
        assert_same(load_file(str(final / name)), load_file(str(ref / name)), name)
    for name in (Checkpoint.OPTIMIZER, Checkpoint.rng(0)):
        assert_same(torch.load(final / name, weights_only=True), torch.load(ref / name, weights_only=True), name)
    assert json.loads((final / Checkpoint.STATE).read_text()) == json.loads((ref / Checkpoint.STATE).read_text())


def test_faces64_preset_trains_its_stages_to_64px_on_the_8x8_code(train_pyramids, tiny_models, tmp_path):
    """The longer CPU preset's own config (levels, code, stages to 64 px), a few steps per stage."""
    cfg = load_config("faces64", overrides=[
        f"pyramids.dino={tiny_models['dino']}", "model.channels=[16,8,8]", "model.code_dim=8",
        "train.stages.0.images=8", "train.stages.1.images=8", "train.stages.2.images=8",
        "train.stages.0.batch_size=8", "train.stages.1.batch_size=8", "train.stages.2.batch_size=8",
        "train.num_workers=1", "train.checkpoint_every=100", "train.val_count=4"])
    session = LocalSession(train_pyramids, columns(cfg.pyramids.sizes), checkpoints=tmp_path / "ckpt")
    metrics = loop.fit_generator(cfg, train_pyramids, tmp_path / "run", session)
    assert metrics["stage"] == 64 and metrics["step"] == 3
    newest = next(session.checkpoint_dirs())
    with safe_open(str(newest / Checkpoint.EMA), "pt") as f:
        assert f.metadata()["grid"] == "8"  # pyramids.sizes[0] = 112 px: 8x8 tokens
        assert "blocks.2.conv2.spade.weight" in f.keys()  # the 64 px block, modulated by the code
    assert (tmp_path / "run" / "grids" / "stage_64.png").is_file()
