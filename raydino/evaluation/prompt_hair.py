"""The demo's prompt test in pixels: does "red hair" give red hair?

The synthetic faces know their attributes, so the colour of the hair region
of prompt samples can be set against the same region of held-out faces
whose captions name that hair colour. For each of "red", "blonde" and
"black" hair: the mean RGB of the prompt samples' hair region, its distance
to the real faces' mean of that colour, and the share of samples whose
hair colour is nearer to their prompt's real mean than to the other two
(chance: one in three; the real faces themselves give the ceiling).
"""

from __future__ import annotations

import numpy as np
import torch

from raydino.data.face_set import ATTRIBUTES

HAIR_PROMPTS = {c: f"a face with {c} hair" for c in ("red", "blonde", "black")}
HAIR_BOX = (0.22, 0.34, 0.40, 0.60)  # rows, then columns, as fractions of the side: the top of the head


def hair_region(images: torch.Tensor) -> np.ndarray:
    """Mean RGB (0-255) of the top-of-head region of each ``[N, 3, H, W]`` image in [0, 1]."""
    h, w = images.shape[-2:]
    r0, r1, c0, c1 = HAIR_BOX
    box = images[:, :, int(r0 * h): int(r1 * h), int(c0 * w): int(c1 * w)]
    return box.float().mean(dim=(2, 3)).cpu().numpy() * 255


def _nearest_share(colours: np.ndarray, references: np.ndarray, own: int) -> float:
    """Share of ``colours`` nearer to ``references[own]`` than to any other reference."""
    d = np.linalg.norm(colours[:, None] - references[None], axis=-1)
    return float((d.argmin(1) == own).mean())


def hair_colour_figures(sampler, real: torch.Tensor, labels: np.ndarray, per_prompt: int, seed: int) -> dict:
    """The ``hair/*`` figures; ``real``: held-out images at the samples' resolution, ``labels``: their attributes.

    Empty when the held-out set lacks one of the three colours.
    """
    hair = labels[:, list(ATTRIBUTES).index("hair_colour")]
    names = list(HAIR_PROMPTS)
    index = [ATTRIBUTES["hair_colour"].index(c) for c in names]
    if any((hair == i).sum() == 0 for i in index):
        return {}
    real_colours = [hair_region(real[torch.from_numpy(hair == i)]) for i in index]
    references = np.stack([c.mean(0) for c in real_colours])
    rows = sampler.from_prompts(list(HAIR_PROMPTS.values()), per_prompt, seed)
    out: dict = {"hair/n_per_prompt": per_prompt}
    shares, ceiling = [], []
    for k, (name, row) in enumerate(zip(names, rows, strict=True)):
        colours = hair_region(row.images)
        out[f"hair/{name}/sample_rgb"] = [round(float(v), 1) for v in colours.mean(0)]
        out[f"hair/{name}/real_rgb"] = [round(float(v), 1) for v in references[k]]
        out[f"hair/{name}/distance"] = float(np.linalg.norm(colours.mean(0) - references[k]))
        out[f"hair/{name}/real_n"] = len(real_colours[k])
        shares.append(_nearest_share(colours, references, k))
        ceiling.append(_nearest_share(real_colours[k], references, k))
    out["hair/accuracy"] = float(np.mean(shares))
    out["hair/accuracy_real"] = float(np.mean(ceiling))
    return out
