"""Judge the TinyWorld demo's previews: does the rest of the prompt still work, and does the
learned concept's map lie on it?

    python scripts/demo_check.py                       # 8 images per preview, prints the table
    python scripts/demo_check.py --images 16 --record benchmarks/records/demo-check.jsonl

Runs the shipped demo graph (workflows/api/tinyworld_demo_api.json, its settings unchanged
except each Attention Preview's batch size) in a real headless ComfyUI, saves every preview's
images and token maps, and scores them with TinyWorld's judge:

* **background** / **other object**: the prompted background, and the prompted object that is
  not the concept, are what the judge sees (``judge_scores.object_present``);
* **concept**: the concept's colour and shape are there;
* **map on concept**: of the map's region (the map at least half its maximum), the share that
  lies on pixels of the concept's colour; a sample counts as "on it" when the concept is there
  and that share is at least ``ON_SHARE``.

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
ON_SHARE = 0.5
"""Share of the map's region on the concept's pixels above which the map "lies on it"."""
COLOUR_DISTANCE = 0.3
"""RGB distance (0-1 scale) within which a pixel has the concept's colour."""
PROMPT = re.compile(r"^a <[^>]+> \w+(?: and an? (?P<colour>\w+) (?P<shape>\w+))? on (?P<background>\w+)$")


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


def _pictures(paths: list[Path]) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] of PNG files, in ComfyUI's counter order."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in sorted(paths)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def map_shares(images: torch.Tensor, maps: torch.Tensor, colour: tuple[float, float, float]) -> list[float]:
    """Per sample: the share of the map's region (at least half its maximum) on pixels within
    ``COLOUR_DISTANCE`` of ``colour``."""
    near = (images - torch.tensor(colour).view(1, 3, 1, 1)).norm(dim=1) < COLOUR_DISTANCE
    heat = maps[:, 0]
    region = heat >= 0.5 * heat.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    return [float((r & n).sum() / r.sum().clamp_min(1)) for r, n in zip(region, near)]


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
    shares = map_shares(images, maps, COLOURS[concept.kind.colour])
    samples = []
    for judgement, share in zip(judgements, shares):
        present = judge_scores.object_present(judgement, target)
        samples.append(
            {
                "background": judgement.background == parsed["background"],
                "other": None if other is None else judge_scores.object_present(judgement, other),
                "concept": present,
                "map_share": round(share, 4),
                "map_on_concept": present and share >= ON_SHARE,
            }
        )
    return {"prompt": prompt, "samples": samples}


def _share(samples: list[dict], key) -> str:
    hits = [key(s) for s in samples]
    return f"{sum(hits)}/{len(hits)}"


def table(previews: list[dict]) -> str:
    """The markdown table of a check: per preview prompt, samples with each thing present."""
    lines = [
        "| preview prompt | background | other object | background and other | concept (colour+shape) | map on concept |",
        "|---|---|---|---|---|---|",
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
            + f" | {_share(s, lambda x: x['concept'])} | {_share(s, lambda x: x['map_on_concept'])} |"
        )
    return "\n".join(lines)


def run_check(comfy: Path, images: int, timeout: float) -> tuple[list[dict], dict]:
    """Run the demo graph with ``images`` samples per preview and score every preview."""
    from textloc_core import tinyworld
    from textloc_core.tinyworld.world import held_out_concept

    workflow = load_workflow(WORKFLOW)
    graph, previews = checked_graph(workflow, images)
    concept_node = next(n for n in workflow.values() if n["class_type"] == "TextLocTinyWorldConceptSet")
    concept = held_out_concept(concept_node["inputs"]["concept"])
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
    return scored, workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images each Attention Preview samples")
    parser.add_argument("--record", type=Path, default=None, help="append the check's JSON line to this file")
    parser.add_argument("--timeout", type=float, default=1800)
    add_comfyui_option(parser)
    args = parser.parse_args(argv)
    comfy = comfyui_dir(args.comfyui)
    reason = missing_comfyui_reason(comfy)
    if reason:
        print(f"demo_check: {reason}", file=sys.stderr)
        return 2
    began = time.time()
    scored, workflow = run_check(comfy, args.images, args.timeout)
    print(table(scored))
    named = [s for p in scored for s in p["samples"] if s["other"] is not None]
    both = sum(s["background"] and s["other"] for s in named)
    on = sum(s["map_on_concept"] for p in scored for s in p["samples"])
    present = sum(s["concept"] for p in scored for s in p["samples"])
    print(f"\npreviews naming another object: background and that object in {both}/{len(named)} samples")
    print(f"map on the concept in {on} of the {present} samples that show it")
    if args.record:
        train = next(n for n in workflow.values() if n["class_type"] == "TextLocTrain")["inputs"]
        line = {
            "check": "demo",
            "code": records.code_version(),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - began, 1),
            "images_per_preview": args.images,
            "train_widgets": {k: v for k, v in train.items() if not isinstance(v, list)},
            "on_share": ON_SHARE,
            "previews": scored,
        }
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
