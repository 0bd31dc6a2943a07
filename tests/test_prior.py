"""The flow-matching prior: it learns clustered codes a Gaussian cannot, obeys its condition, resumes bitwise.

The toy codes are four well-separated Gaussian clusters in ``[16, 8]`` with a
one-hot "CLIP" column naming the cluster, written as a pyramid, so the
prior trains through its real loop (``LocalSession`` here, Ray Train DDP in
the resume test).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from raydino.config import load_config, override
from raydino.errors import UserError
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior
from raydino.models.pca_prior import PCAGaussianPrior
from raydino.models.saved import load_prior
from raydino.pyramids import schema
from raydino.train import checkpoint, prior_loop
from raydino.train.prior_trainer import code_shape, train_prior
from raydino.train.runtime import FAULT_MARKER
from raydino.train.session import LocalSession
from raydino.train.trainer import FAIL_ENV

CLUSTERS, PER_CLUSTER, TOKENS, DIM, SIGMA = 4, 128, 16, 8, 0.2
CENTRES = torch.randn(CLUSTERS, TOKENS, DIM, generator=torch.Generator().manual_seed(0)) * 2


def prior_cfg(**prior):
    settings = {"width": 64, "depth": 2, "heads": 4, "steps": 600, "batch_size": 64, "lr": 2e-3, "ema_beta": 0.98,
                "checkpoint_every": 200, "log_every": 100, "fit_rows": 512, "sample_steps": 8,
                "cond_dropout": 0.5, "patch": 1, "cpus_per_worker": 1} | prior  # two workers fit the session's 2 CPUs
    return load_config("demo", overrides=[f"prior.{k}={v}" for k, v in settings.items()] + [
        "prior.num_to_keep=4", "pyramids.dino=toy", "pyramids.clip=one-hot cluster labels",  # the toy pyramid's encoders
        "pyramids.sizes=[56,84,112]"])  # and levels: its 4x4 codes are the 56 px level


@pytest.fixture(scope="module")
def toy_pyramid(tmp_path_factory):
    """512 toy codes, 128 per cluster, with the cluster's one-hot vector as the CLIP column."""
    out = tmp_path_factory.mktemp("toy_pyramid")
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(CLUSTERS).repeat_interleave(PER_CLUSTER)
    codes = CENTRES[labels] + SIGMA * torch.randn(len(labels), TOKENS, DIM, generator=g)
    clip = torch.nn.functional.one_hot(labels, CLUSTERS).float()
    ids = [f"{i:06d}" for i in torch.randperm(len(labels), generator=g).tolist()]
    for part in range(2):
        rows = slice(part * len(ids) // 2, (part + 1) * len(ids) // 2)
        pq.write_table(schema.make_table({"id": ids[rows], schema.tokens_col(56): codes[rows].numpy(),
                                          schema.CLIP: clip[rows].numpy()}), out / f"part-{part:05d}.parquet")
    schema.write_manifest(out, schema.new_manifest(
        source="toy clusters", rows=len(ids), levels=[56, 84, 112], dim=DIM, dino={"source": "toy", "hash": "-"},
        clip={"source": "one-hot cluster labels", "hash": "-", "dim": CLUSTERS}))
    return out


def nearest(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's nearest cluster and its RMS distance to that centre, in units of the clusters' SIGMA."""
    rms = (samples[:, None] - CENTRES[None]).pow(2).mean(dim=(2, 3)).sqrt() / SIGMA
    return rms.argmin(1), rms.min(1).values


def assert_in_clusters(samples: torch.Tensor) -> None:
    cluster, dist = nearest(samples)
    inside = dist < 3
    assert inside.float().mean() >= 0.9, f"only {inside.float().mean():.0%} within 3 sigma of a centre"
    shares = torch.bincount(cluster[inside], minlength=CLUSTERS).float() / len(samples)
    assert ((shares >= 0.15) & (shares <= 0.35)).all(), shares


@pytest.fixture(scope="module")
def toy_prior(toy_pyramid, tmp_path_factory) -> tuple[FlowPrior, torch.Tensor]:
    """The prior trained through its loop on the toy codes, in one process; and the codes themselves."""
    cfg = prior_cfg()
    manifest = schema.read_manifest(toy_pyramid)
    shape, codes = code_shape(cfg, toy_pyramid, manifest)
    out = tmp_path_factory.mktemp("toy_run")
    session = LocalSession(toy_pyramid, prior_loop.prior_columns(cfg, True), seed=cfg.prior.seed,
                           checkpoints=out / "ckpt")
    metrics = prior_loop.fit_prior(cfg, out, session, shape)
    assert metrics["step"] == cfg.prior.steps and metrics["bad_steps"] == 0
    checkpoint.export_ema(next(session.checkpoint_dirs()), Run(out).prior)
    return load_prior(Run(out)), codes


def test_flow_prior_samples_land_in_the_clusters_a_gaussian_misses(toy_prior):
    prior, codes = toy_prior
    assert_in_clusters(prior.sample(400, torch.Generator().manual_seed(2)))
    gaussian = PCAGaussianPrior.fit(codes, k=16)  # the same mean and covariance: between the clusters
    with pytest.raises(AssertionError, match="within 3 sigma"):
        assert_in_clusters(gaussian.sample(400, torch.Generator().manual_seed(2)))


def test_conditional_samples_land_in_the_named_cluster(toy_prior):
    prior, _ = toy_prior
    for label in range(CLUSTERS):
        cond = torch.nn.functional.one_hot(torch.full((100,), label), CLUSTERS).float()
        cluster, dist = nearest(prior.sample(100, torch.Generator().manual_seed(label), cond=cond))
        assert ((cluster == label) & (dist < 3)).float().mean() >= 0.9, (label, torch.bincount(cluster))


def test_vary_zero_keeps_the_code_and_one_forgets_it(toy_prior):
    prior, codes = toy_prior
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(prior.vary(codes[:4], 0.0, g()), codes[:4])
    assert torch.equal(prior.vary(codes[:4], 1.0, g()), prior.vary(codes[4:8], 1.0, g()))
    assert not torch.allclose(prior.vary(codes[:4], 0.5, g()), prior.vary(codes[4:8], 0.5, g()))
    with pytest.raises(ValueError, match="--vary"):
        prior.vary(codes[:1], 1.5)
    with pytest.raises(ValueError, match="--steps"):
        prior.sample(1, steps=0)


def test_killed_prior_training_resumes_bitwise(ray_local, toy_pyramid, tmp_path, monkeypatch):
    """Ray Train, 2 DDP workers: a worker killed at step 50 (after the step-40 checkpoint) ends as the uninterrupted run.

    The retry is ``prior.max_failures``'s: the generator's ``train.max_failures=0`` does not reach the prior.
    """
    cfg = override(prior_cfg(steps=60, checkpoint_every=20, num_workers=2, batch_size=32, width=32, depth=1),
                   ["train.max_failures=0"])
    assert cfg.prior.max_failures >= 1
    reference = train_prior(cfg, toy_pyramid, tmp_path / "reference")
    monkeypatch.setenv(FAIL_ENV, "50")
    killed = train_prior(cfg, toy_pyramid, tmp_path / "killed")
    assert (tmp_path / "killed" / FAULT_MARKER).is_file()  # the worker really died
    assert reference["resumed_from_step"] is None and killed["resumed_from_step"] == 40
    assert killed["step"] == reference["step"] == 60
    a, b = (load_file(str(Run(tmp_path / run).prior)) for run in ("reference", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "killed" / "prior_pca.safetensors").is_file()
    assert (tmp_path / "killed" / "tb" / "prior").is_dir()
    with pytest.raises(UserError, match=Run.EXPERIMENTS["prior"]):
        train_prior(cfg, toy_pyramid, tmp_path / "killed")


def test_a_prior_without_clip_column_is_unconditional(toy_pyramid):
    cfg = prior_cfg()
    manifest = schema.read_manifest(toy_pyramid)
    shape, _ = code_shape(cfg, toy_pyramid, {**manifest, "clip": None})
    assert shape["clip_dim"] == 0 and prior_loop.prior_columns(cfg, False) == [schema.tokens_col(56)]
    model = FlowPrior(cfg.prior, shape["tokens"], shape["dim"], 0)
    assert model.sample(2, torch.Generator().manual_seed(0)).shape == (2, TOKENS, DIM)
    assert np.isfinite(model.sample(2, steps=1).numpy()).all()


def test_patches_group_neighbouring_tokens_and_must_tile_the_grid():
    cfg = load_config("demo", overrides=["prior.patch=2"]).prior
    prior = FlowPrior(cfg, tokens=16, dim=3, clip_dim=0)  # a 4x4 code: four 2x2 patches
    codes = torch.arange(16.0).view(1, 16, 1).repeat(1, 1, 3)
    patches = prior.patchify(codes)
    assert patches.shape == (1, 4, 12)
    assert patches[0, 0, ::3].tolist() == [0, 1, 4, 5] and patches[0, 3, ::3].tolist() == [10, 11, 14, 15]
    assert torch.equal(prior.unpatchify(patches), codes)
    x = torch.randn(2, 16, 3)
    assert prior(x, torch.rand(2), None, torch.zeros(2, dtype=torch.bool)).shape == x.shape
    with pytest.raises(ValueError, match="prior.patch=2 does not tile the 3x3 code"):
        FlowPrior(cfg, tokens=9, dim=3, clip_dim=0)
