"""The pack's nodes in a real ComfyUI: stock-node compatibility, Cancel, and input errors.

Graphs are built here in API format around the TinyWorld model (CPU-fast).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from comfy_server import cancel_once_checkpointed, stock_round_trip
from tinyworld_graphs import TINYWORLD, concept_from_mask, concept_set, train_node

from textloc_core.adapters.adapter import load_adapter
from textloc_core.training import checkpoint as ckpt
from textloc_core.training.config import TrainConfig
from textloc_harness.comfy_launcher import ComfyError


def _train_graph(name: str, steps: int, checkpoint_every: int) -> dict:
    return {
        "1": TINYWORLD,
        "2": concept_set(images=3),
        # the builder's learning rate (5e-3) is large, so two steps visibly change the images
        "3": train_node(["2", 0], name, steps=steps, checkpoint_every=checkpoint_every),
    }


@pytest.fixture(scope="module")
def adapter_name(comfy):
    name = f"stock_{uuid.uuid4().hex[:6]}"
    comfy.run(_train_graph(name, steps=2, checkpoint_every=2), timeout=900)
    return name


def test_stock_nodes_reproduce_our_loader_exactly(comfy, adapter_name):
    """LoraLoaderModelOnly + 'embedding:NAME' (stock) == TextLoc Apply Adapter + '<tw1>'."""
    ours_img, stock_img, base_img = stock_round_trip(
        comfy, TINYWORLD, adapter_name, "dotstar", "<tw1>", "a {} star on grass"
    )
    assert np.array_equal(ours_img, stock_img), f"max pixel difference {np.abs(ours_img - stock_img).max()}"
    assert not np.array_equal(ours_img, base_img), "the adapter changed nothing"


def test_cancel_stops_within_a_step_and_keeps_the_checkpoint(comfy):
    name = f"cancel_{uuid.uuid4().hex[:6]}"
    runs = comfy.layout.models / "textloc" / "checkpoints" / name  # then one folder per data hash
    prompt_id = comfy.queue(_train_graph(name, steps=1000, checkpoint_every=1))
    folder, seen = cancel_once_checkpointed(comfy, prompt_id, runs)
    kept = ckpt.load_latest_checkpoint(folder)
    assert kept is not None, "no readable checkpoint after Cancel"
    # the step in flight when Cancel arrived may finish (and one more can slip past the poll)
    assert seen <= kept.step <= seen + 2, (seen, kept.step)
    # named relative to the ComfyUI folder: the message is shown over HTTP too
    assert f"last checkpoint kept in {folder.relative_to(comfy.layout.base).as_posix()} " in comfy.log_text()
    assert not (comfy.layout.models / "textloc" / f"{name}.safetensors").exists(), "a cancelled run wrote an adapter"
    # queued again with resume on (the default) it continues from the kept step
    comfy.run(_train_graph(name, steps=kept.step + 1, checkpoint_every=1), timeout=600)
    adapter = load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors")
    assert adapter.metadata.steps == kept.step + 1


def test_adapter_name_cannot_write_outside_the_models_folder(comfy):
    with pytest.raises(ComfyError, match="adapter_name"):
        comfy.run(_train_graph("../../escaped", steps=1, checkpoint_every=1), timeout=120)
    assert not any(comfy.layout.base.parent.glob("escaped*"))


def test_bad_masks_fail_before_training_with_a_clear_error(comfy):
    graph = {
        "1": concept_set(images=3),
        "2": concept_set(images=2),
        # three photos, two masks
        "3": concept_from_mask(["1", 1], ["2", 2], "dotstar", "<tw2>"),
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    with pytest.raises(ComfyError, match=r"3 image\(s\) but the MASK for concept 'dotstar' has 2"):
        comfy.run(graph, timeout=120)


def test_concept_folder_trains_on_the_paper_layout(comfy, paper_dataset):
    """TextLoc Concept Folder reads the published layout (two concepts, two mask folders)."""
    name = f"paper_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name, steps=1, checkpoint_every=1)
    graph["2"] = {
        "class_type": "TextLocConceptFolder",
        "inputs": {
            "folder": "paper:bucket+doll",
            "resolution": 64,
            "tokens": "bucket=<bucket1>, doll=<doll1>",
            "class_words": "",
        },
    }
    comfy.run(graph, timeout=600)
    adapter = load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors")
    assert sorted(adapter.tokens) == ["<bucket1>", "<doll1>"]
    assert [c["class_word"] for c in adapter.metadata.concepts] == ["bucket", "doll"]


def test_calibrated_attention_weight_trains_and_the_report_names_the_effective_weight(comfy):
    """attention_weight_mode=calibrated: the weight is chosen from attention_fraction before the
    first step, and the node's report says which weight the run used (its effective attention weight)."""
    name = f"calib_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name, steps=1, checkpoint_every=1)
    graph["3"]["inputs"].update(attention_weight_mode="calibrated", attention_fraction=0.1)
    result = comfy.run(graph, timeout=600)
    (report,) = result.history["outputs"]["3"]["text"]
    line = next(text for text in report.splitlines() if text.startswith("effective attention weight: "))
    weight = float(line.split(": ", 1)[1].split()[0])
    assert weight > 0 and weight != 1.0 and "calibrated to attention_fraction 0.1" in line, report
    adapter = load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors")
    assert '"attention_weight_mode": "calibrated"' in adapter.metadata.train_config


@pytest.mark.parametrize(
    "widget, value, bad",
    [
        ("unmasked_weight", 0.5, 1.5),
        ("preservation_weight", 50.0, -1.0),
        ("map_levels", "all", "finest"),
        ("outside_preservation_weight", 2.0, -1.0),
    ],
)
def test_lever_widgets_reach_the_adapter_and_bad_values_are_named(comfy, adapter_name, widget, value, bad):
    """Each lever widget sets its TrainConfig field (the adapter records it), a graph saved
    without the widget (``adapter_name``'s) trains at today's default, as ComfyUI fills in
    optional inputs, and a bad value is refused naming the widget."""
    import json

    name = f"lever_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name, steps=1, checkpoint_every=1)
    graph["3"]["inputs"][widget] = value
    comfy.run(graph, timeout=600)
    chosen = load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors")
    assert json.loads(chosen.metadata.train_config)[widget] == value
    old = load_adapter(comfy.layout.models / "textloc" / f"{adapter_name}.safetensors")
    assert json.loads(old.metadata.train_config)[widget] == getattr(TrainConfig, widget)
    graph = _train_graph(f"lever_{uuid.uuid4().hex[:6]}", steps=1, checkpoint_every=1)
    graph["3"]["inputs"][widget] = bad
    with pytest.raises(ComfyError, match=widget):
        comfy.run(graph, timeout=600)


def test_concept_folder_names_a_missing_folder(comfy):
    graph = {
        "1": {"class_type": "TextLocConceptFolder", "inputs": {"folder": "no_such_folder_here", "resolution": 64}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    with pytest.raises(ComfyError, match="no_such_folder_here"):
        comfy.run(graph, timeout=120)


def test_train_refuses_a_token_the_vocabulary_already_has(comfy):
    graph = _train_graph(f"vocab_{uuid.uuid4().hex[:6]}", steps=1, checkpoint_every=1)
    graph["2"]["inputs"]["token"] = "star"
    with pytest.raises(ComfyError, match="token .star. of concept .dotstar. is a plain word"):
        comfy.run(graph, timeout=300)
