"""Decoding and listing, without Ray: every encoding a real folder holds, every way a file can be bad."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raydino.data.images import BACKGROUND, BadImage, decode_image
from raydino.data.sources import list_images

LIMITS = dict(min_side=32, max_pixels=4_000_000)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (96, 64), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 96, 32))  # stored: red on top, blue below
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise: red ends up on the right
    out = decode_image(encode(img, "JPEG", exif=exif, quality=95), 56, **LIMITS)
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8
    left, right = out[28, 4].astype(int), out[28, 51].astype(int)
    assert left[2] > 200 and left[0] < 60 and right[0] > 200 and right[2] < 60


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.full((64, 64), 128 * 257, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = decode_image(encode(img, "PNG"), 56, **LIMITS)
    assert np.all(out == 128)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_the_background(mode):
    img = Image.new("RGBA", (64, 64), (200, 30, 30, 0))
    img.paste((200, 30, 30, 255), (0, 0, 32, 64))  # left half opaque red, right half transparent
    if mode == "LA":
        img = img.convert("LA")
        data = encode(img, "PNG")
    elif mode == "P":
        rgb = img.convert("RGB")
        rgb.paste((30, 200, 30), (32, 0, 64, 64))
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        data = encode(pal, "PNG", transparency=pal.getpixel((60, 32)))  # the green half
    else:
        data = encode(img, "PNG")
    out = decode_image(data, 56, **LIMITS)
    assert tuple(out[28, 54]) == BACKGROUND
    assert tuple(out[28, 2]) != BACKGROUND


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("CMYK", "JPEG"), ("P", "GIF"), ("RGB", "WEBP"),
                                      ("RGB", "BMP"), ("RGB", "TIFF"), ("I", "TIFF"), ("F", "TIFF")])
def test_other_modes_become_rgb(mode, fmt):
    img = Image.new("RGB", (80, 64), (40, 160, 90)).convert(mode)
    out = decode_image(encode(img, fmt), 56, **LIMITS)
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8
    expected = np.asarray(img.convert("RGB"))[0, 0].astype(int)
    assert np.abs(out[28, 28].astype(int) - expected).max() <= 8


def test_large_jpeg_uses_dct_scaling_and_still_matches():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((1000, 800), Image.BICUBIC)
    out = decode_image(encode(small, "JPEG", quality=95), 112, **LIMITS)
    reference = decode_image(encode(small, "PNG"), 112, **LIMITS)  # no DCT scaling for PNG
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 4


@pytest.mark.parametrize("data,kind", [
    (b"", "empty file"),
    (b"hello, I am a text file named .jpg\n", "not an image"),
    (np.random.default_rng(1).bytes(2048), "not an image"),
])
def test_bad_bytes_have_reasons(data, kind):
    with pytest.raises(BadImage) as info:
        decode_image(data, 56, **LIMITS)
    assert info.value.kind == kind


def test_truncated_image_is_corrupt():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(BadImage, match="corrupt"):
        decode_image(data[: len(data) // 2], 56, **LIMITS)


def test_too_small_and_too_large_are_refused_before_decoding():
    with pytest.raises(BadImage, match="too small: 20x40"):
        decode_image(encode(Image.new("RGB", (20, 40)), "PNG"), 56, **LIMITS)
    big = encode(Image.new("L", (3000, 2000)), "PNG")
    # A truncated body would be 'corrupt' if decoded: 'too large' proves it never was.
    with pytest.raises(BadImage, match="too large: 3000x2000 is over max_pixels=4000000"):
        decode_image(big[:200], 56, **LIMITS)


def test_listing_recurses_ignores_non_images_and_matches_globs(messy_images):
    folder, expected = messy_images
    listing = list_images(str(folder))
    rel = sorted(p[len(str(folder)) + 1:] for p in listing.images)
    assert rel == sorted(expected)
    assert listing.ignored == {".txt": 1, "(hidden)": 2}
    assert [(Path(f["path"]).name, f["reason"].split(":")[0]) for f in listing.failures] == [
        ("broken link.jpg", "dangling symlink")]
    assert list_images(f"file://{folder}").images == listing.images
    jpegs = list_images(f"{folder}/*.jpg").images
    assert {p.rsplit("/", 1)[1] for p in jpegs} == {
        "visage n°1 ümlaut.jpg", "exif_rotated.jpg", "cmyk.jpg", "truncated.jpg", "zero.jpg", "text.jpg"}
    with pytest.raises(FileNotFoundError, match="image source not found"):
        list_images(str(folder / "nope"))


def test_messy_folder_decodes_as_expected(messy_images):
    folder, expected = messy_images
    for rel, kind in expected.items():
        data = (folder / rel).read_bytes()
        if kind:
            with pytest.raises(BadImage) as info:
                decode_image(data, 56, **LIMITS)
            assert info.value.kind == kind, rel
        else:
            assert decode_image(data, 56, **LIMITS).shape == (56, 56, 3), rel


# What the unprivileged child does: list the folder and decode it as the extraction's Ray Data stage would, then
# read the locked file as `raydino sample --from-image` would. Root reads any file, so as root the child drops to
# "nobody": what a user's account meets on a folder with one file it may not open.
_LOCKED_CHILD = """
import json, sys, tempfile
from pathlib import Path
from raydino.data.images import UnreadableImage, read_image
from raydino.data.sources import list_images
from raydino.pyramids import schema
from raydino.pyramids.extract import decode_batch

folder, locked = sys.argv[1:]
listing = list_images(folder)
with tempfile.TemporaryDirectory() as failures:
    out = decode_batch({schema.PATH: [listing.display(p) for p in listing.images]}, filesystem=listing.filesystem,
                       prefix=listing.prefix, root=listing.root, size=56, min_side=32, max_pixels=4_000_000,
                       failures_dir=failures)
    failed = [f for path in Path(failures).glob("*.json") for f in json.loads(path.read_text())]
try:
    read_image(locked, 56)
    said = ""
except UnreadableImage as exc:
    said = f"{exc.kind}|{exc}"
print(json.dumps({"listed": len(listing.images), "decoded": list(out[schema.PATH]), "failed": failed, "said": said}))
"""


def test_an_image_that_exists_but_cannot_be_opened_is_a_named_failure_and_the_rest_decode(faces_dir):
    folder = Path(tempfile.mkdtemp(prefix="raydino-locked-"))  # not under pytest's 0700 tmp: the child must enter it
    try:
        folder.chmod(0o755)
        for face in sorted(faces_dir.glob("*.png"))[:3]:
            shutil.copy(face, folder / face.name)
            (folder / face.name).chmod(0o644)
        locked = sorted(folder.glob("*.png"))[1]
        locked.chmod(0o000)
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if drop and shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no unprivileged account to meet the permission")
        done = subprocess.run([*drop, sys.executable, "-c", _LOCKED_CHILD, str(folder), str(locked)],
                              capture_output=True, text=True, timeout=120, cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert got["listed"] == 3  # it exists, so it is listed, and then accounted for
    assert sorted(Path(p).name for p in got["decoded"]) == sorted(p.name for p in faces_dir.glob("*.png"))[:3:2]
    assert [(Path(f["path"]).name, f["reason"].split(":")[0]) for f in got["failed"]] == [(locked.name, "unreadable")]
    assert "Permission denied" in got["failed"][0]["reason"]
    kind, said = got["said"].split("|", 1)
    assert kind == "unreadable" and str(locked) in said and "Permission denied" in said, said
