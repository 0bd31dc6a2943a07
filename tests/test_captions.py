"""A folder's captions: where they are read from and what the demo does without them.

That the tiny CLIP fit gives the same weights whatever the thread count is
part of the shipped build's rebuild (tests/test_shipped_models.py).
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydino.config import load_config
from raydino.data.captions import CaptionsError, caption_pairs, describe_text, find_captions, read_captions, text_plan
from raydino.data.sources import Split


@pytest.fixture
def photos(tmp_path, faces_dir):
    """12 of the session's faces in a user's folder, nested, without the faces' metadata.parquet."""
    out = tmp_path / "photos"
    for i, face in enumerate(sorted(faces_dir.glob("*.png"))[:12]):
        target = out / ("trip" if i % 2 else "") / f"photo {i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(face, target)
    return out


def test_a_captions_csv_or_parquet_is_read_by_relative_path(photos):
    assert find_captions(photos) is None and caption_pairs(photos) == []
    (photos / "captions.csv").write_text('file,caption\n"trip/photo 1.png",a face on a trip\nphoto 0.png,a face\n'
                                         "missing.png,a file that is not there\nphoto 2.png,\n")
    assert read_captions(photos / "captions.csv")["trip/photo 1.png"] == "a face on a trip"
    pairs = caption_pairs(photos)
    assert pairs == [(str(photos / "photo 0.png"), "a face"), (str(photos / "trip" / "photo 1.png"), "a face on a trip")]
    (photos / "captions.csv").unlink()
    pq.write_table(pa.table({"file": ["photo 0.png"], "caption": ["from parquet"], "extra": [1]}),
                   photos / "captions.parquet")
    assert caption_pairs(photos) == [(str(photos / "photo 0.png"), "from parquet")]


def test_a_captions_table_without_its_columns_is_an_error_naming_them(photos):
    (photos / "captions.csv").write_text("image,text\nphoto 0.png,a face\n")
    with pytest.raises(CaptionsError, match="no column file, caption"):
        caption_pairs(photos)


def test_held_out_images_captions_never_reach_the_clip_fit(photos):
    (photos / "captions.csv").write_text("file,caption\n" + "".join(
        f"{'trip/' if i % 2 else ''}photo {i}.png,face {i}\n" for i in range(12)))
    split = Split("train", 0.02, 4)
    train = {caption for _, caption in caption_pairs(photos, split)}
    held = {caption for _, caption in caption_pairs(photos, Split("holdout", 0.02, 4))}
    assert len(train) == 8 and len(held) == 4 and not train & held


def test_the_demo_turns_text_control_off_without_captions_and_says_why(photos):
    cfg = load_config("demo", overrides=[f"data.images={photos}"])
    plan = text_plan(cfg)
    assert not plan.on and str(photos) in plan.reason and "captions.csv" in plan.reason
    cfg.pyramids.clip = ""  # as `raydino run` records it
    assert describe_text(cfg) == plan.reason
    (photos / "captions.csv").write_text("file,caption\nphoto 0.png,a face\n")
    assert text_plan(cfg).on is False  # the emptied CLIP stays off
    assert text_plan(load_config("demo", overrides=[f"data.images={photos}"])).captions == photos / "captions.csv"
    assert text_plan(load_config("demo")).on  # the synthetic faces have their captions
    assert text_plan(load_config("ffhq256", overrides=[f"data.images={photos}"])).on  # a pretrained CLIP needs none
