"""The sections Ray Train and Ray Tune read: the generator's stages and workers, the sweep, the flow prior."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageConfig:
    """One progressive stage: its output resolution and its schedule."""

    resolution: int = 16
    images: int = 1024
    batch_size: int = 16
    lr: float = 2e-3
    fade_images: int = 0

    @property
    def steps(self) -> int:
        """Optimizer steps in the stage: its image budget in global batches, rounded up."""
        return -(-self.images // self.batch_size)


@dataclass
class RayWorkers:
    """What a Ray Train run holds and tolerates; the generator (``train.*``) and the prior (``prior.*``) each have their own."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0  # and as many threads per worker
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    max_failures: int = 2  # a killed worker is retried from the last committed checkpoint
    num_to_keep: int = 2  # checkpoints kept
    max_bad_steps: int = 10  # non-finite steps skipped before the run stops
    shuffle_buffer: int = 1024
    materialize: bool = False  # hold a small pyramid in the object store: no re-read (seconds) per epoch
    ray_log_level: str = "ERROR"  # Ray Train's own console lines; INFO shows every report, restart and traceback


@dataclass
class TrainConfig(RayWorkers):
    """Ray Train DDP progressive training."""

    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    num_workers: int = 2
    bf16: bool = True
    ema_beta: float = 0.995
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    log_every: int = 10
    sample_every: int = 100
    val_count: int = 16
    seed: int = 0

    @property
    def images(self) -> int:
        """Images one run sees over all its stages (the progress line's total)."""
        return sum(stage.images for stage in self.stages)


@dataclass
class TuneConfig:
    """Ray Tune sweep over loss weights.

    ``search`` maps a config key (as in overrides) to ``[low, high]``, sampled
    log-uniformly.
    """

    trials: int = 4
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    grace_period: int = 1  # in stages: ASHA compares trials only at stage ends, where the metric is measured
    reduction_factor: int = 2
    metric: str = "heldout/eval_dist"  # no swept key enters it: evaluation encoder, held-out images
    overrides: list[str] = field(default_factory=list)  # key=value applied to every trial (e.g. a shorter schedule)
    search: dict[str, list[float]] = field(
        default_factory=lambda: {
            "loss.level_weights.0": [0.1, 10.0],
            "loss.level_weights.1": [0.1, 10.0],
            "loss.level_weights.2": [0.1, 10.0],
            "loss.color_weight": [0.1, 10.0],
        }
    )


@dataclass
class PriorConfig(RayWorkers):
    """The flow-matching prior over the coarse code (docs/prior.md): its size, training and sampling.

    A transformer of ``depth`` adaLN blocks, ``width`` wide, over the
    code's ``g*g`` tokens taken ``patch`` x ``patch`` at a time, trained for ``steps`` optimizer steps of
    ``batch_size`` codes (global) through the generator's machinery.
    ``clip_noise``: LAFITE's perturbation level of the CLIP image embedding;
    ``cond_dropout``: the share of codes trained without their condition
    (what classifier-free guidance needs). ``condition``: ``text`` conditions
    on the text embeddings of ``caption_variants`` captions per image where
    the images have captions (else, and with ``image``, on the image
    embedding; docs/prior.md). ``time_shift``: RAE's shift of the noise
    schedule towards noise (1: none). Sampling: ``sample_steps`` (K)
    ``solver`` steps, guidance scale ``guidance``. The PCA Gaussian baseline
    keeps ``pca_components`` and is fitted, like the code statistics, on the
    first ``fit_rows`` rows only. Its workers, GPUs, retries and data
    loading are its own (:class:`RayWorkers`), not the generator's.
    """

    width: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    patch: int = 1  # p x p neighbouring code tokens form one transformer token (DiT's patch size)
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_beta: float = 0.99
    grad_clip: float = 1.0
    clip_noise: float = 0.1
    cond_dropout: float = 0.1
    condition: str = "text"
    caption_variants: int = 8
    time_shift: float = 1.0
    sample_steps: int = 8
    solver: str = "heun"
    guidance: float = 2.0
    checkpoint_every: int = 200
    log_every: int = 50
    pca_components: int = 16
    fit_rows: int = 4096
    seed: int = 0


@dataclass
class DistillConfig(RayWorkers):
    """The few-step student of the flow prior (docs/prior.md): rectified-flow distillation, guidance distilled in.

    The teacher (the trained prior, ``teacher_steps`` Heun steps with
    guidance) maps ``pairs`` noise draws to codes, each under a training
    condition and a guidance scale drawn from ``guidance`` ``[low, high]``
    (an ``uncond_share`` of them under the null condition). The student
    starts from the teacher's weights, takes the guidance scale as an input,
    and learns the straight path from each noise draw to its code
    (InstaFlow: Liu et al. 2024), in ``steps`` optimizer steps of
    ``batch_size`` pairs; a ``one_step_share`` of each batch is taken at
    the noise end, where one evaluation must land. It samples in
    ``sample_steps`` Euler evaluations by default. ``steps: 0``: no student.
    """

    steps: int = 0
    pairs: int = 2048
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_beta: float = 0.98
    grad_clip: float = 1.0
    guidance: list[float] = field(default_factory=lambda: [1.0, 7.0])
    uncond_share: float = 0.2
    teacher_steps: int = 16
    one_step_share: float = 0.5
    sample_steps: int = 1
    teacher_batch: int = 256  # pairs per teacher pass (a Ray Data batch)
    actors: int = 1           # teacher actors drawing the pairs
    checkpoint_every: int = 200
    log_every: int = 100
    seed: int = 0
