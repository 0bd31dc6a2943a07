"""The tiny CLIP: an open_clip model fitted to captions, so offline runs have a text space to steer with.

Real CLIP weights cannot be downloaded offline, and a random CLIP would
make text control untestable. The tiny one is fitted here, contrastively,
to a folder's captions; where the images are synthetic faces it is fitted
to many phrasings of each face and to minimal pairs (:func:`fit_tiny_clip`).
Saved like a real one (``local-dir:`` layout), with a marker saying what its
weights are. ``raydino eval``'s flip test measures what its text side
carries (``evaluation/text_encoder.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raydino.config import PyramidConfig, TinyModelsConfig
from raydino.data.face_set import ATTRIBUTES, UNKNOWN, attribute_labels, attributes_for_paths
from raydino.data.images import UnreadableImage, read_image
from raydino.data.phrasing import describe, flip, holds, named_values, phrase
from raydino.data.synth_faces import FaceAttributes, render_face
from raydino.models.encoders import normalise, to_float
from raydino.models.loading import MARKER

READ_OUT = ("hair_colour", "hair_style", "glasses", "smile")  # what the captions name that the classifier reads too

log = logging.getLogger(__name__)

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clip_config(image_size: int) -> dict:
    """:data:`TINY_CLIP` with the image tower's input side (``tiny.clip_image_size``)."""
    return TINY_CLIP | {"vision_cfg": TINY_CLIP["vision_cfg"] | {"image_size": image_size}}


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
    config = tiny_clip_config(_image_side(model))
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    (out / MARKER).write_text(f"{note}, seed {seed}: for tests and the offline demo only\n")
    return out


def build_tiny_clip(image_size: int = TINY_CLIP["vision_cfg"]["image_size"]) -> torch.nn.Module:
    from open_clip.model import CLIP

    return CLIP(**tiny_clip_config(image_size), output_dict=True)


def _image_side(clip: torch.nn.Module) -> int:
    size = clip.visual.image_size
    return int(size if isinstance(size, int) else size[0])


def fit_tiny_clip(model: torch.nn.Module, pairs: list[tuple[str, str]], steps: int = 300, batch_size: int = 64,
                  seed: int = 0, minimal_pairs: bool = True, attribute_weight: float = 1.0,
                  lr: float = 1e-3) -> torch.nn.Module:
    """Contrastively fit a tiny CLIP to ``(image path, caption)`` pairs.

    Real CLIP weights cannot be downloaded offline; a random CLIP would make
    text control untestable. A few hundred steps of CLIP's loss on the
    captions make its text and image spaces agree on what they name.
    Images decode as the pyramids decode them; a file that does not is
    skipped and counted in the log. The token embedding takes no weight
    decay, so the rows of tokens no caption uses keep their seeded values:
    the shipped build stores only the used rows (:func:`compact_clip`).

    Where the images are synthetic faces (their attributes are known), each
    step phrases each face anew (:mod:`raydino.data.phrasing`): a caption
    naming some of its attributes in one of many wordings. With
    ``minimal_pairs``, each face also brings its counterfactual: the same
    face redrawn with one named attribute changed, captioned by the same
    sentence with that one word changed (NegCLIP's hard negative caption,
    with the image it describes). Measured: without them, hundreds of steps
    learn hair colour and style and never glasses or smile (a few pixels
    against the hair's thousand; docs/encoders.md). A caption that is also
    true of another image in the batch is not counted as that image's
    negative. Without attributes, the folder's own captions are used, and
    identical captions are not negatives of each other.
    """
    import open_clip

    size = _image_side(model)
    crops, captions, paths = [], [], []
    for path, caption in pairs:
        try:
            crops.append(read_image(path, size, max_pixels=PyramidConfig.max_pixels))
            captions.append(caption)
            paths.append(path)
        except UnreadableImage as exc:
            log.info("tiny CLIP fit: skipping (%s)", exc)
    if not crops:
        raise ValueError("none of the captioned images can be read: the tiny CLIP has nothing to fit to")
    pixels = lambda x: normalise(to_float(x), open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)  # noqa: E731
    images = pixels(np.stack(crops))
    attrs = attributes_for_paths(paths)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=TINY_CLIP["text_cfg"]["context_length"])
    gen = torch.Generator().manual_seed(seed)
    words = random.Random(seed)
    embedding = model.token_embedding.weight
    rest = [p for p in model.parameters() if p is not embedding]
    heads = torch.nn.ModuleList(torch.nn.Linear(model.text_projection.shape[1], len(ATTRIBUTES[name]))
                                for name in READ_OUT)  # read-outs of the image side, not saved
    opt = torch.optim.AdamW([{"params": rest + list(heads.parameters())},
                             {"params": [embedding], "weight_decay": 0.0}], lr=lr, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen).tolist()
        if attrs is None:
            x, texts = images[idx], [captions[i] for i in idx]
            true_of = torch.tensor([[captions[j] == captions[i] for j in idx] for i in idx])
        else:
            faces = [attrs[i] for i in idx]
            said = [describe(named_values(a), words) for a in faces]
            x = images[idx]
            if minimal_pairs:
                flipped = [(flip(named, words), frame) for named, frame in said]
                faces += [counterfactual(a, named) for a, (named, _) in zip(faces, flipped, strict=True)]
                x = torch.cat([x, pixels(np.stack([redraw(a, size) for a in faces[len(idx):]]))])
                said += flipped
            texts = [phrase(*s) for s in said]
            true_of = torch.tensor([[holds(named, named_values(a)) for named, _ in said] for a in faces])
        image = model.encode_image(x)
        loss = clip_loss(F.normalize(image, dim=-1), model.encode_text(tokenizer(texts), normalize=True),
                         model.logit_scale.exp(), true_of)
        if attrs is not None and attribute_weight:  # on the unnormalised embedding: learnt ~2x faster
            labels = torch.tensor([attribute_labels(a) for a in faces])[:, [list(ATTRIBUTES).index(n) for n in READ_OUT]]
            loss = loss + attribute_weight * sum(F.cross_entropy(head(image), labels[:, i], ignore_index=UNKNOWN)
                                                 for i, head in enumerate(heads)) / len(heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def counterfactual(attrs: FaceAttributes, named: dict[str, str]) -> FaceAttributes:
    """``attrs`` changed to every value ``named`` says (a flipped phrasing): the face that phrasing describes."""
    change = {k: v == "yes" if k in ("glasses", "smile") else v for k, v in named.items()}
    return dataclasses.replace(attrs, **change)


def redraw(attrs: FaceAttributes, size: int) -> np.ndarray:
    """A face drawn at twice ``size`` and reduced as :func:`read_image` reduces a file: a counterfactual that differs
    from the faces read from disk in its attribute only, not in how it was resampled."""
    from PIL import Image

    return np.asarray(render_face(attrs, 2 * size).resize((size, size), Image.LANCZOS, reducing_gap=3.0))


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, true_of: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over ``B`` (image, caption) pairs, without the negatives that are not.

    ``true_of[i, j]``: caption ``j`` also describes image ``i``; such pairs
    are masked out of both directions (the diagonal stays: the positives).
    """
    logits = scale * image @ text.T
    masked = true_of & ~torch.eye(len(image), dtype=torch.bool)
    target = torch.arange(len(image))
    return (F.cross_entropy(logits.masked_fill(masked, float("-inf")), target)
            + F.cross_entropy(logits.T.masked_fill(masked.T, float("-inf")), target)) / 2


def write_tiny_clip(out: Path, pairs: list[tuple[str, str]], seed: int, budget: TinyModelsConfig, source: str) -> Path:
    """The tiny CLIP fitted to ``pairs`` with ``budget``'s ``clip_*`` keys (``clip_fit_steps: 0`` or no pairs keep it
    random, and say so)."""
    torch.manual_seed(seed)
    clip = build_tiny_clip(budget.clip_image_size)
    steps = budget.clip_fit_steps if pairs else 0
    if steps:
        fit_tiny_clip(clip, pairs, steps=steps, seed=seed, minimal_pairs=budget.clip_minimal_pairs,
                      attribute_weight=budget.clip_attribute_weight, lr=budget.clip_lr)
    note = (f"fitted to {len(pairs)} captions of {source}, {steps} steps at {budget.clip_image_size} px"
            if steps else "random weights")
    return save_tiny_clip(out, seed, model=clip, note=note)
