"""Every value rule of ``raydino/config/checks.py`` refused once, with its own sentence, where the config is loaded.

No Ray and no data: each case is an override on the demo preset. A
coverage test walks the module's source and fails when a rule has no case
here, so a rule added without a refusal, or one whose case stops reaching
it, is named.
"""

from __future__ import annotations

import ast
import traceback
from pathlib import Path

import pytest

from raydino.config import ConfigError, checks, load_config

# (overrides, the sentence's telling part)
RULES = [
    (["model.max_resolution=48"], "model.max_resolution=48 is not 16 * 2**k"),
    (["pyramids.sizes=[100,56]"], "pyramids.sizes 100,56: every level must be a positive multiple of 14"),
    (["pyramids.sizes=[56,56]", "loss.level_weights=[1.0,1.0]"], "pyramids.sizes 56,56 names a level twice"),
    (["pyramids.actors=0"], "pyramids.actors 0 must be at least 1"),
    (["pyramids.batch_size=0"], "pyramids.batch_size 0 must be at least 1"),
    (["pyramids.max_failure_fraction=1.5"], "pyramids.max_failure_fraction 1.5 must be in [0, 1]"),
    (["model.channels=[64]"], "model.channels has 1 widths, model.max_resolution=32 needs 2"),
    (["model.channels.0=0"], "model.channels=[0, 48, 32, 16, 8]: every width must be at least 1"),
    (["model.code_dim=0"], "model.code_dim and model.noise_dim must be at least 1"),
    (["model.code_resolution=8"], "model.code_resolution=8: the code is decoded to at least"),
    (["loss.kind=foo"], "loss.kind=foo is not one of energy, regression"),
    (["loss.kind=energy", "loss.draws=1"], "loss.draws=1: loss.kind=energy needs at least 2 draws"),
    (["loss.kind=energy", "loss.beta=2"], "loss.beta=2.0: loss.kind=energy needs 0 < beta < 2"),
    (["loss.level_weights=[1.0]"], "loss.level_weights has 1 weights for 3 pyramid levels"),
    (["loss.stage_level_weights={'32': [1.0]}"], "loss.stage_level_weights.32 has 1 weights for 3 pyramid levels"),
    (["train.num_workers=0"], "train.num_workers=0 must be at least 1"),
    (["train.cpus_per_worker=0"], "train.cpus_per_worker=0.0 must be above 0"),
    (["train.use_gpu=true", "train.gpus_per_worker=0"], "train.gpus_per_worker=0.0 must be above 0 with train.use_gpu"),
    (["prior.max_failures=-1"], "prior.max_failures=-1 must be at least 0"),
    (["train.num_to_keep=0"], "train.num_to_keep=0 must be at least 1"),
    (["distill.max_bad_steps=0"], "distill.max_bad_steps=0 must be at least 1"),
    (["train.shuffle_buffer=-1"], "train.shuffle_buffer=-1 must be at least 0"),
    (["prior.ray_log_level=LOUD"], "prior.ray_log_level=LOUD is not one of DEBUG"),
    (["prior.heads=3"], "prior.width=256 is not a multiple of prior.heads=3"),
    (["prior.solver=rk4"], "prior.solver=rk4 is not one of euler, heun"),
    (["prior.patch=3"], "prior.patch=3 does not tile the 8x8 code"),
    (["prior.num_workers=2", "prior.batch_size=63"], "prior.batch_size=63 must be a positive multiple of prior.num_workers=2"),
    (["prior.condition=words"], "prior.condition=words is not one of text, image"),
    (["prior.caption_variants=0"], "prior.caption_variants=0 must be at least 1"),
    (["prior.time_shift=0"], "prior.time_shift=0.0 must be positive"),
    (["prior.sample_steps=0"], "prior.sample_steps=0 must be at least 1"),
    (["prior.steps=-1"], "prior.steps=-1 must be at least 0"),
    (["distill.steps=-1"], "distill.steps=-1 must be at least 0"),
    (["distill.batch_size=0"], "distill.batch_size=0 must be a positive multiple of distill.num_workers=1"),
    (["distill.pairs=8"], "distill.pairs=8 must be at least distill.batch_size=64"),
    (["distill.guidance=[5.0,1.0]"], "distill.guidance=[5.0, 1.0] must be [low, high]"),
    (["distill.uncond_share=1.5"], "distill.uncond_share=1.5 must be in [0, 1]"),
    (["distill.one_step_share=-0.1"], "distill.one_step_share=-0.1 must be in [0, 1]"),
    (["distill.teacher_steps=0"], "distill.teacher_steps=0 must be at least 1"),
    (["distill.sample_steps=0"], "distill.sample_steps=0 must be at least 1"),
    (["distill.actors=0"], "distill.teacher_batch=256 and distill.actors=0 must be at least 1"),
    (["distill.ema_beta=1"], "distill.ema_beta=1.0 must be in [0, 1)"),
    (["distill.log_every=0"], "distill.checkpoint_every and distill.log_every must be at least 1"),
    (["train.stages=[]"], "train.stages is empty"),
    (["train.ema_beta=1"], "train.ema_beta=1.0 must be in [0, 1)"),
    (["train.sample_every=0"], "train.checkpoint_every, train.log_every and train.sample_every must be at least 1"),
    (["train.stages.0.resolution=24"], "train.stages.0.resolution=24 is not a generator resolution (16, 32;"),
    (["train.stages.1.resolution=16"], "train.stages.1.resolution=16: stages must grow in resolution"),
    (["train.stages.0.images=0"], "train.stages.0.images=0 must be at least 1"),
    (["train.stages.1.lr=0"], "train.stages.1.lr=0.0 must be above 0"),
    (["train.stages.0.batch_size=15"], "train.stages.0.batch_size=15 must be a positive multiple of train.num_workers=2"),
    (["data.holdout_fraction=1"], "data.holdout_fraction=1.0 must be in [0, 1)"),
    (["data.synth_count=0"], "data.synth_count=0 must be at least 1"),
    (["tiny.processes=0"], "tiny.processes=0 must be at least 1"),
    (["tiny.clip_fit_steps=-1"], "tiny.clip_fit_steps=-1 must be at least 0"),
    (["tiny.clip_image_size=60"], "tiny.clip_image_size=60 must be a positive multiple"),
    (["tiny.clip_attribute_weight=-1"], "tiny.clip_attribute_weight=-1.0 must be at least 0"),
    (["eval.n=0"], "eval.n=0 must be at least 1"),
    (["eval.compare_loss=fancy"], "eval.compare_loss=fancy is not empty or one of energy, regression"),
    (["tune.trials=-1"], "tune.trials=-1 must be at least 0"),
    (["tune.workers_per_trial=0"], "tune.workers_per_trial=0 must be at least 1"),
    (["sample.n=0"], "sample.n=0 must be at least 1"),
    (["sample.edit_t=1.5"], "sample.edit_t=1.5 must be in [0, 1] (0: the face itself)"),
    *[([f"serve.{key}=0"], f"serve.{key}=0 must be at least 1")
      for key in ("max_batch_size", "max_images", "max_prompt_chars", "max_body_bytes", "max_steps", "replicas")],
    (["serve.batch_wait_s=-1"], "serve.batch_wait_s=-1.0 must be at least 0"),
    (["serve.num_cpus=0"], "serve.num_cpus=0.0 must be above 0"),
    (["serve.num_gpus=-2"], "serve.num_gpus=-2.0 must be -1 (auto) or at least 0"),
]


def _refusal(overrides: list[str]) -> tuple[str, int]:
    """The sentence ``load_config`` refuses ``overrides`` with, and the line of checks.py whose rule said it."""
    with pytest.raises(ConfigError) as refused:
        load_config("demo", overrides=overrides)
    frames = [f for f in traceback.extract_tb(refused.value.__traceback__) if f.filename == checks.__file__]
    assert frames and frames[-1].name == "_need", f"{overrides}: refused outside checks.py's rules: {refused.value}"
    return str(refused.value), frames[-2].lineno


@pytest.mark.parametrize(("overrides", "sentence"), RULES, ids=[" ".join(o) for o, _ in RULES])
def test_every_value_rule_refuses_a_bad_value_with_its_sentence(overrides, sentence):
    message, _ = _refusal(overrides)
    assert sentence in message, message


def test_every_rule_of_checks_py_has_a_case_above():
    """A rule is one ``_need(...)`` call: each must be the one that refuses some case of RULES."""
    tree = ast.parse(Path(checks.__file__).read_text())
    rules = {node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_need"}
    reached = {_refusal(overrides)[1] for overrides, _ in RULES}
    lines = Path(checks.__file__).read_text().splitlines()
    assert rules - reached == set(), [lines[n - 1].strip() for n in sorted(rules - reached)]
    assert len(rules) > 60  # the walk found the rules at all
