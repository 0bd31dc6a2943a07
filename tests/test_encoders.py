"""The tiny encoders see faces, their training is reproducible, and attribute agreement cannot be gamed.

Margins are the ones docs/encoders.md states; the session's encoders are
trained on a shorter budget than the demo's (conftest.TEST_BUDGET), so they
are a lower bound of the demo's.
"""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from raydino.data.face_set import ATTRIBUTES, UNKNOWN, from_seed, prompt_labels
from raydino.data.synth_faces import PARTS, face, render_parts
from raydino.evaluation.attribute_agreement import accuracies, chance, tv_distances
from raydino.models.encoder_training import TRAINING_OBJECTIVE, train_encoder
from raydino.models.encoders import resize
from raydino.models.face_attributes import SIZE, load_classifier, train_classifier
from raydino.models.loading import weights_hash
from raydino.models.tiny import build_tiny_dino

PART_MARGIN = 0.05       # patch-part probe accuracy over a random encoder's, at every level
ATTRIBUTE_MARGIN = 0.10  # mean CLS attribute probe accuracy over a random encoder's


def test_part_map_matches_the_drawing():
    img, attrs = face(seed=0, index=3, size=96)
    parts = render_parts(attrs, 96)
    assert parts.shape == (96, 96) and parts.dtype.name == "uint8"
    assert set(parts.ravel()) >= {PARTS.index(p) for p in ("background", "skin", "eyes", "mouth", "clothing")}
    corner = torch.from_numpy(parts[:6, :6].copy())
    assert (corner == PARTS.index("background")).all()


@pytest.mark.parametrize("key", ["dino", "fd"])
def test_trained_encoders_beat_a_random_one_on_held_out_probes(tiny_models, key):
    probes = json.loads((tiny_models[key] / "probes.json").read_text())
    trained, random = probes["trained"], probes["random"]
    for size in probes["sizes"]:
        assert trained[f"parts/{size}"] >= random[f"parts/{size}"] + PART_MARGIN, (size, trained, random)
    assert trained["attributes/mean"] >= random["attributes/mean"] + ATTRIBUTE_MARGIN, (trained, random)
    assert "trained on the 128 synthetic faces" in (tiny_models[key] / "RAYDINO_TINY.txt").read_text()


def test_encoder_and_classifier_training_are_deterministic_for_a_seed():
    faces = from_seed(7, 16, 56)

    def encoder(seed: int) -> str:
        return weights_hash(train_encoder(build_tiny_dino(seed), faces, [56], TRAINING_OBJECTIVE, 4, 8, seed=seed))

    assert encoder(0) == encoder(0)
    assert encoder(0) != encoder(1)
    assert weights_hash(train_classifier(faces, 4, 8, seed=0)) == weights_hash(train_classifier(faces, 4, 8, seed=0))


@pytest.fixture(scope="module")
def judged(tiny_models):
    """The classifier's predictions on held-out faces, blurred, speckled and noise versions, and their labels."""
    classifier, _ = load_classifier(tiny_models["attributes"])
    faces = from_seed(30_000, 128, 112)
    small = resize(faces.images, SIZE)
    gen = torch.Generator().manual_seed(0)
    blurred = gaussian_blur(small, kernel_size=7, sigma=1.5)
    speckled = (blurred + 0.15 * torch.randn(blurred.shape, generator=gen)).clamp(0, 1)
    noise = torch.rand(small.shape, generator=gen)
    return {name: classifier.predict(x) for name, x in
            (("real", faces.images), ("blurred", blurred), ("speckled", speckled), ("noise", noise))}, faces.labels


def test_attribute_agreement_is_high_for_real_faces_lower_blurred_and_chance_for_noise(judged):
    pred, labels = judged
    real, blurred = accuracies(pred["real"], labels)[""], accuracies(pred["blurred"], labels)[""]
    noise, floor = accuracies(pred["noise"], labels)[""], chance(labels)[""]
    assert real >= 0.9, accuracies(pred["real"], labels)
    assert blurred <= real - 0.1, (real, blurred)
    assert noise <= floor + 0.1, (noise, floor)


def test_speckle_does_not_raise_attribute_agreement(judged):
    pred, labels = judged
    assert accuracies(pred["speckled"], labels)[""] <= accuracies(pred["blurred"], labels)[""] + 0.02


def test_total_variation_is_zero_for_the_same_frequencies_and_large_for_a_constant():
    labels = from_seed(1, 48, 32).labels
    assert tv_distances(labels.clamp(min=0), labels)[""] == 0.0  # a bald head's hair colour is not compared
    assert tv_distances(torch.zeros_like(labels), labels)[""] > 0.4


def test_prompt_labels_name_only_what_the_prompt_says():
    names = list(ATTRIBUTES)
    red = prompt_labels("a face with red hair")
    assert red[names.index("hair_colour")] == ATTRIBUTES["hair_colour"].index("red")
    assert all(v == UNKNOWN for i, v in enumerate(red) if names[i] != "hair_colour")
    both = prompt_labels("a smiling face with glasses")
    assert both[names.index("smile")] == 1 and both[names.index("glasses")] == 1
    assert prompt_labels("a neutral face, no glasses")[names.index("glasses")] == 0
