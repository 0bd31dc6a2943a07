"""``raydino eval``: weight-independent figures of a finished run on held-out pyramids.

Every figure is computed on the held-out pyramid given (its set is written
next to the figures) at the final stage's resolution: real images are
resized to it before encoding, like the generated ones.

- FD-DINOv2 between generated and real images, under a *separate* encoder
  (``eval.fd_encoder``; the published metric uses DINOv2 ViT-L/14), for
  reconstructions and prior samples, each beside ``n`` and the real-vs-real
  floor at that ``n`` (:func:`raydino.evaluation.metrics.fd_with_floor`): an FD near
  its floor says nothing more than "indistinguishable at this n"; prior
  samples come from the flow prior and from the PCA Gaussian baseline,
  scored against the same real half;
- the paired distance of each held-out image and its reconstruction under
  the evaluation encoder (what Tune ranks trials by);
- ``noise_spread`` (how much 8 noise draws for one held-out code differ,
  relative to how much the held-out images differ) and ``sharpness_ratio``
  (Laplacian variance of reconstructions over that of the real images): a
  generator that averages the details it cannot predict scores low on both;
- per-level unweighted patch-token distance of reconstructions, under the
  *training* DINOv2 (labelled so: a generator trained on one network's
  features can score well on it without looking right);
- CLIP score of prompt samples (through the flow prior), matched against
  mismatched prompts; on synthetic faces, text control per attribute: prompt
  samples, text-guided edits, and their references (``text_control``);
- colour error against the stored thumbnails;
- attribute agreement of reconstructions, prompt and prior samples, by a
  classifier of the synthetic faces' attributes (``raydino.evaluation.attribute_agreement``);
- whether eyes, mouth and glasses are drawn: reconstructions scored inside
  those parts against the same faces without them, segmented parts of
  reconstructions, prior and prompt samples (``raydino.evaluation.part_figures``);
- whether the flow prior copies its training codes: each sample's nearest
  training code against each held-out code's (``raydino.evaluation.memorisation``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from raydino.data.face_set import attribute_labels, attributes_for_paths
from raydino.data.images import read_image
from raydino.evaluation.attribute_agreement import attribute_figures
from raydino.evaluation.few_step import few_step_rows
from raydino.evaluation.memorisation import memorisation_figures
from raydino.evaluation.metrics import (
    clip_score,
    colour_error,
    dino_cls,
    fd_with_floor,
    level_distances,
    level_figures,
    match_resolution,
    noise_spread,
    paired_distance,
    sharpness_ratio,
)
from raydino.evaluation.part_figures import part_figures
from raydino.evaluation.text_control import oracle_conditions, text_control_figures
from raydino.evaluation.text_encoder import flip_test
from raydino.layout import Run
from raydino.models.encoders import to_float
from raydino.models.face_attributes import load_classifier
from raydino.models.loading import Dino, load_dino, require_local
from raydino.pyramids import schema
from raydino.pyramids.batch import Targets, columns
from raydino.sampling import Sampler

SPREAD_DRAWS = 8    # noise draws per code for noise_spread
SPREAD_CODES = 64   # held-out codes noise_spread averages over (at most)


def prior_samples(s: Sampler, fd_dino: Dino, real_feats: np.ndarray, half: int, seed: int,
                  size: int) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
    """FD of ``half`` unconditional samples of the flow prior and of the PCA baseline, same real half, same floor.

    Returns the flow samples and their codes (None without a prior:
    attribute agreement scores the samples, the memorisation check the
    codes) and the ``fd_dinov2/prior*`` figures.
    """
    out, flow, flow_codes = {}, None, None
    for kind, path, key in (("flow", s.run.prior, "fd_dinov2/prior"), ("pca", s.run.prior_pca, "fd_dinov2/prior_pca")):
        if path.is_file():
            codes = s.prior_codes(half, seed, kind=kind)
            images = s.from_prior(half, seed, kind=kind, codes=codes)[0].images
            out[key] = fd_with_floor(dino_cls(fd_dino, images, size), real_feats)["value"]
            if kind == "flow":
                flow, flow_codes = images, codes
    if flow is not None:
        prior = s.flow("--prior")
        out |= {"fd_dinov2/prior_steps": prior.cfg.sample_steps, "fd_dinov2/prior_kind": "student" if prior.student
                else "teacher", "fd_dinov2/prior_evaluations": prior.evaluations(conditioned=False)}
    return flow, flow_codes, out


def evaluate(run_dir: str | Path, pyramids: str | Path, n: int | None = None, seed: int = 0,
             prompts: list[str] | None = None, per_prompt: int = 4) -> dict:
    """Compute every figure, write ``RUN_DIR/eval.json`` and TensorBoard scalars, return the figures.

    ``n``: held-out images to use (default ``eval.n`` of the run's config);
    FD compares halves of them, so its ``n`` is half this.
    """
    run_dir = Path(run_dir)
    s = Sampler(run_dir)
    cfg, sizes = s.cfg, s.cfg.pyramids.sizes
    manifest = schema.read_manifest(pyramids)
    schema.check_manifest(manifest, levels=sizes, dim=s.dino.dim, where=str(pyramids))
    # its codes must be in the space the generator was trained on
    schema.check_encoder(manifest, s.dino.source, s.dino.hash, str(pyramids), f"the encoder of {run_dir}")
    rows = schema.read_first_rows(pyramids, [*columns(sizes), schema.PATH], n or cfg.eval.n)
    paths = [str(p) for p in rows[schema.PATH]]
    n = len(paths)
    if n < 4:
        raise ValueError(f"{pyramids}: eval needs at least 4 held-out rows, found {n}")
    if _overlaps_training(s.run, Path(pyramids), manifest):
        raise ValueError(f"{pyramids} holds images {run_dir} was trained on ({manifest.get('source')}): evaluate on "
                         "its held-out pyramid (`raydino run` writes OUT/pyramids-val)")
    targets = Targets.from_batch(rows, sizes, s.device)
    recon = s.generate(targets.code, s.noise(n, seed))
    res, size = s.resolution, max(sizes)
    real = match_resolution(np.stack([read_image(p, size) for p in paths]), res)
    out: dict = {"run": str(run_dir), "pyramids": str(pyramids), "set": schema.describe_set(manifest),
                 "n": n, "resolution": res, "training_encoder": f"{s.dino.source} (hash {s.dino.hash})"}

    require_local(cfg.eval.fd_encoder, "eval.fd_encoder")
    fd_dino = load_dino(cfg.eval.fd_encoder or cfg.pyramids.dino, s.device)
    out["eval_encoder"] = f"{fd_dino.source} (hash {fd_dino.hash})" + ("" if cfg.eval.fd_encoder else
                                                                        " = the training encoder (no eval.fd_encoder)")
    paired = paired_distance(fd_dino, recon, real, size)
    out |= {"heldout/eval_dist": paired["mean"], "heldout/eval_patch": paired["patch"], "heldout/eval_cls": paired["cls"]}
    real_feats = dino_cls(fd_dino, real, size)
    half = n // 2  # reconstructions of the first half against the second half's real images
    recon_fd = fd_with_floor(dino_cls(fd_dino, recon[:half], size), real_feats)
    out |= {"fd_dinov2/reconstructions": recon_fd["value"], "fd_dinov2/floor": recon_fd["floor"],
            "fd_dinov2/n": recon_fd["n"]}
    prior, prior_codes, prior_fd = prior_samples(s, fd_dino, real_feats, half, seed, size)
    out |= prior_fd | memorisation(s, prior_codes, targets.code)

    out |= detail_figures(s, targets.code, recon, real, seed)
    dist = level_distances(s.dino, recon.to(s.device), targets, sizes)
    out |= level_figures("train_encoder", dist)
    out["colour_error"] = colour_error(recon, targets.thumb.cpu())
    out |= attribute_figures(s, recon, real, paths, prior, seed, prompts)
    out |= part_figures(s, recon, real, paths, prior, seed, prompts)
    if prompts and s.cfg.pyramids.clip and s.run.prior.is_file():
        out |= prompt_scores(s, prompts, per_prompt, seed)
    out |= text_control(s, pyramids, paths, targets.code, recon, prior, fd_dino, real_feats, size, seed)
    s.run.eval.write_text(json.dumps(out, indent=1))
    _to_tensorboard(s.run, out)
    return out


def text_control(s: Sampler, pyramids: str | Path, paths: list[str], codes: torch.Tensor, recon: torch.Tensor,
                 prior: torch.Tensor | None, fd_dino: Dino, real_feats: np.ndarray, size: int, seed: int) -> dict:
    """The ``text_control/*`` figures (:mod:`raydino.evaluation.text_control`); none without a text-conditioned
    prior, an attribute classifier, or synthetic held-out faces whose attributes are known."""
    attrs = attributes_for_paths(paths)
    spec = s.cfg.eval.attribute_classifier
    if (attrs is None or not spec or not s.cfg.pyramids.clip or prior is None or not s.run.prior.is_file()
            or not s.flow("--prompt").clip_dim):
        return {}
    classifier, _ = load_classifier(spec)
    labels = torch.tensor([attribute_labels(a) for a in attrs], dtype=torch.long)
    clip_column = torch.from_numpy(schema.read_first_rows(pyramids, [schema.CLIP], len(paths))[schema.CLIP])
    faces = to_float(np.stack([read_image(p, s.clip.image_size) for p in paths]))
    half = len(paths) // 2  # FD's generated half, never the real half it is compared with
    oracle = oracle_conditions(s, attrs[:half], None if clip_column is None else clip_column[:half])
    return flip_test(s.clip, attrs, faces, seed) | text_control_figures(
        s, classifier, codes, labels, attrs, clip_column, classifier.predict(recon), prior, fd_dino, real_feats, size,
        seed, s.cfg.sample.edit_t) | {"few_step": few_step_rows(s, classifier, labels[:half], oracle, fd_dino,
                                                                 real_feats, size, seed)}


def memorisation(s: Sampler, samples: torch.Tensor | None, held_out: torch.Tensor) -> dict:
    """Flow-prior sample codes and the held-out codes against the prior's training codes; {} without them."""
    trained = (s.run.figures("prior_figures") or {}).get("pyramids")
    if samples is None or not trained or not Path(trained, schema.MANIFEST).is_file():
        return {}
    flow = s.flow("--prior")
    col = schema.tokens_col(s.cfg.pyramids.sizes[0])
    train = torch.as_tensor(schema.read_first_rows(trained, [col], s.cfg.prior.fit_rows)[col]).to(flow.code_mean.device)
    return memorisation_figures(flow.standardise(samples), flow.standardise(held_out), flow.standardise(train))


def detail_figures(s: Sampler, codes: torch.Tensor, recon: torch.Tensor, real: torch.Tensor, seed: int) -> dict:
    """Whether the noise carries detail: ``noise_spread`` over the first held-out codes, ``sharpness_ratio``."""
    c = min(len(codes), SPREAD_CODES)
    draws = s.generate(codes[:c].repeat_interleave(SPREAD_DRAWS, 0), s.noise(c * SPREAD_DRAWS, seed + 1))
    return {"noise_spread": noise_spread(draws.view(c, SPREAD_DRAWS, *draws.shape[1:]), real),
            "noise_spread/codes": c, "noise_spread/draws": SPREAD_DRAWS,
            "sharpness_ratio": sharpness_ratio(recon, real), "sharpness_ratio/n": len(recon)}


def _overlaps_training(run: Run, pyramids: Path, manifest: dict) -> bool:
    """Whether a pyramid may share images with the one the run trained on (named in its ``metrics.json``).

    The training pyramid itself, or one of the same source that is not the
    other side of the same split.
    """
    trained = (run.figures("metrics") or {}).get("pyramids")
    if not trained or not Path(trained, schema.MANIFEST).is_file():
        return False
    if Path(trained).resolve() == pyramids.resolve():
        return True
    train_manifest = schema.read_manifest(trained)
    if not manifest.get("source") or train_manifest.get("source") != manifest.get("source"):
        return False
    a, b = train_manifest.get("split") or {}, manifest.get("split") or {}
    keys = ("holdout_fraction", "holdout_min", "files_total")
    return not (a and b and a["part"] != b["part"] and all(a[k] == b[k] for k in keys))


def prompt_scores(s: Sampler, prompts: list[str], per_prompt: int, seed: int) -> dict:
    """CLIP score of each prompt's samples with their own prompt, and with the other prompts."""
    rows = s.from_prompts(prompts, per_prompt, seed)
    out, matched, mismatched = {}, [], []
    for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        own = float(clip_score(s.clip, row.images, [prompt] * len(row.images)).mean())
        others = [float(clip_score(s.clip, row.images, [q] * len(row.images)).mean())
                  for j, q in enumerate(prompts) if j != i]
        out[f"clip_score/{prompt}"] = own
        matched.append(own)
        mismatched.extend(others)
    out["clip_score/matched"] = float(np.mean(matched))
    if mismatched:
        out["clip_score/mismatched"] = float(np.mean(mismatched))
    return out


def _to_tensorboard(run: Run, figures: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    step = (run.figures("metrics") or {}).get("step", 0)
    with SummaryWriter(str(run.tb)) as writer:
        for key, value in figures.items():
            if isinstance(value, float):
                writer.add_scalar(f"eval/{key}", value, step)
