"""Text control's figures and phrasings, against samplers and encoders whose answers are known.

The figures must tell a model that obeys its prompt from one that ignores
it, and the flip test a text tower that reads every word from one that drops
one; the phrasings must say exactly what they name.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from raydino.data.face_set import ATTRIBUTES, attribute_labels, prompt_labels
from raydino.data.phrasing import VALUES, describe, flip, holds, named_values, phrase
from raydino.data.synth_faces import FaceAttributes, sample_attributes
from raydino.evaluation.text_control import (
    CAPTION_WORDS,
    CONTROLLED,
    USER_WORDS,
    chance,
    prompt_rates,
    unconditional_rates,
)
from raydino.evaluation.text_encoder import FLIPPED, flip_test
from raydino.grids import Row
from raydino.models.tiny_clip import counterfactual


def faces(count: int, seed: int = 0) -> list[FaceAttributes]:
    return [sample_attributes(np.random.default_rng([seed, i])) for i in range(count)]


# --- phrasings -------------------------------------------------------------------------------


def test_a_phrasing_names_what_it_holds_and_its_flip_names_the_counterfactual():
    rng = random.Random(0)
    for a in faces(200):
        values = named_values(a)
        named, frame = describe(values, rng)
        assert named and holds(named, values)
        wrong = flip(named, rng)
        assert not holds(wrong, values)  # the hard negative is false of the face ...
        assert holds(wrong, named_values(counterfactual(a, wrong)))  # ... and true of the face it was changed into
        text, other = phrase(named, frame), phrase(wrong, frame)
        assert text != other and not text.startswith("someone")  # user-typed prompts use a frame never fitted to
        # the words the evaluation's parser knows read back the values this phrasing names
        said = dict(zip(ATTRIBUTES, prompt_labels(text), strict=True))
        for name in ("hair_colour", "glasses", "smile"):
            if name in named and said[name] != -1:
                assert ATTRIBUTES[name][said[name]] == named[name], (text, named)


def test_user_words_are_never_a_fitted_phrasing():
    rng = random.Random(1)
    fitted = {phrase(*describe(named_values(a), rng)) for a in faces(500) for _ in range(4)}
    assert not fitted & set(USER_WORDS.values())
    assert set(CAPTION_WORDS) == set(USER_WORDS) == {(n, v) for n in CONTROLLED for v in ATTRIBUTES[n]}


# --- the text-control figure ------------------------------------------------------------------


class ReadsLabels:
    """A classifier that reads back the attribute labels a fake sampler wrote into its images' pixels."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, : len(ATTRIBUTES)].round().long()


def draw(attrs: list[FaceAttributes]) -> torch.Tensor:
    """Images whose first pixels hold the faces' labels (bald: style 'bald', colour still drawn as it is)."""
    images = torch.zeros(len(attrs), 3, 8, 8)
    for i, a in enumerate(attrs):
        labels = attribute_labels(a)
        labels[0] = ATTRIBUTES["hair_colour"].index(a.hair_colour)
        images[i, 0, 0, : len(ATTRIBUTES)] = torch.tensor(labels, dtype=torch.float)
    return images


@dataclass
class FakeSampler:
    """Prompt samples that show the value their prompt names (``obeys``) or random faces whatever the prompt."""

    obeys: bool

    def from_prompts(self, prompts: list[str], n: int, seed: int, guidance: float | None = None) -> list[Row]:
        wanted = {text: key for words in (CAPTION_WORDS, USER_WORDS) for key, text in words.items()}
        rows = []
        for k, prompt in enumerate(prompts):
            attrs = faces(n, seed=1000 + seed * 100 + k)
            if self.obeys:
                attrs = [_with(a, dict([wanted[prompt]])) for a in attrs]
            rows.append(Row(prompt, draw(attrs)))
        return rows


def _with(a: FaceAttributes, change: dict[str, str]) -> FaceAttributes:
    out = counterfactual(a, change)
    if "hair_colour" in change and out.hair_style == "bald":  # a named hair colour is drawn on hair
        out = dataclasses.replace(out, hair_style="short")
    return out


@pytest.mark.parametrize("prompts", [CAPTION_WORDS, USER_WORDS], ids=["caption_words", "user_words"])
def test_a_sampler_that_obeys_scores_one_and_one_that_ignores_scores_the_unconditional_rate(prompts):
    obeying = prompt_rates(ReadsLabels(), FakeSampler(obeys=True), prompts, 32, seed=0)
    assert all(obeying[name] == 1.0 for name in CONTROLLED), obeying
    ignoring = prompt_rates(ReadsLabels(), FakeSampler(obeys=False), prompts, 64, seed=0)
    uncond = unconditional_rates(ReadsLabels().predict(draw(faces(4000, seed=7))))
    for name in CONTROLLED:
        assert abs(ignoring[name] - uncond[name]) < 0.08, (name, ignoring, uncond)
        assert ignoring[name] < 0.6
    assert chance()["glasses"] == 0.5 and chance()["hair_colour"] == pytest.approx(1 / 6)


# --- the flip test -----------------------------------------------------------------------------


class BagOfWords:
    """A CLIP stand-in: a caption is the sum of its words' fixed random vectors; an image is its face's true caption.

    ``deaf``: phrases the text side drops, as a text tower that never learned them would.
    """

    def __init__(self, attrs: list[FaceAttributes], images: torch.Tensor, deaf: tuple[str, ...] = ()):
        self.model = torch.nn.Linear(1, 1)
        self.image_size, self.mean, self.std = images.shape[-1], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.deaf, self.attrs, self.images = deaf, attrs, images

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            for dropped in self.deaf:
                p = p.replace(dropped, "")
            words = p.replace(",", " ").split()
            rows.append(sum(torch.randn(64, generator=torch.Generator().manual_seed(zlib.crc32(w.encode()))) for w in words))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        index = [int((self.images - x).abs().flatten(1).sum(1).argmin()) for x in pixels]
        return self.encode_text([self.attrs[i].caption() for i in index])


def test_the_flip_test_fails_a_text_tower_that_ignores_a_word():
    attrs = faces(64, seed=3)
    images = torch.rand(len(attrs), 3, 8, 8)
    hears = flip_test(BagOfWords(attrs, images), attrs, images)
    assert all(hears[f"text_encoder/flip/{n}"] == 1.0 for n in FLIPPED), hears
    deaf = flip_test(BagOfWords(attrs, images, deaf=(" and glasses",)), attrs, images)
    assert deaf["text_encoder/flip/glasses"] == 0.0 and deaf["text_encoder/flip/glasses/margin"] == pytest.approx(0)
    assert deaf["text_encoder/flip/smile"] == 1.0  # the other words still count
    assert set(VALUES) >= set(FLIPPED)


# --- what the prior is conditioned on -----------------------------------------------------------


def test_each_row_gets_its_own_caption_then_phrasings_and_a_user_folder_its_one_caption(faces_dir, tmp_path):
    from raydino.data.face_set import read_attributes
    from raydino.train.conditions import row_captions

    attrs = read_attributes(faces_dir)
    paths = [str(faces_dir / name) for name in sorted(attrs)[:6]]
    rows = row_captions(paths, str(faces_dir), variants=5, seed=0)
    assert [r[0] for r in rows] == [attrs[p.split("/")[-1]].caption() for p in paths]
    for path, row in zip(paths, rows, strict=True):
        assert len(set(row)) > 1  # other wordings, each true of its face
        said = dict(zip(ATTRIBUTES, prompt_labels(row[1]), strict=True))
        labels = dict(zip(ATTRIBUTES, attribute_labels(attrs[path.split("/")[-1]]), strict=True))
        assert all(v in (-1, labels[k]) for k, v in said.items() if k in ("glasses", "smile")), (row[1], labels)
    assert row_captions(paths, str(faces_dir), variants=5, seed=0) == rows  # a pure function of the seed
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(paths[:2]):
        (folder / f"{i}.png").write_bytes(open(p, "rb").read())
    (folder / "captions.csv").write_text("file,caption\n0.png,a man by the sea\n1.png,a woman in a hat\n")
    own = row_captions([str(folder / "0.png"), str(folder / "1.png")], str(folder), variants=3, seed=0)
    assert own == [["a man by the sea"] * 3, ["a woman in a hat"] * 3]
    (folder / "captions.csv").unlink()
    assert row_captions([str(folder / "0.png")], str(folder), variants=3, seed=0) is None


def test_an_edit_always_asks_for_a_value_the_face_does_not_have_and_every_other_one_in_turn():
    from raydino.evaluation.text_control import edit_prompts, value_of

    attrs = faces(120, seed=4)
    jobs = edit_prompts(attrs)
    assert all(value_of(attrs[i], name) != value for i, name, value in jobs)
    asked = {(name, value) for _, name, value in jobs}
    assert asked == {(n, v) for n in CONTROLLED for v in ATTRIBUTES[n]}  # no value left unasked
