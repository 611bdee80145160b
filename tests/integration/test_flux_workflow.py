"""Flux.1 in a real ComfyUI server: the shipped train_flux workflow queued headless.

The workflow names a user's Flux.1 files (UNETLoader, DualCLIPLoader, VAELoader); here the three
loaders are swapped for the test-only loader of a tiny Flux-architecture model (the same MODEL /
CLIP / VAE outputs, weights stored in fp8 as the workflow's UNETLoader asks), its Load Image gets
a photo whose painted (transparent) square is the concept, and step counts and sizes are turned
down. Everything else runs as shipped.
"""

from __future__ import annotations

import json
import uuid

from comfy_server import WORKFLOWS_DIR, painted_photo
from PIL import Image
from safetensors.torch import load_file

from textloc_core.adapters.adapter import load_adapter
from textloc_harness.comfy_launcher import load_workflow

LOADER_OUTPUTS = {"UNETLoader": 0, "DualCLIPLoader": 1, "VAELoader": 2}
"""Each stock loader of the workflow -> the tiny loader's output slot that stands in for it."""


def _with_tiny_flux(workflow: dict) -> dict:
    """The workflow with its three Flux loaders replaced by one tiny Flux loader (node "tiny")."""
    loaders = {
        node_id: node["class_type"] for node_id, node in workflow.items() if node["class_type"] in LOADER_OUTPUTS
    }
    assert sorted(loaders.values()) == sorted(LOADER_OUTPUTS)
    (unet,) = [workflow[i] for i, kind in loaders.items() if kind == "UNETLoader"]
    weight_dtype = unet["inputs"]["weight_dtype"]
    assert weight_dtype == "fp8_e4m3fn"  # as shipped: the 12 B weights in 8 bits
    out = {i: node for i, node in workflow.items() if i not in loaders}
    out["tiny"] = {
        "class_type": "TextLocTestTinyDiTLoader",
        "inputs": {"family": "flux", "seed": 0, "weight_dtype": weight_dtype},
    }
    for node in out.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] in loaders:
                node["inputs"][name] = ["tiny", LOADER_OUTPUTS[loaders[value[0]]]]
    return out


def test_train_flux_runs_headless_and_writes_every_file(comfy, tmp_path):
    workflow = _with_tiny_flux(load_workflow(WORKFLOWS_DIR / "api" / "train_flux_api.json"))
    photo = tmp_path / f"flux_photo_{uuid.uuid4().hex[:6]}.png"
    painted_photo(photo, seed=1)
    ((load_image,),) = [[n for n in workflow.values() if n["class_type"] == "LoadImage"]]
    load_image["inputs"]["image"] = comfy.copy_to_input(photo)
    ((train,),) = [[n for n in workflow.values() if n["class_type"] == "TextLocTrain"]]
    assert train["inputs"]["guidance"] == "hard" and train["inputs"]["gradient_checkpointing"] is True
    name = f"flux_{uuid.uuid4().hex[:6]}"
    train["inputs"].update(steps=2, checkpoint_every=1, learning_rate=5e-3, resolution=64, adapter_name=name)
    train["inputs"]["preservation_weight"] = 50.0  # a UNet-only setting: set aside for Flux, not refused
    ((preview,),) = [[n for n in workflow.values() if n["class_type"] == "TextLocAttentionPreview"]]
    assert preview["inputs"]["cfg"] == 1.0 and preview["inputs"]["negative"] == ""
    preview["inputs"].update(steps=2, width=64, height=64)

    result = comfy.run(workflow, timeout=900)

    models = comfy.layout.models
    adapter = load_adapter(models / "textloc" / f"{name}.safetensors")
    assert adapter.metadata.guidance == "hard" and adapter.metadata.steps == 2
    assert json.loads(adapter.metadata.train_config)["preservation_weight"] == 0.0
    assert all(key.startswith("double_blocks.") for key in adapter.kv_deltas)
    assert all(float(d.abs().sum()) > 0 for d in adapter.kv_deltas.values())
    lora = load_file(str(models / "loras" / "textloc" / f"{name}.safetensors"))
    assert sorted(lora) == [f"diffusion_model.double_blocks.{i}.txt_attn.qkv.diff" for i in range(2)]
    embeddings = load_file(str(models / "embeddings" / "textloc" / name / "concept.safetensors"))
    assert list(embeddings) == ["clip_l"]  # the T5 part lives in the adapter file only
    saved = {workflow[n]["inputs"]["filename_prefix"]: paths for n, paths in result.files.items()}
    images, overlays = saved["textloc/flux_concept"], saved["textloc/flux_concept_attention"]
    assert len(images) == 1 and len(overlays) == 1 and Image.open(images[0]).size == (64, 64)
