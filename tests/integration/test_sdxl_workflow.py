"""SDXL in a real ComfyUI server: the shipped train_sdxl workflow queued headless, and the
stock-node round trip (LoraLoaderModelOnly + ``embedding:NAME`` with clip_l and clip_g)
pixel-identical to TextLoc Apply Adapter.

The workflow names a user's SDXL checkpoint; here its Load Checkpoint node is swapped for the
test-only loader of a tiny SDXL-architecture model (same MODEL / CLIP / VAE outputs), its
Load Image gets a photo whose painted (transparent) square is the concept, and step counts
and sizes are turned down. Everything else runs as shipped.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import tiny_sdxl_comfy as tiny
from comfy_server import WORKFLOWS_DIR, stock_round_trip
from PIL import Image
from safetensors import safe_open

from textloc_core.adapters.adapter import load_adapter
from textloc_harness.comfy_launcher import load_workflow

TINY_LOADER = {"class_type": "TextLocTestTinySDXLLoader", "inputs": {"seed": 0}}


def _of_type(workflow: dict, class_type: str) -> list[tuple[str, dict]]:
    return [(node_id, node) for node_id, node in workflow.items() if node["class_type"] == class_type]


def _photo(path, square=(8, 8, 32)) -> None:
    """A 64 px RGBA photo; LoadImage's mask is 1 - alpha, so the transparent square is the concept."""
    rng = np.random.default_rng(0)
    rgba = np.concatenate([rng.integers(0, 255, (64, 64, 3)), np.full((64, 64, 1), 255)], -1).astype(np.uint8)
    top, left, size = square
    rgba[top : top + size, left : left + size, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture(scope="module")
def trained_sdxl(comfy, tmp_path_factory):
    workflow = load_workflow(WORKFLOWS_DIR / "api" / "train_sdxl_api.json")
    ((loader_id, loader),) = _of_type(workflow, "CheckpointLoaderSimple")
    assert loader["inputs"]["ckpt_name"].startswith("sd_xl_base")  # a user's SDXL checkpoint, as shipped
    workflow[loader_id] = dict(TINY_LOADER, _meta=loader.get("_meta", {}))
    photo = tmp_path_factory.mktemp("sdxl_photo") / f"sdxl_photo_{uuid.uuid4().hex[:6]}.png"
    _photo(photo)
    ((_, load_image),) = _of_type(workflow, "LoadImage")
    load_image["inputs"]["image"] = comfy.copy_to_input(photo)
    ((_, train),) = _of_type(workflow, "TextLocTrain")
    assert train["inputs"]["gradient_checkpointing"] is True and train["inputs"]["resolution"] == 1024
    name = f"sdxl_{uuid.uuid4().hex[:6]}"
    train["inputs"].update(steps=2, checkpoint_every=1, learning_rate=5e-3, resolution=64, adapter_name=name)
    ((_, preview),) = _of_type(workflow, "TextLocAttentionPreview")
    preview["inputs"].update(steps=2, width=64, height=64)
    result = comfy.run(workflow, timeout=900)
    return {"name": name, "result": result, "workflow": workflow, "concept": train_concept(workflow)}


def train_concept(workflow: dict) -> str:
    ((_, concept),) = _of_type(workflow, "TextLocConceptFromMask")
    return concept["inputs"]["name"]


def test_train_sdxl_runs_headless_and_writes_every_file(comfy, trained_sdxl):
    name, concept = trained_sdxl["name"], trained_sdxl["concept"]
    models = comfy.layout.models
    adapter = load_adapter(models / "textloc" / f"{name}.safetensors")
    assert adapter.metadata.guidance == "hard" and adapter.metadata.steps == 2
    (token,) = adapter.tokens
    assert adapter.token_embeddings[token].shape == (1, tiny.WIDTH_L + tiny.WIDTH_G)
    assert len(adapter.kv_deltas) == 22 and all(float(d.abs().sum()) > 0 for d in adapter.kv_deltas.values())
    assert (models / "loras" / "textloc" / f"{name}.safetensors").is_file()
    with safe_open(str(models / "embeddings" / "textloc" / name / f"{concept}.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
    assert shapes == {"clip_l": (1, tiny.WIDTH_L), "clip_g": (1, tiny.WIDTH_G)}
    saved = {
        trained_sdxl["workflow"][n]["inputs"]["filename_prefix"]: paths
        for n, paths in trained_sdxl["result"].files.items()
    }
    images, overlays = saved["textloc/sdxl_concept"], saved["textloc/sdxl_concept_attention"]
    assert len(images) == 1 and len(overlays) == 1
    assert Image.open(images[0]).size == (64, 64)
    report = json.dumps(trained_sdxl["result"].history["outputs"])
    assert f"embedding:textloc/{name}/{concept}" in report


def test_stock_nodes_reproduce_our_sdxl_adapter_exactly(comfy, trained_sdxl):
    """LoraLoaderModelOnly + 'embedding:textloc/NAME/CONCEPT' (stock, clip_l + clip_g) ==
    TextLoc Apply Adapter + the token, on the SDXL architecture."""
    name, concept = trained_sdxl["name"], trained_sdxl["concept"]
    token = load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors").tokens[0]
    ours_img, stock_img, base_img = stock_round_trip(comfy, TINY_LOADER, name, concept, token, "a {} toy on grass")
    assert np.array_equal(ours_img, stock_img), f"max pixel difference {np.abs(ours_img - stock_img).max()}"
    assert not np.array_equal(ours_img, base_img), "the adapter changed nothing"
    # ComfyUI says so when a LoRA key or an embedding file was not used
    lines = [line for line in comfy.log_text().splitlines() if name in line]
    assert not [line for line in lines if "not loaded" in line or "does not exist" in line], lines
