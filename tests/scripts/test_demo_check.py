"""scripts/demo_check.py: its graph saves every preview's images and maps, and its scoring says
what the TinyWorld judge and the maps show, on renders whose content is known exactly."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("demo_check")


def test_the_checked_graph_keeps_the_demo_and_saves_images_and_maps(check):
    workflow = json.loads(check.WORKFLOW.read_text())
    graph, previews = check.checked_graph(workflow, images=6)
    shipped = [k for k, n in workflow.items() if n["class_type"] == "TextLocAttentionPreview"]
    assert sorted(previews) == sorted(shipped) and shipped
    for node_id, saves in previews.items():
        assert graph[node_id]["inputs"]["batch_size"] == 6
        assert graph[saves["images"]]["inputs"]["images"] == [node_id, 0]
        to_image = graph[saves["maps"]]["inputs"]["images"][0]
        assert graph[to_image] == {"class_type": "MaskToImage", "inputs": {"mask": [node_id, 2]}}
    untouched = {k: n for k, n in graph.items() if k in workflow and k not in previews}
    assert untouched == {k: n for k, n in workflow.items() if k not in previews}


def test_the_base_model_graph_samples_the_same_prompts_without_training(check):
    workflow = json.loads(check.WORKFLOW.read_text())
    graph, previews = check.checked_graph(workflow, images=4)
    base = check.base_model_graph(graph)
    loader = next(k for k, n in workflow.items() if n["class_type"] == "TextLocTinyWorldLoader")
    kinds = {n["class_type"] for n in base.values()}
    assert "TextLocTrain" not in kinds and "TextLocApplyAdapter" not in kinds
    for node_id in previews:
        inputs, shipped = base[node_id]["inputs"], workflow[node_id]["inputs"]
        assert inputs["model"] == [loader, 0] and inputs["clip"] == [loader, 1]
        assert "<" not in inputs["prompt"] and inputs["prompt"].startswith(f"a {inputs['tokens']} ")
        assert check.PROMPT.match(inputs["prompt"]) and inputs["batch_size"] == 4
        assert shipped["prompt"].replace(shipped["tokens"] + " ", "") == inputs["prompt"]
    # every node a kept node reads is still in the graph
    for node in base.values():
        assert all(v[0] in base for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2)


def test_the_concept_words_graph_names_the_concept_in_words(check):
    """With the concept given, the base model's prompts describe it ("an orange dotted star")
    where the trained graph has its token, the rest of each prompt unchanged and still readable."""
    from textloc_core.tinyworld.world import held_out_concept

    workflow = json.loads(check.WORKFLOW.read_text())
    graph, previews = check.checked_graph(workflow, images=4)
    concept = held_out_concept("dotstar")
    base = check.base_model_graph(graph, concept)
    for node_id in previews:
        prompt, shipped = base[node_id]["inputs"]["prompt"], workflow[node_id]["inputs"]["prompt"]
        assert prompt.startswith("an orange dotted star ") and "<" not in prompt
        assert prompt.split(" star ", 1)[1] == shipped.split(" star ", 1)[1]
        parsed = check.PROMPT.match(prompt)
        assert parsed and parsed["background"] == shipped.rsplit(" ", 1)[1]
        assert base[node_id]["inputs"]["tokens"] == "star"
    assert check.PROMPT.match("an orange dotted star and a red triangle on night")["shape"] == "triangle"


def _scene(objects, background, seed):
    from textloc_core import tinyworld

    scene = tinyworld.render_scene(objects=objects, background=background, seed=seed)
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float()
    return image, torch.from_numpy(scene.masks.astype("float32"))


def test_scoring_reads_renders_as_drawn(check):
    """The concept beside the prompted object on the prompted background, with the concept's
    exact mask as its map, scores present and on it; with the other object's mask as the map,
    the map is not on it, and a render without the other object misses it."""
    from textloc_core import tinyworld
    from textloc_core.tinyworld.world import held_out_concept

    concept = held_out_concept("dotstar")
    other = tinyworld.ObjectKind("triangle", "red")
    images, own, elsewhere = [], [], []
    for seed in range(4):
        image, masks = _scene([other, concept.kind], "night", 50 + seed)
        images.append(image)
        own.append(masks[1:2])
        elsewhere.append(masks[0:1])
    images = torch.stack(images)
    judge = tinyworld.load_judge()
    prompt = "a <tw1> star and a red triangle on night"
    on = check.score_preview(judge, concept, prompt, images, torch.stack(own))["samples"]
    assert sum(s["background"] and s["other"] for s in on) >= 3
    assert sum(s["concept"] for s in on) >= 3
    assert all(s["peak_on_colour"] and s["mass_share"] > 0.5 for s in on)
    off = check.score_preview(judge, concept, prompt, images, torch.stack(elsewhere))["samples"]
    assert not any(s["map_on_concept"] for s in off)
    alone = check.score_preview(judge, concept, "a <tw1> star and a blue circle on night", images, torch.stack(own))
    assert not any(s["other"] for s in alone["samples"])
    assert "| a <tw1> star and a red triangle on night |" in check.table([{"prompt": prompt, "samples": on}])


def test_an_unreadable_prompt_is_named(check):
    with pytest.raises(ValueError, match="preview prompt"):
        check.score_preview(None, None, "photo of something", torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
