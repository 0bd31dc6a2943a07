"""Parts: are eyes, mouth and glasses drawn?

A generator that draws blobs with the right colours scores fair FD and
attribute figures, and blur or speckle can move any feature-space figure.
These figures ask a question neither can answer for it. The synthetic faces
know every pixel's part, and a face is a pure function of its attributes,
so each held-out face can be redrawn without its eyes, mouth and glasses
(skin and hair show through):

- reconstructions: the part-error ratio, per part and pooled: mean
  ``|recon - real|`` inside the part's mask over mean ``|removed - real|``
  inside the same mask, summed over the images before dividing (a ratio of
  totals). Real faces score 0, the parts-removed faces 1: lower is better,
  and a reconstruction that leaves the parts out scores about 1 whatever
  else it gets right. Glasses count on the faces that have them.
- with a part segmenter trained on real faces only
  (``models/part_segmenter.py``): the IoU of each part between the
  segmentation of reconstructions and the true part map, beside the real
  faces' IoU (its ceiling); and, for images that have no target (prior and
  prompt samples), the share in which it finds two eyes (one on each side of
  the face's midline) and a mouth, beside the same share on the real faces.

Everything is measured at the reconstructions' resolution: the reference and
the masks are drawn at the source images' size and downsampled the way
``raydino eval`` downsamples the real images (docs/judgement.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raydino.data.face_set import attributes_for_paths
from raydino.data.images import square_crop
from raydino.data.synth_faces import PARTS, FaceAttributes, render_face, render_parts
from raydino.evaluation.attribute_agreement import PROMPT_SAMPLES
from raydino.evaluation.metrics import match_resolution
from raydino.models.part_segmenter import SIZE, PartSegmenter, load_segmenter, soft_parts

SCORED = ("eyes", "mouth", "glasses")  # what the figures ask about, and what the reference face leaves out
FACE = ("skin", "eyes", "mouth", "glasses")  # where a segmented face is, for its midline
MIN_PIXELS = 3  # of a found eye or mouth, at SIZE px: a real eye covers ~5, a closed mouth ~4 (a 1 px line)


@dataclass
class HeldOut:
    """What the synthetic faces know about held-out images: the reference and the part maps."""

    removed: torch.Tensor  # [N, 3, r, r]: the faces without SCORED, at the reconstructions' resolution r
    shares: torch.Tensor   # [N, len(PARTS), r, r]: each pixel's share of every part (soft masks)
    parts: torch.Tensor    # [N, SIZE, SIZE]: each pixel's majority part, at the segmenter's size


def held_out(attrs: list[FaceAttributes], source_sizes: list[int], read_size: int, resolution: int) -> HeldOut:
    """Redraw each face at its source size, like its file, and bring it down as ``raydino eval`` does the real one.

    ``read_size``: the side ``eval`` reads images at (``read_image``: the
    pyramid's crop), before :func:`match_resolution` takes them to
    ``resolution``. The masks are area averages of the full-size one-hot map.
    """
    faces = list(zip(attrs, source_sizes, strict=True))
    removed = np.stack([square_crop(render_face(a, s, omit=SCORED), read_size) for a, s in faces])
    maps = [torch.tensor(render_parts(a, s), dtype=torch.long)[None] for a, s in faces]
    return HeldOut(removed=match_resolution(removed, resolution),
                   shares=torch.cat([soft_parts(m, resolution) for m in maps]),
                   parts=torch.cat([soft_parts(m, SIZE).argmax(1) for m in maps]))


def error_ratios(images: torch.Tensor, real: torch.Tensor, truth: HeldOut) -> dict[str, float]:
    """Per part of ``SCORED`` and pooled (key ``""``): the error inside the part over the parts-removed face's there."""
    err = (images.float() - real.float()).abs().mean(1)
    ref = (truth.removed - real.float()).abs().mean(1)
    masks = {name: truth.shares[:, PARTS.index(name)] for name in SCORED}
    masks[""] = sum(masks.values())
    return {name: float((m * err).sum() / (m * ref).sum()) for name, m in masks.items() if (m * ref).sum() > 0}


def ious(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Per part of ``SCORED``: intersection over union of two part maps, totals over the images; their mean (``""``)."""
    out = {}
    for name in SCORED:
        p, t = pred == PARTS.index(name), truth == PARTS.index(name)
        if union := int((p | t).sum()):
            out[name] = int((p & t).sum()) / union
    if out:
        out[""] = float(np.mean(list(out.values())))
    return out


def components(mask: torch.Tensor) -> torch.Tensor:
    """Connected components (8-neighbourhood) of boolean maps ``[N, H, W]``: ids unique over the batch, 0 off the mask.

    Every pixel takes the largest id among its neighbours until nothing
    changes: a few passes for parts the size of an eye.
    """
    ids = torch.arange(1, mask.numel() + 1, dtype=torch.float64).view(mask.shape)
    labels = torch.where(mask, ids, 0.0)
    while True:
        grown = torch.where(mask, F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0], 0.0)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def has_blob(mask: torch.Tensor) -> torch.Tensor:
    """Per boolean map ``[N, H, W]``: whether it holds a component of at least ``MIN_PIXELS``."""
    ids, size = torch.unique(components(mask), return_counts=True)
    out = torch.zeros(len(mask), dtype=torch.bool)
    out[(ids[(ids > 0) & (size >= MIN_PIXELS)] - 1) // mask[0].numel()] = True
    return out


def two_eyes_and_a_mouth(pred: torch.Tensor) -> torch.Tensor:
    """Per part map ``[N, S, S]``: whether it holds an eye on each side of the face's midline, and a mouth.

    The midline is the mean column of the face's pixels (skin, eyes, mouth,
    glasses), and the eyes are cut there before their components are
    counted: at 32 px real eyes are ~2 px apart, and segmented ones often
    touch.
    """
    cols = torch.arange(pred.shape[-1], dtype=torch.float64)
    face = torch.isin(pred, torch.tensor([PARTS.index(p) for p in FACE])).double()
    midline = (face * cols).sum((1, 2)) / face.sum((1, 2)).clamp_min(1)
    left, eyes = cols < midline[:, None, None], pred == PARTS.index("eyes")
    return has_blob(eyes & left) & has_blob(eyes & ~left) & has_blob(pred == PARTS.index("mouth"))


def found_share(segmenter: PartSegmenter, images: torch.Tensor) -> float:
    """Share of ``images`` in which ``segmenter`` finds two eyes and a mouth."""
    return float(two_eyes_and_a_mouth(segmenter.predict(images)).float().mean())


def _named(prefix: str, figures: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}" if k else prefix: v for k, v in figures.items()}


def _source_size(path: str) -> int:
    with Image.open(path) as img:  # the header only
        return img.width


def part_figures(sampler, recon: torch.Tensor, real: torch.Tensor, paths: list[str], prior: torch.Tensor | None,
                 seed: int, prompts: list[str] | None = None) -> dict:
    """The ``parts/...`` figures of ``raydino eval``; a note when the held-out images are not synthetic faces.

    Arguments as :func:`raydino.evaluation.attribute_agreement.attribute_figures`:
    ``real`` are the held-out images as ``eval`` read them, at the
    reconstructions' resolution. Without ``eval.part_segmenter`` only the
    error ratios (they need no model).
    """
    attrs = attributes_for_paths(paths)
    if attrs is None:
        return {"parts/note": "the held-out images have no synthetic-face metadata.parquet: no part maps"}
    truth = held_out(attrs, [_source_size(p) for p in paths], max(sampler.cfg.pyramids.sizes), recon.shape[-1])
    out: dict = {"parts/n": len(attrs), "parts/n/glasses": sum(a.glasses for a in attrs)}
    out |= _named("parts/reconstructions/error_ratio", error_ratios(recon, real, truth))
    if not sampler.cfg.eval.part_segmenter:
        return out
    segmenter, out["part_segmenter"] = load_segmenter(sampler.cfg.eval.part_segmenter)
    for name, images in (("real", real), ("reconstructions", recon)):
        pred = segmenter.predict(images)
        out |= _named(f"parts/{name}/iou", ious(pred, truth.parts))
        out[f"parts/{name}/found"] = float(two_eyes_and_a_mouth(pred).float().mean())
    if prior is not None:
        out |= {"parts/prior/found": found_share(segmenter, prior), "parts/prior/n": len(prior)}
    if prompts and sampler.cfg.pyramids.clip and sampler.run.prior.is_file():
        samples = torch.cat([row.images for row in sampler.from_prompts(prompts, PROMPT_SAMPLES, seed)])
        out |= {"parts/prompts/found": found_share(segmenter, samples), "parts/prompts/n": len(samples)}
    return out
