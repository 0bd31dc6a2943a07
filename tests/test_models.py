import json

import pytest
import torch

from raydino.models.loading import ModelNotFoundError, clip_model_name, load_clip, load_dino


def test_tiny_models_reload_with_identical_outputs(tiny_models):
    a = load_dino(str(tiny_models["dino"]))
    b = load_dino(str(tiny_models["dino"]))
    x = torch.rand(2, 3, 56, 56)
    assert a.hash == b.hash
    assert torch.equal(a.model(pixel_values=x).last_hidden_state, b.model(pixel_values=x).last_hidden_state)
    fd = load_dino(str(tiny_models["fd"]))
    assert fd.hash != a.hash  # the FD encoder is a different network

    c1, c2 = load_clip(str(tiny_models["clip"])), load_clip(str(tiny_models["clip"]))
    assert c1.hash == c2.hash
    assert torch.equal(c1.encode_text(["a face with red hair"]), c2.encode_text(["a face with red hair"]))
    img = torch.rand(1, 3, c1.image_size, c1.image_size)
    assert torch.equal(c1.encode_image(img), c2.encode_image(img))


def test_loaded_models_are_frozen_and_described(tiny_models):
    dino = load_dino(str(tiny_models["dino"]))
    assert not any(p.requires_grad for p in dino.model.parameters())
    assert dino.describe()["source"].endswith("dinov2-tiny")
    assert dino.patch_size == 14 and dino.dim == 48


def test_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="tiny-models"):
        load_dino(str(tmp_path / "nothing"))
    with pytest.raises(ModelNotFoundError, match="tiny-models"):
        load_clip(str(tmp_path / "nothing"))
    with pytest.raises(ModelNotFoundError, match="names no weights"):
        clip_model_name("ViT-B-32")
    with pytest.raises(ModelNotFoundError, match="cannot load DINOv2"):
        load_dino("facebook/dinov2-nonexistent")  # offline in tests: no silent random weights


def test_clip_spec_forms():
    assert clip_model_name("ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert clip_model_name("hf-hub:laion/CLIP-ViT-B-32") == ("hf-hub:laion/CLIP-ViT-B-32", None)


def test_empty_prompt_refused(tiny_models):
    with pytest.raises(ValueError, match="empty prompt"):
        load_clip(str(tiny_models["clip"])).encode_text(["  "])


def test_saved_weights_are_the_same_bytes_whatever_the_process(tmp_path):
    """safetensors writes metadata in hash-map order; save_weights sorts it, so equal weights give equal files."""
    import struct

    from safetensors import safe_open
    from safetensors.torch import load_file

    from raydino.models.loading import save_weights

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    metadata = {key: f"value of {key} ü" for key in ("grid", "code_tokens_dim", "z", "attributes", "size", "note")}
    save_weights(tensors, tmp_path / "w.safetensors", metadata)
    raw = (tmp_path / "w.safetensors").read_bytes()
    head = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert list(head["__metadata__"]) == sorted(metadata)
    assert safe_open(str(tmp_path / "w.safetensors"), "pt").metadata() == metadata
    loaded = load_file(tmp_path / "w.safetensors")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
