"""The distributional loss: it must produce what the code leaves open, where regression averages it away."""

from __future__ import annotations

import pytest
import torch

from raydino.config import LossConfig, ModelConfig
from raydino.losses import DinoPyramidLoss, energy_score, unit_features
from raydino.models.encoders import dino_levels, resize
from raydino.models.generator import ProgressiveGenerator, draw_noise
from raydino.models.loading import load_dino
from raydino.pyramids.batch import Targets

SIZES = [56, 84, 112]


def two_faces() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32 px images one code cannot tell apart: a bright half on the left, or on the right."""
    a = torch.full((1, 3, 32, 32), 0.1)
    a[..., :16] = torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1)
    return a, a.flip(-1)


def train_toy(dino, kind: str, steps: int = 150, batch: int = 16, sizes: tuple[int, ...] = (56,)) -> torch.Tensor:
    """Fit a small generator to targets drawn 50/50 from :func:`two_faces` for ONE fixed code; 64 draws after.

    One pyramid level keeps it fast; the colour anchor and that level carry the difference.
    """
    torch.manual_seed(0)
    a, b = two_faces()
    sizes = list(sizes)
    with torch.no_grad():
        levels = [dino_levels(dino, x, sizes) for x in (a, b)]
    code = torch.randn(1, 16, dino.dim)
    model = ProgressiveGenerator(ModelConfig(code_dim=16, noise_dim=8, channels=[32, 16], max_resolution=16), dino.dim, 4)
    # 4 draws per target: the spread term's estimate is steady enough that the split lands near 50/50 for any seed
    loss_fn = DinoPyramidLoss(dino, sizes, LossConfig(kind=kind, draws=4, shift_px=0, level_weights=[1.0] * len(sizes)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = torch.Generator().manual_seed(1)
    for _ in range(steps):
        pick = torch.randint(0, 2, (batch,), generator=rng).tolist()
        targets = Targets(tokens=[torch.cat([levels[p][i][1] for p in pick]) for i in range(len(sizes))],
                          cls=[torch.cat([levels[p][i][0] for p in pick]) for i in range(len(sizes))],
                          thumb=torch.cat([(a, b)[p] for p in pick]))
        n = batch * loss_fn.draws
        images = model(code.expand(n, -1, -1), draw_noise(n, 8, 16, rng), 16)
        opt.zero_grad()
        loss_fn(images, targets, 16).total.backward()
        opt.step()
    with torch.no_grad():
        return model(code.expand(64, -1, -1), draw_noise(64, 8, 16, torch.Generator().manual_seed(5)), 16)


def nearest(draws: torch.Tensor) -> torch.Tensor:
    """Per draw: 0 nearest image A, 1 nearest B, 2 nearest their average (pixel MSE at 16 px)."""
    a, b = two_faces()
    refs = resize(torch.cat([a, b, (a + b) / 2]), 16)
    return ((draws[:, None] - refs[None]) ** 2).flatten(2).mean(-1).argmin(1)


@pytest.fixture(scope="module")
def dino(tiny_models):
    return load_dino(str(tiny_models["dino"]))


def test_energy_loss_draws_both_targets_where_regression_draws_their_average(dino):
    energy = nearest(train_toy(dino, "energy"))
    share = [(energy == k).float().mean().item() for k in range(3)]
    assert share[0] >= 0.25 and share[1] >= 0.25, f"energy: A/B/average shares {share}"
    regression = nearest(train_toy(dino, "regression"))
    assert (regression == 2).float().mean() > 0.5, f"regression: A/B/average {[(regression == k).float().mean() for k in range(3)]}"


@pytest.mark.parametrize("draws", [2, 4])
def test_energy_loss_is_finite_and_trains_every_used_parameter_but_not_the_encoder(dino, draws):
    cfg = ModelConfig(code_dim=16, noise_dim=4, channels=[16, 8], max_resolution=32)
    model = ProgressiveGenerator(cfg, dino.dim, 4)
    loss_fn = DinoPyramidLoss(dino, SIZES, LossConfig(kind="energy", draws=draws, shift_px=1))
    g = torch.Generator().manual_seed(0)
    targets = Targets(tokens=[torch.randn(2, (s // 14) ** 2, dino.dim, generator=g) for s in SIZES],
                      cls=[torch.randn(2, dino.dim, generator=g) for _ in SIZES], thumb=torch.rand(2, 3, 32, 32, generator=g))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # FiLM starts at zero: the style MLP has gradients from the second step
        opt.zero_grad()
        images = model(targets.code.repeat_interleave(draws, 0), draw_noise(2 * draws, 4, 32, g), 32)
        terms = loss_fn(images, targets, 32, g)
        assert torch.isfinite(terms.total)
        terms.total.backward()
        opt.step()
    used = [n for n, p in model.named_parameters() if not n.startswith("to_rgb.0")]  # 16 px RGB: unused at alpha 1
    assert [n for n in used if model.get_parameter(n).grad is None or not model.get_parameter(n).grad.abs().sum()] == []
    assert all(p.grad is None and not p.requires_grad for p in dino.model.parameters())
    assert set(terms.spread) == set(SIZES) and all(v > 0 for v in terms.spread.values())
    with pytest.raises(ValueError, match="expected 2 draws each"):
        DinoPyramidLoss(dino, SIZES, LossConfig(kind="energy", draws=2))(images[:3], targets, 32)


def test_energy_score_closed_forms():
    x, y = torch.randn(3, 1, 10), torch.randn(3, 10)
    same = x.expand(-1, 4, -1)
    for beta in (0.5, 1.0, 1.5):
        score, spread = energy_score(same, y, beta)  # identical draws: no spread, the score is d(x, y)
        expected = ((x[:, 0] - y).pow(2).sum(-1) + 1e-12).pow(beta / 2).mean()
        torch.testing.assert_close(score, expected - 0.5 * 1e-6 ** beta)
        torch.testing.assert_close(spread, torch.tensor(1e-6 ** beta))
        score, _ = energy_score(y[:, None].expand(-1, 2, -1), y, beta)  # draws equal to the target: 0, up to eps
        torch.testing.assert_close(score, torch.tensor(0.5 * 1e-6 ** beta))
    # unit features: squared distance is twice the mean cosine distance over tokens
    a, b = torch.randn(2, 9, 6), torch.randn(2, 9, 6)
    cos = 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(-1)
    torch.testing.assert_close((unit_features(a) - unit_features(b)).pow(2).sum(-1), 2 * cos)


def test_a_mixture_scores_better_than_its_mean_under_energy_not_under_regression():
    """The property that makes the noise matter: for a target that is +1 or -1, the 50/50 draws beat the mean 0."""
    y = torch.tensor([[1.0], [-1.0]])
    mixture = torch.tensor([[1.0, -1.0], [1.0, -1.0]])[..., None]  # draws +1 and -1 for either target
    mean = torch.zeros(2, 2, 1)
    # closed forms: the mixture scores mean_i |x_i - y| - 1/2 |x_1 - x_2| = 1 - 1/2 * 2 = 0, the mean |0 - y| = 1
    torch.testing.assert_close(energy_score(mixture, y, 1.0)[0], torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(energy_score(mean, y, 1.0)[0], torch.tensor(1.0), atol=1e-5, rtol=0)
    assert ((mixture - y[:, None]) ** 2).mean() > ((mean - y[:, None]) ** 2).mean()  # squared error prefers the mean
