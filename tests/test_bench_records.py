"""The pieces the benchmarks' figures rest on: tensor columns, FLOP counts, record files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raydino.bench.record import header, record_path
from raydino.bench.train import count_flops
from raydino.pyramids import schema


def test_zero_copy_tensor_column_is_the_canonical_fixed_shape_tensor():
    for values in (np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float16),
                   np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)):
        ours = schema.tensor_array(values)
        assert ours.equals(pa.FixedShapeTensorArray.from_numpy_ndarray(values))
        np.testing.assert_array_equal(schema.to_numpy(ours), values)


def test_cpu_fused_attention_is_counted():
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, patch_size=14, image_size=56)
    flops = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = Dinov2Model(cfg).eval().requires_grad_(False)
        model.config._attn_implementation = impl
        x = torch.rand(2, 3, 56, 56, requires_grad=True)
        flops[impl] = count_flops(lambda m=model, x=x: m(pixel_values=x).last_hidden_state.sum().backward())
    # the fused backward recomputes the attention scores, so it counts a little more, never less
    assert flops["eager"] <= flops["sdpa"] < 1.2 * flops["eager"]


def test_a_folder_gets_one_record_per_run(tmp_path):
    results = header("pyramids")
    assert record_path(results, tmp_path / "r.json") == tmp_path / "r.json"
    named = record_path(results, f"{tmp_path}/new/")
    assert named.parent == tmp_path / "new" and named.name.startswith("pyramids_") and named.suffix == ".json"
    assert record_path(results, tmp_path).parent == tmp_path
