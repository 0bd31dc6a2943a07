"""Synthetic faces as tensors, with what the face generator knows about each.

The tiny encoders learn from, and their probes and the attribute classifier
are judged on, three things per face: its pixels, the part of every pixel
(``render_parts``) and its attributes as class indices. Since a face is a
pure function of its attributes, a folder's ``metadata.parquet`` is enough
to redraw any of them at any size.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raydino.data.synth_faces import (
    BACKGROUNDS,
    HAIR_COLOURS,
    HAIR_STYLES,
    METADATA,
    SKIN_TONES,
    FaceAttributes,
    render_face,
    render_parts,
    sample_attributes,
)

# what a classifier of generated faces is asked; eye colour is left out: at 32 px an iris is a pixel or two
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_style": HAIR_STYLES,
    "skin": tuple(SKIN_TONES),
    "glasses": ("no", "yes"),
    "smile": ("no", "yes"),
    "background": tuple(BACKGROUNDS),
}
UNKNOWN = -1  # a label nothing in the image shows (a bald head's hair colour) or a prompt does not name


def attribute_labels(attrs: FaceAttributes) -> list[int]:
    """One class index per entry of ``ATTRIBUTES``; a bald face's hair colour is ``UNKNOWN``."""
    values = {"hair_colour": attrs.hair_colour, "hair_style": attrs.hair_style, "skin": attrs.skin,
              "glasses": "yes" if attrs.glasses else "no", "smile": "yes" if attrs.smile else "no",
              "background": attrs.background}
    labels = [ATTRIBUTES[name].index(values[name]) for name in ATTRIBUTES]
    if attrs.hair_style == "bald":
        labels[list(ATTRIBUTES).index("hair_colour")] = UNKNOWN
    return labels


def prompt_labels(prompt: str) -> list[int]:
    """The attributes a caption-like prompt names (``UNKNOWN`` for the others).

    Understands the captions' own words and the phrasings' (``data/phrasing.py``):
    "red hair", "short ... hair", "a bald head", "smiling" ("neutral",
    "serious", "not smiling"), "glasses" ("no", "without", "not wearing glasses").
    """
    text = prompt.lower()
    found: dict[str, str] = {}
    if m := re.search(rf"\b({'|'.join(HAIR_COLOURS)})\s+hair\b", text):
        found["hair_colour"] = m.group(1)
    if m := re.search(rf"\b({'|'.join(s for s in HAIR_STYLES if s != 'bald')})\b[\w\s]*\bhair\b", text):
        found["hair_style"] = m.group(1)
    if re.search(r"\bbald\b", text):
        found["hair_style"] = "bald"
    if re.search(r"\b(neutral|serious|not smiling)\b", text):
        found["smile"] = "no"
    elif re.search(r"\b(smiling|smile|smiles)\b", text):
        found["smile"] = "yes"
    if re.search(r"\b(no|without|not wearing)\s+glasses\b", text):
        found["glasses"] = "no"
    elif re.search(r"\bglasses\b", text):
        found["glasses"] = "yes"
    return [ATTRIBUTES[name].index(found[name]) if name in found else UNKNOWN for name in ATTRIBUTES]


@dataclass
class FaceSet:
    """Faces with their part maps and attribute labels, on the CPU."""

    images: torch.Tensor  # [N, 3, S, S] float in [0, 1]
    parts: torch.Tensor   # [N, S, S] int64 indices into PARTS
    labels: torch.Tensor  # [N, len(ATTRIBUTES)] int64, UNKNOWN where nothing shows it

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, at: int) -> tuple[FaceSet, FaceSet]:
        return (FaceSet(self.images[:at], self.parts[:at], self.labels[:at]),
                FaceSet(self.images[at:], self.parts[at:], self.labels[at:]))


def render_set(attrs: list[FaceAttributes], size: int) -> FaceSet:
    images = np.stack([np.asarray(render_face(a, size)) for a in attrs])
    return FaceSet(images=torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0,
                   parts=torch.from_numpy(np.stack([render_parts(a, size) for a in attrs])).long(),
                   labels=torch.tensor([attribute_labels(a) for a in attrs], dtype=torch.long))


def read_attributes(folder: str | Path) -> dict[str, FaceAttributes]:
    """A ``raydino synth-faces`` folder's faces by file name, from its ``metadata.parquet``."""
    import pyarrow.parquet as pq

    path = Path(folder) / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a `raydino synth-faces` folder is needed")
    names = [f.name for f in dataclasses.fields(FaceAttributes)]
    return {row["file"]: FaceAttributes(**{k: row[k] for k in names}) for row in pq.read_table(path).to_pylist()}


def from_folder(folder: str | Path, size: int) -> FaceSet:
    """Every face of a synthetic-face folder, redrawn at ``size`` px with its parts and labels."""
    faces = read_attributes(folder)
    return render_set([faces[name] for name in sorted(faces)], size)


def from_seed(seed: int, count: int, size: int) -> FaceSet:
    """``count`` faces drawn with ``seed``, like ``write_faces`` would, without touching the disk."""
    return render_set([sample_attributes(np.random.default_rng([seed, i])) for i in range(count)], size)


def attributes_for_paths(paths: list[str]) -> list[FaceAttributes] | None:
    """The attributes of image files, joined by file name with their folders' ``metadata.parquet``.

    ``None`` when any folder has no metadata or any file no row (the images
    are not synthetic faces, so nothing knows their attributes).
    """
    folders: dict[Path, dict[str, FaceAttributes]] = {}
    out = []
    for p in map(Path, paths):
        if p.parent not in folders:
            if not (p.parent / METADATA).is_file():
                return None
            folders[p.parent] = read_attributes(p.parent)
        attrs = folders[p.parent].get(p.name)
        if attrs is None:
            return None
        out.append(attrs)
    return out


def labels_for_paths(paths: list[str]) -> np.ndarray | None:
    """The attribute labels of image files (:func:`attributes_for_paths`); ``None`` without metadata."""
    attrs = attributes_for_paths(paths)
    return None if attrs is None else np.array([attribute_labels(a) for a in attrs], dtype=np.int64)
