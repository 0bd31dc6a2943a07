"""Text control, measured on the model and not on the wording: does a prompt's sample show what it names?

For every value of hair colour, hair style, glasses and smile, one prompt
names that value alone, in two wordings:

- the captions' own words ("a face with red hair", "a smiling face");
- the words a user would type ("someone with red hair", "someone smiling"),
  in a frame the synthetic captions and their phrasings never use
  (:mod:`raydino.data.phrasing`), so no string of it was fitted to;

and a few held-out faces' full captions name all four at once. Each prompt
gets ``PER_PROMPT`` samples at the prior's guidance; the run's attribute
classifier reads them. The figure, per attribute: the share of samples
whose reading matches the named value, averaged over the values. Beside
it, on the same classifier:

- ``reconstructions``: held-out faces decoded from their own codes (the
  ceiling through the generator);
- ``oracle``: the prior conditioned on each held-out face's own condition
  (its caption's text embedding, or its image embedding for a prior trained
  on image embeddings), read against the face's true attributes;
- ``unconditional``: how often unconditional samples show the value anyway;
- ``chance``: one over the number of values.

And edits: held-out faces' codes noised to ``sample.edit_t`` and integrated
back under a prompt that names a value the face does not have; the share
that shows it, and the share of the other attributes that keep their value.
"""

from __future__ import annotations

import torch

from raydino.data.face_set import ATTRIBUTES, UNKNOWN
from raydino.data.phrasing import named_values
from raydino.data.synth_faces import FaceAttributes
from raydino.evaluation.metrics import dino_cls, fd_with_floor
from raydino.models.face_attributes import AttributeClassifier
from raydino.models.loading import Dino

CONTROLLED = ("hair_colour", "hair_style", "glasses", "smile")
PER_PROMPT = 32        # samples per prompt
FULL_CAPTIONS = 4      # held-out faces whose whole caption is a prompt
CURVE = (1.0, 2.0, 3.0, 5.0)  # guidance scales of the accuracy/FD curve
CURVE_PER_PROMPT = 8   # user-word samples per prompt at the curve's other scales
EDIT_FACES = 24        # held-out faces edited, each toward one new value per attribute
EDIT_CURVE = (0.3, 0.5, 0.7, 0.9)

_STYLE = {"short": "short hair", "long": "long hair", "bald": "a bald head", "bun": "hair in a bun"}
CAPTION_WORDS = {
    **{("hair_colour", c): f"a face with {c} hair" for c in ATTRIBUTES["hair_colour"]},
    **{("hair_style", s): f"a face with {_STYLE[s]}" for s in ATTRIBUTES["hair_style"]},
    ("glasses", "yes"): "a face with glasses", ("glasses", "no"): "a face without glasses",
    ("smile", "yes"): "a smiling face", ("smile", "no"): "a neutral face",
}
_USER_STYLE = {"short": "someone with short hair", "long": "someone with long hair", "bald": "someone who is bald",
               "bun": "someone with their hair in a bun"}
USER_WORDS = {
    **{("hair_colour", c): f"someone with {c} hair" for c in ATTRIBUTES["hair_colour"]},
    **{("hair_style", s): _USER_STYLE[s] for s in ATTRIBUTES["hair_style"]},
    ("glasses", "yes"): "someone wearing glasses", ("glasses", "no"): "someone without glasses",
    ("smile", "yes"): "someone smiling", ("smile", "no"): "someone who is not smiling",
}
WORDINGS = {"caption_words": CAPTION_WORDS, "user_words": USER_WORDS}


def shows(pred: torch.Tensor, name: str, value: str) -> torch.Tensor:
    """Which classifier readings ``pred`` (``[N, len(ATTRIBUTES)]``) show ``name = value``; a bald head shows no hair colour."""
    names = list(ATTRIBUTES)
    ok = pred[:, names.index(name)] == ATTRIBUTES[name].index(value)
    if name == "hair_colour":
        ok &= pred[:, names.index("hair_style")] != ATTRIBUTES["hair_style"].index("bald")
    return ok


def per_attribute(rates: dict[tuple[str, str], float]) -> dict[str, float]:
    """The mean rate over each attribute's values, and over the attributes (key ``""``)."""
    out = {name: sum(r for (n, _), r in rates.items() if n == name) / sum(1 for n, _ in rates if n == name)
           for name in CONTROLLED if any(n == name for n, _ in rates)}
    return out | {"": sum(out.values()) / len(out)}


def prompt_rates(classifier: AttributeClassifier, sampler, prompts: dict[tuple[str, str], str], n: int, seed: int,
                 guidance: float | None = None) -> dict[str, float]:
    """Per attribute, the share of ``n`` samples per prompt that show the value their prompt names."""
    rows = sampler.from_prompts(list(prompts.values()), n, seed, guidance=guidance)
    return per_attribute({key: float(shows(classifier.predict(row.images), *key).float().mean())
                          for key, row in zip(prompts, rows, strict=True)})


def agreement(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per controlled attribute, the share of readings that match the known labels."""
    out = {}
    for name in CONTROLLED:
        i = list(ATTRIBUTES).index(name)
        known = labels[:, i] != UNKNOWN
        out[name] = float((pred[known, i] == labels[known, i]).float().mean())
    return out | {"": sum(out.values()) / len(out)}


def unconditional_rates(pred: torch.Tensor) -> dict[str, float]:
    """How often unconditional samples show each value, averaged over each attribute's values."""
    return per_attribute({(name, v): float(shows(pred, name, v).float().mean())
                          for name in CONTROLLED for v in ATTRIBUTES[name]})


def chance() -> dict[str, float]:
    out = {name: 1 / len(ATTRIBUTES[name]) for name in CONTROLLED}
    return out | {"": sum(out.values()) / len(out)}


def value_of(attrs: FaceAttributes, name: str) -> str:
    """A face's value of ``name`` as prompts name it (a bald head has no hair colour: callers skip it)."""
    return named_values(attrs)[name]


def oracle_conditions(sampler, attrs: list[FaceAttributes], clip_column: torch.Tensor | None) -> torch.Tensor:
    """Each held-out face's own condition, of the kind the prior was trained on."""
    if sampler.flow("--prompt").cfg.condition == "text" or clip_column is None:
        return sampler.text_condition([a.caption() for a in attrs])
    return torch.nn.functional.normalize(clip_column.float(), dim=-1)


def edit_prompts(attrs: list[FaceAttributes]) -> list[tuple[int, str, str]]:
    """``(face, attribute, new value)``: per face and attribute, a value it does not have (bald faces keep their
    hair colour unnamed)."""
    out = []
    for i, a in enumerate(attrs):
        for name in CONTROLLED:
            if name == "hair_colour" and a.hair_style == "bald":
                continue
            values = ATTRIBUTES[name]  # another value, a different one for each face: 1 to len - 1 places on
            out.append((i, name, values[(values.index(value_of(a, name)) + 1 + i % (len(values) - 1)) % len(values)]))
    return out


def edit_figures(classifier: AttributeClassifier, sampler, codes: torch.Tensor, labels: torch.Tensor,
                 attrs: list[FaceAttributes], t: float, seed: int) -> dict[str, float]:
    """``asked/<attr>``: edits that show the new value; ``kept/<attr>``: edits whose other attributes keep theirs."""
    jobs = edit_prompts(attrs)
    faces = torch.tensor([i for i, _, _ in jobs])
    edited = sampler.edit_codes(codes[faces], t, seed, [USER_WORDS[(name, v)] for _, name, v in jobs])
    pred = classifier.predict(sampler.generate(edited, sampler.noise(len(jobs), seed)))
    out = {}
    for name in CONTROLLED:
        rows = [k for k, (_, n, _) in enumerate(jobs) if n == name]
        asked = [bool(shows(pred[k : k + 1], name, jobs[k][2])) for k in rows]
        kept = []
        for k in rows:
            others = [o for o in CONTROLLED if o != name]
            kept += [bool(pred[k, list(ATTRIBUTES).index(o)] == labels[faces[k], list(ATTRIBUTES).index(o)])
                     for o in others if labels[faces[k], list(ATTRIBUTES).index(o)] != UNKNOWN]
        out[f"asked/{name}"] = sum(asked) / len(asked)
        out[f"kept/{name}"] = sum(kept) / len(kept)
    for kind in ("asked", "kept"):
        out[kind] = sum(out[f"{kind}/{n}"] for n in CONTROLLED) / len(CONTROLLED)
    return out


def text_control_figures(sampler, classifier: AttributeClassifier, codes: torch.Tensor, labels: torch.Tensor,
                         attrs: list[FaceAttributes], clip_column: torch.Tensor | None, recon_pred: torch.Tensor,
                         unconditional: torch.Tensor, fd_dino: Dino, real_feats, size: int, seed: int,
                         edit_t: float) -> dict:
    """Every ``text_control/*`` figure of ``raydino eval`` (module docstring).

    ``codes``, ``labels``, ``attrs``, ``clip_column``: the held-out faces'
    codes, attribute labels, attributes and pyramid CLIP embeddings;
    ``recon_pred``: the classifier's reading of their reconstructions;
    ``unconditional``: the flow prior's unconditional samples (those FD scored);
    ``fd_dino``, ``real_feats``, ``size``: FD's encoder, the real half's
    features and the size it encodes at (the guidance curve's FD).
    """
    guidance = sampler.flow("--prompt").cfg.guidance
    out: dict = {"text_control/n_per_prompt": PER_PROMPT, "text_control/guidance": guidance,
                 "text_control/prompts": {w: list(p.values()) for w, p in WORDINGS.items()}}
    figures = {w: prompt_rates(classifier, sampler, p, PER_PROMPT, seed) for w, p in WORDINGS.items()}
    figures["full_captions"] = full_caption_rates(classifier, sampler, attrs[:FULL_CAPTIONS], seed)
    out["text_control/full_captions/prompts"] = [a.caption() for a in attrs[:FULL_CAPTIONS]]
    figures["reconstructions"] = agreement(recon_pred, labels)
    n = len(attrs) // 2  # FD's generated half: the first held-out faces, never the real half it is compared with
    oracle = oracle_conditions(sampler, attrs[:n], None if clip_column is None else clip_column[:n])
    curve = []
    for g in sorted({*CURVE, guidance}):
        images = sampler.from_condition(oracle, seed, guidance=g)
        read = agreement(classifier.predict(images), labels[:n])
        point = {"guidance": g, "oracle": read[""],
                 "fd_dinov2": fd_with_floor(dino_cls(fd_dino, images, size), real_feats)["value"],
                 "user_words": figures["user_words"][""] if g == guidance else
                 prompt_rates(classifier, sampler, USER_WORDS, CURVE_PER_PROMPT, seed, g)[""]}
        if g == guidance:
            figures["oracle"] = read
        curve.append(point)
    out["text_control/curve"] = curve
    out["text_control/oracle/n"] = n
    figures["unconditional"] = unconditional_rates(classifier.predict(unconditional))
    figures["chance"] = chance()
    for what, rates in figures.items():
        out |= {f"text_control/{what}/{k}" if k else f"text_control/{what}": v for k, v in rates.items()}
    faces = min(EDIT_FACES, len(attrs))
    edit = lambda t: edit_figures(classifier, sampler, codes[:faces], labels[:faces], attrs[:faces], t, seed)  # noqa: E731
    out |= {"text_control/edits/t": edit_t, "text_control/edits/faces": faces}
    out |= {f"text_control/edits/{k}": v for k, v in edit(edit_t).items()}
    out["text_control/edits/curve"] = [{"t": t, **edit(t)} for t in EDIT_CURVE]
    return out


def full_caption_rates(classifier: AttributeClassifier, sampler, attrs: list[FaceAttributes],
                       seed: int) -> dict[str, float]:
    """Per attribute, the share of samples of held-out faces' whole captions that show what the caption says."""
    rows = sampler.from_prompts([a.caption() for a in attrs], PER_PROMPT, seed)
    rates: dict[tuple[str, str], list[float]] = {}
    for a, row in zip(attrs, rows, strict=True):
        pred = classifier.predict(row.images)
        for name in CONTROLLED:
            if not (name == "hair_colour" and a.hair_style == "bald"):
                key = (name, value_of(a, name))
                rates.setdefault(key, []).append(float(shows(pred, *key).float().mean()))
    return per_attribute({k: sum(v) / len(v) for k, v in rates.items()})
