"""Shared fixtures: tiny data and models made once per session, one Ray instance."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller looks at its workers every 2 s by default, so each of the suite's short
# training runs waited seconds to be seen starting and finishing (a 2-test sample: 104 s -> 82 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Two Ray Train extras that cost every short run CPU on two busy cores and that no test looks at:
# a PreemptionWatcher actor (a process of its own, for spot-node preemption) and the metrics pushed
# by the controller and each worker. Every Ray process started from here inherits these RAY_TRAIN_
# settings: the tests' local Ray, and the job tests' nodes (which keep no other RAY_ variable).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two xdist workers on two cores: one thread each (and in the Ray workers they
    # start) instead of two each, which oversubscribed the cores and slowed small-batch training
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory):
    from raydino.data.synth_faces import write_faces

    return write_faces(tmp_path_factory.mktemp("faces"), count=48, seed=0, size=128)


# a shorter budget than the demo's (docs/encoders.md): the probes still clear the margins tests/test_encoders.py asserts
# (200 encoder steps left the attribute probe 0.003 short of its margin on this machine, at HEAD too)
TEST_BUDGET = dict(encoder_steps=300, fd_encoder_steps=150, classifier_steps=300, segmenter_steps=300, probe_faces=128,
                   clip_fit_steps=0)


def built_once(tmp_path_factory, worker_id: str, name: str, build):
    """``build(folder)`` once per test session, shared by pytest-xdist's worker processes.

    The first worker to get the lock builds into a folder beside the workers'
    own temp dirs; the others wait and read the paths it wrote.
    """
    import json
    from pathlib import Path

    from filelock import FileLock

    if worker_id == "master":  # no xdist: a plain session fixture
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent
    done = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            done.write_text(json.dumps({k: str(v) for k, v in build(root / name).items()}))
    return {k: Path(v) for k, v in json.loads(done.read_text()).items()}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, worker_id):
    """Tiny DINOv2 (+ FD twin) trained on 128 synthetic faces, their attribute classifier, an untrained tiny CLIP."""
    from raydino.config import TinyModelsConfig
    from raydino.data.synth_faces import write_faces
    from raydino.models.tiny import write_tiny_models

    def build(out):
        faces = write_faces(out / "encoder_faces", count=128, seed=0, size=64)
        return write_tiny_models(out / "models", faces, seed=0, budget=TinyModelsConfig(**TEST_BUDGET))

    return built_once(tmp_path_factory, worker_id, "tiny_models", build)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting Ray costs seconds).

    With the dashboard, as a plain ``ray.init`` has it: Ray Train's
    placement-group cleaner (one detached actor per Train run) asks the state
    API behind it whether its controller is gone, and without an answer it
    never exits. The suite runs in two processes (pytest-xdist), each with its own Ray, so
    the dashboard gets a port of its own and every process of this instance
    (started from this environment) is told where it is: a process that looks
    for "the" cluster by scanning the machine would otherwise ask the other one.
    """
    import socket

    import ray

    if not ray.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(num_cpus=2, log_to_driver=False, dashboard_port=port)
    yield ray


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but holds no pixels: a bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_messy_folder(out, faces_dir) -> dict[str, str]:
    """A folder like real ones: every encoding we accept, broken files and non-images.

    Returns relative path -> expected failure kind ("" for a good image);
    ignored files (hidden, non-image extensions) are not in the mapping.
    """
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    out = Path(out)
    faces = sorted(Path(faces_dir).glob("*.png"))
    face = [Image.open(p).convert("RGB") for p in faces[:12]]
    expected: dict[str, str] = {}

    def save(rel: str, img: Image.Image, kind: str = "", **kwargs) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kwargs)
        expected[rel] = kind

    def write(rel: str, data: bytes, kind: str) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = kind

    save("jpeg/visage n°1 ümlaut.jpg", face[0], quality=95)
    save("UPPER/FACE.JPEG", face[1], format="JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: viewers turn it upright
    save("exif_rotated.jpg", face[2].rotate(90, expand=True).crop((0, 0, 128, 100)), exif=exif, quality=95)
    save("gray.png", face[3].convert("L"))
    save("cmyk.jpg", face[4].convert("CMYK"), quality=95)
    save("palette_transparent.png", face[5].convert("P"), transparency=0)
    save("palette.gif", face[6].convert("P"))
    rgba = face[7].convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    save("rgba.png", rgba)
    save("la.png", face[8].convert("LA"))
    sixteen = (np.asarray(face[9].convert("L"), dtype=np.uint16) * 257)
    save("sixteen.png", Image.fromarray(sixteen))  # mode I;16
    save("face.WebP", face[10], format="WEBP", quality=90)
    save("deep/a/b/c/face.bmp", face[11])
    save("tiny.png", face[0].resize((16, 16)), kind="too small")
    buf = io.BytesIO()
    face[1].save(buf, "JPEG", quality=95)
    write("truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2], "corrupt")
    write("zero.jpg", b"", "empty file")
    write("text.jpg", b"this is not a picture, just a text file with a .jpg name\n", "not an image")
    write("random.png", np.random.default_rng(0).bytes(4096), "not an image")
    write("bomb.png", _png_header_only(30000, 30000), "too large")
    (out / "notes.txt").write_text("ignored\n")
    (out / "broken link.jpg").symlink_to(out / "moved away.jpg")  # dangling: a failure, never a silent gap
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (out / "jpeg" / "._visage.jpg").write_bytes(b"\0\5\26\7")  # macOS resource fork
    return expected


@pytest.fixture(scope="session")
def messy_images(tmp_path_factory, faces_dir):
    """(folder, {relative path: expected failure kind or ""}) of a messy real-world folder."""
    out = tmp_path_factory.mktemp("messy")
    return out, write_messy_folder(out, faces_dir)


def write_test_pyramid(out, image_paths, dino: str, clip: str = "", sizes=(112, 84, 56), shards: int = 2):
    """A demo-like pyramid made without Ray Data: PyramidEncoder + schema, like an actor would."""
    from pathlib import Path

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from raydino.data.images import square_crop
    from raydino.pyramids import schema
    from raydino.pyramids.features import PyramidEncoder

    out, sizes = Path(out), list(sizes)
    encoder = PyramidEncoder(dino, sizes, clip=clip, device="cpu", bf16=False)
    paths = sorted(str(p) for p in image_paths)
    images = np.stack([square_crop(Image.open(p).convert("RGB"), max(sizes)) for p in paths])
    for i, part in enumerate(np.array_split(np.arange(len(paths)), shards)):
        batch = {schema.IMAGE: images[part], schema.ID: [schema.stable_id(paths[j]) for j in part],
                 schema.PATH: [paths[j] for j in part]}
        pq.write_table(schema.make_table(encoder(batch)), out / f"part-{i:05d}.parquet")
    schema.write_manifest(out, schema.new_manifest(source=str(Path(paths[0]).parent), rows=len(paths), levels=sizes,
                                                   dim=encoder.dino.dim, dino=encoder.dino.describe(),
                                                   clip=encoder.clip.describe() if encoder.clip else None))
    return out


@pytest.fixture(scope="session")
def train_pyramids(tmp_path_factory, faces_dir, tiny_models):
    """A demo-like pyramid (levels 112/84/56, the 8x8 code first; two parquet shards) of the 48 faces, made without Ray Data."""
    return write_test_pyramid(tmp_path_factory.mktemp("train_pyramids"), faces_dir.glob("*.png"),
                              str(tiny_models["dino"]))


@pytest.fixture(scope="session")
def holdout_pyramids(tmp_path_factory, tiny_models):
    """A held-out pyramid: 16 other faces (another seed), same encoder and levels as ``train_pyramids``."""
    from raydino.data.synth_faces import write_faces

    faces = write_faces(tmp_path_factory.mktemp("holdout_faces"), count=16, seed=1, size=128)
    return write_test_pyramid(tmp_path_factory.mktemp("holdout_pyramids"), faces.glob("*.png"),
                              str(tiny_models["dino"]))


def interruptible() -> None:
    """A child's ``preexec_fn``: SIGINT back to its default, so Python turns Ctrl-C into KeyboardInterrupt.

    A child inherits an ignored SIGINT, and some of the suite's worker processes have it ignored by the
    time a drill runs (seen under `make test`: the stopped `raydino run` wrote all its 100 000 faces);
    a user's terminal does not ignore it.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
