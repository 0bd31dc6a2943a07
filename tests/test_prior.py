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
from safetensors.torch import load_file, save_file

from raydino.config import load_config, override, to_dict
from raydino.errors import UserError
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior, metadata, prior_from_header
from raydino.models.pca_prior import PCAGaussianPrior
from raydino.models.saved import load_prior
from raydino.models.student import student_of, teacher_codes
from raydino.pyramids import schema
from raydino.train import checkpoint, prior_loop
from raydino.train.distill import TeacherPairs, draw
from raydino.train.prior_loop import CODE, COND, GUIDANCE, NOISE
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


DRILL = dict(steps=60, checkpoint_every=20, batch_size=32, width=32, depth=1)


def test_a_stopped_prior_resumes_bitwise(toy_pyramid, tmp_path):
    """Stopped after its step-40 checkpoint and continued to 60, in one process: the run of 60 steps in one go."""
    def fit(out, steps: int) -> dict:
        cfg = prior_cfg(**DRILL | {"steps": steps})
        shape, _ = code_shape(cfg, toy_pyramid, schema.read_manifest(toy_pyramid))
        session = LocalSession(toy_pyramid, prior_loop.prior_columns(cfg, True), seed=cfg.prior.seed,
                               checkpoints=out / "ckpt")
        metrics = prior_loop.fit_prior(cfg, out, session, shape)
        checkpoint.export_ema(next(session.checkpoint_dirs()), Run(out).prior)
        return metrics

    assert fit(tmp_path / "reference", 60)["resumed_from_step"] is None
    fit(tmp_path / "stopped", 40)
    metrics = fit(tmp_path / "stopped", 60)
    assert metrics["resumed_from_step"] == 40 and metrics["step"] == 60
    a, b = (load_file(str(Run(tmp_path / run).prior)) for run in ("reference", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_prior_worker_is_restarted_from_its_last_checkpoint(ray_local, toy_pyramid, tmp_path, monkeypatch):
    """Ray Train, 2 DDP workers: a worker killed at step 50 (after the step-40 checkpoint) is restarted there.

    The retry is ``prior.max_failures``'s: the generator's ``train.max_failures=0`` does not reach the prior.
    That a restart continues bit for bit: the in-process resume above, and the generator's Ray drills.
    """
    cfg = override(prior_cfg(**DRILL, num_workers=2), ["train.max_failures=0"])
    assert cfg.prior.max_failures >= 1
    monkeypatch.setenv(FAIL_ENV, "50")
    killed = train_prior(cfg, toy_pyramid, tmp_path / "killed")
    assert (tmp_path / "killed" / FAULT_MARKER).is_file()  # the worker really died
    assert killed["resumed_from_step"] == 40 and killed["step"] == 60 and killed["bad_steps"] == 0
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


# --- the student: the prior distilled to one evaluation, guidance included ----------------------------------------


def distil_toy(teacher: FlowPrior, out, steps: int, **distill) -> tuple[FlowPrior, dict]:
    """The toy prior distilled through the student's real pieces, in one process: its Ray Data actor's pairs
    (one-hot cluster conditions), then the prior's loop; checkpoints in ``out/ckpt``, resumed when there."""
    settings = {"steps": steps, "pairs": 256, "batch_size": 64, "lr": 2e-3, "guidance": "[1.0,3.0]",
                "checkpoint_every": 10, "log_every": 100, "sample_steps": 1} | distill
    cfg = override(prior_cfg(), [f"distill.{k}={v}" for k, v in settings.items()])
    Run(out).path.mkdir(parents=True, exist_ok=True)
    save_file(teacher.state_dict(), str(Run(out).prior), metadata=metadata(teacher))
    conds = torch.eye(CLUSTERS).repeat(8, 1).numpy()
    pairs = TeacherPairs(str(out), to_dict(cfg.distill), conds, use_gpu=False)({"id": np.arange(cfg.distill.pairs)})
    session = LocalSession(pairs, list(pairs), seed=cfg.distill.seed, checkpoints=out / "ckpt")
    job = prior_loop.student_job(cfg, Run(out), load_prior(Run(out), teacher=True), session.device)
    metrics = prior_loop.fit_flow(cfg, out, session, job)
    checkpoint.export_ema(next(session.checkpoint_dirs()), Run(out).student)
    return load_prior(Run(out)), metrics


class TwoClusters(FlowPrior):
    """A teacher whose velocity is the exact one of two Gaussian clusters ``N(+-MU, S^2 I)``: the known answer.

    On ``x_t = (1 - t) x + t e`` each cluster's ``x_t`` is Gaussian, so the
    posterior over clusters and the expected code are closed-form, and
    ``v = (x_t - E[x | x_t]) / t``. The condition, one-hot, names the cluster.
    """

    MU, S = 1.0, 0.2

    def forward(self, x, t, cond, keep, guidance=None):
        t = t.clamp_min(1e-4)[:, None, None]
        mu = torch.stack([torch.full_like(x, self.MU), torch.full_like(x, -self.MU)])  # [2, B, T, D]
        var = ((1 - t) * self.S) ** 2 + t ** 2
        logits = -((x - (1 - t) * mu) ** 2).sum((2, 3), keepdim=True) / (2 * var)
        if cond is not None:  # a kept condition picks its cluster
            picked = torch.stack([cond[:, 0], cond[:, 1]]).log()[:, :, None, None]
            logits = torch.where(keep[None, :, None, None], picked, logits)
        weights = logits.softmax(0)
        expected = (weights * (mu + (1 - t) * self.S ** 2 / var * (x - (1 - t) * mu))).sum(0)
        return (x - expected) / t


def two_cluster_teacher() -> TwoClusters:
    cfg = load_config("demo", overrides=["prior.width=32", "prior.depth=2", "prior.patch=1", "prior.sample_steps=16"])
    return TwoClusters(cfg.prior, tokens=4, dim=8, clip_dim=2, cond_stats=False)


def cluster_of(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's nearer cluster (0: +MU) and its RMS distance to that centre, in units of S."""
    rms = torch.stack([(samples - m).pow(2).mean((1, 2)).sqrt() for m in (TwoClusters.MU, -TwoClusters.MU)])
    return rms.argmin(0), rms.min(0).values / TwoClusters.S


def test_a_student_at_one_evaluation_lands_in_the_clusters_where_its_teacher_lands_between(tmp_path):
    """Two well-separated clusters, the exact teacher: one student evaluation lands in a cluster, with the cluster's
    spread; one teacher Euler step goes to the expected code, between the clusters (or a collapsed centre)."""
    teacher = two_cluster_teacher()
    cfg = override(prior_cfg(), ["distill.steps=600", "distill.pairs=2048", "distill.batch_size=64", "distill.lr=0.002",
                                 "distill.guidance=[1.0,3.0]", "distill.uncond_share=0.5", "distill.log_every=1000",
                                 "distill.checkpoint_every=600"])
    conds = torch.eye(2).repeat(4, 1)
    rows = draw(np.arange(cfg.distill.pairs), cfg.distill, 4, 8, len(conds))
    cond = conds[rows.pop("index")]
    guidance = torch.from_numpy(rows[GUIDANCE])
    code = teacher_codes(teacher, torch.from_numpy(rows[NOISE]), cond, guidance, cfg.distill.teacher_steps)
    pairs = rows | {CODE: code.numpy(), COND: cond.numpy()}
    session = LocalSession(pairs, list(pairs), seed=0, checkpoints=tmp_path / "ckpt")
    job = prior_loop.student_job(cfg, Run(tmp_path), teacher, session.device)
    assert prior_loop.fit_flow(cfg, tmp_path, session, job)["step"] == 600
    checkpoint.export_ema(next(session.checkpoint_dirs()), Run(tmp_path).student)
    student = load_prior(Run(tmp_path))
    assert student.student and student.evaluations() == 1

    which, dist = cluster_of(student.sample(400, torch.Generator().manual_seed(2)))
    assert (dist < 3).float().mean() >= 0.9, f"only {(dist < 3).float().mean():.0%} within 3 S of a centre"
    assert 0.3 <= which.float().mean() <= 0.7, which.float().mean()
    _, between = cluster_of(teacher.sample(400, torch.Generator().manual_seed(2), steps=1))
    assert (between > 3).all()  # the known answer's one step: the codes' mean
    for k in range(2):
        cond = torch.eye(2)[k].expand(200, -1)
        which, dist = cluster_of(student.sample(200, torch.Generator().manual_seed(k), cond=cond, guidance=2.0))
        assert (which == k).float().mean() >= 0.95 and 0.5 <= dist.median() <= 2.0, (k, dist.median())
        _, collapsed = cluster_of(teacher.sample(200, torch.Generator().manual_seed(k), cond=cond, steps=1, guidance=1.0))
        assert collapsed.median() < 0.5  # the teacher's one conditional step: the centre, without the spread


def test_the_student_has_the_teachers_shape_and_costs_one_evaluation_per_step(toy_prior):
    teacher, _ = toy_prior
    student = student_of(teacher, sample_steps=2)
    x, cond = torch.randn(3, TOKENS, DIM), torch.eye(CLUSTERS)[:3]
    assert student.velocity(x, 0.5, cond, torch.tensor([1.0, 2.0, 3.0])).shape == x.shape
    assert student.sample(3, cond=cond).shape == (3, TOKENS, DIM)
    # it predicts the code, starting from the mean one (0, standardised): its velocity is the line from x_t there
    keep = torch.ones(3, dtype=torch.bool)
    assert torch.allclose(student(x, torch.full((3,), 0.5), cond, keep, torch.full((3,), 2.0)), x / 0.5)
    assert torch.equal(student.x_in.weight, teacher.x_in.weight)  # the rest of the teacher's weights, kept
    assert (student.evaluations(), student.evaluations(4), teacher.evaluations(16)) == (2, 4, 31 * 2)
    assert teacher.evaluations(16, conditioned=False) == 31
    rebuilt = prior_from_header(metadata(student))
    assert rebuilt.student and rebuilt.cfg.solver == "euler" and rebuilt.cfg.sample_steps == 2


def test_a_stopped_student_resumes_bitwise(toy_prior, tmp_path):
    """Stopped after its step-20 checkpoint and continued to 30, it ends as the run of 30 steps in one go."""
    teacher, _ = toy_prior
    quick = {"pairs": 128, "teacher_steps": 2}
    reference, _ = distil_toy(teacher, tmp_path / "reference", steps=30, **quick)
    distil_toy(teacher, tmp_path / "stopped", steps=20, **quick)
    resumed, metrics = distil_toy(teacher, tmp_path / "stopped", steps=30, **quick)
    assert metrics["resumed_from_step"] == 20 and metrics["step"] == 30
    a, b = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampling_takes_the_student_where_there_is_one(toy_prior, tmp_path):
    teacher, _ = toy_prior
    run = Run(tmp_path)
    save_file(teacher.state_dict(), str(run.prior), metadata=metadata(teacher))
    assert not load_prior(run).student
    student = student_of(teacher, sample_steps=1)
    save_file(student.state_dict(), str(run.student), metadata=metadata(student))
    assert load_prior(run).student and not load_prior(run, teacher=True).student
