"""The sections of a run's config: one plain dataclass per consumer, every field with its default.

A setting sits in the section of the code that reads it (``eval.*`` for
``raydino eval``, ``tiny.*`` for the offline demo's models, ...), so a
newcomer finds a knob where its effect is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raydino.config.training import DistillConfig, PriorConfig, TrainConfig, TuneConfig


@dataclass
class DataConfig:
    """Where training images come from; empty ``images`` means synthetic faces."""

    images: str = ""
    holdout_fraction: float = 0.02  # of --images files held out for evaluation (at least eval.n, at most a third)
    synth_count: int = 256
    synth_size: int = 256
    seed: int = 0


@dataclass
class TinyModelsConfig:
    """The offline demo's encoders (``raydino tiny-models``), trained on its synthetic faces.

    ``build``: ``raydino run`` writes them into ``OUT/models`` (and the
    synthetic faces they learn from) before anything else; the demo preset
    sets it, a config for real models leaves it off. Each tiny DINOv2 stand-in trains for its steps (``encoder_steps: 0`` keeps
    random weights, and says so: the baseline the trained ones are measured
    against), the attribute classifier for ``classifier_steps``, the part
    segmenter for ``segmenter_steps``; the probes are scored on
    ``probe_faces`` held-out faces (docs/encoders.md). ``shipped``: copy the
    package's prebuilt models when they were built from this run's recipe
    (``raydino.models.shipping.recipe``) instead of training them again.
    """

    build: bool = False
    shipped: bool = True
    encoder_steps: int = 600
    fd_encoder_steps: int = 400
    classifier_steps: int = 400
    segmenter_steps: int = 300  # the part segmenter (raydino.evaluation.part_figures): ~5 s on one thread
    batch_size: int = 32
    lr: float = 5e-3
    probe_faces: int = 192
    clip_fit_steps: int = 1200  # the tiny CLIP: contrastive steps on the run's captions (docs/encoders.md)
    clip_image_size: int = 64  # its image tower's input side
    clip_lr: float = 2e-3
    clip_minimal_pairs: bool = True  # synthetic faces: each face's counterfactual and its caption (models/tiny_clip.py)
    clip_attribute_weight: float = 10.0  # synthetic faces: attribute read-outs of the image side, thrown away
    processes: int = 2  # models trained at once, one thread each (the same weights with any count)


@dataclass
class PyramidConfig:
    """DINOv2 feature-pyramid extraction (``raydino pyramids``)."""

    dino: str = "facebook/dinov2-base"
    clip: str = ""
    sizes: list[int] = field(default_factory=lambda: [56, 112, 224])
    thumb_size: int = 32
    batch_size: int = 64
    actors: int = 1
    num_gpus: float = 0.0
    decode_concurrency: int = 0
    min_side: int = 64
    max_pixels: int = 89_478_485
    max_failure_fraction: float = 0.5


@dataclass
class ModelConfig:
    """Progressive generator sizes; ``channels[i]`` is the width at 16 * 2**i px.

    ``code_resolution``: the side the coarse code is decoded to before it
    feeds and modulates the blocks. Each token maps linearly to its own
    cell of that map (a pixel shuffle), added to the bilinearly resized
    code, so a token says where its eye or mouth sits inside its cell;
    bilinear resizing alone spreads it over the cell (docs/training.md).

    ``noise_strength``: initial per-channel scale of the per-pixel noise maps
    (learned from there; not zero, so the distributional loss's spread term
    has a gradient from the first step).
    """

    code_dim: int = 64
    noise_dim: int = 64
    noise_strength: float = 0.1
    channels: list[int] = field(default_factory=lambda: [512, 512, 256, 128, 64])
    max_resolution: int = 256
    code_resolution: int = 32


@dataclass
class LossConfig:
    """The multi-scale DINOv2 loss: its kind and weights.

    ``kind``: ``energy`` (a distributional score over ``draws`` generated
    images per target, with distance exponent ``beta`` in (0, 2)) or
    ``regression`` (one image per target, mean ``1 - cos``); see
    raydino/losses.py and docs/training.md.

    ``level_weights[i]`` weighs pyramid level ``i``; ``stage_level_weights``
    optionally overrides them per stage resolution (key: resolution as str).
    ``color_size``: side (px) at which the colour term compares with the
    thumbnail; ``shift_px``: largest random shift, in DINO input pixels, of
    each level's input (the anti-adversarial guard, docs/training.md).
    """

    kind: str = "regression"
    draws: int = 2
    beta: float = 1.0
    level_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    stage_level_weights: dict[str, list[float]] = field(default_factory=dict)
    cls_weight: float = 0.5
    color_weight: float = 1.0
    color_size: int = 8
    shift_px: int = 2


@dataclass
class SampleConfig:
    """Sampling: grid size, seed and the run's prompts (``raydino eval`` scores the same prompts).

    ``edit_t``: the flow time a text-guided edit noises a face's code to
    (``raydino sample --from-image X --prompt P --vary T``'s default in the
    report and ``raydino eval``): lower keeps more of the face, higher obeys
    the prompt more (the T curve in docs/prior.md).
    """

    n: int = 8
    seed: int = 0
    prompts: list[str] = field(default_factory=list)
    edit_t: float = 0.6


@dataclass
class EvalConfig:
    """``raydino eval``: how many held-out images the figures use, and what the run is compared with.

    FD is reported with its real-vs-real floor at the same ``n``, so ``n``
    sets how small a difference the figures can resolve (docs/tune-eval-sample.md).
    ``compare_loss``: a ``loss.kind`` that ``raydino run`` also trains the
    same schedule with (``runs/compare-<kind>``), so the report shows the
    detail figures of both side by side; empty: no comparison run.
    ``fd_encoder``: the DINOv2 that FD and the held-out distance use, by
    default not the training encoder (empty: the training one, and the
    figures say so); ``attribute_classifier``: a synthetic-face attribute
    classifier (``raydino tiny-models``) for attribute agreement;
    ``part_segmenter``: a synthetic-face part segmenter (``raydino
    tiny-models``) for the parts figures' IoU and found shares.
    """

    n: int = 256
    compare_loss: str = ""
    fd_encoder: str = ""
    attribute_classifier: str = ""
    part_segmenter: str = ""


@dataclass
class ServeConfig:
    """``raydino serve``: how requests are batched and what one may ask (docs/serve.md).

    Concurrent ``/generate`` requests wait up to ``batch_wait_s`` for each
    other and share one generator pass, up to ``max_batch_size`` requests
    (clients that were answered together ask again together, spread by the
    proxy's hop: 5 ms caught 1.75 of 8 on a 2-core CPU, 20 ms 7.4). With the
    one-step prior a pass is ~9 ms, so a lone request's wait is most of its
    latency: 5 ms gave one client 39 ms p50 and 32 clients 68 images/s, 20 ms
    54 ms and 100 images/s (docs/serve.md).
    ``num_cpus``: per replica, also its torch threads. ``num_gpus``: per
    replica; -1 takes one when the cluster has a GPU. ``teacher``: the
    flow prior itself instead of its distilled student.
    """

    max_batch_size: int = 32
    batch_wait_s: float = 0.005
    max_images: int = 16  # n of one request
    max_prompt_chars: int = 300
    max_body_bytes: int = 8 << 20  # a /vary upload, or any JSON body
    max_steps: int = 64  # the prior's ODE steps a request may ask for
    replicas: int = 1
    num_cpus: float = 2.0
    num_gpus: float = -1.0
    teacher: bool = False  # serve the prior itself (K guided steps) where the run has a distilled student


@dataclass
class Config:
    """A whole raydino run."""

    preset: str = "demo"
    out: str = "data/demo"
    data: DataConfig = field(default_factory=DataConfig)
    tiny: TinyModelsConfig = field(default_factory=TinyModelsConfig)
    pyramids: PyramidConfig = field(default_factory=PyramidConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
