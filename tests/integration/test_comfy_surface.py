"""Every ComfyUI symbol the pack relies on, checked on the ComfyUI under test.

CI runs the suite once per supported ComfyUI version (0.3.64, 0.33.0), so each symbol is
checked on each. ``SURFACE`` is the list; a scan of the pack's ComfyUI-facing code fails when
code uses a ComfyUI name that is not on it, so the list cannot fall behind the code.
Methods called on objects ComfyUI hands to nodes (a MODEL is a ModelPatcher, a CLIP a
``comfy.sd.CLIP``) are listed by hand: a scan cannot see an object's type.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

from textloc_harness.comfy_launcher import PACK_ROOT

SURFACE = {
    # the V3 node API
    "comfy_api.latest.ComfyExtension", "comfy_api.latest.io.ComfyNode", "comfy_api.latest.io.Schema",
    "comfy_api.latest.io.NodeOutput", "comfy_api.latest.io.Custom", "comfy_api.latest.io.Hidden.unique_id",
    "comfy_api.latest.io.ComfyTypeIO", "comfy_api.latest.io.Output", "comfy_api.latest.ui.PreviewText",
    "comfy_api.latest.io.Boolean.Input", "comfy_api.latest.io.Int.Input", "comfy_api.latest.io.Float.Input",
    "comfy_api.latest.io.String.Input", "comfy_api.latest.io.Combo.Input", "comfy_api.latest.io.Image.Input",
    "comfy_api.latest.io.Image.Output", "comfy_api.latest.io.Mask.Input", "comfy_api.latest.io.Mask.Output",
    "comfy_api.latest.io.Model.Input", "comfy_api.latest.io.Model.Output", "comfy_api.latest.io.Clip.Input",
    "comfy_api.latest.io.Clip.Output", "comfy_api.latest.io.Vae.Input", "comfy_api.latest.io.Vae.Output",
    "comfy_api.latest.io.String.Output", "comfy_api.latest.io.Float.Output", "comfy_api.latest.io.Int.Output",
    # folders, server, progress, interruption
    "folder_paths.get_input_directory", "folder_paths.get_output_directory", "folder_paths.get_save_image_path",
    "folder_paths.models_dir", "folder_paths.base_path", "folder_paths.folder_names_and_paths", "folder_paths.get_folder_paths",
    "folder_paths.get_filename_list", "folder_paths.get_full_path", "folder_paths.add_model_folder_path",
    "server.PromptServer.send_progress_text", "comfy.utils.ProgressBar", "comfy.utils.ProgressBar.update_absolute",
    "comfy.model_management.processing_interrupted", "comfy.model_management.throw_exception_if_processing_interrupted",
    "comfy.model_management.InterruptProcessingException", "comfy.model_management.interrupt_current_processing",
    "comfy.model_management.load_models_gpu", "comfy.model_management.soft_empty_cache",
    "comfy.model_management.unet_offload_device", "comfy.model_management.get_torch_device",
    "comfy.model_management.unet_dtype", "comfy.model_management.intermediate_device",
    # sampling (Attention Preview), model construction (TinyWorld Loader)
    "comfy.sample.sample", "comfy.sample.prepare_noise", "comfy.samplers.KSampler.SAMPLERS",
    "comfy.samplers.KSampler.SCHEDULERS", "comfy.model_base.ModelType.EPS", "comfy.model_base.ModelType.V_PREDICTION",
    "comfy.supported_models.SD15", "comfy.model_patcher.ModelPatcher", "comfy.sd.CLIP", "comfy.sd.VAE",
    "comfy.sd1_clip.SD1Tokenizer", "comfy.sd1_clip.SDTokenizer", "comfy.sd1_clip.SDClipModel", "comfy.sd1_clip.SD1ClipModel",
    "comfy.supported_models_base.ClipTarget", "comfy.utils.unet_to_diffusers", "comfy.diffusers_convert.convert_vae_state_dict",
    "comfy.ldm.models.autoencoder.AutoencoderKL",
    # methods of the objects nodes receive (MODEL = ModelPatcher, CLIP = comfy.sd.CLIP, VAE = comfy.sd.VAE)
    "comfy.model_patcher.ModelPatcher.clone", "comfy.model_patcher.ModelPatcher.set_model_attn2_replace",
    "comfy.model_patcher.ModelPatcher.add_patches", "comfy.model_patcher.ModelPatcher.get_key_patches",
    "comfy.sd.CLIP.clone", "comfy.sd.CLIP.tokenize", "comfy.sd.CLIP.encode_from_tokens",
    "comfy.sd.CLIP.encode_from_tokens_scheduled", "comfy.sd.VAE.encode", "comfy.sd.VAE.decode",
    # nodes/comfy_internals.py (no public surface; each function there says what it relies on)
    "comfy.clip_model.CLIPLayer", "comfy.sd1_clip.SDClipModel.process_tokens",
    "comfy.model_base.SDXL", "comfy.model_base.SDXL.encode_adm",
    "comfy.ldm.modules.attention.BasicTransformerBlock", "comfy.ldm.modules.diffusionmodules.openaimodel.ResBlock",
}

# Signatures the pack calls with keywords or positions that would break silently.
SIGNATURES = {
    "comfy.model_patcher.ModelPatcher.set_model_attn2_replace": ["self", "patch", "block_name", "number", "transformer_index"],
    "comfy.sd.CLIP.tokenize": ["self", "text", "return_word_ids"],
    "comfy.model_patcher.ModelPatcher.get_key_patches": ["self", "filter_prefix"],
    "comfy.sd.CLIP.encode_from_tokens": ["self", "tokens", "return_pooled", "return_dict"],
}

# Names the pack imports from ComfyUI; anything reached through them is ComfyUI's surface.
COMFY_ROOTS = ("comfy", "comfy_api", "folder_paths", "server", "comfy_extras", "nodes", "execution")


# Runs in a fresh interpreter started in the ComfyUI tree, as ComfyUI itself starts, so what
# the test session imported before (the pack's own ``nodes`` package, say) cannot mask a name.
_CHECK = r"""
import importlib, inspect, json, sys
import utils.install_util  # ComfyUI's top-level utils package, imported first as main.py does
import comfy.cli_args
comfy.cli_args.args.cpu = True
surface, signatures = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if not (exc.name and dotted.startswith(exc.name)):  # a dependency missing, not our name
                raise
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)

missing, wrong = [], []
for dotted in surface:
    try:
        resolve(dotted)
    except Exception as exc:
        missing.append(f"{dotted} ({type(exc).__name__}: {exc})")
for dotted, params in signatures.items():
    found = list(inspect.signature(resolve(dotted)).parameters)
    if found[:len(params)] != params:
        wrong.append(f"{dotted}{tuple(found)} != {params}")
print(json.dumps({"missing": missing, "wrong": wrong}))
"""


def test_every_comfyui_symbol_the_pack_relies_on_exists(comfy_tree):
    version = (comfy_tree / "comfyui_version.py").read_text().split('"')[1]
    proc = subprocess.run([sys.executable, "-c", _CHECK, json.dumps(sorted(SURFACE)), json.dumps(SIGNATURES)],
                          cwd=comfy_tree, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["missing"], f"ComfyUI {version} lacks: " + "; ".join(report["missing"])
    assert not report["wrong"], f"ComfyUI {version} changed signatures: " + "; ".join(report["wrong"])


def _comfy_references(path) -> set[str]:
    """Dotted ComfyUI names a source file reaches through its imports (``io.Int.Input``,
    ``comfy.sample.sample``, ``folder_paths.get_full_path``...)."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in COMFY_ROOTS:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in COMFY_ROOTS:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in aliases:
                found.add(".".join([aliases[cur.id], *reversed(chain)]))
        elif isinstance(node, ast.Name) and node.id in aliases and isinstance(node.ctx, ast.Load):
            found.add(aliases[node.id])
    return found


def test_the_list_covers_every_comfyui_name_the_pack_uses():
    sources = [PACK_ROOT / "__init__.py", *sorted((PACK_ROOT / "nodes").glob("*.py"))]
    used = set().union(*(_comfy_references(p) for p in sources))
    # a reference covers its prefixes (``comfy.sample`` is reached by ``comfy.sample.sample``)
    listed = SURFACE | {".".join(s.split(".")[:i]) for s in SURFACE for i in range(1, s.count(".") + 1)}
    # ``server.PromptServer.instance`` is the running server; its methods are listed on the class
    unlisted = sorted(u for u in used if u not in listed and not u.startswith("server.PromptServer.instance"))
    assert not unlisted, f"ComfyUI names used but not in SURFACE (add them, so every version checks them): {unlisted}"


def test_the_scan_sees_references_through_aliases(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import comfy.model_management as mm\nfrom comfy_api.latest import io\n"
                      "import folder_paths\nx = io.Int.Input\nmm.soft_empty_cache()\nfolder_paths.models_dir\n")
    assert _comfy_references(sample) >= {"comfy_api.latest.io.Int.Input", "comfy.model_management.soft_empty_cache",
                                         "folder_paths.models_dir"}
