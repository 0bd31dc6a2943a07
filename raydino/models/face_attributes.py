"""A small classifier of the synthetic faces' attributes: the judge of attribute agreement.

It is trained on real synthetic faces only (never on generated images), so
a generated face is scored by how a face with those attributes looks. It
sees every image at ``SIZE`` px (the demo generator's resolution; larger
images are downsampled first), and half of its training images carry
per-pixel noise with unchanged labels: speckle cannot buy agreement, while
blur removes what tells a smile or glasses apart and costs it.
Saved as safetensors with its attribute lists in the header.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raydino.data.face_set import ATTRIBUTES, FaceSet
from raydino.models.encoder_training import speckle
from raydino.models.encoders import resize
from raydino.models.loading import load_judge, save_judge

SIZE = 32


class AttributeClassifier(nn.Module):
    """Four strided convs to a 4x4 map, flattened (where a feature is matters: mouth low, glasses high), a head each."""

    def __init__(self, attributes: dict[str, tuple[str, ...]] = ATTRIBUTES, width: int = 32):
        super().__init__()
        self.attributes = dict(attributes)

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU()]

        self.body = nn.Sequential(*block(3, width, 1), *block(width, width, 2), *block(width, 2 * width, 2),
                                  *block(2 * width, 2 * width, 2), nn.Flatten())
        self.heads = nn.ModuleList(nn.Linear(2 * width * (SIZE // 8) ** 2, len(c)) for c in self.attributes.values())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits per attribute of float [0, 1] images of any size."""
        h = self.body(resize(images, SIZE) * 2 - 1)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class indices ``[N, len(attributes)]``."""
        out = [torch.stack([logits.argmax(1) for logits in self(images[i:i + batch_size])], 1)
               for i in range(0, len(images), batch_size)]
        return torch.cat(out)


def train_classifier(faces: FaceSet, steps: int, batch_size: int = 64, lr: float = 3e-3,
                     seed: int = 0) -> AttributeClassifier:
    """Fit on ``faces`` (flips and speckle as augmentation); deterministic for a seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AttributeClassifier()
    small = resize(faces.images, SIZE)  # downsample once: the classifier sees SIZE px anyway
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(faces), (min(batch_size, len(faces)),), generator=gen)
        x, labels = small[idx], faces.labels[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = speckle(torch.where(flip[:, None, None, None], x.flip(-1), x), gen)
        loss = sum(F.cross_entropy(logits, labels[:, i], ignore_index=-1) for i, logits in enumerate(model(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def save_classifier(model: AttributeClassifier, out: str | Path, note: str) -> Path:
    return save_judge(model, out, {"attributes": json.dumps(model.attributes), "size": str(SIZE), "note": note})


def load_classifier(path: str | Path) -> tuple[AttributeClassifier, str]:
    """The attribute classifier in ``path`` and a description naming its source and weights hash."""
    return load_judge(path, "attribute classifier", lambda h: AttributeClassifier({k: tuple(v) for k, v in json.loads(h["attributes"]).items()}))
