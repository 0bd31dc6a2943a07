"""Attribute agreement: do generated faces have the attributes they should?

A figure in a feature space can be gamed by whatever that space rewards
(speckle, under a random encoder). This one asks a question with a known
answer: the synthetic faces know their attributes, and a classifier trained
on real synthetic faces only (``models/face_attributes.py``) reads them back
from generated images.

- reconstructions: per-attribute accuracy against the held-out targets' true
  attributes (joined through the pyramid's ``path`` column with the faces
  folder's ``metadata.parquet``);
- prompt samples: accuracy against the attributes each prompt names;
- prior samples: total-variation distance between the attribute frequencies
  the classifier reads from them and the held-out faces' true frequencies
  (0: same distribution, 1: disjoint);
- and two references: the classifier on the real held-out images (its
  ceiling) and chance (always the most frequent class).
"""

from __future__ import annotations

import numpy as np
import torch

from raydino.data.face_set import ATTRIBUTES, UNKNOWN, labels_for_paths, prompt_labels
from raydino.models.face_attributes import AttributeClassifier, load_classifier

PROMPT_SAMPLES = 16  # samples per prompt: accuracy over a handful of samples is too coarse


def accuracies(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per attribute: the share of known labels the predictions match, and their mean (key ``""``)."""
    out = {}
    for i, name in enumerate(ATTRIBUTES):
        known = labels[:, i] != UNKNOWN
        if known.any():
            out[name] = float((pred[known, i] == labels[known, i]).float().mean())
    if out:
        out[""] = float(np.mean(list(out.values())))
    return out


def chance(labels: torch.Tensor) -> dict[str, float]:
    """Accuracy of always guessing each attribute's most frequent class."""
    out = {}
    for i, name in enumerate(ATTRIBUTES):
        y = labels[labels[:, i] != UNKNOWN, i]
        if len(y):
            out[name] = float(torch.bincount(y).max() / len(y))
    out[""] = float(np.mean(list(out.values())))
    return out


def tv_distances(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per attribute: total variation between the predicted and the true class frequencies, and their mean."""
    out = {}
    for i, (name, classes) in enumerate(ATTRIBUTES.items()):
        y = labels[labels[:, i] != UNKNOWN, i]
        p = pred[:, i]
        if name == "hair_colour":  # bald heads have no hair colour: compare the faces that have hair
            p = p[pred[:, list(ATTRIBUTES).index("hair_style")] != ATTRIBUTES["hair_style"].index("bald")]
        if len(y) and len(p):
            real = torch.bincount(y, minlength=len(classes)).float() / len(y)
            gen = torch.bincount(p, minlength=len(classes)).float() / len(p)
            out[name] = float((real - gen).abs().sum() / 2)
    out[""] = float(np.mean(list(out.values())))
    return out


def _named(prefix: str, figures: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}" if k else prefix: v for k, v in figures.items()}


def attribute_figures(sampler, recon: torch.Tensor, real: torch.Tensor, paths: list[str], prior: torch.Tensor | None,
                      seed: int, prompts: list[str] | None = None) -> dict:
    """The ``attributes/...`` figures of ``raydino eval``; none when the run names no classifier.

    ``sampler``: the run's :class:`raydino.sampling.Sampler`; ``recon``: its
    reconstructions of the held-out rows whose source images are ``paths``;
    ``real``: those images at the reconstructions' resolution (the
    classifier's ceiling is measured where the generator is); ``prior``: the
    run's prior samples (those FD scored), or None without a prior.
    """
    spec = sampler.cfg.eval.attribute_classifier
    if not spec:
        return {}
    classifier, description = load_classifier(spec)
    out: dict = {"attribute_classifier": description}
    labels = labels_for_paths(paths)
    if labels is None:
        out["attributes/note"] = "the held-out images have no synthetic-face metadata.parquet: no true attributes"
        return out
    labels = torch.from_numpy(labels)
    out |= _named("attributes/real", accuracies(classifier.predict(real), labels))
    out |= _named("attributes/chance", chance(labels))
    out |= _named("attributes/reconstructions", accuracies(classifier.predict(recon), labels))
    if prior is not None:
        out |= _named("attributes/prior_tv", tv_distances(classifier.predict(prior), labels))
    if prompts and sampler.cfg.pyramids.clip and sampler.run.prior.is_file():
        out |= _named("attributes/prompts", prompt_accuracies(classifier, sampler, prompts, seed))
    return out


def prompt_accuracies(classifier: AttributeClassifier, sampler, prompts: list[str], seed: int) -> dict[str, float]:
    """Accuracy of prompt samples against the attributes their prompts name, pooled over the prompts."""
    rows = sampler.from_prompts(prompts, PROMPT_SAMPLES, seed)
    pred = torch.cat([classifier.predict(row.images) for row in rows])
    wanted = torch.tensor([prompt_labels(p) for p in prompts for _ in range(PROMPT_SAMPLES)], dtype=torch.long)
    return accuracies(pred, wanted)
