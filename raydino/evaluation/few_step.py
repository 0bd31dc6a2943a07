"""The distilled student beside its teacher, on the figures that judge a prior: FD and text control.

One row per sampler: the teacher (the flow prior, at its own K guided Heun
steps) and the student at 1, 2 and 4 Euler evaluations. Each row has the
network evaluations a code costs, the FD of unconditional samples, the FD
and attribute agreement of samples conditioned on held-out faces' own
captions (the oracle, at the prior's guidance), and the user-words text
control of :mod:`raydino.evaluation.text_control`. The same noise seeds
for every row: they differ by their sampler alone.
"""

from __future__ import annotations

import torch

from raydino.evaluation.metrics import dino_cls, fd_with_floor
from raydino.evaluation.text_control import PER_PROMPT, USER_WORDS, agreement, prompt_rates
from raydino.models.face_attributes import AttributeClassifier
from raydino.models.loading import Dino

STUDENT_STEPS = (1, 2, 4)


def few_step_rows(sampler, classifier: AttributeClassifier, labels: torch.Tensor, oracle: torch.Tensor,
                  fd_dino: Dino, real_feats, size: int, seed: int) -> list[dict]:
    """The teacher's row, then the student's at each of :data:`STUDENT_STEPS`; [] without a student.

    ``oracle``: the first held-out faces' own conditions, ``labels`` their attributes.
    """
    if not sampler.run.student.is_file():
        return []
    def fd(images: torch.Tensor) -> float:
        return fd_with_floor(dino_cls(fd_dino, images, size), real_feats)["value"]

    rows = []
    for teacher, steps in [(True, None), *((False, k) for k in STUDENT_STEPS)]:
        s = sampler.variant(teacher, steps)
        prior = s.flow("--prior")
        uncond = s.from_prior(len(oracle), seed)[0].images
        conditioned = s.from_condition(oracle, seed)
        words = prompt_rates(classifier, s, USER_WORDS, PER_PROMPT, seed)
        rows.append({"prior": "student" if prior.student else "teacher", "steps": prior.cfg.sample_steps,
                     "evaluations": prior.evaluations(), "fd_dinov2": fd(uncond), "fd_dinov2/oracle": fd(conditioned),
                     "oracle": agreement(classifier.predict(conditioned), labels)[""],
                     **{f"user_words/{k}" if k else "user_words": v for k, v in words.items()}})
    return rows
