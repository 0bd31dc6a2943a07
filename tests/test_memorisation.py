"""The memorisation check: copies of training codes are caught, new draws from the same distribution are not."""

from __future__ import annotations

import pytest
import torch

from raydino.evaluation.memorisation import memorisation_figures, nearest


def test_nearest_is_the_rms_distance_to_the_closest_training_code():
    train = torch.zeros(3, 2, 2)
    train[1] += 1.0
    train[2] += 3.0
    codes = torch.full((2, 2, 2), 0.9)
    codes[1] = 2.5
    assert nearest(codes, train).tolist() == pytest.approx([0.1, 0.5])


def test_a_prior_that_returns_its_training_codes_is_caught_and_one_that_draws_new_ones_is_not():
    g = torch.Generator().manual_seed(0)
    train, held_out = torch.randn(400, 16, 8, generator=g), torch.randn(200, 16, 8, generator=g)
    copies = train[torch.randint(0, 400, (200,), generator=g)] + 0.05 * torch.randn(200, 16, 8, generator=g)
    new = torch.randn(200, 16, 8, generator=g)
    copied, fresh = memorisation_figures(copies, held_out, train), memorisation_figures(new, held_out, train)
    assert copied["prior/memorisation/ratio"] < 0.1 and copied["prior/memorisation/near_copies"] == 1.0
    assert 0.9 < fresh["prior/memorisation/ratio"] < 1.1 and fresh["prior/memorisation/near_copies"] < 0.15
    assert fresh["prior/memorisation/n"] == 200 and fresh["prior/memorisation/train_rows"] == 400
