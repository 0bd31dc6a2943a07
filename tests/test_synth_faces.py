import numpy as np
import pyarrow.parquet as pq

from raydino.data.synth_faces import HAIR_COLOURS, FaceAttributes, face, render_face, write_faces


def test_deterministic_per_seed_and_different_across_seeds():
    a, attrs_a = face(seed=3, index=5, size=96)
    b, attrs_b = face(seed=3, index=5, size=96)
    c, _ = face(seed=4, index=5, size=96)
    assert attrs_a == attrs_b
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def _attrs(**kw) -> FaceAttributes:
    base = dict(skin="light", hair_colour="black", hair_style="short", eye_colour="blue", glasses=False,
                smile=False, background="white", dx=0.0, dy=0.0, scale=1.0, angle=0.0, light_angle=0.0,
                light_strength=0.0)
    return FaceAttributes(**{**base, **kw})


def test_hair_region_follows_hair_colour():
    size = 128
    region = (slice(int(0.26 * size), int(0.32 * size)), slice(int(0.42 * size), int(0.58 * size)))
    for name in HAIR_COLOURS:
        img = np.asarray(render_face(_attrs(hair_colour=name), size), dtype=np.float32)
        mean = img[region].reshape(-1, 3).mean(0)
        nearest = min(HAIR_COLOURS, key=lambda n: np.linalg.norm(np.array(HAIR_COLOURS[n]) - mean))
        assert nearest == name, (name, mean)


def test_glasses_smile_and_background_are_visible():
    size = 128
    plain = np.asarray(render_face(_attrs(), size), dtype=np.float32)
    glasses = np.asarray(render_face(_attrs(glasses=True), size), dtype=np.float32)
    smile = np.asarray(render_face(_attrs(smile=True), size), dtype=np.float32)
    eyes = (slice(int(0.45 * size), int(0.6 * size)), slice(int(0.3 * size), int(0.7 * size)))
    mouth = (slice(int(0.62 * size), int(0.75 * size)), slice(int(0.4 * size), int(0.6 * size)))
    assert np.abs(glasses[eyes] - plain[eyes]).mean() > 5
    assert np.abs(smile[mouth] - plain[mouth]).mean() > 5
    sky = np.asarray(render_face(_attrs(background="sky"), size), dtype=np.float32)
    assert sky[:8, :8, 2].mean() > sky[:8, :8, 0].mean() + 40  # a blue corner


def test_write_faces_writes_images_and_captions(tmp_path):
    out = write_faces(tmp_path, count=6, seed=1, size=64)
    table = pq.read_table(out / "metadata.parquet").to_pylist()
    assert len(table) == 6 and len(list(out.glob("*.png"))) == 6
    for row in table:
        assert (out / row["file"]).exists()
        if row["hair_style"] != "bald":
            assert row["hair_colour"] in row["caption"]
        assert ("glasses" in row["caption"]) == row["glasses"]
