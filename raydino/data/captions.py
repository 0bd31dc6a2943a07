"""The captions of an image folder, when it has any, and what a run does without them.

A folder's captions live in one table at its top: the synthetic faces'
``metadata.parquet``, or a ``captions.parquet`` / ``captions.csv`` a user
writes, each with the columns ``file`` (the image's path relative to the
folder, ``/``-separated) and ``caption``. Other columns are ignored.

Only the demo's tiny CLIP needs them: it learns its text space from a
folder's captions (``raydino tiny-models``). A real CLIP (``ffhq256``)
knows text already, and the flow prior is conditioned on image embeddings, so a
caption-less folder costs it nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from raydino.config import Config
from raydino.data.synth_faces import METADATA
from raydino.data.sources import Split

CAPTION_FILES = (METADATA, "captions.parquet", "captions.csv")  # first found wins
COLUMNS = ("file", "caption")

log = logging.getLogger(__name__)


class CaptionsError(ValueError):
    """A captions file that cannot be used as one."""


def find_captions(folder: str | Path) -> Path | None:
    """The captions table at the top of ``folder``, or None (a URI or a glob has none)."""
    folder = Path(str(folder).removeprefix("file://")).expanduser()
    if "://" in str(folder) or not folder.is_dir():
        return None
    return next((folder / name for name in CAPTION_FILES if (folder / name).is_file()), None)


def read_captions(path: str | Path) -> dict[str, str]:
    """``file -> caption`` of a captions table; empty captions are dropped."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pacsv.read_csv(path) if path.suffix == ".csv" else pq.read_table(path)
    except Exception as exc:  # pyarrow raises several kinds for a malformed table
        raise CaptionsError(f"{path} cannot be read as a captions table ({exc}): write it as CSV or parquet "
                            f"with the columns {', '.join(COLUMNS)}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise CaptionsError(f"{path} has no column {', '.join(missing)} (it has {', '.join(table.column_names)}): "
                            f"a captions table needs the columns {', '.join(COLUMNS)}")
    return {str(f).strip("/"): str(c).strip() for f, c in zip(table.column("file").to_pylist(),
                                                            table.column("caption").to_pylist(), strict=True)
            if f is not None and c is not None and str(c).strip()}


def caption_pairs(folder: str | Path, split: Split | None = None) -> list[tuple[str, str]]:
    """``(image path, caption)`` of every captioned image file of ``folder``, sorted; ``split`` keeps one side.

    Captions are matched to the folder's listing (the files a pyramid would
    read), so the held-out side of the split never reaches a model that is
    fitted here. A folder without a captions table has no pairs.
    """
    from raydino.data.sources import list_images

    table = find_captions(folder)
    if table is None:
        return []
    captions = read_captions(table)
    listing = list_images(str(folder))
    if split is not None:
        split.apply(listing)
    pairs = [(path, captions[listing.relative(path)]) for path in listing.images if listing.relative(path) in captions]
    if not pairs:
        log.warning("%s names none of the image files under %s by their relative path: no captions used", table, folder)
    return pairs


@dataclass(frozen=True)
class TextPlan:
    """Whether a run conditions on text, and the sentence that says why."""

    on: bool
    captions: Path | None
    reason: str


def text_plan(cfg: Config) -> TextPlan:
    """Whether ``raydino run`` keeps text control, decided before any step runs.

    Text control is turned off (``pyramids.clip`` emptied) only when the CLIP
    is the demo's tiny one that ``raydino tiny-models`` fits, and the user's
    ``data.images`` has no captions table: an unfitted tiny CLIP's text space
    means nothing, and prompts through it would only look like control.
    """
    if not cfg.pyramids.clip:
        return TextPlan(False, None, "off: no CLIP is configured (pyramids.clip is empty)")
    if not cfg.tiny.build:
        return TextPlan(True, None, f"on: CLIP {cfg.pyramids.clip} is pretrained and needs no captions")
    if not cfg.data.images:
        return TextPlan(True, None, "on: the tiny CLIP is fitted to the synthetic faces' captions")
    captions = find_captions(cfg.data.images)
    if captions is None:
        return TextPlan(False, None, no_captions(cfg.data.images))
    return TextPlan(True, captions, f"on: the tiny CLIP is fitted to the captions in {captions}")


def no_captions(images: str) -> str:
    """Why a demo run on ``images`` has no text control, in the words the log and the report use."""
    return (f"off for this run: {images} has no captions (none of {', '.join(CAPTION_FILES)} with the columns "
            f"{', '.join(COLUMNS)}), and the demo's tiny CLIP learns text only from captions")


def describe_text(cfg: Config) -> str:
    """The text-control line of a run's report, from the config the run was trained with."""
    if cfg.pyramids.clip:
        return f"on: CLIP {cfg.pyramids.clip}"
    if cfg.tiny.build and cfg.data.images and find_captions(cfg.data.images) is None:
        return no_captions(cfg.data.images)
    return "off: no CLIP is configured (pyramids.clip is empty)"
