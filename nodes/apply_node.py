"""TextLoc Apply Adapter: put adapters onto MODEL and CLIP, like ComfyUI's own LoRA loaders.

MODEL: ``model.clone()`` + ``add_patches`` of plain ``diff`` patches keyed by the state-dict
names ``diffusion_model.<layer>.to_k.weight`` (the pattern of comfy_extras'
nodes_attention_multiply.py), so ComfyUI patches and unpatches the weights itself, at any
strength, composing with LoRAs and other adapters.

CLIP: ``clip.clone()`` whose tokenizer also knows the adapter's identifier tokens
(``comfy_tokens.with_identifiers``): a prompt may say ``<doll1>`` or ``embedding:<doll1>``,
and the token becomes the learned vector, in the token list a stock ``embedding:NAME`` file
would give. Chaining several Apply nodes stacks both; the original CLIP and MODEL are never
changed.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..textloc_core.adapters.adapter import Adapter, load_adapter
from ..textloc_core.adapters.composition import check_compatible, composed_embeddings
from ..textloc_core.adapters.formats import comfy_unet_patch
from . import paths
from .comfy_backend import base_fingerprint_and_weights
from .comfy_dit_apply import dit_family, with_dit_identifiers
from .comfy_tokens import IdentifierPlacer, applied_identifiers, with_identifiers
from .schema import ADAPTER, NodeText, require_finite

APPLY_ADAPTER_DESCRIPTION = "Load a TextLoc adapter onto MODEL and CLIP; prompts can then use its tokens (e.g. 'a <doll1> doll'). Chain nodes to use several adapters."
APPLY_TOOLTIPS = {
    "model": "The base model the adapter was trained on.",
    "clip": "Its text encoder; the adapter's tokens are added to it.",
    "adapter_file": "An adapter from models/textloc (ignored when the adapter input is connected).",
    "strength": "Scale of the K/V weight change (1 = as trained). Tokens are always added.",
    "adapter": "An adapter straight from TextLoc Train (takes precedence over adapter_file).",
    "ignore_base_mismatch": "Apply even if the adapter was trained on other base weights of the same architecture.",
}
"""What each Apply Adapter input does, as its tooltip in the UI says."""
APPLY_NODE = NodeText("TextLocApplyAdapter", "TextLoc Apply Adapter", APPLY_ADAPTER_DESCRIPTION, APPLY_TOOLTIPS)

NONE = "(none)"


def apply_adapter(
    model, clip, adapter: Adapter, strength: float, allow_base_mismatch: bool = False, name: str = "adapter"
):
    """(MODEL, CLIP) clones carrying ``adapter`` at ``strength``."""
    fingerprint, kv = base_fingerprint_and_weights(model)
    check_compatible(adapter, kv, fingerprint, allow_base_mismatch=allow_base_mismatch, name=name)
    new_model = model.clone()
    # the stock patch file's tensors (a diffusion transformer's K/V as one diff on its fused
    # text qkv), so Apply and ComfyUI's own LoRA loaders patch with the same numbers
    patches = {key[: -len(".diff")] + ".weight": (delta,) for key, delta in comfy_unet_patch(adapter).items()}
    applied = new_model.add_patches(patches, strength)
    if len(applied) != len(patches):
        raise ValueError(f"{name}: only {len(applied)} of {len(patches)} K/V patches matched this model's weights")
    new_clip = None
    if clip is not None:
        known, stacked = applied_identifiers(clip)
        placer = IdentifierPlacer.for_clip(clip)
        for token in adapter.token_embeddings:  # a file may come from anywhere: 'a' would hijack every "a"
            if token not in known:  # an applied token was checked then; a clash is refused below
                placer.check_new_token(token, f"{name}: token")
        composed_embeddings(stacked + [adapter])  # raises when two adapters define one token differently
        family = dit_family(kv)
        if family is None:
            new_clip = with_identifiers(clip, adapter.token_embeddings, adapter)
        else:  # Flux / SD3: the token's T5 part too
            new_clip = with_dit_identifiers(clip, adapter.token_embeddings, adapter, family)
    return new_model, new_clip


class ApplyAdapter(io.ComfyNode):
    """Apply a TextLoc adapter (from TextLoc Train or from a file) to MODEL and CLIP."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return APPLY_NODE.schema(
            outputs=[io.Model.Output(), io.Clip.Output()],
            inputs=[
                APPLY_NODE.input(io.Model, "model"),
                APPLY_NODE.input(io.Clip, "clip"),
                # listed when the server lists the nodes, so a newly trained adapter shows after a refresh
                APPLY_NODE.input(io.Combo, "adapter_file", options=[NONE] + paths.list_adapters()),
                APPLY_NODE.input(io.Float, "strength", default=1.0, min=-10.0, max=10.0, step=0.01),
                APPLY_NODE.input(ADAPTER, "adapter", optional=True),
                APPLY_NODE.input(io.Boolean, "ignore_base_mismatch", default=False, optional=True),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_file=NONE, **_inputs):
        """Re-run when the chosen file is rewritten (retraining under the same name)."""
        if adapter_file == NONE:
            return ""
        try:
            stat = paths.resolve_adapter(adapter_file).stat()
        except (ValueError, OSError):
            return ""
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, model, clip, adapter_file, strength, adapter=None, ignore_base_mismatch=False) -> io.NodeOutput:
        require_finite(strength=strength)
        name = "adapter"
        if adapter is None:
            if adapter_file == NONE:
                raise ValueError("adapter_file: choose an adapter file, or connect the adapter output of TextLoc Train")
            adapter = load_adapter(paths.resolve_adapter(adapter_file))
            name = f"adapter {adapter_file!r}"
        return io.NodeOutput(*apply_adapter(model, clip, adapter, strength, ignore_base_mismatch, name))
