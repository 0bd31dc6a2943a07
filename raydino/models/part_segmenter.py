"""A small segmenter of the synthetic faces' parts: the judge of whether eyes and a mouth are drawn.

Generated images have no part map, so whether a prior or prompt sample has
two eyes and a mouth has to be read from its pixels. Like the attribute
classifier (``models/face_attributes.py``), this net is trained on real
synthetic faces only, at ``SIZE`` px (the demo generator's resolution), and
half of its training images carry per-pixel noise with unchanged maps, so
speckle does not draw eyes for it. Its target is each pixel's share of every
part (the one-hot map at the faces' size, area-averaged), so at 32 px a
sub-pixel mouth still counts. Saved as safetensors with its part names in
the header.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raydino.data.face_set import FaceSet
from raydino.data.synth_faces import PARTS
from raydino.models.encoder_training import speckle
from raydino.models.encoders import resize
from raydino.models.loading import load_judge, save_judge

SIZE = 32


def soft_parts(parts: torch.Tensor, size: int) -> torch.Tensor:
    """Each pixel's share of every part at ``size`` px, ``[N, len(PARTS), size, size]``, from full-size maps."""
    onehot = F.one_hot(parts.long(), len(PARTS)).permute(0, 3, 1, 2).float()
    return F.interpolate(onehot, size=(size, size), mode="area")


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.GELU())


class PartSegmenter(nn.Module):
    """A three-level conv encoder/decoder (32, 16, 8 px) with skips: thin parts need the full-resolution path.

    Narrow where the pixels are many (``width`` channels at 32 px, four
    times that at 8 px) and skips added, not concatenated: it has to train
    in seconds on one thread.
    """

    def __init__(self, parts: tuple[str, ...] = PARTS, width: int = 12):
        super().__init__()
        self.parts = tuple(parts)
        w = width
        self.down = nn.ModuleList([_block(3, w), _block(w, 2 * w, 2),
                                   nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w))])
        self.project = nn.ModuleList([nn.Conv2d(4 * w, 2 * w, 1), nn.Conv2d(2 * w, w, 1)])
        self.up = nn.ModuleList([_block(2 * w, 2 * w), _block(w, w)])
        self.head = nn.Conv2d(w, len(self.parts), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Part logits ``[N, len(parts), SIZE, SIZE]`` of float [0, 1] images of any size."""
        h = resize(images, SIZE) * 2 - 1
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
        for project, block, skip in zip(self.project, self.up, reversed(skips[:-1]), strict=True):
            h = block(F.interpolate(project(h), size=skip.shape[-2:], mode="nearest") + skip)
        return self.head(h)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Part indices ``[N, SIZE, SIZE]``."""
        return torch.cat([self(images[i:i + batch_size].float()).argmax(1) for i in range(0, len(images), batch_size)])


def train_segmenter(faces: FaceSet, steps: int, batch_size: int = 16, lr: float = 1e-2,
                    seed: int = 0) -> PartSegmenter:
    """Fit on ``faces`` (flips of image and map, speckle) against soft part shares; deterministic for a seed.

    Each part's loss is weighted by its share of the pixels to the -1/3
    (eyes are 1% of them): unweighted, it found two eyes and a mouth in only
    half of the real faces (thin mouths drawn as skin); to the -1/2, in up
    to a tenth of the faces without them (docs/judgement.md).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = PartSegmenter()
    small, target = resize(faces.images, SIZE), soft_parts(faces.parts, SIZE)  # once: the net sees SIZE px anyway
    share = target.mean((0, 2, 3)).clamp_min(1e-4)
    weight = share.pow(-1 / 3)
    weight = (weight / (weight * share).sum()).view(1, -1, 1, 1)  # the mean pixel still weighs 1
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(faces), (min(batch_size, len(faces)),), generator=gen)
        flip = (torch.rand(len(idx), generator=gen) < 0.5)[:, None, None, None]
        x = speckle(torch.where(flip, small[idx].flip(-1), small[idx]), gen)
        y = torch.where(flip, target[idx].flip(-1), target[idx])
        loss = -(weight * y * F.log_softmax(model(x), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def save_segmenter(model: PartSegmenter, out: str | Path, note: str) -> Path:
    return save_judge(model, out, {"parts": json.dumps(model.parts), "size": str(SIZE), "note": note})


def load_segmenter(path: str | Path) -> tuple[PartSegmenter, str]:
    """The part segmenter in ``path`` and a description naming its source and weights hash."""
    return load_judge(path, "part segmenter", lambda h: PartSegmenter(tuple(json.loads(h["parts"]))))
