"""Judge the TinyWorld demo's previews: does the rest of the prompt still work, and does the
learned concept's map lie on it?

    python scripts/demo_check.py                       # 8 images per preview, prints the table
    python scripts/demo_check.py --images 16 --record benchmarks/records/demo/demo-check.jsonl
    python scripts/demo_check.py --images 16 --base-model concept-words   # the base model, told the concept in words

Runs the shipped demo graph (workflows/api/tinyworld_demo_api.json, its settings unchanged
except each Attention Preview's batch size) in a real headless ComfyUI, saves every preview's
images and token maps, and scores them with TinyWorld's judge:

* **background** / **other object**: the prompted background, and the prompted object that is
  not the concept, are what the judge sees (``judge_scores.object_present``);
* **concept**: the concept's colour and shape are there;
* **map on concept**: the map's brightest point lies on the concept (within ``PEAK_REACH``
  pixels of a pixel of the concept's colour), in a sample where the judge sees the concept. The
  record also keeps the share of the map's mass on those pixels and their share of the image
  (the map is a 16x16 grid at TinyWorld's size, so it is broad: its mass on the concept is
  about 1.5-2 times what a uniform map would put there).

The demo's goal (issue "make the promise visible"): in the previews that name another object,
the background and that object both appear in at least half of the samples, and the map lies
on the concept. ``--record`` appends one JSON line with every sample's values, the graph's
settings and the code version.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import records  # noqa: E402
from benchmarks.tinyworld_protocol import judgement_of, kind_spec  # noqa: E402
from textloc_core.data.concepts import with_article  # noqa: E402
from textloc_core.evaluation import judge_scores  # noqa: E402
from textloc_harness.comfy_launcher import (  # noqa: E402
    ComfyLayout,
    ComfyServer,
    add_comfyui_option,
    comfyui_dir,
    load_workflow,
    missing_comfyui_reason,
    output_files,
)

WORKFLOW = REPO / "workflows" / "api" / "tinyworld_demo_api.json"
PEAK_REACH = 2
"""Pixels (each side) around the map's maximum searched for a pixel of the concept's colour."""
COLOUR_DISTANCE = 0.3
"""RGB distance (0-1 scale) within which a pixel has the concept's colour."""
PROMPT = re.compile(r"^an? (?:<[^>]+> )?[\w ]+?(?: and an? (?P<colour>\w+) (?P<shape>\w+))? on (?P<background>\w+)$")
"""A preview prompt: the concept (token and class word, or words), maybe another object, a background."""
TOKEN = re.compile(r"<[^>]+> (\w+)")
"""An identifier token and the class word after it, in a preview prompt."""


def checked_graph(workflow: dict, images: int) -> tuple[dict, dict[str, dict]]:
    """The demo graph with every Attention Preview sampling ``images`` images and saving them
    and their maps; returns (graph, preview id -> its save nodes' ids and prompt)."""
    graph = copy.deepcopy(workflow)
    previews = {}
    for node_id, node in workflow.items():
        if node["class_type"] != "TextLocAttentionPreview":
            continue
        graph[node_id]["inputs"]["batch_size"] = images
        save_images, to_image, save_maps = (
            f"check_{node_id}_images",
            f"check_{node_id}_to_image",
            f"check_{node_id}_maps",
        )
        graph[save_images] = {
            "class_type": "SaveImage",
            "inputs": {"images": [node_id, 0], "filename_prefix": f"check/{node_id}_images"},
        }
        graph[to_image] = {"class_type": "MaskToImage", "inputs": {"mask": [node_id, 2]}}
        graph[save_maps] = {
            "class_type": "SaveImage",
            "inputs": {"images": [to_image, 0], "filename_prefix": f"check/{node_id}_maps"},
        }
        previews[node_id] = {"images": save_images, "maps": save_maps, "prompt": node["inputs"]["prompt"]}
    return graph, previews


BASE_PROMPTS = ("class-word", "concept-words")
"""What the base model's previews put in place of the token and its class word: the class word
alone ("a star"), or the concept described in words ("an orange dotted star")."""


def base_model_graph(graph: dict, concept=None) -> dict:
    """``graph`` (``checked_graph``'s) with every Attention Preview sampling the TinyWorld base
    model instead of the trained one: fed by the loader, mapping the class word; Train and Apply
    Adapter are left out. Its prompt has the class word in place of the token ("a <tw1> star on
    grass" -> "a star on grass"), or, given ``concept`` (a TinyWorld held-out concept), the
    concept's own words ("an orange dotted star on grass"): what the base model draws when it is
    told the concept as plainly as its vocabulary allows, the most a trained token could hope to
    add to the demo's scenes."""
    loader = next(i for i, n in graph.items() if n["class_type"] == "TextLocTinyWorldLoader")
    out = {
        i: copy.deepcopy(n) for i, n in graph.items() if n["class_type"] not in ("TextLocTrain", "TextLocApplyAdapter")
    }
    for node in out.values():
        if node["class_type"] != "TextLocAttentionPreview":
            continue
        inputs = node["inputs"]
        word = TOKEN.search(inputs["prompt"])
        if word is None:
            raise ValueError(f"preview prompt {inputs['prompt']!r} names no identifier token")
        prompt = TOKEN.sub(r"\1", inputs["prompt"])
        if concept is not None:
            prompt = re.sub(rf"^a {word[1]}\b", with_article(concept.kind.phrase()), prompt)
        inputs.update(model=[loader, 0], clip=[loader, 1], prompt=prompt, tokens=word[1])
    return out


def _pictures(paths: list[Path]) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] of PNG files, in ComfyUI's counter order."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in sorted(paths)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def map_on_colour(images: torch.Tensor, maps: torch.Tensor, colour: tuple[float, float, float]) -> list[dict]:
    """Per sample, for the pixels within ``COLOUR_DISTANCE`` of ``colour``: whether the map's
    maximum lies on one (within ``PEAK_REACH``), the share of the map's mass on them, and their
    share of the image."""
    near = (images - torch.tensor(colour).view(1, 3, 1, 1)).norm(dim=1) < COLOUR_DISTANCE
    out = []
    for heat, where in zip(maps[:, 0], near):
        y, x = divmod(int(heat.flatten().argmax()), heat.shape[-1])
        around = where[max(0, y - PEAK_REACH) : y + PEAK_REACH + 1, max(0, x - PEAK_REACH) : x + PEAK_REACH + 1]
        out.append(
            {
                "peak_on_colour": bool(around.any()),
                "mass_share": round(float((heat * where).sum() / heat.sum().clamp_min(1e-6)), 4),
                "colour_area": round(float(where.float().mean()), 4),
            }
        )
    return out


def score_preview(judge, concept, prompt: str, images: torch.Tensor, maps: torch.Tensor) -> dict:
    """Every sample's judge verdicts and map share for one preview prompt."""
    from textloc_core.tinyworld.world import COLOURS

    parsed = PROMPT.match(prompt.strip())
    if parsed is None:
        raise ValueError(
            f"preview prompt {prompt!r}: expected 'a <token> <word> [and a <colour> <shape>] on <background>'"
        )
    target = kind_spec(concept.kind, with_texture=False)
    other = {"colour": parsed["colour"], "shape": parsed["shape"]} if parsed["shape"] else None
    judgements = [judgement_of(v) for v in judge(images)]
    on_colour = map_on_colour(images, maps, COLOURS[concept.kind.colour])
    samples = []
    for judgement, where in zip(judgements, on_colour):
        present = judge_scores.object_present(judgement, target)
        samples.append(
            {
                "background": judgement.background == parsed["background"],
                "other": None if other is None else judge_scores.object_present(judgement, other),
                "concept": present,
                **where,
                "map_on_concept": present and where["peak_on_colour"],
            }
        )
    return {"prompt": prompt, "samples": samples}


def _share(samples: list[dict], key) -> str:
    hits = [key(s) for s in samples]
    return f"{sum(hits)}/{len(hits)}"


def table(previews: list[dict]) -> str:
    """The markdown table of a check: per preview prompt, samples with each thing present."""
    lines = [
        "| preview prompt | background | other object | background and other | concept (colour+shape) "
        "| concept and other | map on concept |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in previews:
        s, named = p["samples"], p["samples"][0]["other"] is not None
        lines.append(
            f"| {p['prompt']} | {_share(s, lambda x: x['background'])} | "
            + (
                f"{_share(s, lambda x: x['other'])} | {_share(s, lambda x: x['background'] and x['other'])}"
                if named
                else "– | –"
            )
            + f" | {_share(s, lambda x: x['concept'])} | "
            + (_share(s, lambda x: x["concept"] and x["other"]) if named else "–")
            + f" | {_share(s, lambda x: x['map_on_concept'])} |"
        )
    return "\n".join(lines)


def contact_sheet(images: torch.Tensor, maps: torch.Tensor, path: Path) -> None:
    """One PNG of a preview: its images in the top row, their maps (grey) below."""
    rows = torch.cat([torch.cat(list(images), 2), torch.cat(list(maps.expand(-1, 3, -1, -1)), 2)], 1)
    Image.fromarray((rows.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def run_check(
    comfy: Path, images: int, timeout: float, sheets: Path | None = None, base_model: str | None = None
) -> tuple[list[dict], dict]:
    """Run the demo graph with ``images`` samples per preview and score every preview; with
    ``sheets``, write each preview's contact sheet there; with ``base_model`` (one of
    ``BASE_PROMPTS``), the previews sample the base model (``base_model_graph``)."""
    from textloc_core import tinyworld
    from textloc_core.tinyworld.world import held_out_concept

    workflow = load_workflow(WORKFLOW)
    graph, previews = checked_graph(workflow, images)
    concept_node = next(n for n in workflow.values() if n["class_type"] == "TextLocTinyWorldConceptSet")
    concept = held_out_concept(concept_node["inputs"]["concept"])
    if base_model:
        graph = base_model_graph(graph, concept if base_model == "concept-words" else None)
        for preview_id, preview in previews.items():
            preview["prompt"] = graph[preview_id]["inputs"]["prompt"]
    with tempfile.TemporaryDirectory(prefix="textloc-demo-check-") as work:
        with ComfyServer(comfy, ComfyLayout.create(work)) as server:
            history = server.client.run(graph, timeout=timeout)
            files = output_files(history, server.layout)
            judge = tinyworld.load_judge()
            scored = []
            for preview in previews.values():
                pictures = _pictures(files[preview["images"]])
                maps = _pictures(files[preview["maps"]])[:, :1]
                scored.append(score_preview(judge, concept, preview["prompt"], pictures, maps))
                if sheets is not None:
                    sheets.mkdir(parents=True, exist_ok=True)
                    contact_sheet(pictures, maps, sheets / f"preview_{len(scored)}.png")
    return scored, workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images each Attention Preview samples")
    parser.add_argument("--record", type=Path, default=None, help="append the check's JSON line to this file")
    parser.add_argument("--sheets", type=Path, default=None, help="write each preview's images and maps here as a PNG")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--base-model",
        nargs="?",
        const="class-word",
        choices=BASE_PROMPTS,
        help="sample the previews' prompts on the base model, no training: the class word in place of the "
        "token (class-word, the default) or the concept in words (concept-words)",
    )
    add_comfyui_option(parser)
    args = parser.parse_args(argv)
    comfy = comfyui_dir(args.comfyui)
    reason = missing_comfyui_reason(comfy)
    if reason:
        print(f"demo_check: {reason}", file=sys.stderr)
        return 2
    began = time.time()
    scored, workflow = run_check(comfy, args.images, args.timeout, args.sheets, args.base_model)
    print(table(scored))
    named = [s for p in scored for s in p["samples"] if s["other"] is not None]
    both = sum(s["background"] and s["other"] for s in named)
    on = sum(s["map_on_concept"] for p in scored for s in p["samples"])
    present = sum(s["concept"] for p in scored for s in p["samples"])
    together = sum(s["concept"] and s["other"] for s in named)
    print(f"\npreviews naming another object: background and that object in {both}/{len(named)} samples")
    print(f"the concept and that object together in {together}/{len(named)}")
    print(f"map on the concept in {on} of the {present} samples that show it")
    if args.record:
        train = next(n for n in workflow.values() if n["class_type"] == "TextLocTrain")["inputs"]
        line = {
            "check": "demo",
            "code": records.code_version(),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - began, 1),
            "images_per_preview": args.images,
            "model": {None: "trained", "class-word": "base", "concept-words": "base, concept in words"}[
                args.base_model
            ],
            "train_widgets": None if args.base_model else {k: v for k, v in train.items() if not isinstance(v, list)},
            "peak_reach": PEAK_REACH,
            "previews": scored,
        }
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
