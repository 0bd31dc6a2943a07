"""The generator and the DINOv2 loss without Ray: shapes, fade-in, gradient flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raydino.config import LossConfig, ModelConfig
from raydino.losses import DinoPyramidLoss, random_shift
from raydino.models.generator import ProgressiveGenerator, draw_noise
from raydino.models.loading import load_dino
from raydino.pyramids.batch import Targets

SIZES = [56, 84, 112]


def small_generator(max_resolution: int = 256) -> ProgressiveGenerator:
    torch.manual_seed(0)
    cfg = ModelConfig(code_dim=8, noise_dim=4, channels=[16, 16, 8, 8, 4], max_resolution=max_resolution)
    return ProgressiveGenerator(cfg, code_tokens_dim=48, grid=4)


def fake_targets(batch: int = 2) -> Targets:
    g = torch.Generator().manual_seed(1)
    return Targets(tokens=[torch.randn(batch, (s // 14) ** 2, 48, generator=g) for s in SIZES],
                   cls=[torch.randn(batch, 48, generator=g) for _ in SIZES],
                   thumb=torch.rand(batch, 3, 32, 32, generator=g))


def test_generator_shapes_at_every_stage():
    model = small_generator()
    code, noise = torch.randn(3, 16, 48), draw_noise(3, 4, 256)
    for res in (16, 32, 64, 128, 256):
        image = model(code, noise, res)
        assert image.shape == (3, 3, res, res)
        assert 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match="resolution 48"):
        model(code, noise, 48)
    with pytest.raises(ValueError, match="4x4"):
        model(torch.randn(3, 9, 48), noise, 16)


def test_each_code_token_draws_its_own_cell_of_the_code_map():
    """A token's cell pattern lands in its cell of the code_resolution map, and only there; resizing spreads it."""
    model = small_generator()  # a 4x4 code decoded to 32 px: 8x8 pixels per token
    assert model.code_resolution == 32 and model.cell == 8
    torch.manual_seed(1)
    c = torch.randn(1, 16, 8)
    moved = c.clone()
    moved[0, 6] += 1.0  # row 1, column 2 of the grid
    with torch.no_grad():
        resized_only = model.decode_code(moved) - model.decode_code(c)   # code_cells start at zero
        torch.nn.init.normal_(model.code_cells.weight)
        with_cells = model.decode_code(moved) - model.decode_code(c)
    assert resized_only.shape == (1, 8, 32, 32)
    cells = (with_cells - resized_only).abs().sum(1)[0]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:16, 16:24] = True
    assert cells[inside].min() > 1e-2 and cells[~inside].max() < 1e-5
    assert (resized_only.abs().sum(1)[0][~inside] > 0).any()  # bilinear resizing reaches the neighbours


def test_fade_in_blends_the_upsampled_previous_stage():
    model = small_generator(max_resolution=64)
    code, noise = torch.randn(2, 16, 48), draw_noise(2, 4, 64)
    previous = model(code, noise, 32)
    faded_out = model(code, noise, 64, alpha=0.0)
    torch.testing.assert_close(faded_out, F.interpolate(previous, scale_factor=2, mode="nearest"))
    full = model(code, noise, 64, alpha=1.0)
    assert not torch.allclose(full, faded_out)
    half = model(code, noise, 64, alpha=0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * faded_out)


def test_gradients_reach_the_generator_through_frozen_dino_and_never_into_it(tiny_models):
    dino = load_dino(str(tiny_models["dino"]))
    model = small_generator(max_resolution=32)
    loss_fn = DinoPyramidLoss(dino, SIZES, LossConfig(level_weights=[1.0, 1.0, 1.0], shift_px=1))
    targets, opt = fake_targets(), torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the FiLM layers start at zero (adaLN-Zero), so the style MLP gets gradients from step 2
        opt.zero_grad()
        images = model(targets.code.repeat_interleave(loss_fn.draws, 0), draw_noise(2 * loss_fn.draws, 4, 32), 32)
        terms = loss_fn(images, targets, 32, torch.Generator().manual_seed(0))
        terms.total.backward()
        opt.step()
    used = [p for n, p in model.named_parameters() if not n.startswith("to_rgb.0")]  # 16 px RGB: alpha is 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used)
    assert all(not p.requires_grad and p.grad is None for p in dino.model.parameters())
    assert not dino.model.training
    assert set(terms.unweighted) == set(SIZES) and set(terms.weighted) == set(SIZES)


def test_level_weights_stage_overrides_and_skipped_levels(tiny_models):
    dino = load_dino(str(tiny_models["dino"]))
    cfg = LossConfig(level_weights=[1.0, 2.0, 3.0], stage_level_weights={"16": [1.0, 0.0, 0.5]}, shift_px=0)
    loss_fn = DinoPyramidLoss(dino, SIZES, cfg)
    targets, images = fake_targets(), torch.rand(2 * loss_fn.draws, 3, 16, 16)
    terms = loss_fn(images, targets, 16)
    assert set(terms.unweighted) == {56, 112}  # weight 0: not computed at all
    expected = terms.unweighted[112] + cfg.cls_weight * terms.cls[112]
    torch.testing.assert_close(terms.weighted[112], 0.5 * expected)
    at32 = loss_fn(images, targets, 32)
    torch.testing.assert_close(at32.weighted[84], 2.0 * (at32.unweighted[84] + cfg.cls_weight * at32.cls[84]))
    total = sum(at32.weighted.values()) + cfg.color_weight * at32.color
    torch.testing.assert_close(at32.total, total)
    with pytest.raises(ValueError, match="stage_level_weights.32"):
        DinoPyramidLoss(dino, SIZES, LossConfig(stage_level_weights={"32": [1.0]}))


def reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """Indices past an edge mirrored back without repeating the edge pixel (``F.pad``'s "reflect")."""
    index = index.abs()
    return torch.where(index >= n, 2 * (n - 1) - index, index)


def test_random_shift_translates_each_image_by_its_drawn_offset():
    b, h, w, max_px = 64, 8, 10, 2
    x = torch.arange(b * 3 * h * w, dtype=torch.float32).reshape(b, 3, h, w)  # every pixel value distinct
    assert torch.equal(random_shift(x, 0, None), x)
    shifted = random_shift(x, max_px, torch.Generator().manual_seed(0))
    # offsets in [-max_px, max_px] per image and axis, drawn as (dy, dx) from the generator
    offsets = torch.randint(0, 2 * max_px + 1, (b, 2), generator=torch.Generator().manual_seed(0)) - max_px
    assert set(offsets[:, 0].tolist()) == set(offsets[:, 1].tolist()) == set(range(-max_px, max_px + 1))
    for image, out, (dy, dx) in zip(x, shifted, offsets.tolist(), strict=True):
        # output pixel (i, j) shows input pixel (i + dy, j + dx), mirrored at the borders
        rows, cols = reflect(torch.arange(h) + dy, h), reflect(torch.arange(w) + dx, w)
        assert torch.equal(out, image[:, rows][:, :, cols]), (dy, dx)
        # away from the borders this is a plain translation of the content by (-dy, -dx)
        rolled = torch.roll(image, shifts=(-dy, -dx), dims=(1, 2))
        assert torch.equal(out[:, max_px : h - max_px, max_px : w - max_px],
                           rolled[:, max_px : h - max_px, max_px : w - max_px])
