"""The multi-scale DINOv2 loss: feature matching at every pyramid level plus a colour anchor.

The generated image goes through exactly the path the pyramid targets went
through (antialiased resize, ImageNet normalisation, frozen DINOv2, via
:func:`raydino.pyramids.features.dino_levels`), so the generator cannot learn
the difference between two preprocessing paths. DINOv2 stays frozen and in
eval mode; gradients flow through it into the image only.

Distance: ``1 - cosine`` between token vectors, averaged over tokens. Cosine
is scale-free, so levels (and models) of different token norms are
comparable and the unweighted per-level figures mean the same thing in every
run. The distances come back both weighted (what is optimised) and
unweighted (what runs are judged by, since weights are what Tune searches).

Guard against adversarial solutions: DINO features can be matched by
high-frequency patterns aligned with the 14 px patch grid. The loss shifts
each level's input by a random integer offset of up to ``loss.shift_px``
pixels (in DINO input pixels, reflect-padded), so a pattern tied to one grid
alignment stops paying off, and anchors colour with an L1 term against the
thumbnail at ``loss.color_size`` px. See docs/training.md for the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raydino.config import LossConfig
from raydino.models.loading import Dino
from raydino.pyramids import schema
from raydino.pyramids.features import dino_levels, resize


@dataclass
class Targets:
    """What the pyramid stores about a batch of images, as float tensors on one device."""

    tokens: list[torch.Tensor]  # per level [B, g*g, D]
    cls: list[torch.Tensor]     # per level [B, D]
    thumb: torch.Tensor         # [B, 3, t, t] in [0, 1]

    @property
    def code(self) -> torch.Tensor:
        """The coarse code: the coarsest level's patch tokens."""
        return self.tokens[0]

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor], sizes: list[int], device: torch.device | str = "cpu") -> Targets:
        """From pyramid columns (as read from parquet: float16 tokens, uint8 HWC thumbnails)."""
        def get(name: str) -> torch.Tensor:
            value = batch[name]
            if isinstance(value, np.ndarray) and not value.flags.writeable:  # e.g. zero-copy from Ray's object store
                value = value.copy()
            return torch.as_tensor(value).to(device)

        thumb = get(schema.THUMB).permute(0, 3, 1, 2).float() / 255.0
        return cls(
            tokens=[get(schema.tokens_col(s)).float() for s in sizes],
            cls=[get(schema.cls_col(s)).float() for s in sizes],
            thumb=thumb,
        )


def columns(sizes: list[int]) -> list[str]:
    """The pyramid columns training reads (tensor columns only: strings cannot become torch batches)."""
    return [c for s in sizes for c in (schema.tokens_col(s), schema.cls_col(s))] + [schema.THUMB]


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` over every token vector (last dimension) of the batch."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


def random_shift(x: torch.Tensor, max_px: int, generator: torch.Generator | None) -> torch.Tensor:
    """Translate each image by its own integer offset in ``[-max_px, max_px]``, reflect-padded."""
    if max_px <= 0:
        return x
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 2 * max_px + 1, (len(x), 2), generator=generator).tolist()
    padded = F.pad(x, (max_px,) * 4, mode="reflect")
    # plain slices: their backward is a cheap copy, unlike a gather's scatter
    return torch.stack([p[:, dy : dy + h, dx : dx + w] for p, (dy, dx) in zip(padded, offsets, strict=True)])


@dataclass
class LossTerms:
    """One evaluation of the loss; per-level dicts are keyed by DINO input size."""

    total: torch.Tensor
    weighted: dict[int, torch.Tensor]
    unweighted: dict[int, torch.Tensor]
    cls: dict[int, torch.Tensor]
    color: torch.Tensor

    def scalars(self) -> dict[str, float]:
        """Flat float metrics for logging (one device sync)."""
        out = {"loss/total": self.total, "loss/color": self.color}
        out |= {f"loss/weighted_{s}": v for s, v in self.weighted.items()}
        out |= {f"loss/dist_{s}": v for s, v in self.unweighted.items()}
        out |= {f"loss/cls_{s}": v for s, v in self.cls.items()}
        return {k: float(v) for k, v in zip(out, torch.stack([v.detach().float() for v in out.values()]).tolist(),
                                              strict=True)}


class DinoPyramidLoss:
    """``sum_l w_l * (patch_dist_l + cls_weight * cls_dist_l) + color_weight * color_l1``.

    Levels whose weight is 0 at a stage are not computed at all (a DINOv2
    forward and backward saved), so they are absent from that stage's terms.
    """

    def __init__(self, dino: Dino, sizes: list[int], cfg: LossConfig):
        self.dino, self.sizes, self.cfg = dino, list(sizes), cfg
        self.dino.model.eval().requires_grad_(False)
        for key, weights in cfg.stage_level_weights.items():
            if len(weights) != len(self.sizes):
                raise ValueError(f"loss.stage_level_weights.{key} has {len(weights)} weights for {len(self.sizes)} levels")
        if len(cfg.level_weights) != len(self.sizes):
            raise ValueError(f"loss.level_weights has {len(cfg.level_weights)} weights for {len(self.sizes)} levels")

    def level_weights(self, resolution: int) -> list[float]:
        return list(self.cfg.stage_level_weights.get(str(resolution), self.cfg.level_weights))

    def __call__(self, images: torch.Tensor, targets: Targets, resolution: int,
                 generator: torch.Generator | None = None) -> LossTerms:
        weighted, unweighted, cls_dist = {}, {}, {}
        total = images.new_zeros((), dtype=torch.float32)
        for i, (size, w) in enumerate(zip(self.sizes, self.level_weights(resolution), strict=True)):
            if w == 0:
                continue
            x = random_shift(resize(images, size), self.cfg.shift_px, generator)
            ((cls, tokens),) = dino_levels(self.dino, x, [size])  # resize is a no-op now: same path as extraction
            unweighted[size] = cosine_distance(tokens, targets.tokens[i])
            cls_dist[size] = cosine_distance(cls, targets.cls[i])
            weighted[size] = w * (unweighted[size] + self.cfg.cls_weight * cls_dist[size])
            total = total + weighted[size]
        color = color_distance(images, targets.thumb, self.cfg.color_size)
        total = total + self.cfg.color_weight * color
        return LossTerms(total=total, weighted=weighted, unweighted=unweighted, cls=cls_dist, color=color)


def color_distance(images: torch.Tensor, thumbs: torch.Tensor, size: int) -> torch.Tensor:
    """L1 between both images at ``size`` px: colour and layout only, no detail to overfit."""
    return (resize(images.float(), size) - resize(thumbs.float(), size)).abs().mean()


@torch.no_grad()
def level_distances(dino: Dino, images: torch.Tensor, targets: Targets, sizes: list[int]) -> dict[int, float]:
    """Unweighted patch-token distance at every level, no shift: the weight-independent validation figure."""
    levels = dino_levels(dino, images.float(), sizes)
    return {size: float(cosine_distance(tok, tgt)) for size, (_, tok), tgt in zip(sizes, levels, targets.tokens, strict=True)}
