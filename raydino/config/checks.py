"""The value rules of a config, checked where it is loaded.

The type checks of :mod:`raydino.config` catch ``lr=abc``; these catch
``loss.kind=foo``, ``model.max_resolution=48`` or ``train.num_workers=0``,
which are well-typed but would otherwise fail on a Ray worker, where the
failure policy retries them. Each rule lives here once: the loss, the
generator and the prior call the same functions on the configs they are
given, so a library user gets the same sentence as the command line.

Rules that need the data (a batch against the rows of a pyramid) are in
:mod:`raydino.data_fit`; this module knows only the config.
"""

from __future__ import annotations

from raydino.config.sections import Config, LossConfig, ModelConfig, PyramidConfig, ServeConfig
from raydino.config.training import DistillConfig, PriorConfig, RayWorkers, TrainConfig

LOSS_KINDS = ("energy", "regression")
SOLVERS = ("euler", "heun")
CONDITIONS = ("text", "image")  # what the flow prior is conditioned on (train/conditions.py)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DINO_PATCH = 14  # every DINOv2 (and the demo's tiny stand-ins) cuts 14 x 14 px patches
BASE_RESOLUTION = 16  # the generator's first block


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def stage_resolutions(max_resolution: int) -> list[int]:
    """The generator's block resolutions 16, 32, ... up to ``model.max_resolution`` (16 * 2**k)."""
    out = [BASE_RESOLUTION]
    while out[-1] < max_resolution:
        out.append(out[-1] * 2)
    _need(out[-1] == max_resolution,
          f"model.max_resolution={max_resolution} is not 16 * 2**k (16, 32, 64, 128, 256, ...)")
    return out


def check_sizes(sizes: list[int], key: str = "pyramids.sizes") -> list[int]:
    """The pyramid's levels: distinct positive multiples of DINOv2's patch."""
    shown = ",".join(map(str, sizes))
    _need(bool(sizes) and all(s > 0 and s % DINO_PATCH == 0 for s in sizes),
          f"{key} {shown}: every level must be a positive multiple of {DINO_PATCH} (DINOv2's patch), e.g. 56,112,224")
    _need(len(set(sizes)) == len(sizes), f"{key} {shown} names a level twice")
    return sizes


def check_extraction(pyramids: PyramidConfig, flags: dict[str, str] | None = None) -> list[int]:
    """The extraction's settings; ``flags`` names the command-line flag that set a field (``sizes`` -> ``--sizes``)."""
    def key(name: str) -> str:
        return (flags or {}).get(name, f"pyramids.{name}")

    _need(pyramids.actors >= 1, f"{key('actors')} {pyramids.actors} must be at least 1")
    _need(pyramids.batch_size >= 1, f"{key('batch_size')} {pyramids.batch_size} must be at least 1")
    _need(0 <= pyramids.max_failure_fraction <= 1,
          f"{key('max_failure_fraction')} {pyramids.max_failure_fraction} must be in [0, 1]")
    return check_sizes(pyramids.sizes, key("sizes"))


def check_model(model: ModelConfig) -> list[int]:
    """The generator's sizes; returns its stage resolutions."""
    res = stage_resolutions(model.max_resolution)
    _need(len(model.channels) >= len(res),
          f"model.channels has {len(model.channels)} widths, model.max_resolution={model.max_resolution} needs "
          f"{len(res)} (one per resolution {', '.join(map(str, res))})")
    _need(all(c >= 1 for c in model.channels), f"model.channels={model.channels}: every width must be at least 1")
    _need(model.code_dim >= 1 and model.noise_dim >= 1, "model.code_dim and model.noise_dim must be at least 1")
    _need(model.code_resolution >= BASE_RESOLUTION,
          f"model.code_resolution={model.code_resolution}: the code is decoded to at least the first block's "
          f"{BASE_RESOLUTION} px")
    return res


def check_loss(loss: LossConfig, levels: int) -> None:
    """The loss's kind and one weight per pyramid level."""
    _need(loss.kind in LOSS_KINDS, f"loss.kind={loss.kind} is not one of {', '.join(LOSS_KINDS)}")
    if loss.kind == "energy":
        _need(loss.draws >= 2, f"loss.draws={loss.draws}: loss.kind=energy needs at least 2 draws (one has no spread)")
        _need(0 < loss.beta < 2, f"loss.beta={loss.beta}: loss.kind=energy needs 0 < beta < 2 "
                                 "(beta = 2 is a regression again)")
    _need(len(loss.level_weights) == levels,
          f"loss.level_weights has {len(loss.level_weights)} weights for {levels} pyramid levels (pyramids.sizes)")
    for key, weights in loss.stage_level_weights.items():
        _need(len(weights) == levels,
              f"loss.stage_level_weights.{key} has {len(weights)} weights for {levels} pyramid levels")


def check_workers(workers: RayWorkers, section: str) -> None:
    """What a Ray Train run holds and tolerates (``train.*`` or ``prior.*``), refused before any worker starts."""
    _need(workers.num_workers >= 1, f"{section}.num_workers={workers.num_workers} must be at least 1")
    _need(workers.cpus_per_worker > 0, f"{section}.cpus_per_worker={workers.cpus_per_worker} must be above 0")
    _need(not workers.use_gpu or workers.gpus_per_worker > 0,
          f"{section}.gpus_per_worker={workers.gpus_per_worker} must be above 0 with {section}.use_gpu")
    _need(workers.max_failures >= 0, f"{section}.max_failures={workers.max_failures} must be at least 0")
    _need(workers.num_to_keep >= 1, f"{section}.num_to_keep={workers.num_to_keep} must be at least 1")
    _need(workers.max_bad_steps >= 1, f"{section}.max_bad_steps={workers.max_bad_steps} must be at least 1")
    _need(workers.shuffle_buffer >= 0, f"{section}.shuffle_buffer={workers.shuffle_buffer} must be at least 0")
    _need(workers.ray_log_level in LOG_LEVELS,
          f"{section}.ray_log_level={workers.ray_log_level} is not one of {', '.join(LOG_LEVELS)}")


def check_prior(prior: PriorConfig, code_grid: int) -> None:
    """The flow prior's shape against the code's ``code_grid`` x ``code_grid`` tokens, and its schedule."""
    _need(prior.heads >= 1 and prior.width % prior.heads == 0,
          f"prior.width={prior.width} is not a multiple of prior.heads={prior.heads}")
    _need(prior.solver in SOLVERS, f"prior.solver={prior.solver} is not one of {', '.join(SOLVERS)}")
    _need(prior.patch >= 1 and code_grid % prior.patch == 0,
          f"prior.patch={prior.patch} does not tile the {code_grid}x{code_grid} code (pyramids.sizes first level / 14)")
    check_workers(prior, "prior")
    _need(prior.batch_size >= 1 and prior.batch_size % prior.num_workers == 0,
          f"prior.batch_size={prior.batch_size} must be a positive multiple of prior.num_workers={prior.num_workers}")
    _need(prior.condition in CONDITIONS, f"prior.condition={prior.condition} is not one of {', '.join(CONDITIONS)}")
    _need(prior.caption_variants >= 1, f"prior.caption_variants={prior.caption_variants} must be at least 1")
    _need(prior.time_shift > 0, f"prior.time_shift={prior.time_shift} must be positive")
    _need(prior.sample_steps >= 1, f"prior.sample_steps={prior.sample_steps} must be at least 1")
    _need(prior.steps >= 0, f"prior.steps={prior.steps} must be at least 0")


def check_distill(d: DistillConfig) -> None:
    """The student's pairs, guidance range and schedule."""
    check_workers(d, "distill")
    _need(d.steps >= 0, f"distill.steps={d.steps} must be at least 0 (0: no student)")
    _need(d.batch_size >= 1 and d.batch_size % d.num_workers == 0,
          f"distill.batch_size={d.batch_size} must be a positive multiple of distill.num_workers={d.num_workers}")
    _need(d.pairs >= d.batch_size, f"distill.pairs={d.pairs} must be at least distill.batch_size={d.batch_size}")
    _need(len(d.guidance) == 2 and 0 <= d.guidance[0] <= d.guidance[1],
          f"distill.guidance={d.guidance} must be [low, high] with 0 <= low <= high")
    _need(0 <= d.uncond_share <= 1, f"distill.uncond_share={d.uncond_share} must be in [0, 1]")
    _need(0 <= d.one_step_share <= 1, f"distill.one_step_share={d.one_step_share} must be in [0, 1]")
    _need(d.teacher_steps >= 1, f"distill.teacher_steps={d.teacher_steps} must be at least 1")
    _need(d.sample_steps >= 1, f"distill.sample_steps={d.sample_steps} must be at least 1")
    _need(d.teacher_batch >= 1 and d.actors >= 1,
          f"distill.teacher_batch={d.teacher_batch} and distill.actors={d.actors} must be at least 1")
    _need(0 <= d.ema_beta < 1, f"distill.ema_beta={d.ema_beta} must be in [0, 1)")
    _need(d.checkpoint_every >= 1 and d.log_every >= 1,
          "distill.checkpoint_every and distill.log_every must be at least 1")


def check_train(train: TrainConfig, resolutions: list[int]) -> None:
    """Workers, and stages the generator has, in order, with batches that split across the workers."""
    check_workers(train, "train")
    _need(bool(train.stages), "train.stages is empty: give at least one stage")
    _need(0 <= train.ema_beta < 1, f"train.ema_beta={train.ema_beta} must be in [0, 1)")
    _need(train.checkpoint_every >= 1 and train.log_every >= 1 and train.sample_every >= 1,
          "train.checkpoint_every, train.log_every and train.sample_every must be at least 1")
    previous = 0
    for i, stage in enumerate(train.stages):
        key = f"train.stages.{i}"
        _need(stage.resolution in resolutions, f"{key}.resolution={stage.resolution} is not a generator resolution "
                                               f"({', '.join(map(str, resolutions))}; model.max_resolution)")
        _need(stage.resolution > previous, f"{key}.resolution={stage.resolution}: stages must grow in resolution")
        previous = stage.resolution
        _need(stage.images >= 1, f"{key}.images={stage.images} must be at least 1")
        _need(stage.lr > 0, f"{key}.lr={stage.lr} must be above 0")
        _need(stage.batch_size >= 1 and stage.batch_size % train.num_workers == 0,
              f"{key}.batch_size={stage.batch_size} must be a positive multiple of train.num_workers="
              f"{train.num_workers}")


def check(cfg: Config) -> Config:
    """Every value rule of ``cfg`` that needs no data; returns ``cfg`` unchanged."""
    sizes = check_extraction(cfg.pyramids)
    _need(0 <= cfg.data.holdout_fraction < 1, f"data.holdout_fraction={cfg.data.holdout_fraction} must be in [0, 1)")
    _need(cfg.data.synth_count >= 1, f"data.synth_count={cfg.data.synth_count} must be at least 1")
    _need(cfg.tiny.processes >= 1, f"tiny.processes={cfg.tiny.processes} must be at least 1")
    _need(cfg.tiny.clip_fit_steps >= 0, f"tiny.clip_fit_steps={cfg.tiny.clip_fit_steps} must be at least 0")
    _need(cfg.tiny.clip_image_size >= 8 and cfg.tiny.clip_image_size % 8 == 0,
          f"tiny.clip_image_size={cfg.tiny.clip_image_size} must be a positive multiple of the tiny CLIP's 8 px patch")
    _need(cfg.tiny.clip_attribute_weight >= 0,
          f"tiny.clip_attribute_weight={cfg.tiny.clip_attribute_weight} must be at least 0")
    resolutions = check_model(cfg.model)
    check_loss(cfg.loss, len(sizes))
    check_train(cfg.train, resolutions)
    check_prior(cfg.prior, sizes[0] // DINO_PATCH)
    check_distill(cfg.distill)
    _need(cfg.eval.n >= 1, f"eval.n={cfg.eval.n} must be at least 1")
    _need(cfg.eval.compare_loss in ("", *LOSS_KINDS),
          f"eval.compare_loss={cfg.eval.compare_loss} is not empty or one of {', '.join(LOSS_KINDS)}")
    _need(cfg.tune.trials >= 0, f"tune.trials={cfg.tune.trials} must be at least 0")
    _need(cfg.tune.workers_per_trial >= 1, f"tune.workers_per_trial={cfg.tune.workers_per_trial} must be at least 1")
    _need(cfg.sample.n >= 1, f"sample.n={cfg.sample.n} must be at least 1")
    _need(0 <= cfg.sample.edit_t <= 1, f"sample.edit_t={cfg.sample.edit_t} must be in [0, 1] (0: the face itself)")
    check_serve(cfg.serve)
    return cfg


def check_serve(sc: ServeConfig) -> None:
    for key in ("max_batch_size", "max_images", "max_prompt_chars", "max_body_bytes", "max_steps", "replicas"):
        _need(getattr(sc, key) >= 1, f"serve.{key}={getattr(sc, key)} must be at least 1")
    _need(sc.batch_wait_s >= 0, f"serve.batch_wait_s={sc.batch_wait_s} must be at least 0")
    _need(sc.num_cpus > 0, f"serve.num_cpus={sc.num_cpus} must be above 0")
    _need(sc.num_gpus == -1 or sc.num_gpus >= 0, f"serve.num_gpus={sc.num_gpus} must be -1 (auto) or at least 0")
