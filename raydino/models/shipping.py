"""The shipped build of the tiny models: the recipe a run's models are a function of, its copy, its compact CLIP.

Building them is a minute and a half of a two-core machine's time, so the
package ships the demo recipe's build (``shipped/``, made by ``raydino
tiny-models --preset demo --ship``): a run whose :func:`recipe` is a shipped
one's copies it. The recipe holds a hash of the training code, so a build
that code no longer makes is never copied (the suite then says to ship
again). The tiny CLIP's token embedding is over the repository's 5 MiB a
file: it is shipped as the rows its captions moved (:func:`compact_clip`),
and the copy rebuilds the rest from the seed and checks the whole against
the weights hash the build recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from raydino.config import Config
from raydino.models.loading import load_clip
from raydino.models.tiny import SUMMARY, folders, write_tiny_models
from raydino.models.tiny_clip import build_tiny_clip

PACKAGE = Path(__file__).parents[1]
SHIPPED = Path(__file__).parent / "shipped"  # prebuilt tiny models, one folder per recipe
COMPACT = "clip"  # shipped as its used token-embedding rows (compact_clip): the whole is too large a file to track
CLIP_WEIGHTS, CLIP_ROWS = "open_clip_model.safetensors", "open_clip_rows.safetensors"

log = logging.getLogger(__name__)


# the modules the tiny models are drawn and trained by: models/tiny.py and what it imports, but config/
# (the budget is in the recipe itself); tests/test_shipped_models.py checks the list against the imports
TRAINING_CODE = ("models/tiny.py", "models/tiny_clip.py", "models/encoder_training.py", "models/face_attributes.py",
                 "models/part_segmenter.py", "models/probes.py", "models/loading.py", "models/encoders.py",
                 "data/synth_faces.py", "data/face_set.py", "data/phrasing.py", "data/captions.py", "data/images.py",
                 "data/sources.py")


def code_fingerprint() -> str:
    """A hash of :data:`TRAINING_CODE`: a shipped build is stale once the code that trains the models changed."""
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        digest.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes())
    return digest.hexdigest()[:16]


def recipe(cfg: Config) -> dict:
    """What the tiny models of a run on synthetic faces are a pure function of.

    The faces (count, size, seed), the levels, the training budget and the
    code that trains them (:func:`code_fingerprint`); not how many processes
    train them (:func:`raydino.models.tiny.fixed_threads`), nor folders.
    """
    budget = {k: v for k, v in dataclasses.asdict(cfg.tiny).items() if k not in ("build", "processes", "shipped")}
    return {"faces": {"count": cfg.data.synth_count, "size": cfg.data.synth_size, "seed": cfg.data.seed},
            "sizes": list(cfg.pyramids.sizes), "budget": budget, "code": code_fingerprint()}


def shipped_build(want: dict) -> Path | None:
    """The shipped folder built from ``want`` (:func:`recipe`), or None."""
    for summary in sorted(SHIPPED.glob(f"*/{SUMMARY}")):
        if json.loads(summary.read_text()).get("recipe") == want:
            return summary.parent
    return None


def compact_clip(folder: Path, seed: int) -> None:
    """Replace a fitted tiny CLIP's weights by what differs from its seeded init: 13.5 MB to 0.9 MB.

    Of the 49,408 token-embedding rows (most of the model) only the captions'
    tokens move in the fit (:func:`raydino.models.tiny_clip.fit_tiny_clip`); the rest are rebuilt from
    ``seed`` by :func:`expand_clip`.
    """
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / CLIP_WEIGHTS)
    torch.manual_seed(seed)
    init = build_tiny_clip().token_embedding.weight.detach()
    table = weights.pop("token_embedding.weight")
    rows = (table != init).any(dim=1).nonzero().flatten()
    save_file({**weights, "token_embedding.rows": rows, "token_embedding.values": table[rows].contiguous()},
              folder / CLIP_ROWS)
    (folder / CLIP_WEIGHTS).unlink()


def expand_clip(folder: Path, seed: int) -> None:
    """The tiny CLIP's whole weights from :func:`compact_clip`'s file and ``seed``."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / CLIP_ROWS)
    torch.manual_seed(seed)
    table = build_tiny_clip().token_embedding.weight.detach().clone()
    table[weights.pop("token_embedding.rows")] = weights.pop("token_embedding.values")
    save_file({**weights, "token_embedding.weight": table}, folder / CLIP_WEIGHTS)
    (folder / CLIP_ROWS).unlink()


def copy_shipped(shipped: Path, out: Path, names: dict[str, str]) -> None:
    """The shipped build into ``out``, each model in its folder of ``names`` (:func:`~raydino.models.tiny.folders`).

    The tiny CLIP is expanded and checked; the summary goes last (it marks the step done).
    """
    summary = json.loads((shipped / SUMMARY).read_text())
    for key, folder in summary["folders"].items():
        shutil.copytree(shipped / folder, out / names[key], dirs_exist_ok=True)
    path = out / names[COMPACT]
    expand_clip(path, summary["seed"])
    if load_clip(str(path)).hash != summary["hashes"][COMPACT]:
        log.warning("tiny CLIP %s: weights hash differs from the build of this recipe (%s): this machine's torch "
                    "draws other initial weights, so figures may differ from the README's", path,
                    summary["hashes"][COMPACT])
    (out / SUMMARY).write_text(json.dumps(summary | {"folders": names}, indent=1))


def ship(cfg: Config, out: Path) -> dict[str, Path]:
    """``raydino tiny-models --ship``: :func:`build_recipe`, the CLIP's hash recorded, its weights compacted."""
    paths = build_recipe(cfg, out)
    summary = json.loads((out / SUMMARY).read_text())
    summary["hashes"] = {COMPACT: load_clip(str(paths[COMPACT])).hash}
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    compact_clip(paths[COMPACT], summary["seed"])
    return paths


def build_recipe(cfg: Config, out: Path) -> dict[str, Path]:
    """The tiny models of ``cfg``'s synthetic faces, written to ``out``; the faces are made there, then removed.

    What ``raydino tiny-models --ship`` writes into the package and what the
    suite compares the shipped build with.
    """
    from raydino.data.synth_faces import write_faces

    count, size, seed = cfg.data.synth_count, cfg.data.synth_size, cfg.data.seed
    faces = write_faces(out / f"synthetic-faces-seed{seed}-{count}x{size}px", count, seed=seed, size=size)
    try:
        return write_tiny_models(out, faces, seed=seed, budget=cfg.tiny, sizes=cfg.pyramids.sizes,
                                 recipe=recipe(cfg), names=folders(cfg))
    finally:
        shutil.rmtree(faces)
