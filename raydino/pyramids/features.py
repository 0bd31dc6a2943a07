"""The pyramid encoder Ray Data's actors run: every level of a batch through :mod:`raydino.models.encoders`."""

from __future__ import annotations

import numpy as np
import torch

from raydino.models.encoders import clip_image_embedding, dino_levels, host_tensor, resize, to_float
from raydino.pyramids import schema


class PyramidEncoder:
    """Every pyramid level (and the CLIP embedding) of a batch, in one call.

    This is the callable class Ray Data's actor pool runs (one model load per
    actor), and also what tests and small local jobs call directly. Input:
    ``{"image": uint8 [B, S, S, 3], "id": [...], "path": [...]}`` with ``S`` the
    largest level size; output: the pyramid columns of ``schema``.
    """

    def __init__(self, dino: str, sizes: list[int], thumb_size: int = 32, clip: str = "",
                 device: str | None = None, bf16: bool | None = None):
        from raydino.models.loading import load_clip, load_dino

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.bf16 = self.device.type == "cuda" if bf16 is None else bf16
        self.dino = load_dino(dino, self.device)
        self.clip = load_clip(clip, self.device) if clip else None
        self.sizes, self.thumb_size = list(sizes), thumb_size

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:

        pinned = self.device.type == "cuda"
        images = host_tensor(batch[schema.IMAGE])
        x = to_float(images.pin_memory() if pinned else images, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            levels = dino_levels(self.dino, x, self.sizes)
            emb = clip_image_embedding(self.clip, x) if self.clip is not None else None
        out = {}
        for size, (cls, tokens) in zip(self.sizes, levels, strict=True):
            out[schema.tokens_col(size)] = tokens.to(torch.float16)
            out[schema.cls_col(size)] = cls.to(torch.float16)
        thumb = resize(x, self.thumb_size).mul(255).round().clamp(0, 255).to(torch.uint8)
        out[schema.THUMB] = thumb.permute(0, 2, 3, 1)
        if emb is not None:
            out[schema.CLIP] = emb.float()
        return {schema.ID: list(batch[schema.ID]), schema.PATH: list(batch[schema.PATH]), **to_host(out, pinned)}


def to_host(tensors: dict[str, torch.Tensor], pinned: bool) -> dict[str, np.ndarray]:
    """Device tensors -> host numpy arrays; on CUDA through pinned buffers and one sync.

    A blocking ``.cpu()`` per column copies through pageable memory and faults
    in fresh pages each batch: for ViT-B/14 on an H200 that halved the
    encoder's throughput against the model alone (docs/benchmarks.md).
    Pinned buffers come from PyTorch's caching host allocator, so they are
    reused once the arrays are dropped.
    """
    if not pinned:
        return {name: t.cpu().numpy() for name, t in tensors.items()}
    host = {name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
            for name, t in tensors.items()}
    torch.cuda.current_stream().synchronize()
    return {name: t.numpy() for name, t in host.items()}
