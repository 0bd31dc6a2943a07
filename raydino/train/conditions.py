"""What the flow prior is conditioned on: a caption's own text embedding where the images have captions.

A prompt reaches the prior as a CLIP *text* embedding. Training it on the
images' CLIP *image* embeddings (LAFITE) asks a text embedding to stand in
for an image one across the gap between CLIP's two towers, and the prior
learns only what that gap leaves. Where the training images have captions,
the prior is conditioned on those captions' text embeddings instead: the
same kind of vector a prompt gives (``prior.condition: text``).

Each row gets ``prior.caption_variants`` captions: a synthetic face's own
(``metadata.parquet``) and phrasings that name some of its attributes in
other words (:mod:`raydino.data.phrasing`), so the prior learns what one
attribute alone implies and what a prompt leaves to chance; a user's folder
gives its one caption per image (:mod:`raydino.data.captions`). Every step
draws one of a row's variants. Without captions (a folder without a
captions table, ``ffhq256`` on images alone) the prior falls back to the
image embedding, said in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from raydino.config import Config
from raydino.data.captions import caption_pairs
from raydino.data.face_set import attributes_for_paths
from raydino.data.phrasing import describe, named_values, phrase
from raydino.models.loading import load_clip
from raydino.pyramids import schema

TEXT = "clip_text"  # the prior's condition column: [caption_variants, clip_dim] text embeddings per row

log = logging.getLogger(__name__)


def row_captions(paths: list[str], source: str, variants: int, seed: int) -> list[list[str]] | None:
    """``variants`` captions per image path, or None when the images have none.

    Synthetic faces: their own caption, then phrasings drawn from ``(seed,
    row)``; a folder with a captions table: each image's caption, repeated
    (an image without one makes the whole set caption-less: its rows would
    have no condition).
    """
    attrs = attributes_for_paths(paths)
    if attrs is not None:
        out = []
        for i, a in enumerate(attrs):
            rng = random.Random(seed * 1_000_003 + i)
            out.append([a.caption()] + [phrase(*describe(named_values(a), rng)) for _ in range(variants - 1)])
        return out
    if not source or "://" in source:
        return None
    captions = dict(caption_pairs(source))
    if not all(p in captions for p in paths):
        return None
    return [[captions[p]] * variants for p in paths]


@torch.no_grad()
def text_table(cfg: Config, pyramids_dir: str | Path, manifest: dict) -> dict[str, np.ndarray] | None:
    """``path -> [variants, clip_dim]`` float16 text embeddings of every row's captions, or None.

    None when ``prior.condition`` is ``image``, the pyramid has no CLIP
    column, or its images have no captions (then the prior conditions on the
    image embedding, and the log says why).
    """
    pc = cfg.prior
    if pc.condition != "text" or not manifest.get("clip"):
        return None
    if schema.PATH not in pq.read_schema(schema.shard_files(pyramids_dir)[0]).names:
        log.info("prior: %s has no %s column to find captions by: conditioning on the CLIP image embedding",
                 pyramids_dir, schema.PATH)
        return None
    paths = [str(p) for p in schema.load_arrays(pyramids_dir, [schema.PATH])[schema.PATH]]
    captions = row_captions(paths, str(manifest.get("source", "")), pc.caption_variants, pc.seed)
    if captions is None:
        log.info("prior: %s's images have no captions: conditioning on the CLIP image embedding (LAFITE)",
                 pyramids_dir)
        return None
    clip = load_clip(cfg.pyramids.clip)
    flat = [c for row in captions for c in row]
    emb = torch.cat([clip.encode_text(flat[i:i + 1024]) for i in range(0, len(flat), 1024)])
    emb = emb.view(len(paths), pc.caption_variants, -1).half().numpy()
    log.info("prior: conditioned on the text embeddings of %d captions per image (%d images)", pc.caption_variants,
             len(paths))
    return dict(zip(paths, emb, strict=True))


def resolved(cfg: Config, table: dict | None) -> Config:
    """``cfg`` with ``prior.condition`` as trained: ``image`` when there was no text to condition on."""
    condition = "text" if table is not None else "image"
    return dataclasses.replace(cfg, prior=dataclasses.replace(cfg.prior, condition=condition))


def add_text_column(table: dict[str, np.ndarray]):
    """A Ray Data ``map_batches`` function: each row's text embeddings as :data:`TEXT`, its path column dropped."""

    def join(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = batch.pop(schema.PATH)
        batch[TEXT] = np.stack([table[str(p)] for p in paths])
        return batch

    return join


def condition_stats(pyramids_dir: str | Path, table: dict[str, np.ndarray] | None, rows: int) -> dict:
    """Per-dimension ``cond_mean``/``cond_std`` of what the prior trains on, which it standardises its condition by.

    Every caption embedding of the table, or the CLIP image embeddings of
    the pyramid's first ``rows`` rows. CLIP embeddings of one domain share a
    large common part (the demo's captions: a mean of norm 0.7 against a
    per-dimension spread of 0.12), so the part that names an attribute is
    small; standardised, it reaches the prior's blocks at the scale of the
    time embedding from the first step.
    """
    conds = (torch.from_numpy(np.stack(list(table.values()))) if table is not None else
             torch.from_numpy(schema.read_sample(pyramids_dir, [schema.CLIP], rows)[schema.CLIP]))
    flat = torch.nn.functional.normalize(conds.reshape(-1, conds.shape[-1]).float(), dim=-1)
    return {"cond_mean": flat.mean(0), "cond_std": flat.std(0).clamp_min(1e-4)}


def pick(texts: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One of each row's caption embeddings ``[B, variants, D] -> [B, D]``, drawn from ``rng``."""
    choice = torch.randint(texts.shape[1], (len(texts),), generator=rng).to(texts.device)
    return texts[torch.arange(len(texts), device=texts.device), choice]
