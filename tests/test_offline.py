"""Real weights on a machine without network: a Hugging Face cache (``HF_HOME``, ``HF_HUB_OFFLINE=1``) or a folder.

Tiny models are written into a cache laid out as the hub lays it out
(``models--org--name/{blobs,refs/main,snapshots/<rev>}``, snapshot files
linked to content-addressed blobs), then loaded in a fresh process whose
environment names only that cache, as on an offline cluster node: the hub
libraries read ``HF_HOME`` when they are imported.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from raydino.models.tiny import save_tiny_dino
from raydino.models.tiny_clip import save_tiny_clip

REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(folder: Path, hub_cache: Path, repo_id: str) -> Path:
    """``folder``'s files as ``snapshot_download(repo_id)`` would have left them in ``hub_cache``."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / REVISION / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo


SCRIPT = """
import sys
from raydino.cli import main
from raydino.models.loading import ModelNotFoundError, load_clip, load_dino

local_dino, local_clip, faces, out = sys.argv[1:]
hub, here = load_dino("raydino-test/dinov2-tiny"), load_dino(local_dino)
print("dino", hub.source, hub.hash == here.hash, hub.dim)
clip = load_clip("hf-hub:raydino-test/clip-tiny")
print("clip hf-hub", clip.hash == load_clip("local-dir:" + local_clip).hash == load_clip(local_clip).hash,
      tuple(clip.encode_text(["a smiling face"]).shape))
try:
    load_dino("raydino-test/not-downloaded")
except ModelNotFoundError as exc:
    print("missing dino:", exc)
print("run rc", main(["run", "--preset", "ffhq256", "--images", faces, "--out", out,
                      "pyramids.dino=raydino-test/not-downloaded"]))
"""


def test_models_load_from_a_hub_cache_and_from_folders_offline(tmp_path, faces_dir):
    dino, clip = save_tiny_dino(tmp_path / "dinov2-tiny"), save_tiny_clip(tmp_path / "clip-tiny")
    home = tmp_path / "hf-home"
    write_hub_cache(dino, home / "hub", "raydino-test/dinov2-tiny")
    write_hub_cache(clip, home / "hub", "raydino-test/clip-tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(dino), str(clip), str(faces_dir), str(out)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    text = proc.stdout
    assert proc.returncode == 0, text + proc.stderr[-3000:]
    assert "dino raydino-test/dinov2-tiny True 48" in text
    assert "clip hf-hub True (1, 32)" in text
    assert "missing dino: cannot load DINOv2 'raydino-test/not-downloaded'" in text
    # the run refuses before writing anything, naming the key, the cache and what to do
    assert "run rc 2" in text and not out.exists()
    assert f"pyramids.dino=raydino-test/not-downloaded is not in the Hugging Face cache {home / 'hub'}" in proc.stderr
    assert "docs/offline.md" in proc.stderr
