"""How an image reaches an encoder: one path shared by extraction, the loss, sampling and the judges.

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
