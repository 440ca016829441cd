"""ShapesWorld prompt grammar: shapes × colours × optional size, single objects and related pairs.

Prompts (pure Python, no torch, so the CLI can validate prompts cheaply):
- single objects: "a red cube", "a large blue sphere", "an orange torus" (size: none, "small" or "large");
- pairs: "a red cube on top of a blue sphere", "a yellow cone next to a blue cylinder" (no sizes in pairs).

7 shapes × 9 colours × 3 sizes = 189 single prompts and 63² × 2 relations = 7 938 pair prompts: 8 127 in all.
White is left out on purpose: on the default white background a white object is invisible in albedo renders.

Splits (`splits(seed)`), the compositional-generalisation rule: each shape gets one held-out colour, the 7
colours drawn without repetition from a seeded permutation of the 9, so every shape still appears in train with
8 colours and every colour with at least 6 shapes. **test** = every prompt (single or pair) that contains a
held-out (shape, colour) object; no train or val prompt contains one anywhere, yet every word of a test prompt
occurs in train. **val** = a seeded 5 % of the remaining prompts (seen combinations, unseen prompts); **train**
= the rest. Each split is shuffled by the seed, so any prefix is a random sample.

`corpus(n, seed)` is the first n prompts of a fixed ordering of train in which every 4th prompt is a single
object while singles last: corpora are nested (corpus(n) ⊂ corpus(2n)) and small ones still hold singles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

# Shape name → id used by the scene module; order is part of the world's definition.
SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus", "capsule", "pyramid")
# Albedos with distinct hues, so that Lambertian shading (brightness ×0.3…1) cannot turn one into another.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.2, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.95, 0.85, 0.15),
    "orange": (0.95, 0.5, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "pink": (0.95, 0.55, 0.75),
    "cyan": (0.15, 0.8, 0.85),
    "black": (0.1, 0.1, 0.1),
}
SIZES: dict[str, float] = {"small": 0.7, "large": 1.25}  # scale factors; no size word = 1
RELATIONS: tuple[str, ...] = ("on top of", "next to")
ARTICLES: tuple[str, ...] = ("a", "an", "the")
# Accepted (and ignored) at the end of a prompt: the view-dependent caption suffixes of the SD-style prior.
VIEWS: tuple[str, ...] = ("front", "side", "back", "overhead")

VOCABULARY: frozenset[str] = frozenset(
    [*SHAPES, *COLORS, *SIZES, *ARTICLES, *VIEWS, "view"] + [w for r in RELATIONS for w in r.split()]
)
VAL_FRACTION = 0.05
SINGLE_EVERY = 4  # corpus ordering: every 4th prompt is a single object (while singles last)


class PromptError(ValueError):
    """A prompt outside the ShapesWorld grammar; the message names the offending words and the grammar. The world
    imports nothing of asdcli, so the app and command edges turn it into a `UserError` (exit 2, this message)."""


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str | None = None  # None, "small" or "large"

    @property
    def text(self) -> str:
        words = [self.size, self.color, self.shape] if self.size else [self.color, self.shape]
        return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"


@dataclass(frozen=True)
class SceneSpec:
    """A parsed prompt: one object, or two with a relation ("on top of": objects[0] above objects[1])."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.relation is None:
            return self.objects[0].text
        return f"{self.objects[0].text} {self.relation} {self.objects[1].text}"

    def geometry_key(self) -> tuple:
        """Identifies the shape of the scene up to rotation about z: colours dropped, and "next to" pairs
        sorted (swapping the two objects of a "next to" pair is a 180° turn of the same scene)."""
        objs = [(o.shape, o.size) for o in self.objects]
        if self.relation == "next to":
            objs = sorted(objs, key=lambda x: (x[0], x[1] or ""))
        return (self.relation, tuple(objs))


PAIR_ORDERS = ("prompt", "left_first")  # how a prior's captions name a "next to" pair (train-prior's pair_order)


def name_left_first(prompt: str, azimuth: float) -> str:
    """The caption of a "next to" pair as a camera at `azimuth` (degrees) sees it: the object on the image's left
    named first. "A next to B" puts A at −y, which is on the left for |azimuth| ≤ 90° and on the right beyond, so
    behind the pair the caption becomes "B next to A". Read in left-to-right order, the first-named object is
    always the left one: a first-order cue like "on top of"'s, where a prompt-order caption leaves the prior to
    learn the order × view-word interaction (it did not: docs/notebook.md §9b). Other prompts are returned unchanged."""
    halves = prompt.split(" next to ")
    wrapped = (azimuth + 180.0) % 360.0 - 180.0
    if len(halves) != 2 or abs(wrapped) <= 90.0:
        return prompt
    return f"{halves[1]} next to {halves[0]}"


def caption_as_seen(prompt: str, azimuth: float, pair_order: str) -> str:
    """The prompt as a prior trained with `pair_order` (one of PAIR_ORDERS) was captioned from a camera at
    `azimuth`: the one rule train-prior writes its captions by and the SD path words its view prompts by."""
    return name_left_first(prompt, azimuth) if pair_order == "left_first" else prompt


GRAMMAR_HELP = (
    "ShapesWorld prompts are '[a|an] [small|large] COLOUR SHAPE' or 'OBJECT on top of|next to OBJECT' "
    f"(shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)})"
)


def _tokens(text: str) -> list[str]:
    return [w for w in (t.strip(".,;:!?\"'") for t in text.lower().split()) if w]


def unknown_words(text: str) -> list[str]:
    """Words of `text` outside the ShapesWorld vocabulary, in order of appearance, without repeats."""
    seen: dict[str, None] = {}
    for w in _tokens(text):
        if w not in VOCABULARY:
            seen.setdefault(w)
    return list(seen)


def _parse_object(words: list[str], text: str) -> ObjectSpec:
    if words and words[0] in ARTICLES:
        words = words[1:]
    size = words[0] if words and words[0] in SIZES else None
    rest = words[1:] if size else words
    if len(rest) != 2 or rest[0] not in COLORS or rest[1] not in SHAPES:
        got = " ".join(words) or "nothing"
        raise PromptError(f"cannot parse {got!r} in {text!r} as an object. {GRAMMAR_HELP}")
    return ObjectSpec(shape=rest[1], color=rest[0], size=size)


def _split_relation(words: list[str]) -> tuple[str | None, list[list[str]]]:
    found: list[tuple[int, str]] = []
    for rel in RELATIONS:
        rw = rel.split()
        found += [(i, rel) for i in range(len(words) - len(rw) + 1) if words[i:i + len(rw)] == rw]
    if not found:
        return None, [words]
    if len(found) > 1:
        raise PromptError(f"a ShapesWorld prompt holds at most one relation. {GRAMMAR_HELP}")
    i, rel = found[0]
    return rel, [words[:i], words[i + len(rel.split()):]]


def parse_prompt(text: str) -> SceneSpec:
    """Parse a prompt into a SceneSpec; raises PromptError naming unknown words or the malformed part."""
    unknown = unknown_words(text)
    if unknown:
        raise PromptError(f"words outside the ShapesWorld vocabulary: {', '.join(unknown)}. {GRAMMAR_HELP}")
    words = _tokens(text)
    if len(words) >= 2 and words[-1] == "view" and words[-2] in VIEWS:
        words = words[:-2]
    relation, parts = _split_relation(words)
    return SceneSpec(objects=tuple(_parse_object(p, text) for p in parts), relation=relation)


def all_objects(with_sizes: bool = True) -> list[ObjectSpec]:
    sizes = [None, *SIZES] if with_sizes else [None]
    return [ObjectSpec(s, c, z) for s in SHAPES for c in COLORS for z in sizes]


@lru_cache(maxsize=1)
def all_specs() -> tuple[SceneSpec, ...]:
    """Every scene of the world: singles (with sizes) first, then pairs (without sizes), in a fixed order."""
    singles = [SceneSpec((o,)) for o in all_objects(True)]
    plain = all_objects(False)
    pairs = [SceneSpec((a, b), rel) for rel in RELATIONS for a in plain for b in plain]
    return tuple(singles + pairs)


def all_prompts() -> list[str]:
    return [s.text for s in all_specs()]


def held_out_combinations(seed: int = 0) -> frozenset[tuple[str, str]]:
    """The (shape, colour) objects reserved for test: one colour per shape, never the same colour twice."""
    colors = list(COLORS)
    random.Random(f"shapesworld-heldout-{seed}").shuffle(colors)
    return frozenset((shape, colors[i]) for i, shape in enumerate(SHAPES))


@lru_cache(maxsize=8)
def _splits(seed: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    held = held_out_combinations(seed)
    test, seen = [], []
    for spec in all_specs():
        is_test = any((o.shape, o.color) in held for o in spec.objects)
        (test if is_test else seen).append(spec.text)
    rng = random.Random(f"shapesworld-splits-{seed}")
    rng.shuffle(seen)
    rng.shuffle(test)
    n_val = round(VAL_FRACTION * len(seen))
    return tuple(seen[n_val:]), tuple(seen[:n_val]), tuple(test)


def splits(seed: int = 0) -> dict[str, list[str]]:
    """{"train", "val", "test"} prompt lists (see the module docstring for the hold-out rule)."""
    train, val, test = _splits(seed)
    return {"train": list(train), "val": list(val), "test": list(test)}


@lru_cache(maxsize=8)
def _corpus_order(seed: int) -> tuple[str, ...]:
    train = _splits(seed)[0]
    singles = [p for p in train if " on top of " not in p and " next to " not in p]
    pairs = [p for p in train if " on top of " in p or " next to " in p]
    order: list[str] = []
    i = j = 0
    while i < len(singles) or j < len(pairs):
        if i < len(singles) and (len(order) % SINGLE_EVERY == 0 or j == len(pairs)):
            order.append(singles[i])
            i += 1
        else:
            order.append(pairs[j])
            j += 1
    return tuple(order)


def corpus(n: int, seed: int = 0) -> list[str]:
    """The first n prompts of the nested train ordering: corpus(n) is a prefix (so a subset) of corpus(2n)."""
    order = _corpus_order(seed)
    if not 1 <= n <= len(order):
        raise PromptError(f"corpus size must be between 1 and {len(order)} (the train split), got {n}")
    return list(order[:n])
