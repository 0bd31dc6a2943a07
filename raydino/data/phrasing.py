"""How people describe a face: captions that name some of its attributes, in several phrasings.

Every synthetic face has one caption in ``metadata.parquet``, always in the
same shape and always naming every attribute. Real captions are not like
that: they name what the writer noticed, in the writer's words. A text
encoder fitted to one shape learns that shape (a prompt in other words lands
nowhere), and a prior conditioned on full captions never sees a prompt that
names one thing and leaves the rest to chance. So the offline world phrases
each face many ways: a random subset of its attributes, each said one of
several ways, in one of several sentence frames.

A phrasing is a pure function of the named values and an integer seed, and
the frame is drawn before the values are read: the same seed with one value
changed gives the same sentence with one word changed. That is the hard
negative of NegCLIP (Yuksekgonul et al. 2023), which teaches an encoder the
words a bag-of-words encoder ignores.

Sentences that start with "someone" are never produced here: the
evaluation's user-typed prompts (:data:`raydino.evaluation.text_control`)
use that frame, so they test wording the text encoder was never fitted to.
"""

from __future__ import annotations

import random

from raydino.data.synth_faces import EYE_COLOURS, HAIR_COLOURS, HAIR_STYLES, FaceAttributes

# what a phrasing can name, with every value it can take
VALUES: dict[str, tuple[str, ...]] = {
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_style": HAIR_STYLES,
    "eye_colour": tuple(EYE_COLOURS),
    "glasses": ("no", "yes"),
    "smile": ("no", "yes"),
}
KEEP = 0.55  # chance that a phrasing names each attribute (at least one is always named)
SUBJECTS = ("a face", "a person", "a portrait of a person", "a photo of a face", "a headshot of a person", "a portrait")
MOODS = {"yes": ("smiling", "with a smile", "who is smiling", "smiling happily"),
         "no": ("neutral", "with a neutral expression", "who is not smiling", "with a serious expression")}
SPECTACLES = {"yes": ("glasses", "wearing glasses", "with glasses on"),
              "no": ("no glasses", "not wearing glasses", "without glasses")}


def named_values(attrs: FaceAttributes) -> dict[str, str]:
    """Every attribute a phrasing may name, as its value; a bald head has no hair colour."""
    values = {"hair_colour": attrs.hair_colour, "hair_style": attrs.hair_style, "eye_colour": attrs.eye_colour,
              "glasses": "yes" if attrs.glasses else "no", "smile": "yes" if attrs.smile else "no"}
    if attrs.hair_style == "bald":
        del values["hair_colour"]
    return values


def holds(named: dict[str, str], values: dict[str, str]) -> bool:
    """Whether a phrasing that names ``named`` is true of a face whose values are ``values``."""
    return all(values.get(k) == v for k, v in named.items())


def phrase(named: dict[str, str], seed: int) -> str:
    """One sentence naming exactly ``named`` (a subset of :data:`VALUES`' keys), its frame drawn from ``seed``."""
    r = random.Random(seed)
    subject, mood_form, spec_form, hair_form, order = (r.randrange(len(SUBJECTS)), r.randrange(4), r.randrange(3),
                                                       r.randrange(3), r.random() < 0.5)
    items = []
    hair = _hair(named.get("hair_colour"), named.get("hair_style"), hair_form)
    if hair:
        items.append(hair)
    if "eye_colour" in named:
        items.append(f"{named['eye_colour']} eyes")
    spectacles = SPECTACLES[named["glasses"]][spec_form] if "glasses" in named else None
    if spectacles and spectacles.startswith(("glasses", "no ")):
        items.append(spectacles)
        spectacles = None
    if order:
        items.reverse()
    head = SUBJECTS[subject]
    mood = MOODS[named["smile"]][mood_form] if "smile" in named else None
    if mood in ("smiling", "neutral") and head.startswith("a "):  # an adjective: "a smiling person"
        head, mood = f"a {mood} {head[2:]}", None
    clauses = [c for c in (mood, spectacles) if c]
    text = head + (" with " + _join(items) if items else "")
    return text + ("" if not clauses else (", " if items else " ") + " and ".join(clauses))


def _hair(colour: str | None, style: str | None, form: int) -> str | None:
    if style == "bald":
        return "a bald head"
    if style == "bun":
        return f"{colour} hair in a bun" if colour else "hair in a bun"
    if colour and style:
        return f"{style} {colour} hair" if form else f"{colour} hair, worn {style}"
    if colour or style:
        return f"{colour or style} hair"
    return None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(values: dict[str, str], rng: random.Random) -> tuple[dict[str, str], int]:
    """A random non-empty subset of a face's ``values`` and a frame seed: what one writer would say of it."""
    named = {k: v for k, v in values.items() if rng.random() < KEEP}
    if not named:
        key = rng.choice(sorted(values))
        named = {key: values[key]}
    return named, rng.randrange(2**31)


def flip(named: dict[str, str], rng: random.Random) -> dict[str, str]:
    """``named`` with one of its values changed to another: the hard negative of a phrasing."""
    key = rng.choice(sorted(named))
    out = dict(named)
    out[key] = rng.choice([v for v in VALUES[key] if v != named[key]])
    if out.get("hair_style") == "bald":  # a bald head has no hair colour to name
        out.pop("hair_colour", None)
    return out
