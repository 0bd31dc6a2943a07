"""The pyramid computation itself: one function shared by extraction and the loss.

Pyramid targets and the training loss must see an image through exactly the
same resize, normalisation and encoder call, or the generator learns the
difference between two preprocessing paths. Both go through
:func:`dino_levels`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from raydino.models.loading import Clip, Dino
from raydino.pyramids import schema


def host_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU tensor of ``images``; a read-only array (zero-copy from Ray's object store) is copied first.

    PyTorch cannot mark a tensor read-only, so wrapping such an array warns
    (once per batch in an extraction) and would let a write corrupt the store.
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()
    return torch.as_tensor(images)


def to_float(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 BxHxWx3 -> float BxCxHxW in [0, 1] on ``device``."""
    x = host_tensor(images).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable antialiased resize, the only one the pyramid and loss use."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def dino_levels(dino: Dino, x: torch.Tensor, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DINOv2 (cls ``[B, D]``, patch tokens ``[B, g*g, D]``) of ``x`` at every size.

    ``x`` is float in [0, 1]; gradients flow back into it (the encoder is frozen,
    not detached), which is what the generator's loss relies on.
    """
    out = []
    for size in sizes:
        if size % dino.patch_size:
            raise ValueError(f"pyramid size {size} is not a multiple of the patch size {dino.patch_size}")
        hidden = dino.model(pixel_values=normalise(resize(x, size), dino.mean, dino.std)).last_hidden_state
        out.append((hidden[:, 0], hidden[:, 1:]))
    return out


def clip_image_embedding(clip: Clip, x: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding of float [0, 1] images (square already)."""
    return clip.encode_image(normalise(resize(x, clip.image_size), clip.mean, clip.std))


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
