"""The flip test: does a CLIP's text side carry each attribute a caption names?

A prior can only obey a word its condition carries. For each held-out face,
its caption (the captions' own shape) is set against the same caption with
one attribute changed; the CLIP passes for that face when the image
embedding is closer to the true caption. Per attribute: the share of faces
that pass (chance 0.5) and the mean cosine margin. A text tower that drops
a word gives both captions one embedding: a margin of 0, and no face passes.
"""

from __future__ import annotations

import random

import torch

from raydino.data.phrasing import VALUES, named_values
from raydino.data.synth_faces import FaceAttributes
from raydino.models.encoders import clip_image_embedding
from raydino.models.loading import Clip
from raydino.models.tiny_clip import counterfactual

FLIPPED = ("hair_colour", "hair_style", "glasses", "smile")  # what the classifier of generated faces reads too


def flipped(attrs: FaceAttributes, name: str, rng: random.Random) -> FaceAttributes | None:
    """``attrs`` with ``name`` changed to another value; None where the caption does not name it (a bald head's colour)."""
    current = named_values(attrs).get(name)
    if current is None:
        return None
    return counterfactual(attrs, {name: rng.choice([v for v in VALUES[name] if v != current])})


@torch.no_grad()
def flip_test(clip: Clip, attrs: list[FaceAttributes], images: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``text_encoder/flip/<attribute>`` (share of faces passing) and ``.../margin`` per attribute, and ``n``.

    ``images``: the faces of ``attrs``, float ``[N, 3, S, S]`` in [0, 1].
    """
    rng = random.Random(seed)
    device = next(clip.model.parameters()).device
    image = clip_image_embedding(clip, images.to(device))
    true = clip.encode_text([a.caption() for a in attrs])
    out: dict[str, float] = {"text_encoder/flip/n": float(len(attrs))}
    for name in FLIPPED:
        pairs = [(i, f) for i, a in enumerate(attrs) if (f := flipped(a, name, rng)) is not None]
        rows = torch.tensor([i for i, _ in pairs])
        wrong = clip.encode_text([f.caption() for _, f in pairs])
        margin = (image[rows] * true[rows]).sum(-1) - (image[rows] * wrong).sum(-1)
        out[f"text_encoder/flip/{name}"] = float((margin > 0).float().mean())
        out[f"text_encoder/flip/{name}/margin"] = float(margin.mean())
    return out
