"""Which part draws a second prompted object wrong: the learned token, the K/V deltas, or the
base model itself?

    python scripts/binding_check.py                      # dotstar, seed 0, 16 images a prompt
    python scripts/binding_check.py --record benchmarks/records/binding/binding-check.jsonl

Trains one TinyWorld concept at the default hard recipe (``RECIPE``, round 3's in
docs/results.md), then samples "a <token> star and a red triangle on night" (each object of
``OTHERS``) under each of ``CONDITIONS`` and judges every image: the concept's colour+shape,
the other object as prompted, the other object's shape in any colour, that shape in the
concept's colour (the concept's colour bound to the wrong object), and the concept and the
other object together. ``--record`` appends one JSON line with the counts, the settings and
the code version.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import records  # noqa: E402
from benchmarks.tinyworld_protocol import (  # noqa: E402
    Protocol,
    concept_set_for,
    concept_words,
    judgement_of,
    kind_spec,
    train_config,
    world,
)
from textloc_core import api  # noqa: E402
from textloc_core.data.concepts import with_article  # noqa: E402
from textloc_core.evaluation import judge_scores  # noqa: E402

RECIPE = Protocol(
    unmasked_weight=0.0, preservation_weight=30.0, outside_preservation_weight=3.0, train_map_levels="all"
)
"""The default hard recipe (masked 0, preserve 30, outside 3, maps all) in the bench's terms."""
OTHERS = (("triangle", "red"), ("cross", "white"))
"""(shape, colour) of the second objects: pretraining kinds that share nothing with the pair."""
CONDITIONS = (
    ("adapter", "token", 1.0),
    ("token only", "token", 0.0),
    ("adapter, no token", "class word", 1.0),
    ("base model", "class word", None),
    ("base model, in words", "words", None),
)
"""(name, how the concept is named, strength of the K/V deltas; None: no adapter at all). The
token alone is the adapter at strength 0 (its embedding stays); "no token" puts the class word
where the token was; "in words" describes the concept ("an orange dotted star")."""


def prompt_for(concept, token: str, naming: str, other, background: str = "night") -> str:
    """The two-object prompt with the concept named as ``naming`` says (see ``CONDITIONS``)."""
    first = concept_words(concept.kind, token, concept.class_word, naming)
    return f"{with_article(first)} and {with_article(other.phrase())} on {background}"


def counts(judgements, concept, other) -> dict[str, int]:
    """Per image verdicts summed: concept, other (as prompted), other's shape, other's shape in
    the concept's colour, and concept with other."""
    present = judge_scores.object_present
    tally = dict.fromkeys(("concept", "other", "other_shape", "other_shape_concept_colour", "both"), 0)
    for j in judgements:
        has_concept = present(j, kind_spec(concept.kind, with_texture=False))
        has_other = present(j, kind_spec(other, with_texture=False))
        tally["concept"] += has_concept
        tally["other"] += has_other
        tally["other_shape"] += present(j, {"shape": other.shape})
        tally["other_shape_concept_colour"] += present(j, {"shape": other.shape, "colour": concept.kind.colour})
        tally["both"] += has_concept and has_other
    return tally


def run(name: str, seed: int, images: int, recipe: Protocol = RECIPE) -> list[dict]:
    """Train ``name`` at ``recipe`` and judge every (other object, condition)."""
    from textloc_core.tinyworld import ObjectKind
    from textloc_core.tinyworld.world import held_out_concept

    w = world(random_weights=False)
    concept = held_out_concept(name)
    concept_set = concept_set_for(name, seed, "single")
    adapter = api.train(w["bundle"], concept_set, train_config(recipe, "hard@cal", seed))
    token = concept_set.concepts[0].token
    rows = []
    for shape, colour in OTHERS:
        other = ObjectKind(shape, colour)
        for condition, naming, strength in CONDITIONS:
            prompt = prompt_for(concept, token, naming, other)
            applied = {} if strength is None else {"adapters": [adapter], "strengths": [strength]}
            gen = api.generate(
                w["bundle"],
                prompt,
                num_images=images,
                steps=recipe.sample_steps,
                guidance_scale=recipe.guidance_scale,
                seed=seed,
                **applied,
            )
            tally = counts([judgement_of(v) for v in w["judge"](gen.images)], concept, other)
            rows.append({"condition": condition, "prompt": prompt, "images": images, **tally})
    return rows


def table(rows: list[dict]) -> str:
    keys = ("concept", "other", "other_shape", "other_shape_concept_colour", "both")
    head = "| condition | prompt | concept | other | other's shape | other's shape, concept's colour | both |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['prompt']} | " + " | ".join(f"{r[k]}/{r['images']}" for k in keys) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", default="dotstar", help="TinyWorld held-out concept")
    parser.add_argument("--seed", type=int, default=0, help="training data and sampling seed")
    parser.add_argument("--images", type=int, default=16, help="images a prompt and condition")
    parser.add_argument(
        "--other-object-rate",
        type=float,
        default=RECIPE.other_object_rate,
        help="TrainConfig.other_object_rate of the trained adapter (the recipe's otherwise)",
    )
    parser.add_argument("--record", type=Path, default=None, help="append the check's JSON line to this file")
    args = parser.parse_args(argv)
    began = time.time()
    recipe = replace(RECIPE, other_object_rate=args.other_object_rate)
    rows = run(args.concept, args.seed, args.images, recipe)
    print(table(rows))
    if args.record:
        records.append_record(
            args.record,
            {
                "check": "binding",
                "code": records.code_version(),
                "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.time() - began, 1),
                "concept": args.concept,
                "seed": args.seed,
                "config": asdict(train_config(recipe, "hard@cal", args.seed)),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
