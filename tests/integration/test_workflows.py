"""The shipped workflows, queued headless in a real ComfyUI (TinyWorld model, CPU, few steps).

Each API twin is queued over POST /prompt as shipped, with only the step counts (and the
adapter name) turned down so the suite stays fast; outputs are checked on disk.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from comfy_server import USER_CHECKPOINTS, WORKFLOWS_DIR, shipped_workflows
from PIL import Image

from textloc_core.adapters.adapter import load_adapter
from textloc_harness.comfy_launcher import load_workflow

FAST_TRAIN = {"steps": 2, "checkpoint_every": 1}
FAST_SAMPLE = {"steps": 2}


def _of_type(workflow: dict, class_type: str) -> list[dict]:
    return [node for node in workflow.values() if node["class_type"] == class_type]


def _images(paths) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(paths)]


@pytest.fixture(scope="module")
def trained(comfy):
    """train_multi_concept_api.json run once (2 steps); the adapter name and its files."""
    workflow = load_workflow(WORKFLOWS_DIR / "api" / "train_multi_concept_api.json")
    name = f"pair_{uuid.uuid4().hex[:6]}"
    (train,) = _of_type(workflow, "TextLocTrain")
    train["inputs"].update(FAST_TRAIN, adapter_name=name)
    result = comfy.run(workflow, timeout=900)
    models = comfy.layout.models
    return {
        "name": name,
        "history": result.history,
        "adapter": models / "textloc" / f"{name}.safetensors",
        "lora": models / "loras" / "textloc" / f"{name}.safetensors",
        "embeddings": {
            c: models / "embeddings" / "textloc" / name / f"{c}.safetensors" for c in ("dotstar", "bluecircle")
        },
        "checkpoints": models / "textloc" / "checkpoints" / name,
    }


def test_train_workflow_writes_adapter_lora_embeddings_and_checkpoints(trained):
    adapter = load_adapter(trained["adapter"])
    assert sorted(adapter.tokens) == ["<circle1>", "<dotstar1>"]
    assert adapter.metadata.guidance == "hard" and adapter.metadata.steps == 2
    assert adapter.kv_deltas and all(float(d.abs().sum()) > 0 for d in adapter.kv_deltas.values()), "K/V did not train"
    assert trained["lora"].is_file()
    assert all(p.is_file() for p in trained["embeddings"].values())
    assert any(trained["checkpoints"].glob("*/*")), "no checkpoint was written"
    report = json.dumps(trained["history"]["outputs"])
    assert f"embedding:textloc/{trained['name']}/dotstar" in report  # the node tells the user how to prompt


def test_generate_workflow_samples_and_previews_attention(comfy, trained):
    workflow = load_workflow(WORKFLOWS_DIR / "api" / "generate_with_adapter_api.json")
    (apply,) = _of_type(workflow, "TextLocApplyAdapter")
    apply["inputs"]["adapter_file"] = f"{trained['name']}.safetensors"
    for node in _of_type(workflow, "KSampler") + _of_type(workflow, "TextLocAttentionPreview"):
        node["inputs"].update(FAST_SAMPLE)
    result = comfy.run(workflow, timeout=600)
    by_prefix = {}
    for node_id, paths in result.files.items():
        prefix = workflow[node_id]["inputs"].get("filename_prefix", "")
        by_prefix[prefix] = _images(paths)
    generated = by_prefix["textloc/generated"]
    assert len(generated) == 2 and generated[0].shape == (64, 64, 3)
    # one overlay and one map per token of the prompt (two adapter tokens, batch of one)
    assert len(by_prefix["textloc/attention_overlay"]) == 2
    maps = by_prefix["textloc/attention_maps"]
    assert len(maps) == 2 and all(m.max() > m.min() for m in maps), "attention maps are blank"


def test_tinyworld_demo_trains_applies_and_previews(comfy):
    workflow = load_workflow(WORKFLOWS_DIR / "api" / "tinyworld_demo_api.json")
    (train,) = _of_type(workflow, "TextLocTrain")
    train["inputs"].update(FAST_TRAIN, adapter_name=f"demo_{uuid.uuid4().hex[:6]}")
    for node in _of_type(workflow, "TextLocAttentionPreview"):
        node["inputs"].update(FAST_SAMPLE)
    result = comfy.run(workflow, timeout=900)
    saved = {workflow[n]["inputs"]["filename_prefix"]: _images(p) for n, p in result.files.items()}
    for label in ("alone", "context", "new_scene"):
        images = saved[f"textloc/tinyworld_{label}"]
        overlays = saved[f"textloc/tinyworld_{label}_attention"]
        assert len(images) == 2 and len(overlays) == 2  # batch of 2, one token
        assert not np.array_equal(images[0], overlays[0])  # the heat map is drawn over the image


def _combo_options(spec) -> list | None:
    """The options of an /object_info input spec when it is a combo (V1 list or V3 "COMBO")."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        return kind
    return opts.get("options") if kind == "COMBO" else None


def test_shipped_workflows_name_only_values_a_fresh_install_offers(comfy):
    """No shipped graph names a model file (or any combo value) a fresh install lacks: the page
    would flag it as missing and the queue would refuse it. The pack's own adapter counts, and
    so does ComfyUI's input/example.png. The one exception is train_sdxl's base checkpoint,
    which is the user's own SDXL model (``USER_CHECKPOINTS``)."""
    info = comfy.object_info()
    problems = []
    for path in shipped_workflows(api=True):
        for node_id, node in load_workflow(path).items():
            specs = {
                **info[node["class_type"]]["input"].get("required", {}),
                **info[node["class_type"]]["input"].get("optional", {}),
            }
            for name, value in node["inputs"].items():
                options = _combo_options(specs[name]) if name in specs else None
                if name == "ckpt_name" and value in USER_CHECKPOINTS:
                    continue
                if options is not None and not isinstance(value, list) and value not in options:
                    problems.append(f"{path.name} node {node_id} ({node['class_type']}) {name}={value!r}")
    assert not problems, f"values not offered by a fresh install: {problems}"


def test_generate_workflow_runs_as_shipped_with_the_shipped_adapter(comfy):
    """generate_with_adapter names tinyworld_pair.safetensors, which the pack ships
    (textloc_core/tinyworld/adapters): it runs without training anything first."""
    workflow = load_workflow(WORKFLOWS_DIR / "api" / "generate_with_adapter_api.json")
    (apply,) = _of_type(workflow, "TextLocApplyAdapter")
    assert apply["inputs"]["adapter_file"] == "tinyworld_pair.safetensors"
    for node in _of_type(workflow, "KSampler") + _of_type(workflow, "TextLocAttentionPreview"):
        node["inputs"].update(FAST_SAMPLE, seed=11)  # its own seed: never a cached result
    result = comfy.run(workflow, timeout=600)
    saved = {workflow[n]["inputs"]["filename_prefix"]: _images(p) for n, p in result.files.items()}
    assert len(saved["textloc/generated"]) == 2
    maps = saved["textloc/attention_maps"]
    assert len(maps) == 2 and all(m.max() > m.min() for m in maps), "attention maps are blank"
