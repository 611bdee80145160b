"""What integration tests need on top of textloc_harness.comfy_launcher: one object per session.

The launcher starts ComfyUI and speaks HTTP (shared with the demo); this harness adds the
test-side conveniences: run a workflow file end to end, list our node classes as ComfyUI
registered them, and read the server log for import problems.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from textloc_harness.comfy_launcher import (
    PACK_PYTHON_MODULE,
    PACK_ROOT,
    ComfyClient,
    ComfyError,
    ComfyServer,
    is_api_workflow,
    load_workflow,
    output_files,
)

WORKFLOWS_DIR = PACK_ROOT / "workflows"
PACK_PACKAGE = "textloc_pack"
"""The name the pack is imported under in the test process (``import_pack``)."""

# UI-only node types the frontend provides (no Python class behind them).
FRONTEND_ONLY_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


@dataclass
class RunResult:
    """A finished prompt: its history entry and the files its nodes wrote, by node id."""

    prompt_id: str
    history: dict
    files: dict[str, list[Path]]

    def all_files(self) -> list[Path]:
        return [p for paths in self.files.values() for p in paths]


class ComfyHarness:
    """A running ComfyUI with the pack installed, plus helpers for tests."""

    def __init__(self, server: ComfyServer):
        self.server = server
        self.layout = server.layout
        self.client: ComfyClient = server.client
        self._object_info: dict | None = None

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self.client.object_info()
        return self._object_info

    def pack_node_classes(self) -> set[str]:
        """Node classes ComfyUI registered from our pack (python_module custom_nodes.textloc)."""
        return {name for name, info in self.object_info().items() if info.get("python_module") == PACK_PYTHON_MODULE}

    def queue(self, workflow: dict | str | Path) -> str:
        if not isinstance(workflow, dict):
            workflow = load_workflow(workflow)
        return self.client.queue_prompt(workflow)

    def run(self, workflow: dict | str | Path, timeout: float = 600.0) -> RunResult:
        """Queue an API workflow (dict or file), wait, and collect its output/temp files."""
        prompt_id = self.queue(workflow)
        history = self.client.wait_for_completion(prompt_id, timeout=timeout)
        return RunResult(prompt_id, history, output_files(history, self.layout, kinds=("output", "temp")))

    def interrupt(self) -> None:
        self.client.interrupt()

    def copy_to_input(self, path: str | Path, name: str | None = None) -> str:
        """Put a file into ComfyUI's input folder; returns the name LoadImage expects."""
        target = self.layout.input / (name or Path(path).name)
        shutil.copy2(path, target)
        return target.name

    def log_text(self) -> str:
        return self.server.log_text()


def import_pack() -> None:
    """Import the pack as package ``textloc_pack`` the way ComfyUI imports it (relative imports
    resolve as in a server), once per session; its modules are then ``textloc_pack.nodes.*``."""
    if PACK_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_PACKAGE, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_PACKAGE] = module
        spec.loader.exec_module(module)


USER_CHECKPOINTS = ("sd_xl_base_1.0.safetensors",)
"""Checkpoints shipped workflows name that stand for the user's own base model (train_sdxl:
SDXL base 1.0 under its published name). The browser check installs an empty file of each
name, as a user who owns the model has it; nothing loads them (headless runs swap the loader)."""
USER_MODELS = {
    ("checkpoints", "ckpt_name"): USER_CHECKPOINTS,
    ("diffusion_models", "unet_name"): ("flux1-dev.safetensors",),
    ("text_encoders", "clip_name1"): ("clip_l.safetensors",),
    ("text_encoders", "clip_name2"): ("t5xxl_fp8_e4m3fn.safetensors",),
    ("vae", "vae_name"): ("ae.safetensors",),
}
"""(models folder, loader input) -> the user's own model files shipped workflows name there
(train_flux: Flux.1-dev, its text encoders and VAE under the names ComfyUI's examples use); the
browser check installs each as an empty file, as for ``USER_CHECKPOINTS``."""


def painted_photo(path, seed: int = 0, square=(8, 8, 32)) -> None:
    """A 64 px RGBA photo of random pixels; LoadImage's mask is 1 - alpha, so the transparent
    ``square`` (top, left, size) is the painted concept."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgba = np.concatenate([rng.integers(0, 255, (64, 64, 3)), np.full((64, 64, 1), 255)], -1).astype(np.uint8)
    top, left, size = square
    rgba[top : top + size, left : left + size, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)


def shipped_workflows(api: bool) -> list[Path]:
    """workflows/api/*_api.json (api=True) or the UI-format workflows (api=False)."""
    folder = WORKFLOWS_DIR / "api" if api else WORKFLOWS_DIR
    return sorted(p for p in folder.glob("*.json") if is_api_workflow(p) == api)


def ui_workflow_node_types(workflow: dict) -> set[str]:
    """Node types a UI-format workflow uses, subgraph definitions included."""
    nodes = list(workflow.get("nodes", []))
    for sub in (workflow.get("definitions") or {}).get("subgraphs", []):
        nodes += sub.get("nodes", [])
    subgraph_ids = {sub.get("id") for sub in (workflow.get("definitions") or {}).get("subgraphs", [])}
    return {n["type"] for n in nodes if n.get("type") not in subgraph_ids}


SAMPLER = {"seed": 3, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
"""KSampler settings of the stock-node comparison graphs (few steps: CPU)."""


def sample_graph(
    loader: dict, model_ref, clip_ref, text: str, prefix: str, extra: dict, sampler: dict = SAMPLER
) -> dict:
    """An API graph: ``loader`` (node "1", MODEL/CLIP/VAE) -> CLIPTextEncode ``text`` -> KSampler
    (128 x 128 latent) -> VAEDecode -> SaveImage ``prefix``; ``extra`` adds or replaces nodes
    (e.g. node "2" applying an adapter, referenced by ``model_ref`` / ``clip_ref``)."""
    graph = {
        "1": loader,
        "10": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": text}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": ""}},
        "12": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "13": {
            "class_type": "KSampler",
            "inputs": {
                "model": model_ref,
                "positive": ["10", 0],
                "negative": ["11", 0],
                "latent_image": ["12", 0],
                **sampler,
            },
        },
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["1", 2]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": prefix}},
    }
    graph.update(extra)
    return graph


def single_image(result: RunResult):
    """The one image a run saved, as an int16 RGB array (differences do not wrap around)."""
    import numpy as np
    from PIL import Image

    (path,) = result.all_files()
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def stock_round_trip(comfy: ComfyHarness, loader: dict, adapter: str, concept: str, token: str, scene: str):
    """(ours, stock, base) images of one seed: TextLoc Apply Adapter with ``token`` in the
    prompt; stock LoraLoaderModelOnly + ``embedding:textloc/<adapter>/<concept>``; the base
    model with neither. ``scene`` is the prompt with ``{}`` where the token goes."""
    ours = sample_graph(
        loader,
        ["2", 0],
        ["2", 1],
        scene.format(token),
        "textloc_test/ours",
        {
            "2": {
                "class_type": "TextLocApplyAdapter",
                "inputs": {
                    "model": ["1", 0],
                    "clip": ["1", 1],
                    "adapter_file": f"{adapter}.safetensors",
                    "strength": 1.0,
                },
            }
        },
    )
    stock = sample_graph(
        loader,
        ["2", 0],
        ["1", 1],
        scene.format(f"embedding:textloc/{adapter}/{concept}"),
        "textloc_test/stock",
        {
            "2": {
                "class_type": "LoraLoaderModelOnly",
                "inputs": {"model": ["1", 0], "lora_name": f"textloc/{adapter}.safetensors", "strength_model": 1.0},
            }
        },
    )
    base = sample_graph(loader, ["1", 0], ["1", 1], scene.format("").replace("  ", " "), "textloc_test/base", {})
    return tuple(single_image(comfy.run(g, timeout=600)) for g in (ours, stock, base))


def cancel_once_checkpointed(comfy: ComfyHarness, prompt_id: str, runs: Path, timeout: float = 600):
    """Wait until the queued training ``prompt_id`` has written two checkpoints under ``runs`` (one
    folder per data hash), press Cancel, and wait for the prompt to end interrupted. Returns
    (its checkpoint folder, the last step seen before Cancel); raises when it did not end so."""
    import time

    from textloc_core.training import checkpoint as ckpt

    deadline, folder = time.monotonic() + timeout, None
    while time.monotonic() < deadline and (folder is None or len(ckpt.list_checkpoints(folder)) < 2):
        folder = next(iter(runs.glob("*")), None) if runs.is_dir() else None
        time.sleep(0.2)
    seen = max(ckpt.list_checkpoints(folder))
    comfy.interrupt()
    try:
        comfy.client.wait_for_completion(prompt_id, timeout=300)
    except ComfyError as exc:
        if "interrupted" not in str(exc):
            raise
        return folder, seen
    raise AssertionError("the prompt finished although Cancel was pressed")
