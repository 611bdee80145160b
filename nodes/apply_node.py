"""TextLoc Apply Adapter: put adapters onto MODEL and CLIP, like ComfyUI's own LoRA loaders.

MODEL: ``model.clone()`` + ``add_patches`` of plain ``diff`` patches keyed by the state-dict
names ``diffusion_model.<layer>.to_k.weight`` (the pattern of comfy_extras'
nodes_attention_multiply.py), so ComfyUI patches and unpatches the weights itself, at any
strength, composing with LoRAs and other adapters.

CLIP: ``clip.clone()`` with a tokenizer copy that knows the adapter's identifier tokens: a
prompt may say ``<doll1>`` or ``embedding:<doll1>``, and the token becomes the learned
vector, through the same tensor-injection path ``embedding:NAME`` files take. Chaining
several Apply nodes stacks both; the original CLIP and MODEL are never changed.
"""

from __future__ import annotations

from ..textloc_core.adapter import Adapter, check_compatible, composed_embeddings, load_adapter
from . import paths
from .comfy_backend import base_fingerprint_and_weights, tokenizer_with_embeddings
from .train_node import ADAPTER

NONE = "(none)"


def apply_adapter(model, clip, adapter: Adapter, strength: float, allow_base_mismatch: bool = False, name: str = "adapter"):
    """(MODEL, CLIP) clones carrying ``adapter`` at ``strength``."""
    fingerprint, kv = base_fingerprint_and_weights(model)
    check_compatible(adapter, kv, fingerprint, allow_base_mismatch=allow_base_mismatch, name=name)
    new_model = model.clone()
    patches = {f"diffusion_model.{key}.weight": (delta,) for key, delta in adapter.kv_deltas.items()}
    applied = new_model.add_patches(patches, strength)
    if len(applied) != len(patches):
        raise ValueError(f"{name}: only {len(applied)} of {len(patches)} K/V patches matched this model's weights")
    new_clip = None
    if clip is not None:
        # kept on the tokenizer: CLIP.clone() (any stock node downstream) shares the tokenizer
        stacked = list(getattr(clip.tokenizer, "textloc_adapters", [])) + [adapter]
        known = composed_embeddings(stacked)  # raises when two adapters define one token differently
        new_clip = clip.clone()
        new_clip.tokenizer = tokenizer_with_embeddings(clip, adapter.token_embeddings.get, list(adapter.token_embeddings))
        new_clip.tokenizer.textloc_adapters = stacked
        new_clip.tokenizer.textloc_embeddings = known
    return new_model, new_clip


class ApplyAdapter:
    """Apply a TextLoc adapter (from TextLoc Train or from a file) to MODEL and CLIP."""

    CATEGORY = "textloc"
    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "apply"
    DESCRIPTION = "Load a TextLoc adapter onto MODEL and CLIP; prompts can then use its tokens (e.g. 'a <doll1> doll'). Chain nodes to use several adapters."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model the adapter was trained on."}),
                "clip": ("CLIP", {"tooltip": "Its text encoder; the adapter's tokens are added to it."}),
                "adapter_file": ([NONE] + paths.list_adapters(), {"tooltip": "An adapter from models/textloc (ignored when the adapter input is connected)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": "Scale of the K/V weight change (1 = as trained). Tokens are always added."}),
            },
            "optional": {
                "adapter": (ADAPTER, {"tooltip": "An adapter straight from TextLoc Train (takes precedence over adapter_file)."}),
                "ignore_base_mismatch": ("BOOLEAN", {"default": False, "tooltip": "Apply even if the adapter was trained on other base weights of the same architecture."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, adapter_file=NONE, **_inputs):
        """Re-run when the chosen file is rewritten (retraining under the same name)."""
        if adapter_file == NONE:
            return ""
        try:
            stat = paths.resolve_adapter(adapter_file).stat()
        except (ValueError, OSError):
            return ""
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def apply(self, model, clip, adapter_file, strength, adapter=None, ignore_base_mismatch=False):
        name = "adapter"
        if adapter is None:
            if adapter_file == NONE:
                raise ValueError("adapter_file: choose an adapter file, or connect the adapter output of TextLoc Train")
            adapter = load_adapter(paths.resolve_adapter(adapter_file))
            name = f"adapter {adapter_file!r}"
        return apply_adapter(model, clip, adapter, strength, ignore_base_mismatch, name)
