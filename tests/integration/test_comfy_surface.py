"""Every ComfyUI symbol the pack relies on, checked on the ComfyUI under test.

CI runs the suite once per supported ComfyUI version (0.3.64, 0.33.0), so each is checked on
each. Three lists:

* ``SURFACE``: names reached through an import (``comfy.sample.sample``) and methods of the
  classes of the objects nodes receive (a MODEL is a ModelPatcher, a CLIP a ``comfy.sd.CLIP``);
* ``INSTANCE_ATTRIBUTES``: attributes those classes assign to their objects
  (``ModelPatcher.model_options``), checked in the classes' source;
* ``OPTION_KEYS``: keys of ComfyUI's option dicts the pack reads (``patches_replace``).

Two scans keep the lists and the rule true. Every name a module of nodes/ reaches through a
ComfyUI import must be in ``SURFACE``. And the instance attributes and option keys, which no
public call gives, are read in the nodes/comfy_internals package only: any other module of
nodes/ that reads one fails (an object's type cannot be seen in the source, so the attribute's name
is what counts).
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
    "comfy_api.latest.ComfyExtension",
    "comfy_api.latest.io.ComfyNode",
    "comfy_api.latest.io.Schema",
    "comfy_api.latest.io.NodeOutput",
    "comfy_api.latest.io.Custom",
    "comfy_api.latest.io.Hidden.unique_id",
    "comfy_api.latest.io.ComfyTypeIO",
    "comfy_api.latest.io.Output",
    "comfy_api.latest.ui.PreviewText",
    "comfy_api.latest.io.Boolean.Input",
    "comfy_api.latest.io.Int.Input",
    "comfy_api.latest.io.Float.Input",
    "comfy_api.latest.io.String.Input",
    "comfy_api.latest.io.Combo.Input",
    "comfy_api.latest.io.Image.Input",
    "comfy_api.latest.io.Image.Output",
    "comfy_api.latest.io.Mask.Input",
    "comfy_api.latest.io.Mask.Output",
    "comfy_api.latest.io.Model.Input",
    "comfy_api.latest.io.Model.Output",
    "comfy_api.latest.io.Clip.Input",
    "comfy_api.latest.io.Clip.Output",
    "comfy_api.latest.io.Vae.Input",
    "comfy_api.latest.io.Vae.Output",
    "comfy_api.latest.io.String.Output",
    "comfy_api.latest.io.Float.Output",
    "comfy_api.latest.io.Int.Output",
    # folders, server, progress, interruption
    "folder_paths.get_input_directory",
    "folder_paths.get_output_directory",
    "folder_paths.get_save_image_path",
    "folder_paths.models_dir",
    "folder_paths.base_path",
    "folder_paths.folder_names_and_paths",
    "folder_paths.get_folder_paths",
    "folder_paths.get_filename_list",
    "folder_paths.get_full_path",
    "folder_paths.add_model_folder_path",
    "server.PromptServer.send_progress_text",
    "comfy.utils.ProgressBar",
    "comfy.utils.ProgressBar.update_absolute",
    "comfy.model_management.processing_interrupted",
    "comfy.model_management.throw_exception_if_processing_interrupted",
    "comfy.model_management.InterruptProcessingException",
    "comfy.model_management.interrupt_current_processing",
    "comfy.model_management.load_models_gpu",
    "comfy.model_management.soft_empty_cache",
    "comfy.model_management.unet_offload_device",
    "comfy.model_management.get_torch_device",
    "comfy.model_management.unet_dtype",
    "comfy.model_management.intermediate_device",
    # sampling (Attention Preview), model construction (TinyWorld Loader)
    "comfy.sample.sample",
    "comfy.sample.prepare_noise",
    "comfy.samplers.KSampler.SAMPLERS",
    "comfy.samplers.KSampler.SCHEDULERS",
    "comfy.model_base.ModelType.EPS",
    "comfy.model_base.ModelType.V_PREDICTION",
    "comfy.supported_models.SD15",
    "comfy.model_patcher.ModelPatcher",
    "comfy.sd.CLIP",
    "comfy.sd.VAE",
    "comfy.sd1_clip.SD1Tokenizer",
    "comfy.sd1_clip.SDTokenizer",
    "comfy.sd1_clip.SDClipModel",
    "comfy.sd1_clip.SD1ClipModel",
    "comfy.supported_models_base.ClipTarget",
    "comfy.utils.unet_to_diffusers",
    "comfy.diffusers_convert.convert_vae_state_dict",
    "comfy.ldm.models.autoencoder.AutoencoderKL",
    # methods of the objects nodes receive (MODEL = ModelPatcher, CLIP = comfy.sd.CLIP, VAE = comfy.sd.VAE)
    "comfy.model_patcher.ModelPatcher.clone",
    "comfy.model_patcher.ModelPatcher.set_model_attn2_replace",
    "comfy.model_patcher.ModelPatcher.add_patches",
    "comfy.model_patcher.ModelPatcher.get_key_patches",
    "comfy.sd.CLIP.clone",
    "comfy.sd.CLIP.tokenize",
    "comfy.sd.CLIP.encode_from_tokens",
    "comfy.sd.CLIP.encode_from_tokens_scheduled",
    "comfy.sd.VAE.encode",
    "comfy.sd.VAE.decode",
    # nodes/comfy_internals/ (no public surface; each function there says what it relies on)
    "comfy.clip_model.CLIPLayer",
    "comfy.sd1_clip.SDClipModel.process_tokens",
    "comfy.model_base.SDXL",
    "comfy.model_base.SDXL.encode_adm",
    "comfy.model_base.ModelType",
    "comfy.model_base.BaseModel.get_dtype",
    "comfy.latent_formats.LatentFormat.process_in",
    "comfy.latent_formats.LatentFormat.process_out",
    "comfy.latent_formats.LatentFormat.latent_channels",
    "comfy.sd.VAE.spacial_compression_encode",
    "comfy.ldm.modules.attention.BasicTransformerBlock",
    "comfy.ldm.modules.diffusionmodules.openaimodel.ResBlock",
    # diffusion transformers (Flux, SD3): model classes, blocks, block patches, noise schedule
    "comfy.model_base.Flux",
    "comfy.model_base.SD3",
    "comfy.ldm.flux.layers.DoubleStreamBlock",
    "comfy.ldm.flux.layers.SingleStreamBlock",
    "comfy.ldm.modules.diffusionmodules.mmdit.JointBlock",
    "comfy.model_patcher.ModelPatcher.get_model_object",
    "comfy.model_patcher.ModelPatcher.set_model_patch_replace",
    "comfy.model_sampling.ModelSamplingFlux.percent_to_sigma",
    "comfy.model_sampling.ModelSamplingFlux.timestep",
    "comfy.model_sampling.ModelSamplingDiscreteFlow.percent_to_sigma",
    "comfy.model_sampling.ModelSamplingDiscreteFlow.timestep",
    "comfy.model_sampling.CONST.noise_scaling",
    "comfy.model_sampling.CONST.calculate_denoised",
    # nodes/comfy_internals/t5_rows.py (a Flux / SD3 token's T5 output row, written after T5 runs)
    "comfy.text_encoders.flux.FluxClipModel.encode_token_weights",
    "comfy.text_encoders.sd3_clip.SD3ClipModel.encode_token_weights",
}
# Names needed from a version on (read with a default before it): ComfyUI's training switch.
SURFACE_FROM = {"comfy.model_management.in_training": "0.33.0"}

# Attributes ComfyUI's classes (or a base class of theirs) assign to their objects, read or set in
# the nodes/comfy_internals package only; a name with a version is needed from that version on. (The
# encoders of an SD1ClipModel / SDXLClipModel, ``clip_l`` / ``clip_g``, are set by setattr under
# a computed name: the TinyWorld and tiny-SDXL loader tests read them on every version.)
INSTANCE_ATTRIBUTES = {
    "comfy.model_patcher.ModelPatcher": ["model", "model_options", "load_device", ("cached_patcher_init", "0.33.0")],
    "comfy.model_base.BaseModel": ["diffusion_model", "model_type", "latent_format", "manual_cast_dtype"],
    "comfy.sd.CLIP": ["patcher", "cond_stage_model"],
    "comfy.sd.VAE": ["patcher", "downscale_ratio", "upscale_ratio"],
    "comfy.sd1_clip.SDClipModel": ["transformer"],
    "comfy.sd1_clip.SDTokenizer": ["pad_token", "end_token"],
    "comfy.text_encoders.flux.FluxTokenizer": ["t5xxl"],
    "comfy.text_encoders.sd3_clip.SD3Tokenizer": ["t5xxl"],
    "comfy.ldm.flux.model.Flux": ["patch_size", "double_blocks"],
    "comfy.ldm.flux.layers.DoubleStreamBlock": ["txt_attn"],
    "comfy.ldm.flux.layers.SelfAttention": ["qkv"],
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT": ["patch_size", "joint_blocks"],
    "comfy.ldm.modules.diffusionmodules.mmdit.JointBlock": ["context_block"],
    "comfy.ldm.modules.diffusionmodules.mmdit.DismantledBlock": ["attn"],
    "comfy.ldm.modules.diffusionmodules.mmdit.SelfAttention": ["qkv"],
}
# Keys of ComfyUI's option dicts: ModelPatcher.model_options["transformer_options"]["patches_replace"]
# ["attn2"] (where set_model_attn2_replace stores a replacement), and an attn2 replacement's
# extra_options ("n_heads", the sampler's "cond_or_uncond"); the routing and preview tests use them.
# A dit block replacement's args ("txt", "img", "transformer_options") and extra ("original_block"),
# the "optimized_attention_override" in those options and the kwargs it is called with.
OPTION_KEYS = {
    "transformer_options",
    "patches_replace",
    "attn2",
    "n_heads",
    "cond_or_uncond",
    "dit",
    "txt",
    "img",
    "original_block",
    "optimized_attention_override",
    "heads",
    "skip_reshape",
}
# The package of nodes/ allowed to read INSTANCE_ATTRIBUTES and OPTION_KEYS (its modules by topic).
INTERNALS_PACKAGE = "comfy_internals"


def _pack_sources() -> list:
    """Every Python source of the pack's ComfyUI side: its __init__ and nodes/, subpackages included."""
    return [PACK_ROOT / "__init__.py", *sorted((PACK_ROOT / "nodes").rglob("*.py"))]


def _in_internals(path) -> bool:
    return path.parent.name == INTERNALS_PACKAGE and path.parent.parent.name == "nodes"


# Signatures the pack calls with keywords or positions that would break silently.
SIGNATURES = {
    "comfy.model_patcher.ModelPatcher.set_model_attn2_replace": [
        "self",
        "patch",
        "block_name",
        "number",
        "transformer_index",
    ],
    "comfy.sd.CLIP.tokenize": ["self", "text", "return_word_ids"],
    "comfy.model_patcher.ModelPatcher.get_key_patches": ["self", "filter_prefix"],
    "comfy.sd.CLIP.encode_from_tokens": ["self", "tokens", "return_pooled", "return_dict"],
    "comfy.model_patcher.ModelPatcher.set_model_patch_replace": [
        "self",
        "patch",
        "name",
        "block_name",
        "number",
        "transformer_index",
    ],
    "comfy.model_sampling.CONST.noise_scaling": ["self", "sigma", "noise", "latent_image"],
    "comfy.model_sampling.CONST.calculate_denoised": ["self", "sigma", "model_output", "model_input"],
}

# Names the pack imports from ComfyUI; anything reached through them is ComfyUI's surface.
COMFY_ROOTS = ("comfy", "comfy_api", "folder_paths", "server", "comfy_extras", "nodes", "execution")


# Runs in a fresh interpreter started in the ComfyUI tree, as ComfyUI itself starts, so what
# the test session imported before (the pack's own ``nodes`` package, say) cannot mask a name.
_CHECK = r"""
import ast, importlib, inspect, json, sys, textwrap
import utils.install_util  # ComfyUI's top-level utils package, imported first as main.py does
import comfy.cli_args
comfy.cli_args.args.cpu = True
surface, signatures, attributes = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])

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
for dotted, names in attributes.items():
    assigned = set()
    for cls in inspect.getmro(resolve(dotted)):
        if cls.__module__.startswith("comfy"):
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            assigned |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                         and isinstance(n.value, ast.Name) and n.value.id == "self"}
    missing += [f"{dotted}.{name} (never assigned)" for name in names if name not in assigned]
print(json.dumps({"missing": missing, "wrong": wrong}))
"""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _attributes_for(version: str) -> dict[str, list[str]]:
    """INSTANCE_ATTRIBUTES this ComfyUI version must assign (versioned ones from their version on)."""
    return {
        cls: [
            a if isinstance(a, str) else a[0]
            for a in names
            if isinstance(a, str) or _version_key(version) >= _version_key(a[1])
        ]
        for cls, names in INSTANCE_ATTRIBUTES.items()
    }


def test_every_comfyui_symbol_the_pack_relies_on_exists(comfy_tree):
    version = (comfy_tree / "comfyui_version.py").read_text().split('"')[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHECK,
            json.dumps(
                sorted(SURFACE | {n for n, v in SURFACE_FROM.items() if _version_key(version) >= _version_key(v)})
            ),
            json.dumps(SIGNATURES),
            json.dumps(_attributes_for(version)),
        ],
        cwd=comfy_tree,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
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
    used = set().union(*(_comfy_references(p) for p in _pack_sources()))
    # a reference covers its prefixes (``comfy.sample`` is reached by ``comfy.sample.sample``)
    every = SURFACE | set(SURFACE_FROM)
    listed = every | {".".join(s.split(".")[:i]) for s in every for i in range(1, s.count(".") + 1)}
    # ``server.PromptServer.instance`` is the running server; its methods are listed on the class
    unlisted = sorted(u for u in used if u not in listed and not u.startswith("server.PromptServer.instance"))
    assert not unlisted, f"ComfyUI names used but not in SURFACE (add them, so every version checks them): {unlisted}"


def test_the_scan_sees_references_through_aliases(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import comfy.model_management as mm\nfrom comfy_api.latest import io\n"
        "import folder_paths\nx = io.Int.Input\nmm.soft_empty_cache()\nfolder_paths.models_dir\n"
    )
    assert _comfy_references(sample) >= {
        "comfy_api.latest.io.Int.Input",
        "comfy.model_management.soft_empty_cache",
        "folder_paths.models_dir",
    }


def _internal_reads(path, source: str | None = None) -> list[str]:
    """'file:line name' for every INSTANCE_ATTRIBUTES attribute and OPTION_KEYS key a source file
    reads or sets (``x.model_options``, ``opts["n_heads"]``, ``opts.get("cond_or_uncond")``)."""
    names = {a if isinstance(a, str) else a[0] for attrs in INSTANCE_ATTRIBUTES.values() for a in attrs}
    tree = ast.parse(path.read_text() if source is None else source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.append((node.lineno, node.attr))
        elif (
            isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in OPTION_KEYS
        ):
            found.append((node.lineno, node.slice.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in OPTION_KEYS
        ):
            found.append((node.lineno, node.args[0].value))
    return [f"{path.name}:{line} {name}" for line, name in sorted(found)]


def _reads_outside_internals(sources) -> list[str]:
    """What ``_internal_reads`` finds in ``sources`` outside the internals package."""
    return [line for path in sources if not _in_internals(path) for line in _internal_reads(path)]


def test_comfyuis_internals_are_read_in_comfy_internals_only():
    sources = _pack_sources()
    found = _reads_outside_internals(sources)
    assert not found, (
        "ComfyUI internals read outside nodes/comfy_internals/ (add a function there saying what "
        "it relies on, and list the name in INSTANCE_ATTRIBUTES / OPTION_KEYS): " + "; ".join(found)
    )
    modules = [path for path in sources if _in_internals(path) and path.name != "__init__.py"]
    assert len(modules) >= 5, f"the scan sees {[p.name for p in modules]} of nodes/comfy_internals/"
    for path in modules:
        assert _internal_reads(path), f"the scan finds nothing in comfy_internals/{path.name}"


def test_a_read_outside_the_package_fails_even_beside_it(tmp_path):
    """The rule holds for every module of nodes/, a subpackage's included; only the package is exempt."""
    read = "def f(model):\n    return model.model_options\n"
    for relative in ("nodes/comfy_internals/model.py", "nodes/comfy_other.py", "nodes/sub/comfy_internals.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(read)
    found = _reads_outside_internals(sorted((tmp_path / "nodes").rglob("*.py")))
    assert found == ["comfy_other.py:2 model_options", "comfy_internals.py:2 model_options"]


def test_the_internals_scan_sees_attributes_and_option_keys(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(model, opts, clip):\n    a = model.model.diffusion_model\n    h = opts['n_heads']\n"
        "    c = opts.get('cond_or_uncond')\n    clip.patcher = None\n    return model.clone()\n"
    )
    assert _internal_reads(sample) == [
        "sample.py:2 diffusion_model",
        "sample.py:2 model",
        "sample.py:3 n_heads",
        "sample.py:4 cond_or_uncond",
        "sample.py:5 patcher",
    ]
