"""Linear probes: does an encoder see faces, measured on faces it never saw.

A linear classifier fitted on frozen features, on one half of a held-out
face set and scored on the other half: per pyramid level, the face part
under each patch (from the patch tokens); per attribute, the attribute (from
the CLS token of the largest level). The same probes on a randomly
initialised encoder of the same shape are the baseline a trained encoder
must beat; guessing the most frequent class is the floor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from raydino.data.face_set import ATTRIBUTES, UNKNOWN, FaceSet
from raydino.data.synth_faces import PARTS
from raydino.models.encoders import dino_levels
from raydino.models.loading import Dino

PROBE_STEPS = 100  # L-BFGS iterations: converged for these sizes (48-dim features, a few thousand samples)


def fit_linear_probe(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                     classes: int, weight_decay: float = 1e-2) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features; ``UNKNOWN`` labels are skipped."""
    keep_fit, keep_test = y_fit != UNKNOWN, y_test != UNKNOWN
    x_fit, y_fit, x_test, y_test = x_fit[keep_fit], y_fit[keep_fit], x_test[keep_test], y_test[keep_test]
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    x_fit, x_test = (x_fit - mean) / std, (x_test - mean) / std
    w = torch.zeros(x_fit.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_fit @ w + b, y_fit) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x_test @ w + b).argmax(1) == y_test).float().mean())


def patch_labels(parts: torch.Tensor, grid: int) -> torch.Tensor:
    """The majority part under each patch: ``[N, g*g]``."""
    onehot = F.one_hot(parts, len(PARTS)).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid).flatten(2).argmax(1)


@torch.no_grad()
def features(dino: Dino, faces: FaceSet, sizes: list[int], batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(CLS ``[N, D]``, patch tokens ``[N, g*g, D]``) per size, through the pyramid's own code path."""
    chunks = [dino_levels(dino, faces.images[i:i + batch_size], sizes) for i in range(0, len(faces), batch_size)]
    return [(torch.cat([c[k][0] for c in chunks]).float(), torch.cat([c[k][1] for c in chunks]).float())
            for k in range(len(sizes))]


def probe_encoder(dino: Dino, faces: FaceSet, sizes: list[int]) -> dict[str, float]:
    """Held-out accuracies: ``parts/<size>`` per level and their mean, ``attributes/<name>`` and their mean.

    The first half of ``faces`` fits the probes, the second half scores them.
    """
    half = len(faces) // 2
    fit, test = faces.split(half)
    out: dict[str, float] = {}
    for size, (f_fit, f_test) in zip(sizes, zip(features(dino, fit, sizes), features(dino, test, sizes),
                                                strict=True), strict=True):
        grid = size // dino.patch_size
        y_fit, y_test = patch_labels(fit.parts, grid).reshape(-1), patch_labels(test.parts, grid).reshape(-1)
        out[f"parts/{size}"] = fit_linear_probe(f_fit[1].reshape(len(y_fit), -1), y_fit,
                                                f_test[1].reshape(len(y_test), -1), y_test, len(PARTS))
    out["parts/mean"] = float(np.mean([out[f"parts/{s}"] for s in sizes]))
    (cls_fit, _), (cls_test, _) = features(dino, fit, sizes[-1:])[0], features(dino, test, sizes[-1:])[0]
    for i, (name, classes) in enumerate(ATTRIBUTES.items()):
        out[f"attributes/{name}"] = fit_linear_probe(cls_fit, fit.labels[:, i], cls_test, test.labels[:, i], len(classes))
    out["attributes/mean"] = float(np.mean([out[f"attributes/{n}"] for n in ATTRIBUTES]))
    return out


def majority_baseline(faces: FaceSet, sizes: list[int], patch_size: int) -> dict[str, float]:
    """The same figures for always guessing the held-out half's most frequent class: the floor."""
    test = faces.split(len(faces) // 2)[1]

    def share(y: torch.Tensor) -> float:
        y = y[y != UNKNOWN]
        return float(torch.bincount(y).max() / len(y))

    out = {f"parts/{s}": share(patch_labels(test.parts, s // patch_size).reshape(-1)) for s in sizes}
    out["parts/mean"] = float(np.mean([out[f"parts/{s}"] for s in sizes]))
    out |= {f"attributes/{name}": share(test.labels[:, i]) for i, name in enumerate(ATTRIBUTES)}
    out["attributes/mean"] = float(np.mean([out[f"attributes/{n}"] for n in ATTRIBUTES]))
    return out
