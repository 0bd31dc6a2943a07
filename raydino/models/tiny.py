"""Tiny randomly initialised encoders of the real classes, saved like real ones.

They let tests and the offline demo run the exact loading and feature code
that a real run uses; only the sizes differ. Each is saved with a
``RAYDINO_TINY.txt`` marker so nobody mistakes it for pretrained weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TINY_DINO = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=2, patch_size=14, image_size=224)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
MARKER = "RAYDINO_TINY.txt"


def save_tiny_dino(out: str | Path, seed: int = 0) -> Path:
    """A small ``Dinov2Model`` with its image-processor config (ImageNet mean/std)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = Path(out)
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**TINY_DINO))
    model.save_pretrained(out)
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    ).save_pretrained(out)
    (out / MARKER).write_text(f"random weights, seed {seed}: for tests and the offline demo only\n")
    return out


def save_tiny_clip(out: str | Path, seed: int = 0, model: torch.nn.Module | None = None,
                   note: str = "random weights") -> Path:
    """A small open_clip model in the layout ``local-dir:`` loads (config + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        torch.manual_seed(seed)
        model = build_tiny_clip()
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    (out / MARKER).write_text(f"{note}, seed {seed}: for tests and the offline demo only\n")
    return out


def build_tiny_clip() -> torch.nn.Module:
    from open_clip.model import CLIP

    return CLIP(**TINY_CLIP, output_dict=True)


def fit_tiny_clip(model: torch.nn.Module, faces_dir: str | Path, steps: int = 300, batch_size: int = 64,
                  seed: int = 0) -> torch.nn.Module:
    """Contrastively fit a tiny CLIP to synthetic faces and their captions.

    Real CLIP weights cannot be downloaded offline; a random CLIP would make
    text control untestable. A few hundred steps of open_clip's own loss on
    the captions make its text and image spaces agree on the attributes.
    """
    import open_clip
    import pyarrow.parquet as pq
    from PIL import Image

    faces_dir = Path(faces_dir)
    meta = pq.read_table(faces_dir / "metadata.parquet").to_pylist()
    size = TINY_CLIP["vision_cfg"]["image_size"]
    images = torch.stack([
        torch.from_numpy(np.array(Image.open(faces_dir / m["file"]).convert("RGB").resize((size, size), Image.LANCZOS)))
        for m in meta
    ]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    images = (images - mean) / std
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=TINY_CLIP["text_cfg"]["context_length"])(
        [m["caption"] for m in meta]
    )
    gen = torch.Generator().manual_seed(seed)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(meta), (min(batch_size, len(meta)),), generator=gen)
        out = model(images[idx], tokens[idx])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def write_tiny_models(out: str | Path, seed: int = 0, train_clip_on: str | Path | None = None,
                      clip_steps: int = 300) -> dict[str, Path]:
    """The demo's three encoders: training DINOv2, a second DINOv2 for FD, CLIP.

    With ``train_clip_on`` (a ``raydino synth-faces`` folder) the CLIP is fitted
    to those faces' captions so that text control can be checked offline.
    """
    out = Path(out)
    torch.manual_seed(seed)
    clip = build_tiny_clip()
    if train_clip_on is not None:
        fit_tiny_clip(clip, train_clip_on, steps=clip_steps, seed=seed)
    return {
        "dino": save_tiny_dino(out / "dinov2-tiny", seed),
        "fd": save_tiny_dino(out / "dinov2-tiny-fd", seed + 1),
        "clip": save_tiny_clip(out / "clip-tiny", seed, model=clip,
                               note="fitted to synthetic-face captions" if train_clip_on else "random weights"),
    }
