"""TinyWorld's MODEL / CLIP / VAE behave like a stock loader's with ComfyUI's own nodes.

ComfyUI 0.33's own loaders tell each ModelPatcher how to rebuild itself
(``cached_patcher_init``); nodes that deep-copy a model (TrainLoraNode,
``clone(force_deepcopy=True)``) refuse a patcher without it. The TinyWorld Loader registers one
(``nodes/comfy_internals.set_reloader``), so a user can put TinyWorld beside a stock trainer.
"""

from __future__ import annotations

import uuid

import pytest

TINYWORLD = {"class_type": "TextLocTinyWorldLoader", "inputs": {"seed": 0, "use_shipped_weights": True}}


def _defaults(info: dict, node: str) -> dict:
    """Every required widget of ``node`` at its default (a combo at its first option)."""
    values = {}
    for name, spec in info[node]["input"]["required"].items():
        kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):
            values[name] = options.get("default", kind[0])
        elif kind == "COMBO":
            values[name] = options.get("default", options["options"][0])
        elif "default" in options:
            values[name] = options["default"]
    return values


def test_comfyuis_lora_trainer_trains_on_tinyworld(comfy):
    info = comfy.object_info()
    if "TrainLoraNode" not in info:
        pytest.skip("this ComfyUI has no TrainLoraNode")
    save = "SaveLoRA" if "SaveLoRA" in info else "SaveLoRANode"
    prefix = f"loras/tinyworld_{uuid.uuid4().hex[:6]}"
    train = _defaults(info, "TrainLoraNode")
    train.update(
        model=["1", 0],
        latents=["3", 0],
        positive=["2", 0],
        steps=2,
        batch_size=1,
        rank=2,
        training_dtype="fp32",
        lora_dtype="fp32",
        gradient_checkpointing=False,
        seed=1,
    )
    graph = {
        "1": TINYWORLD,
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red star on grass"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "4": {"class_type": "TrainLoraNode", "inputs": train},
        # the LoRA output's slot: 0.33's TrainLoraNode dropped the MODEL output 0.3.64 has first
        "5": {
            "class_type": save,
            "inputs": {"lora": ["4", info["TrainLoraNode"]["output"].index("LORA_MODEL")], "prefix": prefix},
        },
    }
    comfy.run(graph, timeout=600)
    written = list(comfy.layout.output.glob(f"{prefix}*.safetensors"))
    assert written, f"TrainLoraNode + {save} wrote no LoRA under {prefix}"


def test_a_deep_copy_of_tinyworld_holds_the_same_weights(comfy, comfy_tree):
    import ast

    source = (comfy_tree / "comfy" / "model_patcher.py").read_text()
    clone = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "clone")
    if "force_deepcopy" not in [a.arg for a in clone.args.args]:
        pytest.skip("this ComfyUI's ModelPatcher.clone has no force_deepcopy (nothing deep-copies a model)")
    graph = {
        "1": dict(TINYWORLD, inputs={"seed": 3, "use_shipped_weights": True}),
        "2": {"class_type": "TextLocTestDeepCopy", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2]}},
    }
    result = comfy.run(graph, timeout=300)
    report = result.history["outputs"]["2"]["text"][0]
    assert report.splitlines() == [f"{part}: same weights, own tensors" for part in ("model", "clip", "vae")], report
