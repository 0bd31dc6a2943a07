"""A batch of pyramid rows as tensors: what training, validation, evaluation and the benchmarks read.

The pyramid stores float16 tokens and uint8 HWC thumbnails (``schema``);
everything downstream wants float tensors on one device, and the coarse
code is the coarsest level's tokens. This module is that one translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raydino.pyramids import schema


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
