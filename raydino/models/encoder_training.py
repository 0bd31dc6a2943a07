"""Teach a tiny DINOv2 stand-in to see faces, from what the face generator knows.

A randomly initialised ViT is not a perceptual space: it barely tells an eye
from skin, and it notices per-pixel speckle that a face does not have. Real
DINOv2 weights cannot be downloaded offline, so the offline demo's encoders
are trained here on the synthetic faces instead, with linear heads that are
thrown away afterwards:

- patch tokens -> the mix of face parts (background, skin, hair, eyes, mouth,
  glasses, clothing) under each patch, and the patch's mean colour: local
  content, what the pyramid levels and the patch loss compare;
- the CLS token -> each attribute (hair colour and style, skin, glasses,
  smile, background): what FD compares.

Inputs are drawn at every pyramid size (the loss sees generated images at all
of them) and half of them carry per-pixel noise with unchanged targets, so
speckle moves the features as little as the encoder can manage. Everything
is seeded: the same seed and faces give bitwise the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raydino.data.face_set import ATTRIBUTES, FaceSet
from raydino.data.synth_faces import PARTS
from raydino.models.encoders import normalise, resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SPECKLE = 0.12  # std of the per-pixel noise added to half of the inputs, in [0, 1] pixel units


@dataclass(frozen=True)
class Objective:
    """How much each thing the faces know weighs in an encoder's loss."""

    parts: float       # patch tokens -> part mix of the patch (soft cross-entropy)
    colour: float      # patch tokens -> mean colour of the patch (squared error)
    attributes: float  # CLS -> every attribute (cross-entropy)


# The FD encoder judges what the training encoder taught, so it must not be the same space:
# another seed and another mix (CLS-heavy, no colour regression: FD compares CLS tokens).
TRAINING_OBJECTIVE = Objective(parts=1.0, colour=2.0, attributes=2.0)
FD_OBJECTIVE = Objective(parts=0.5, colour=0.0, attributes=3.0)


class Heads(nn.Module):
    """Linear read-outs of the tokens; only their gradients matter, they are not saved."""

    def __init__(self, dim: int):
        super().__init__()
        self.parts = nn.Linear(dim, len(PARTS))
        self.colour = nn.Linear(dim, 3)
        self.attributes = nn.ModuleList(nn.Linear(dim, len(classes)) for classes in ATTRIBUTES.values())


def patch_targets(parts: torch.Tensor, images: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's part mix ``[B, g*g, len(PARTS)]`` and mean colour ``[B, g*g, 3]``, from full-size maps."""
    onehot = F.one_hot(parts, len(PARTS)).permute(0, 3, 1, 2).float()
    mix = F.adaptive_avg_pool2d(onehot, grid).flatten(2).transpose(1, 2)
    colour = F.adaptive_avg_pool2d(images, grid).flatten(2).transpose(1, 2)
    return mix, colour


def speckle(x: torch.Tensor, gen: torch.Generator, max_std: float = MAX_SPECKLE) -> torch.Tensor:
    """Per-pixel Gaussian noise on a random half of the batch, each image its own strength.

    The noise is drawn on a grid of a random side (16 px up to the input's)
    and upsampled: a generator's speckle reaches the encoder through the
    loss's resize from the generator's resolution, not at the input's pixels.
    """
    side = int(torch.randint(16, x.shape[-1] + 1, (1,), generator=gen))
    std = torch.rand(len(x), 1, 1, 1, generator=gen) * max_std * (torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5)
    noise = F.interpolate(torch.randn((*x.shape[:2], side, side), generator=gen), size=x.shape[-2:], mode="bilinear")
    return (x + std * noise).clamp(0, 1)


def encoder_loss(hidden: torch.Tensor, heads: Heads, mix: torch.Tensor, colour: torch.Tensor, labels: torch.Tensor,
                 objective: Objective) -> torch.Tensor:
    cls, tokens = hidden[:, 0], hidden[:, 1:]
    loss = objective.parts * -(mix * F.log_softmax(heads.parts(tokens), -1)).sum(-1).mean()
    if objective.colour:
        loss = loss + objective.colour * F.mse_loss(heads.colour(tokens), colour) * 10.0  # ~ the parts term's scale
    for i, head in enumerate(heads.attributes):
        loss = loss + objective.attributes * F.cross_entropy(head(cls), labels[:, i], ignore_index=-1) / len(ATTRIBUTES)
    return loss


def train_encoder(model: nn.Module, faces: FaceSet, sizes: list[int], objective: Objective, steps: int,
                  batch_size: int = 32, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Train a ``Dinov2Model`` in place on ``faces`` (drawn at ``max(sizes)`` px or more); returns it in eval mode."""
    patch = int(model.config.patch_size)
    if any(s % patch for s in sizes):
        raise ValueError(f"encoder sizes {sizes} must be multiples of the patch size {patch}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    heads = Heads(int(model.config.hidden_size))
    params = [*model.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(faces), (min(batch_size, len(faces)),), generator=gen)
        x, parts, labels = faces.images[idx], faces.parts[idx], faces.labels[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # faces are left-right symmetric; no label changes
        x, parts = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], parts.flip(-1), parts)
        size = sizes[step % len(sizes)]
        mix, colour = patch_targets(parts, x, size // patch)
        pixels = normalise(speckle(resize(x, size), gen), IMAGENET_MEAN, IMAGENET_STD)
        hidden = model(pixel_values=pixels).last_hidden_state
        loss = encoder_loss(hidden, heads, mix, colour, labels, objective)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return model.eval()
