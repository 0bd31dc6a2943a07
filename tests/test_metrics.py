import numpy as np
import pytest
import torch

from raydino.evaluation.metrics import colour_error, fd, frechet_distance
from raydino.models.flow_prior import perturb
from raydino.models.pca_prior import PCAGaussianPrior
from raydino.sampling import swap_region


def test_fd_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert fd(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_between_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    d = 6
    a = rng.normal(size=(d, d))
    b = rng.normal(size=(d, d))
    s1, s2 = a @ a.T + np.eye(d), b @ b.T + np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # closed form for commuting (here: diagonal) covariances: sum (sqrt(l1) - sqrt(l2))^2
    l1, l2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(l1), mu2, np.diag(l2)) == pytest.approx(expected, rel=1e-10)
    # general case against an independent route: tr sqrt(S1 S2) from the eigenvalues of S1 S2
    tr = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    general = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(general, rel=1e-8)


def test_fd_sample_estimate_converges_to_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(1.0, 2.0, size=(20000, 3))
    assert fd(x, y) == pytest.approx(3 * 1.0 + 3 * (2 - 1) ** 2, rel=0.05)


def test_fd_of_rank_deficient_covariances_matches_closed_forms():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 64))  # fewer samples than dimensions: covariance of rank 9 in 64 dimensions
    assert fd(x, x) == pytest.approx(0.0, abs=1e-8)
    # y = 2x + c: S_y = 4 S_x, (S_x S_y)^(1/2) = 2 S_x, so FD = ||mu_x - mu_y||^2 + tr S_x
    c = rng.normal(size=64)
    y = 2 * x + c
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(np.cov(x, rowvar=False))
    assert fd(x, y) == pytest.approx(expected, rel=1e-6)  # sqrt of round-off eigenvalues: ~1e-7
    # supports in orthogonal subspaces: S_x S_z = 0, so FD = ||mu_x - mu_z||^2 + tr S_x + tr S_z
    x5, z5 = np.zeros((10, 64)), np.zeros((10, 64))
    x5[:, :5], z5[:, 5:12] = rng.normal(size=(10, 5)), 3 * rng.normal(size=(10, 7)) + 1
    mu1, s1 = x5.mean(0), np.cov(x5, rowvar=False)
    mu2, s2 = z5.mean(0), np.cov(z5, rowvar=False)
    assert fd(x5, z5) == pytest.approx(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2), rel=1e-6)
    # a general rank-deficient pair against an independent route: the eigenvalues of the non-symmetric S1 S2
    s1, s2 = np.cov(x, rowvar=False), np.cov(rng.normal(size=(12, 64)) @ rng.normal(size=(64, 64)), rowvar=False)
    mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
    tr = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr, rel=1e-6)


def test_colour_error():
    img = torch.full((2, 3, 16, 16), 0.5)
    thumbs = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    assert colour_error(img, thumbs) == pytest.approx(0.5, abs=1e-6)


def test_prior_fits_and_samples_the_code_distribution():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 4 * 8, generator=g)
    codes = (torch.randn(400, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])) @ basis + 5.0
    prior = PCAGaussianPrior.fit(codes.view(400, 4, 8), k=8)
    samples = prior.sample(4000, torch.Generator().manual_seed(1)).view(4000, -1)
    assert samples.shape == (4000, 32)
    assert torch.allclose(samples.mean(0), codes.mean(0), atol=0.3)
    assert torch.allclose(samples.var(0), codes.var(0), rtol=0.15, atol=0.2)


def test_prior_round_trip(tmp_path):
    prior = PCAGaussianPrior.fit(torch.randn(20, 4, 8), k=5)
    prior.save(tmp_path / "p.safetensors")
    again = PCAGaussianPrior.load(tmp_path / "p.safetensors")
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(prior.sample(2, g()), again.sample(2, g()))


def test_perturb_keeps_unit_norm_and_moves_by_noise():
    e = torch.nn.functional.normalize(torch.randn(256, 32), dim=-1)
    p = perturb(e, 0.1, torch.Generator().manual_seed(0))
    assert torch.allclose(p.norm(dim=-1), torch.ones(256), atol=1e-5)
    cos = (p * e).sum(-1)
    assert 0.99 < cos.mean() < 0.999
    assert torch.allclose(perturb(e, 0.0), e, atol=1e-6)


def test_swap_region():
    a = torch.zeros(1, 16, 2)
    b = torch.ones(1, 16, 2)
    top = swap_region(a, b, "top").view(4, 4, 2)
    assert top[:2].eq(1).all() and top[2:].eq(0).all()
    left = swap_region(a, b, "left").view(4, 4, 2)
    assert left[:, :2].eq(1).all() and left[:, 2:].eq(0).all()
    with pytest.raises(ValueError, match="unknown region"):
        swap_region(a, b, "middle")


def test_noise_spread_is_zero_for_identical_draws_and_scales_with_the_draws():
    from raydino.evaluation.metrics import noise_spread

    g = torch.Generator().manual_seed(0)
    real = torch.rand(16, 3, 8, 8, generator=g)
    same = real[:4, None].expand(-1, 8, -1, -1, -1)
    assert noise_spread(same, real) == pytest.approx(0.0, abs=1e-7)
    draws = real[:8].view(1, 8, 3, 8, 8)  # draws as varied as real images: about 1 (std over 8 vs over 16)
    assert 0.7 < noise_spread(draws, real) < 1.3
    assert noise_spread(0.5 * draws, real) == pytest.approx(0.5 * noise_spread(draws, real), rel=1e-5)
    with pytest.raises(ValueError, match="px"):
        noise_spread(draws, torch.rand(4, 3, 16, 16))


def test_sharpness_ratio_is_one_for_the_images_and_below_one_blurred():
    from torchvision.transforms.functional import gaussian_blur

    from raydino.evaluation.metrics import sharpness_ratio

    real = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert sharpness_ratio(real, real) == pytest.approx(1.0)
    assert sharpness_ratio(gaussian_blur(real, 5, 1.5), real) < 0.2
    assert sharpness_ratio(torch.full_like(real, 0.5), real) == pytest.approx(0.0)
    ramp = torch.linspace(0, 1, 32).expand(8, 3, 32, 32)  # as much contrast as the noise, no detail
    assert sharpness_ratio(ramp, real) < 1e-3
