"""Milestone 4 and `raydino eval` on a small trained run: text control through the flow prior, measured for real.

The tiny CLIP is the demo's, fitted to the synthetic captions by `raydino tiny-models`
(the session's trained encoders and attribute classifier are copied beside it), the generator trains in-process (the Ray path is
covered by test_train_ray.py), the prior trains as its Ray Train job (`train_prior`).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import write_test_pyramid

from raydino.cli import main
from raydino.config import load_config, save_config
from raydino.data.face_set import ATTRIBUTES
from raydino.data.synth_faces import HAIR_COLOURS, write_faces
from raydino.evaluation.evaluate import evaluate, prompt_scores
from raydino.evaluation.text_control import CONTROLLED, PER_PROMPT, WORDINGS, prompt_rates
from raydino.layout import Run
from raydino.models.face_attributes import load_classifier
from raydino.models.generator import ProgressiveGenerator
from raydino.models.shipping import SHIPPED, expand_clip
from raydino.models.tiny import SUMMARY
from raydino.pyramids.batch import columns
from raydino.sampling import Sampler
from raydino.train import checkpoint, loop
from raydino.train.prior_trainer import train_prior
from raydino.train.session import LocalSession

PROMPTS = ["a face with red hair", "a face with blue hair"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, ray_local, tiny_models):
    root = tmp_path_factory.mktemp("text")
    faces = write_faces(root / "faces", count=96, seed=5, size=128)
    models = {key: shutil.copytree(tiny_models[key], root / "models" / tiny_models[key].name)
              for key in ("dino", "fd", "attributes", "segmenter")}
    models["clip"] = shipped_clip(root / "models" / "clip-tiny")
    (root / "pyr").mkdir()
    pyramids = write_test_pyramid(root / "pyr", faces.glob("*.png"), str(models["dino"]), str(models["clip"]))
    held_faces = write_faces(root / "held_faces", count=32, seed=6, size=128)
    (root / "held").mkdir()
    held = write_test_pyramid(root / "held", held_faces.glob("*.png"), str(models["dino"]), str(models["clip"]))
    cfg = load_config("demo", overrides=[
        f"out={root}", "train.stages=[{resolution: 16, images: 1600, batch_size: 16, lr: 0.004}]",
        "train.checkpoint_every=1000", "train.sample_every=1000", "train.val_count=8", "train.num_workers=1",
        "train.ema_beta=0.98", "prior.steps=400", "prior.checkpoint_every=400", "prior.width=64",
        "prior.cpus_per_worker=1"])  # two threads on cores the other test process shares run far slower
    run_dir = root / "run"
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    untrained = root / "untrained"
    untrained.mkdir()
    save_config(cfg, untrained / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    g = ProgressiveGenerator(cfg.model, 48, cfg.pyramids.sizes[0] // 14)  # the code grid of the preset
    from safetensors.torch import save_file
    save_file(g.state_dict(), str(untrained / Run.GENERATOR), metadata=checkpoint.generator_metadata(g))

    session = LocalSession(pyramids, columns(cfg.pyramids.sizes), checkpoints=root / "ckpt")
    loop.fit_generator(cfg, pyramids, run_dir, session)
    checkpoint.export_generator(next(session.checkpoint_dirs()), run_dir)
    train_prior(cfg, pyramids, run_dir)
    (run_dir / "metrics.json").write_text(json.dumps({"pyramids": str(pyramids)}))  # as `raydino train` writes it
    return {"root": root, "run": run_dir, "untrained": untrained, "pyramids": pyramids, "held": held, "faces": faces}


def shipped_clip(folder):
    """The demo's tiny CLIP, fitted to the captions of its 768 synthetic faces: the captions' words are these faces'
    words, and expanding it (3 s) spares the 45 s fit."""
    build = SHIPPED / "demo"
    summary = json.loads((build / SUMMARY).read_text())
    shutil.copytree(build / summary["folders"]["clip"], folder)
    expand_clip(folder, summary["seed"])
    return folder


def _hair(images: torch.Tensor) -> np.ndarray:
    """Mean colour of the hair region (top of the head) of [N, 3, H, W] images, 0-255."""
    h = images.shape[-1]
    region = images[:, :, int(0.22 * h): int(0.34 * h), int(0.40 * h): int(0.60 * h)]
    return region.mean(dim=(0, 2, 3)).numpy() * 255


def test_prompts_control_hair_colour(text_run):
    s = Sampler(text_run["run"], device="cpu")
    red_row, blue_row = s.from_prompts(PROMPTS, n=8, seed=0)
    red, blue = _hair(red_row.images), _hair(blue_row.images)
    target_red, target_blue = np.array(HAIR_COLOURS["red"]), np.array(HAIR_COLOURS["blue"])
    assert np.linalg.norm(red - target_red) < np.linalg.norm(blue - target_red), (red, blue)
    assert np.linalg.norm(blue - target_blue) < np.linalg.norm(red - target_blue), (red, blue)


def test_clip_score_of_matching_prompts_beats_mismatched(text_run):
    scores = prompt_scores(Sampler(text_run["run"], device="cpu"), PROMPTS, per_prompt=6, seed=0)
    assert scores["clip_score/matched"] > scores["clip_score/mismatched"], scores


def test_eval_orders_untrained_below_trained_on_held_out_images(text_run):
    trained = evaluate(text_run["run"], text_run["held"], n=32, prompts=PROMPTS)
    untrained = evaluate(text_run["untrained"], text_run["held"], n=32)
    assert trained["train_encoder/dist_unweighted"] < untrained["train_encoder/dist_unweighted"]
    assert trained["fd_dinov2/reconstructions"] < untrained["fd_dinov2/reconstructions"]
    assert trained["heldout/eval_dist"] < untrained["heldout/eval_dist"]
    assert trained["colour_error"] < untrained["colour_error"]
    assert {"fd_dinov2/prior", "fd_dinov2/prior_pca", "clip_score/matched"} <= trained.keys()
    assert "fd_dinov2/prior" not in untrained  # no prior trained: no prior figures
    # its samples against the training codes it learned from: the trained prior's, measured and not copied
    assert trained["prior/memorisation/train_rows"] > 0 and trained["prior/memorisation/n"] == 16
    assert trained["prior/memorisation/ratio"] > 0.5, trained["prior/memorisation/ratio"]
    assert "prior/memorisation/ratio" not in untrained
    # text control: every wording and reference per attribute, the flip test, the curves (their values: test_text_control)
    assert trained["text_control/n_per_prompt"] == PER_PROMPT and trained["text_encoder/flip/n"] == 32
    for what in ("caption_words", "user_words", "full_captions", "reconstructions", "oracle", "unconditional", "chance"):
        mean = sum(trained[f"text_control/{what}/{a}"] for a in CONTROLLED) / len(CONTROLLED)
        assert trained[f"text_control/{what}"] == pytest.approx(mean, abs=1e-12), what  # the row's mean is its own
    assert all(trained[f"text_control/chance/{a}"] == 1 / len(ATTRIBUTES[a]) for a in CONTROLLED)
    # the hair figure is what the run's sampler and classifier give, computed again here on the hair-colour prompts
    # alone (every prompt starts from the same noise; a batch of other size may move a reading by a sample)
    s = Sampler(text_run["run"], device="cpu")
    classifier, _ = load_classifier(s.cfg.eval.attribute_classifier)
    for wording, prompts in WORDINGS.items():
        hair = {key: text for key, text in prompts.items() if key[0] == "hair_colour"}
        again = prompt_rates(classifier, s, hair, PER_PROMPT, seed=0)["hair_colour"]
        assert trained[f"text_control/{wording}/hair_colour"] == pytest.approx(again, abs=0.011), wording
    assert [p["guidance"] for p in trained["text_control/curve"]] == [1.0, 2.0, 3.0, 5.0]
    assert "text_control/user_words" not in untrained
    # the faces have captions: the prior learned from their text embeddings, as a prompt will reach it
    assert json.loads((text_run["run"] / "prior.json").read_text())["conditioned_on"] == "text"
    assert Sampler(text_run["run"], device="cpu").flow("").cfg.condition == "text"
    assert "dinov2-tiny-fd" in trained["eval_encoder"] and "dinov2-tiny " in trained["training_encoder"]
    assert trained["n"] == 32 and trained["fd_dinov2/n"] == 16 and trained["resolution"] == 16
    assert 0 < trained["fd_dinov2/floor"] == untrained["fd_dinov2/floor"]  # real halves: the run plays no part
    assert trained["set"].startswith("all 32 images of ") and trained["set"].endswith("held_faces")
    assert (text_run["run"] / "eval.json").is_file()
    with pytest.raises(ValueError, match="was trained on"):  # the training rows are no held-out set
        evaluate(text_run["run"], text_run["pyramids"], n=32)


def test_vary_zero_is_the_reconstruction_and_one_forgets_the_image(text_run):
    s, faces = Sampler(text_run["run"], device="cpu"), sorted(text_run["faces"].glob("*.png"))
    same = s.from_image(faces[0], n=3, seed=0, vary=0.0)[0].images  # input, reconstruction, 2 variations
    assert torch.equal(same[2], same[1]) and torch.equal(same[3], same[1])
    a, b = (s.from_image(f, n=3, seed=0, vary=1.0)[0].images[2:] for f in faces[:2])
    assert torch.equal(a, b)  # at T = 1 nothing of the image's code is left
    assert not torch.equal(a, same[2:])
    half = s.from_image(faces[0], n=3, seed=0, vary=0.5)[0].images
    assert not torch.equal(half[2], half[1]) and not torch.equal(half[2:], a)


def test_an_edit_at_t_zero_is_the_face_itself_and_its_prompt_steers_it_above(text_run):
    s, face = Sampler(text_run["run"], device="cpu"), sorted(text_run["faces"].glob("*.png"))[0]
    (row,) = s.from_image(face, n=3, seed=0, vary=0.0, prompt=PROMPTS[0])
    assert torch.equal(row.images[2], row.images[1]) and torch.equal(row.images[3], row.images[1])
    assert row.label.startswith(f"image: {face.name}, edits toward \"{PROMPTS[0]}\" at T=0.0")
    red, blue, plain = (s.from_image(face, n=3, seed=0, vary=0.7, prompt=p)[0].images[2:] for p in (*PROMPTS, None))
    assert not torch.equal(red, blue) and not torch.equal(red, plain)  # the words reach the flow


def test_sample_cli_modes_and_errors(text_run, tmp_path, capsys):
    run, faces = str(text_run["run"]), sorted(text_run["faces"].glob("*.png"))
    out = tmp_path / "grid.png"
    assert main(["sample", "--run", run, "--out", str(out), "--from-image", str(faces[0]), "--prior",
                 "--prompt", PROMPTS[0], "--cfg", "3", "--steps", "2", "--mix", str(faces[1]), str(faces[2]),
                 "--region", "left", "--n", "3", "--save-each"]) == 0
    assert out.is_file() and len(list((tmp_path / "grid").glob("*.png"))) == 4 + 3 + 3 + 4
    assert main(["sample", "--run", run, "--out", str(out), "--prior", "pca", "--from-image", str(faces[0]),
                 "--vary", "0.5", "--n", "2"]) == 0
    assert main(["sample", "--run", str(tmp_path / "nope"), "--out", str(out), "--prior"]) == 2
    assert f"--run {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["sample", "--run", run, "--out", str(out), "--from-image", str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    for flags, message in ((["--prompt", " "], "--prompt: empty prompt"),
                           (["--from-image", str(faces[0]), "--vary", "1.5"], "--vary: T must be in [0, 1]"),
                           (["--prior", "--steps", "0"], "--steps: K must be at least 1"),
                           (["--prior", "--cfg", "2"], "--cfg")):
        assert main(["sample", "--run", run, "--out", str(out), *flags]) == 2
        assert message in capsys.readouterr().err
    for flags, flag in ((["--prior"], "--prior"), (["--prompt", PROMPTS[0]], "--prompt"),
                        (["--from-image", str(faces[0]), "--vary", "0.5"], "--vary")):
        assert main(["sample", "--run", str(text_run["untrained"]), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flag}: " in err and "has no prior" in err and "raydino train-prior" in err, err


def test_distill_prior_refuses_what_it_cannot_do_before_ray(text_run, capsys):
    run, pyramids = str(text_run["run"]), str(text_run["pyramids"])
    for args, message in (
            (["--run", str(text_run["untrained"])], "has no flow prior"),
            (["--run", run, "--resume"], "nothing to resume"),
            (["--run", run, "--resume", "--overwrite"], "--resume and --overwrite: choose one"),
            (["--run", run, "distill.steps=0"], "distill.steps=0: give the student some steps"),
            (["--run", run, "distill.pairs=8"], "distill.pairs=8 must be at least distill.batch_size=64")):
        assert main(["distill-prior", "--pyramids", pyramids, *args]) == 2
        assert message in capsys.readouterr().err
    assert not Run(run).student.exists() and not (text_run["run"] / Run.EXPERIMENTS["student"]).exists()


def test_mix_draws_each_face_with_half_of_the_others_code(text_run):
    """`--mix A B --region top`: A, B, A with B's top half of the code and the reverse, all on one noise draw."""
    s, faces = Sampler(text_run["run"], device="cpu"), sorted(text_run["faces"].glob("*.png"))
    a, b = faces[:2]
    (row,) = s.mix(a, b, "top", seed=3)
    assert row.captions == ["A", "B", "A + top of B", "B + top of A"] and row.images.shape[0] == 4
    ca, cb = (s.code_from_image(s.load_image(p)) for p in (a, b))
    alone = s.generate(torch.cat([ca, cb]), s.noise(1, 3).expand(4)[:2])
    assert torch.allclose(row.images[:2], alone, atol=1e-5)  # A and B as themselves (a batch of 2, not 4: last bits)
    q = row.images.shape[-1] // 4  # the image's top and bottom quarters: well inside each half of the code

    def near(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).abs().mean())

    for mixed, top, bottom in ((row.images[2], row.images[1], row.images[0]), (row.images[3], row.images[0], row.images[1])):
        assert near(mixed[:, :q], top[:, :q]) < near(mixed[:, :q], bottom[:, :q])
        assert near(mixed[:, -q:], bottom[:, -q:]) < near(mixed[:, -q:], top[:, -q:])
