"""The multi-scale DINOv2 loss: a distributional score at every pyramid level plus a colour anchor.

The generated image goes through exactly the path the pyramid targets went
through (antialiased resize, ImageNet normalisation, frozen DINOv2, via
:func:`raydino.models.encoders.dino_levels`), so the generator cannot learn
the difference between two preprocessing paths. DINOv2 stays frozen and in
eval mode; gradients flow through it into the image only.

Why distributional: the coarse code does not decide the details (eyes, hair
strands, glasses), so a one-to-one feature regression is minimised by their
average, a blur, and by a generator that ignores its noise. ``loss.kind:
energy`` scores ``loss.draws`` generated images per target with
the energy score (Gneiting & Raftery 2007), a strictly proper scoring rule:

    ES = mean_i d(x_i, y) - 1/2 mean_{i != j} d(x_i, x_j),   d(a, b) = ||a - b||^beta, 0 < beta < 2

minimised only when the generated distribution for a code equals the real
one. Its first term pulls every draw towards the target, the second pushes
draws apart, so the noise has to matter. ``x`` is a level's token map with
each token unit-normalised, flattened and divided by sqrt(tokens), so that
``||a - b||^2 = 2 * mean_t (1 - cos)``: the same geometry as ``loss.kind:
regression`` (mean ``1 - cos`` over tokens, one draw), which stays the
default until the distributional loss measures better (docs/training.md). The CLS token and the colour anchor (the image against the
thumbnail at ``loss.color_size`` px, RMS over pixels) take the same form.

Per level the terms come back weighted (what is optimised) and unweighted
(what is logged, since weights are what Tune searches), with the draws'
spread (mean pairwise distance) for energy.

Guard against adversarial solutions: DINO features can be matched by
high-frequency patterns aligned with the 14 px patch grid. The loss shifts
each level's input by a random integer offset of up to ``loss.shift_px``
pixels (in DINO input pixels, reflect-padded), so a pattern tied to one grid
alignment stops paying off. See docs/training.md for the measurements.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from raydino.config import LossConfig
from raydino.config.checks import check_loss
from raydino.models.encoders import dino_levels, resize
from raydino.models.loading import Dino
from raydino.pyramids.batch import Targets


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` over every token vector (last dimension) of the batch."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


def unit_features(x: torch.Tensor) -> torch.Tensor:
    """``[N, T, D]`` tokens (or ``[N, D]``) -> ``[N, T*D]`` with ``||a - b||^2 = 2 * mean_t (1 - cos_t)``."""
    x = F.normalize(x.float(), dim=-1)
    tokens = x.shape[1] if x.ndim == 3 else 1
    return x.flatten(1) / math.sqrt(tokens)


def energy_score(draws: torch.Tensor, target: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The energy score of ``draws [B, m, F]`` for ``target [B, F]``, mean over the batch, and the draws' spread.

    Returns ``(score, spread)`` with ``spread = mean_{i<j} d(x_i, x_j)``; the
    pairs are looped over (m is small), never materialised as ``[B, m, m, F]``.
    """
    def d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a - b).pow(2).sum(-1) + 1e-12).pow(beta / 2)  # eps: a finite gradient where a == b

    fit = d(draws, target[:, None]).mean()
    spread = torch.stack([d(draws[:, i], draws[:, j]).mean()
                          for i, j in itertools.combinations(range(draws.shape[1]), 2)]).mean()
    return fit - 0.5 * spread, spread


def random_shift(x: torch.Tensor, max_px: int, rng: torch.Generator | None) -> torch.Tensor:
    """Translate each image by its own integer offset in ``[-max_px, max_px]``, reflect-padded."""
    if max_px <= 0:
        return x
    h, w = x.shape[-2:]
    offsets = torch.randint(0, 2 * max_px + 1, (len(x), 2), generator=rng).tolist()
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
    spread: dict[int, torch.Tensor] = field(default_factory=dict)  # energy only: mean distance between draws

    def scalars(self) -> dict[str, float]:
        """Flat float metrics for logging (one device sync)."""
        out = {"loss/total": self.total, "loss/color": self.color}
        out |= {f"loss/weighted_{s}": v for s, v in self.weighted.items()}
        out |= {f"loss/dist_{s}": v for s, v in self.unweighted.items()}
        out |= {f"loss/cls_{s}": v for s, v in self.cls.items()}
        out |= {f"loss/spread_{s}": v for s, v in self.spread.items()}
        return {k: float(v) for k, v in zip(out, torch.stack([v.detach().float() for v in out.values()]).tolist(),
                                              strict=True)}


class DinoPyramidLoss:
    """``sum_l w_l * (patch_l + cls_weight * cls_l) + color_weight * color``, each term a score of ``draws`` images.

    ``images`` hold :attr:`draws` consecutive draws per target (the caller
    repeats each code that often). Levels whose weight is 0 at a stage are not
    computed at all (a DINOv2 forward and backward saved), so they are absent
    from that stage's terms.
    """

    def __init__(self, dino: Dino, sizes: list[int], cfg: LossConfig):
        check_loss(cfg, len(sizes))
        self.dino, self.sizes, self.cfg = dino, list(sizes), cfg
        self.dino.model.eval().requires_grad_(False)

    @property
    def draws(self) -> int:
        """Generated images per target and step."""
        return self.cfg.draws if self.cfg.kind == "energy" else 1

    def score(self, generated: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(score, spread)`` of features ``generated [B*m, ...]`` against ``target [B, ...]``."""
        if self.cfg.kind == "regression":
            return cosine_distance(generated, target), None
        draws = unit_features(generated).view(len(target), self.draws, -1)
        return energy_score(draws, unit_features(target), self.cfg.beta)

    def level_weights(self, resolution: int) -> list[float]:
        return list(self.cfg.stage_level_weights.get(str(resolution), self.cfg.level_weights))

    def __call__(self, images: torch.Tensor, targets: Targets, resolution: int,
                 rng: torch.Generator | None = None) -> LossTerms:
        if len(images) != self.draws * len(targets.code):
            raise ValueError(f"{len(images)} images for {len(targets.code)} targets: expected {self.draws} draws each")
        weighted, unweighted, cls_dist, spread = {}, {}, {}, {}
        total = images.new_zeros((), dtype=torch.float32)
        for i, (size, w) in enumerate(zip(self.sizes, self.level_weights(resolution), strict=True)):
            if w == 0:
                continue
            x = random_shift(resize(images, size), self.cfg.shift_px, rng)
            ((cls, tokens),) = dino_levels(self.dino, x, [size])  # resize is a no-op now: same path as extraction
            unweighted[size], level_spread = self.score(tokens, targets.tokens[i])
            cls_dist[size], _ = self.score(cls, targets.cls[i])
            if level_spread is not None:
                spread[size] = level_spread
            weighted[size] = w * (unweighted[size] + self.cfg.cls_weight * cls_dist[size])
            total = total + weighted[size]
        color = self.color_score(images, targets.thumb)
        total = total + self.cfg.color_weight * color
        return LossTerms(total=total, weighted=weighted, unweighted=unweighted, cls=cls_dist, color=color,
                         spread=spread)

    def color_score(self, images: torch.Tensor, thumbs: torch.Tensor) -> torch.Tensor:
        """The images against the thumbnails at ``loss.color_size`` px: colour and layout only, no detail to overfit.

        Regression: L1. Energy: the energy score of the draws, RMS over pixels.
        """
        size = self.cfg.color_size
        small, target = resize(images.float(), size), resize(thumbs.float(), size)
        if self.cfg.kind == "regression":
            return (small - target).abs().mean()
        draws = small.flatten(1).view(len(target), self.draws, -1) / math.sqrt(small[0].numel())
        return energy_score(draws, target.flatten(1) / math.sqrt(small[0].numel()), self.cfg.beta)[0]
