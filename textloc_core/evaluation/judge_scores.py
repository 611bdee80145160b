"""Judge-based scene scores (TinyWorld): did the generated image show what its prompt asked?

A judge (TinyWorld's classifier) reports the objects it sees in an image; these functions
compare that with what the prompt asked for: the learned concept with its exact attributes
(target fidelity), no unprompted co-occurring object (leakage), and the other prompted
content (prompt alignment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ObjectSpec = Mapping[str, str]
"""An object by its attributes, e.g. {"shape": "star", "colour": "orange", "texture": "dotted"}."""


@dataclass
class Judgement:
    """What a judge saw in one image.

    ``objects``: detections, each an attribute dict. A detection may be partial: the TinyWorld
    judge reports (colour, shape) and (texture, shape) pairs separately, i.e. detections
    {"colour": "orange", "shape": "star"} and {"texture": "dotted", "shape": "star"}.
    """

    objects: list[dict[str, str]]
    background: str | None = None


@dataclass
class ExpectedScene:
    """What one generated image was supposed to show.

    ``targets``: the learned concept(s) prompted, with their exact attributes.
    ``others``: other prompted objects (new scene content). ``background``: the prompted one.
    ``unprompted``: objects that must NOT appear (the co-occurring non-target object of the
    training images when it is not in the prompt).
    """

    targets: list[ObjectSpec]
    others: list[ObjectSpec] = field(default_factory=list)
    background: str | None = None
    unprompted: list[ObjectSpec] = field(default_factory=list)


@dataclass
class JudgeScores:
    """Fractions over images (``nan`` where no image had anything to score).

    target_fidelity: all targets present with their exact attributes.
    leakage: any unprompted co-occurring object present.
    prompt_alignment: mean fraction of the prompted other objects + background present.
    """

    target_fidelity: float
    leakage: float
    prompt_alignment: float
    n: int


def object_present(judgement: Judgement, spec: ObjectSpec) -> bool:
    """Whether the judge confirms every attribute of ``spec``.

    Attribute ``k`` is confirmed by a detection that has ``k`` with the spec's value and
    agrees with the spec on every other attribute both name. With full detections this is
    "one detection matches the whole spec"; with partial ones (colour+shape, texture+shape)
    it binds each attribute to the spec's shape, the most a pairwise judge can say.
    """
    if not spec:
        raise ValueError("object spec is empty: name at least one attribute (e.g. {'shape': 'star'})")

    def confirms(detection: Mapping[str, str], key: str) -> bool:
        return detection.get(key) == spec[key] and all(
            detection[other] == value for other, value in spec.items() if other in detection
        )

    return all(any(confirms(d, key) for d in judgement.objects) for key in spec)


def _mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def judge_scores(judgements: Sequence[Judgement], expected: Sequence[ExpectedScene] | ExpectedScene) -> JudgeScores:
    """Score a judge's view of generated images against what each image's prompt asked."""
    if isinstance(expected, ExpectedScene):
        expected = [expected] * len(judgements)
    if len(expected) != len(judgements):
        raise ValueError(
            f"expected: {len(expected)} expected scenes for {len(judgements)} judgements; give one per image or one for all"
        )
    fidelity, leakage, alignment = [], [], []
    for judgement, spec in zip(judgements, expected):
        if spec.targets:
            fidelity.append(float(all(object_present(judgement, t) for t in spec.targets)))
        if spec.unprompted:
            leakage.append(float(any(object_present(judgement, u) for u in spec.unprompted)))
        checks = [object_present(judgement, o) for o in spec.others]
        if spec.background is not None:
            checks.append(judgement.background == spec.background)
        if checks:
            alignment.append(sum(checks) / len(checks))
    return JudgeScores(_mean_or_nan(fidelity), _mean_or_nan(leakage), _mean_or_nan(alignment), len(judgements))
