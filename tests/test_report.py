"""The report page: every image it references exists, and its figures are the ones in the run's files."""

from __future__ import annotations

import csv
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raydino.cli import main
from raydino.config import load_config, save_config
from raydino.pyramids import schema
from raydino.report import write_report
from raydino.report.charts import nice_ticks
from raydino.report.markup import fmt
from raydino.report.media import pca_rgb, spaced_pairs

EVAL = {
    "n": 16, "training_encoder": "/m/dinov2-tiny (hash 83aa6a7a7883)", "fd_encoder": "/m/dinov2-tiny-fd (hash 1b2c3d4e5f60)",
    "train_encoder/dist_56": 0.0812345, "train_encoder/dist_84": 0.0934567, "train_encoder/dist_unweighted": 0.0873456,
    "colour_error": 0.0456789, "fd_dinov2/reconstructions": 12.34567, "fd_dinov2/prior": 45.6789,
    "clip_score/a face with red hair": 0.312345, "clip_score/a smiling face with glasses": 0.287654,
    "clip_score/matched": 0.3, "clip_score/mismatched": 0.2123456,
    "fd_dinov2/prior_pca": 67.89012, "fd_dinov2/floor": 1.234567, "fd_dinov2/n": 8, "fd_dinov2/prior_steps": 8,
    "noise_spread": 0.3456789, "noise_spread/codes": 16, "noise_spread/draws": 8, "sharpness_ratio": 0.8123456,
}
CONTROLLED = ("hair_colour", "hair_style", "glasses", "smile")  # the text-control table's columns, then the mean
TEXT_CONTROL_ROWS = {  # text_control/<what> -> the label of its row in the report's text-control table
    "caption_words": "prompts in the captions' words", "user_words": "prompts in a user's words",
    "full_captions": "full captions", "reconstructions": "reconstructions", "oracle": "oracle conditioning",
    "unconditional": "unconditional samples", "chance": "chance",
}
EVAL |= {  # the text-control figures: every one distinct, so a figure in the wrong row or column shows
    "text_control/n_per_prompt": 32, "text_control/guidance": 3.0,
    "text_control/prompts": {"caption_words": ["a face with red hair", "a smiling face"],
                             "user_words": ["someone with red hair", "someone smiling"]},
    "text_control/full_captions/prompts": ["a smiling face with short red hair and glasses"],
    **{f"text_control/{what}" + (f"/{name}" if name else ""): round(0.1012345 + 0.1 * i + 0.01 * j, 7)
       for i, what in enumerate(TEXT_CONTROL_ROWS) for j, name in enumerate(("", *CONTROLLED))},
    "text_control/curve": [{"guidance": 1.0, "user_words": 0.4123457, "oracle": 0.5234568, "fd_dinov2": 23.45678},
                           {"guidance": 3.0, "user_words": 0.6345679, "oracle": 0.7456789, "fd_dinov2": 34.56789}],
    "text_control/edits/t": 0.6, "text_control/edits/faces": 48,
    "text_control/edits/asked": 0.5432109, "text_control/edits/kept": 0.8765431,
    "text_control/edits/asked/hair_colour": 0.6012345, "text_control/edits/asked/hair_style": 0.4123456,
    "text_control/edits/asked/glasses": 0.7234567, "text_control/edits/asked/smile": 0.4358025,
    "text_control/edits/kept/hair_colour": 0.8901234, "text_control/edits/kept/hair_style": 0.8512345,
    "text_control/edits/kept/glasses": 0.9123456, "text_control/edits/kept/smile": 0.8524691,
    "text_control/edits/curve": [{"t": 0.3, "asked": 0.2345678, "kept": 0.9456789},
                                 {"t": 0.9, "asked": 0.7654321, "kept": 0.6543219}],
    "text_encoder/flip/n": 48, "text_encoder/flip/hair_colour": 0.9583333, "text_encoder/flip/hair_colour/margin": 0.0412345,
    "text_encoder/flip/hair_style": 0.8541667, "text_encoder/flip/hair_style/margin": 0.0223456,
    "text_encoder/flip/glasses": 0.6041667, "text_encoder/flip/glasses/margin": 0.0034567,
    "text_encoder/flip/smile": 0.5208333, "text_encoder/flip/smile/margin": 0.0005678,
}
CARDS = {  # the report's headline cards: label -> eval.json key
    "FD-DINOv2, reconstructions": "fd_dinov2/reconstructions", "FD-DINOv2, flow prior samples": "fd_dinov2/prior",
    "FD-DINOv2, PCA Gaussian prior (baseline)": "fd_dinov2/prior_pca",
    "Patch distance, training encoder": "train_encoder/dist_unweighted", "Colour error": "colour_error",
    "CLIP score, own prompt": "clip_score/matched", "CLIP score, other prompts": "clip_score/mismatched",
}
COMPARE_EVAL = {"noise_spread": 0.0345678, "sharpness_ratio": 0.4123456, "fd_dinov2/reconstructions": 13.5791,
                 "train_encoder/dist_unweighted": 0.0791357}
SEARCH = ["loss.level_weights.0", "loss.level_weights.1", "loss.color_weight"]
TRIALS = [  # sorted by the metric, like tune.py writes them
    {"trial_id": "65071_00001", "loss.level_weights.0": 2.5, "loss.level_weights.1": 0.31, "loss.color_weight": 1.7,
     "val/dist_unweighted": 0.0765432, "iterations": 8, "error": "", "stopped_early": False},
    {"trial_id": "65071_00000", "loss.level_weights.0": 0.2, "loss.level_weights.1": 4.0, "loss.color_weight": 0.5,
     "val/dist_unweighted": 0.0987654, "iterations": 2, "error": "", "stopped_early": True},
]


def _grid(res: int, rows: int = 2, seed: int = 0) -> np.ndarray:
    """A grid in the monitor's layout: 8 tiles a row, 1 px white padding."""
    arr = np.full((rows * (res + 1) + 1, 8 * (res + 1) + 1, 3), 255, np.uint8)
    rng = np.random.default_rng(seed)
    for r in range(rows):
        for c in range(8):
            arr[1 + r * (res + 1): 1 + r * (res + 1) + res, 1 + c * (res + 1): 1 + c * (res + 1) + res] = rng.integers(
                0, 255, 3)
    return arr


def _pyramid(out: Path, n: int = 4, dim: int = 8) -> None:
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = {"id": [f"{i:016x}" for i in range(n)], "path": [f"/nowhere/{i}.png" for i in range(n)],
             schema.THUMB: rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)}
    for size in (56, 84):
        g = size // 14
        batch[schema.tokens_col(size)] = rng.standard_normal((n, g * g, dim)).astype(np.float16)
        batch[schema.cls_col(size)] = rng.standard_normal((n, dim)).astype(np.float16)
    pq.write_table(schema.make_table(batch), out / "part-0.parquet")
    schema.write_manifest(out, schema.new_manifest(source="/m/faces", rows=n, levels=[56, 84], dim=dim,
                                                   dino={"source": "/m/dinov2-tiny", "hash": "83aa6a7a7883"}))


def _events(tb: Path, tags: dict[str, list[float]], images: bool = False) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb)) as w:
        for tag, values in tags.items():
            for i, v in enumerate(values):
                w.add_scalar(tag, v, 10 * (i + 1))
        if images:
            for step in (10, 40):
                w.add_image("grid/16px", _grid(16), step, dataformats="HWC")


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """A small finished ``raydino run`` output folder (fake figures, real file formats)."""
    root = tmp_path_factory.mktemp("demo")
    run = root / "runs" / "train"
    (run / "grids").mkdir(parents=True)
    cfg = load_config("demo", overrides=["train.stages.0.images=32", "train.stages.1.images=32",
                                         "pyramids.sizes=[56,84]", "loss.level_weights=[1.0,1.0]"])
    save_config(cfg, run / "config.yaml")
    (run / "eval.json").write_text(json.dumps(EVAL))
    (run / "metrics.json").write_text(json.dumps({"step": 4, "images_seen": 64, "bad_steps": 0,
                                                  "val/dist_unweighted": 0.0901234, "step0/dist_unweighted": 0.31,
                                                  "mean_image/dist_unweighted": 0.21}))
    for res in (16, 32):
        Image.fromarray(_grid(res)).save(run / "grids" / f"stage_{res}.png")
    _events(run / "tb", {"loss/total": [0.5, 0.4, 0.35, 0.3], "loss/dist_56": [0.2, 0.1, 0.09, 0.08],
                         "loss/dist_84": [0.3, 0.2, 0.15, 0.1], "val/dist_unweighted": [0.2, 0.09]}, images=True)
    sweep = root / "sweep"
    sweep.mkdir()
    with open(sweep / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(TRIALS[0]))
        writer.writeheader()
        writer.writerows(TRIALS)
    (sweep / "best.json").write_text(json.dumps({
        "metric": "val/dist_unweighted", "best_trial": "65071_00001", "best_value": 0.0765432,
        "best": {k: TRIALS[0][k] for k in SEARCH}, "default": {k: 1.0 for k in SEARCH}, "trials": 2, "stopped_early": 1}))
    for t in TRIALS:
        _events(sweep / "trials" / t["trial_id"] / "tb", {"val/dist_unweighted": [0.2, t["val/dist_unweighted"]]})
    samples = root / "samples"
    samples.mkdir()
    for name in ("image.png", "prompts.png", "edits.png", "prior.png", "noise.png", "noise-compare.png"):  # no mix
        Image.fromarray(_grid(32, seed=len(name))).save(samples / name)
    (root / "runs" / "compare-energy").mkdir()
    (root / "runs" / "compare-energy" / "eval.json").write_text(json.dumps(COMPARE_EVAL))
    _pyramid(root / "pyramids-val")
    return root


class _Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.sources += [v for k, v in attrs if k == "src"]


def _sources(page: Path) -> list[str]:
    parser = _Sources()
    parser.feed(page.read_text())
    return parser.sources


def _check_images(page: Path) -> list[str]:
    sources = _sources(page)
    missing = [s for s in sources if not s.startswith("data:") and not (page.parent / s).is_file()]
    assert not missing, f"the page references images that do not exist: {missing}"
    return sources


def test_report_of_a_full_run(layout: Path) -> None:
    page = write_report(layout / "runs" / "train")
    assert page == layout / "report" / "index.html"  # the standard layout's default
    sources = _check_images(page)
    names = {Path(s).name for s in sources}
    assert {"stage_16.png", "stage_32.png", "image.png", "prompts.png", "edits.png", "prior.png"} <= names
    assert {"stage_16_step10.png", "stage_16_step40.png"} <= names  # snapshots from TensorBoard
    assert sum(n.startswith("pyramid_") for n in names) == 4 * 3  # 4 images x (thumbnail + 2 levels)
    text = page.read_text()
    # each headline figure on the card of its label, with 4 significant digits, exactly as in eval.json
    cards = dict(re.findall(r'<div class="k">(.*?)</div><div class="v">(.*?)</div>', text))
    assert cards == {label: fmt(EVAL[key]) for label, key in CARDS.items()}, cards
    clip = _section(text, "samples")
    assert _row(clip, "“a face with red hair”")[1] == fmt(EVAL["clip_score/a face with red hair"])
    assert (f"own prompt <b>{fmt(EVAL['clip_score/matched'])}</b>, with the other prompts "
            f"<b>{fmt(EVAL['clip_score/mismatched'])}</b>") in clip
    assert "83aa6a7a7883" in text and "1b2c3d4e5f60" in text  # which encoders were used
    # the sweep: the best trial's id (not the number 6507100001) and every figure of it, in its row and the lead
    tune = _section(text, "tune")
    best_row = [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in
                re.findall(r"<td>(.*?)</td>", tune.split('<tr class="best">', 1)[1].split("</tr>", 1)[0])]
    shown = [c for c in TRIALS[0] if c != "error"]  # a column empty in every trial is left out
    assert best_row == ["★ 65071_00001", *[fmt(TRIALS[0][c]) for c in shown[1:]]], best_row
    assert f"<b>{fmt(TRIALS[0]['val/dist_unweighted'])}</b> (trial 65071_00001)" in tune
    assert text.count('<tr class="best">') == 1
    assert "No mix.png" in text  # a missing input is said, not a crash
    detail = text.split('<section id="detail">', 1)[1].split("</section>", 1)[0]
    assert "this run (loss.kind=regression)" in detail and "comparison (loss.kind=energy)" in detail
    for key in ("noise_spread", "sharpness_ratio", "fd_dinov2/reconstructions", "train_encoder/dist_unweighted"):
        assert f"{EVAL[key]:.4g}" in detail and f"{COMPARE_EVAL[key]:.4g}" in detail, key
    assert f"{COMPARE_EVAL['noise_spread'] / EVAL['noise_spread']:.2f}×" in detail  # comparison / this run
    assert {"noise.png", "noise-compare.png"} <= {Path(s).name for s in _sources(page)}
    assert "<svg" in text and "Validation patch distance" in text and "Validation curve of each trial" in text
    prior = text.split('<section id="prior-figures">', 1)[1].split("</section>", 1)[0]
    for key in ("fd_dinov2/prior", "fd_dinov2/prior_pca", "fd_dinov2/floor"):
        assert f"{EVAL[key]:.4g}" in prior, key  # flow and PCA side by side with their floor
    assert "K = 8" in prior


def _section(text: str, sid: str) -> str:
    return text.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def _row(section: str, label: str) -> list[str]:
    """The cells, as text, of the one table row whose first cell starts with ``label``."""
    rows = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section)]
    found = [cells for cells in rows if cells and cells[0].startswith(label)]
    assert len(found) == 1, f"{len(found)} rows labelled {label!r}"
    return found[0]


def test_report_shows_text_control_figures_beside_their_labels(layout: Path) -> None:
    text = write_report(layout / "runs" / "train", out=layout / "text-control" / "index.html").read_text()
    control = _section(text, "text-control")
    for what, label in TEXT_CONTROL_ROWS.items():  # per attribute, then the mean, in the row of its label
        assert _row(control, label)[1:] == [fmt(EVAL[f"text_control/{what}/{name}"]) for name in CONTROLLED] + [
            fmt(EVAL[f"text_control/{what}"])], label
    assert "32 samples per prompt" in control and "guidance 3" in control
    prompts = control.split("<details", 1)[1].split("</details>", 1)[0]  # the prompts of each wording
    assert all(f"“{p}”" in prompts for p in ("a face with red hair", "someone smiling",
                                             "a smiling face with short red hair and glasses"))
    assert _row(control, "nearer the true caption")[1:] == [fmt(EVAL[f"text_encoder/flip/{n}"]) for n in CONTROLLED]
    assert _row(control, "mean margin")[1:] == [fmt(EVAL[f"text_encoder/flip/{n}/margin"]) for n in CONTROLLED]
    for point in EVAL["text_control/curve"]:  # guidance, user words, oracle, FD
        assert _row(control, fmt(point["guidance"]))[1:] == [fmt(point[k]) for k in ("user_words", "oracle", "fd_dinov2")]
    assert _row(control, "3 (the run's)")  # the run's own guidance is marked
    for kind, label in (("asked", "asked value shown"), ("kept", "other attributes kept")):
        assert _row(control, label)[1:] == [fmt(EVAL[f"text_control/edits/{kind}/{n}"]) for n in CONTROLLED] + [
            fmt(EVAL[f"text_control/edits/{kind}"])], kind
    for point in [*EVAL["text_control/edits/curve"], {"t": 0.6, "asked": EVAL["text_control/edits/asked"],
                                                      "kept": EVAL["text_control/edits/kept"]}]:
        assert _row(control, fmt(point["t"]))[1:] == [fmt(point["asked"]), fmt(point["kept"])], point["t"]
    assert _row(control, "0.6 (sample.edit_t)")  # the preset T, in its place on the T curve
    samples = _section(text, "samples")
    assert "a column shows what the words change" in samples and "edits.png" in samples


def test_report_with_only_a_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("demo"), run / "config.yaml")
    page = write_report(run, out=tmp_path / "r" / "index.html")
    _check_images(page)
    text = page.read_text()
    for said in ("No eval.json", "No metrics.json", "No validation grids", "No samples folder", "No pyramid found",
                 "No TensorBoard scalars", "No Tune sweep", "No text-control figures"):
        assert said in text, said


def test_report_says_which_input_is_broken(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text("{not json")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.csv").write_text("")
    text = write_report(run, sweep=tmp_path / "sweep").read_text()
    assert "eval.json is not valid JSON" in text and "lists no trials" in text
    assert "No config.yaml" in text


def test_cli_report(layout: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "page.html"
    assert main(["report", "--run", str(layout / "runs" / "train"), "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "page_files").is_dir()
    _check_images(out)
    assert main(["report", "--run", str(tmp_path / "nothing")]) == 2
    assert f"--run {tmp_path / 'nothing'}: no such folder" in capsys.readouterr().err


def test_pca_colours_and_helpers() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 16, 8))
    tokens[1] = tokens[0]  # same features, same colours
    rgb = pca_rgb(tokens)
    assert rgb.shape == (3, 4, 4, 3) and rgb.min() == 0.0 and rgb.max() == 1.0
    np.testing.assert_allclose(rgb[0], rgb[1])
    spaced = spaced_pairs(_png(_grid(16)), 16)
    assert spaced is not None and spaced.shape == (2 * 16 + 4, 4 * 33 + 3 * 4, 3)
    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert fmt(0.123456) == "0.1235" and fmt(None) == "–" and fmt(True) == "yes"


def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_report_shows_attribute_agreement_and_the_encoders_probes(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    save_config(load_config("demo", overrides=[f"out={tmp_path}"]), run / "config.yaml")
    figures = {"attribute_classifier": "/m/face-attributes (hash 0a1b2c3d4e5f)", "n": 24,
               "attributes/real": 0.9712345, "attributes/real/smile": 0.9123456,
               "attributes/reconstructions": 0.6234567, "attributes/reconstructions/smile": 0.5432109,
               "attributes/chance": 0.4123456, "attributes/chance/smile": 0.5555555,
               "attributes/prior_tv": 0.2345678, "attributes/prior_tv/smile": 0.1234567}
    (run / "eval.json").write_text(json.dumps({**EVAL, **figures}))
    probes = {"encoder": "/m/dinov2-tiny (hash 83aa6a7a7883)", "faces": 192, "sizes": [56],
              "trained": {"parts/56": 0.9512345, "attributes/smile": 0.8765432},
              "random": {"parts/56": 0.8012345, "attributes/smile": 0.5123456},
              "majority": {"parts/56": 0.6234567, "attributes/smile": 0.5012345}}
    for name in ("dinov2-tiny", "dinov2-tiny-fd"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "probes.json").write_text(json.dumps(probes))
    text = write_report(run).read_text()
    attributes, encoders = _section(text, "attributes"), _section(text, "encoders")
    columns = ("real", "reconstructions", "chance", "prior_tv")  # real, reconstructions, chance, prior TV
    assert _row(attributes, "smile")[1:] == [fmt(figures[f"attributes/{c}/smile"]) for c in columns]
    assert _row(attributes, "mean")[1:] == [fmt(figures[f"attributes/{c}"]) for c in columns]
    for label, key in (("patch parts, 56", "parts/56"), ("CLS: smile", "attributes/smile")):  # both encoders' probes
        assert _row(encoders, label)[1:] == [fmt(probes[k][key]) for k in ("trained", "trained", "random", "majority")]
    assert "0a1b2c3d4e5f" in text and "FD encoder" in text and "random init" in text


def test_report_shows_the_student_beside_its_teacher(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("demo"), run / "config.yaml")
    rows = [{"prior": "teacher", "steps": 16, "evaluations": 62, "fd_dinov2": 14.3031, "fd_dinov2/oracle": 15.9493,
             "oracle": 0.7527, **{f"user_words/{n}": 0.9 + i / 100 for i, n in enumerate(CONTROLLED)},
             "user_words": 0.915}]
    rows += [{"prior": "student", "steps": k, "evaluations": k, "fd_dinov2": 18.7 + k, "fd_dinov2/oracle": 18.1 + k,
              "oracle": 0.74 - k / 100, **{f"user_words/{n}": 0.8 + k / 100 + i / 1000 for i, n in enumerate(CONTROLLED)},
              "user_words": 0.85 + k / 100} for k in (1, 2, 4)]
    (run / "eval.json").write_text(json.dumps({"few_step": rows}))
    (run / "student.json").write_text(json.dumps({"pairs": 2048, "step": 600, "pairs_time_s": 67.2, "time_s": 156.1,
                                                  "teacher": "teacher, K=16 heun, 62 evaluations",
                                                  "guidance": [1.0, 7.0]}))
    section = _section(write_report(run, out=tmp_path / "report" / "index.html").read_text(), "one-step")
    cells = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", row)]
             for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section)]
    keys = ["prior", "steps", "evaluations", "fd_dinov2", "fd_dinov2/oracle", "oracle",
            *[f"user_words/{n}" for n in CONTROLLED], "user_words"]
    assert [c for c in cells if c] == [[fmt(r[k]) for k in keys] for r in rows]  # each row's figures, in order
    assert "2048 teacher pairs" in section and "in 600 steps" in section and "156.1 s in all" in section
