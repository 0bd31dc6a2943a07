"""Tiny encoders of the real classes, trained on synthetic faces and saved like real ones.

They let tests and the offline demo run the exact loading and feature code
that a real run uses; only the sizes differ. A random ViT is not a
perceptual space, so the two DINOv2 stand-ins are trained to see the faces
(``encoder_training``), the CLIP is fitted to their captions, and a small
attribute classifier and a part segmenter are trained to judge generated
faces. Each is saved with a ``RAYDINO_TINY.txt`` marker (the judges: a note
in their weights' header) saying what its weights are, which every load
logs, so nobody mistakes them for pretrained weights; the linear probes of
both encoders against a random one are written beside them (``probes.json``).

The package ships the demo recipe's build of them (``models/shipping.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from raydino.config import Config, TinyModelsConfig, load_config, lookup
from raydino.data.captions import caption_pairs
from raydino.data.face_set import FaceSet, from_folder, from_seed
from raydino.models.encoder_training import (
    FD_OBJECTIVE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRAINING_OBJECTIVE,
    Objective,
    train_encoder,
)
from raydino.models.face_attributes import save_classifier, train_classifier
from raydino.models.loading import MARKER, Dino, load_dino, weights_hash
from raydino.models.part_segmenter import save_segmenter, train_segmenter
from raydino.models.probes import majority_baseline, probe_encoder
from raydino.models.tiny_clip import write_tiny_clip

TINY_DINO = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=2, patch_size=14, image_size=224)
# the config keys each tiny model is loaded from: the last part of their paths names its folder
MODEL_KEYS = {"dino": "pyramids.dino", "fd": "eval.fd_encoder", "clip": "pyramids.clip",
              "attributes": "eval.attribute_classifier", "segmenter": "eval.part_segmenter"}
PROBES = "probes.json"
SUMMARY = "tiny-models.json"  # written last: the pipeline's proof that the step finished
TRAIN_THREADS = 1  # intra-op threads of every tiny model's training (fixed_threads)
PROBE_SEED = 20_000  # held-out probe faces: not the training faces (seed) nor `raydino run`'s held-out ones (seed + 10000)

log = logging.getLogger(__name__)


def build_tiny_dino(seed: int = 0) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**TINY_DINO))


def save_tiny_dino(out: str | Path, seed: int = 0, model: torch.nn.Module | None = None,
                   note: str = "random weights") -> Path:
    """A small ``Dinov2Model`` (random unless ``model`` is given) with its image-processor config."""
    from transformers import BitImageProcessor

    out = Path(out)
    (model if model is not None else build_tiny_dino(seed)).save_pretrained(out)
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    ).save_pretrained(out)
    (out / MARKER).write_text(f"{note}, seed {seed}: for tests and the offline demo only\n")
    return out


@contextlib.contextmanager
def fixed_threads(n: int = TRAIN_THREADS) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, whatever ``OMP_NUM_THREADS`` or the core count say.

    How CPU kernels split a sum depends on the thread count, so the same
    seed trained the tiny CLIP into other weights with 1 thread than with 2
    (an exported ``OMP_NUM_THREADS=1`` was enough): a fixed count makes the
    tiny models, and the figures measured through them, the same on every run.
    One thread: the same weights on any machine, and no collapse when other
    processes share the cores (two threads on two busy cores ran ~25x slower).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_tiny_encoder(out: Path, train: FaceSet, faces: str | Path, sizes: list[int], objective: Objective,
                       steps: int, budget: TinyModelsConfig, seed: int) -> Path:
    """One DINOv2 stand-in, trained on ``train`` for ``steps`` (0: random weights, marked so)."""
    model = build_tiny_dino(seed)
    if not steps:
        log.warning("tiny DINOv2 %s: random weights (0 training steps)", out)
        return save_tiny_dino(out, seed, model)
    train_encoder(model, train, sizes, objective, steps, budget.batch_size, budget.lr, seed)
    note = (f"trained on the {len(train)} synthetic faces of {faces}: {steps} steps at {sizes} px, "
            f"objective {objective}")
    return save_tiny_dino(out, seed, model, note)


def write_probes(encoders: list[Path], sizes: list[int], count: int, seed: int) -> None:
    """``probes.json`` beside each encoder: its held-out probe accuracies, a random encoder's, the majority floor."""
    held_out = from_seed(PROBE_SEED + seed, count, max(sizes))
    rand = build_tiny_dino(seed + 2).eval().requires_grad_(False)
    random = Dino(rand, "random init", weights_hash(rand), TINY_DINO["patch_size"], TINY_DINO["hidden_size"],
                  IMAGENET_MEAN, IMAGENET_STD)
    baseline = {"random": probe_encoder(random, held_out, sizes),
                "majority": majority_baseline(held_out, sizes, TINY_DINO["patch_size"])}
    for path in encoders:
        dino = load_dino(str(path))
        figures = {"encoder": f"{dino.source} (hash {dino.hash})", "faces": count, "face_seed": PROBE_SEED + seed,
                   "sizes": sizes, "trained": probe_encoder(dino, held_out, sizes), **baseline}
        (path / PROBES).write_text(json.dumps(figures, indent=1))


def folders(cfg: Config) -> dict[str, str]:
    """Each tiny model's folder name: the last part of the path ``cfg`` loads it from, so the preset names it once."""
    return {key: Path(lookup(cfg, path)).name for key, path in MODEL_KEYS.items()}


def write_tiny_models(out: str | Path, faces: str | Path, seed: int = 0, budget: TinyModelsConfig | None = None,
                      sizes: list[int] | None = None,
                      captions: tuple[list[tuple[str, str]], str] | None = None,
                      recipe: dict | None = None, names: dict[str, str] | None = None) -> dict[str, Path]:
    """The demo's encoders, trained on a ``raydino synth-faces`` folder, their probes, and the two judges.

    ``dino`` (the training DINOv2), ``fd`` (another seed and objective mix, so
    that the evaluation space is not the training space), ``clip`` (fitted to
    ``captions``: ``(image path, caption)`` pairs and where they come from;
    default: the faces' own), ``attributes`` (the attribute classifier),
    ``segmenter`` (the part segmenter).
    ``sizes``: the pyramid levels the encoders will see (default: the demo's).
    Trained with :data:`TRAIN_THREADS` threads each (:func:`fixed_threads`), ``budget.processes`` at once.
    ``recipe`` (:func:`raydino.models.shipping.recipe`) goes into the summary, where :func:`shipped_build` finds it.
    ``names``: each model's folder in ``out`` (default: the demo preset's, :func:`folders`).
    """
    with fixed_threads():
        return _write_tiny_models(Path(out), faces, seed, budget or TinyModelsConfig(),
                                  list(sizes or [56, 84, 112]), captions, recipe, names or folders(load_config("demo")))


def _train_one(key: str, out: Path, faces: str, seed: int, budget: TinyModelsConfig, sizes: list[int],
               captions: tuple[list[tuple[str, str]], str] | None) -> tuple[str, Path, float]:
    """Train and save one tiny model (``key`` as in :func:`write_tiny_models`) into ``out``; a process pool's job.

    Each job seeds itself and runs on :data:`TRAIN_THREADS` threads, so its
    weights do not depend on which process, or in which order, it ran.
    """
    t0 = time.time()
    with fixed_threads():
        if key == "clip":
            pairs, source = captions or (caption_pairs(faces), str(faces))
            return key, write_tiny_clip(out, pairs, seed, budget, source), time.time() - t0
        train = from_folder(faces, max(sizes))
        note = f"trained on the {len(train)} synthetic faces of {faces}"
        if key == "dino":
            path = write_tiny_encoder(out, train, faces, sizes, TRAINING_OBJECTIVE,
                                      budget.encoder_steps, budget, seed)
        elif key == "fd":
            path = write_tiny_encoder(out, train, faces, sizes, FD_OBJECTIVE,
                                      budget.fd_encoder_steps, budget, seed + 1)
        elif key == "attributes":
            path = save_classifier(train_classifier(train, budget.classifier_steps, seed=seed), out, note)
        else:
            path = save_segmenter(train_segmenter(train, budget.segmenter_steps, seed=seed), out,
                                  f"{note}, {budget.segmenter_steps} steps")
    return key, path, time.time() - t0


JOBS = ("dino", "fd", "clip", "attributes", "segmenter")  # longest first: two processes finish together


def _write_tiny_models(out: Path, faces: str | Path, seed: int, budget: TinyModelsConfig, sizes: list[int],
                       captions: tuple[list[tuple[str, str]], str] | None, recipe: dict | None,
                       names: dict[str, str]) -> dict[str, Path]:
    """Every model as its own job on ``tiny.processes`` processes (spawned: no Ray or thread state inherited)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    paths, seconds = {}, {}
    with ProcessPoolExecutor(max_workers=budget.processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_train_one, key, out / names[key], str(faces), seed, budget, sizes, captions) for key in JOBS]
        for job in jobs:
            key, paths[key], seconds[key] = job.result()
            log.info("tiny model %s: %.1fs -> %s", key, seconds[key], paths[key])
    t0 = time.time()
    write_probes([paths["dino"], paths["fd"]], sizes, budget.probe_faces, seed)
    seconds["probes"] = time.time() - t0
    pairs, source = captions or (caption_pairs(faces), str(faces))
    summary = {"recipe": recipe, "faces": str(faces), "seed": seed, "sizes": sizes, "budget": dataclasses.asdict(budget),
               "captions": {"source": source, "count": len(pairs)},
               "threads": TRAIN_THREADS, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "folders": {k: v.name for k, v in paths.items()}}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return paths
