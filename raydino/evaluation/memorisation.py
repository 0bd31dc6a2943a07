"""Does the flow prior copy its training codes?

A prior trained on a few hundred or thousand codes can score well by
returning them. The check (as for generative models generally: a sample's
nearest training neighbour against a held-out real one's): the distance of
each prior sample to its nearest training code, beside the distance of each
held-out code (real faces the prior never saw) to its nearest training code.
A prior that copies puts its samples far closer to the training codes than
new faces are (the ratio of medians falls towards 0, and many samples sit
nearer than almost every held-out code); one that generates new faces keeps
the ratio near 1 or above.

Distances are between whole codes, in the prior's standardised units (each
channel by the training codes' mean and spread), as root mean squares over
the code's numbers, so 1.0 is one standard deviation per number.
"""

from __future__ import annotations

import torch

COPY_QUANTILE = 0.05  # a sample nearer than this share of held-out codes counts as a near-copy


def nearest(codes: torch.Tensor, train: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Each row of ``codes`` ``[N, ...]``: RMS distance to its nearest row of ``train`` ``[M, ...]``."""
    a, b = codes.flatten(1).float(), train.flatten(1).float()
    out = torch.cat([torch.cdist(a[i:i + chunk], b).min(1).values for i in range(0, len(a), chunk)])
    return out / a.shape[1] ** 0.5


def memorisation_figures(samples: torch.Tensor, held_out: torch.Tensor, train: torch.Tensor) -> dict[str, float]:
    """``prior/memorisation/...``: standardised codes of prior samples, held-out faces and the training set."""
    to_samples, to_held_out = nearest(samples, train), nearest(held_out, train)
    copy_line = torch.quantile(to_held_out, COPY_QUANTILE)
    return {"prior/memorisation/sample_nn": float(to_samples.median()),
            "prior/memorisation/heldout_nn": float(to_held_out.median()),
            "prior/memorisation/ratio": float(to_samples.median() / to_held_out.median()),
            "prior/memorisation/near_copies": float((to_samples < copy_line).float().mean()),
            "prior/memorisation/n": len(samples), "prior/memorisation/train_rows": len(train)}
