"""TextLoc Attention Preview: sample a prompt and show where each token looks.

Sampling is ComfyUI's own (``comfy.sample.sample``, any sampler and scheduler). During it,
the attn2 layers are routed through an ``AttentionRouter`` (``comfy_backend.route_attention``
on a clone of the MODEL, composing with other packs' attn2 replacements) that keeps, for the
conditional rows only, the chosen tokens' attention probabilities summed over all steps.
Those fold into one map per token (``textloc_core.maps.token_maps``, the paper's recipe) and
come out three ways: the images, heat-map overlays (image-major, one per token), and the raw
maps as MASK for downstream nodes.
"""

from __future__ import annotations

import torch

from ..textloc_core import heatmap
from ..textloc_core.attention import AttentionRouter, CapturedMap
from ..textloc_core.maps import choose_layers, slot_layout, token_maps
from .comfy_backend import ComfyDenoiserBackend, ComfyTextBackend, find_positions

CATEGORY = "textloc"
LEVELS = ("all_but_finest", "all")


class PreviewRouter(AttentionRouter):
    """An AttentionRouter that sums the conditional rows' maps over sampling steps."""

    def __init__(self, slots: torch.Tensor):
        super().__init__(layers=None, token_slots=slots, keep_grad=False)
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._cond = [0]

    def before_call(self, extra_options: dict) -> None:
        self._cond = list(extra_options.get("cond_or_uncond") or [0])

    def __call__(self, layer, q, k, v, heads):
        out = super().__call__(layer, q, k, v, heads)
        probs = self.captured.pop().probs
        chunk = probs.shape[0] // max(1, len(self._cond))
        rows = [r for i, c in enumerate(self._cond) if c == 0 for r in range(i * chunk, (i + 1) * chunk)]
        if rows:
            picked = probs[rows].float()  # stays on the device: no sync per attn2 call
            if layer in self.sums and self.sums[layer].shape == picked.shape:
                self.sums[layer] += picked
                self.calls[layer] += 1
            elif layer not in self.sums:
                self.sums[layer], self.calls[layer] = picked, 1
        return out

    def averaged(self) -> list[CapturedMap]:
        return [CapturedMap(layer, total / self.calls[layer]) for layer, total in self.sums.items()]


def _word_ids(text: ComfyTextBackend, word: str) -> list[int]:
    _name, tokenizer, _encoder = text.encoders[0]
    return text._pieces(tokenizer, word)


def attention_preview(model, clip, vae, prompt, negative, tokens, seed, steps, cfg, sampler_name, scheduler,
                      width, height, batch_size, levels="all_but_finest", alpha=0.5):
    import comfy.sample

    text = ComfyTextBackend(clip)
    embeddings = dict(getattr(clip.tokenizer, "textloc_embeddings", {}))  # set by TextLoc Apply Adapter
    token_dict = clip.tokenize(prompt)
    wanted = [t.strip() for t in tokens.split(",") if t.strip()]
    words = {w: _word_ids(text, w) for w in wanted if w not in embeddings}
    positions = find_positions(token_dict, embeddings, words)
    if not wanted:
        wanted = [t for t in embeddings if t in positions]
        if not wanted:
            raise ValueError(
                "tokens: the prompt has no adapter token; name the words to map (e.g. 'doll, bucket') or use a "
                "token of an applied TextLoc adapter in the prompt"
            )
    missing = [t for t in wanted if t not in positions]
    if missing:
        raise ValueError(f"tokens: {missing} do not occur in the prompt {prompt!r}; write them in the prompt or remove them")
    layout = slot_layout([positions] * batch_size, wanted)

    positive = clip.encode_from_tokens_scheduled(token_dict)
    negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
    factor = int(vae.spacial_compression_encode()) if hasattr(vae, "spacial_compression_encode") else 8
    channels = model.model.latent_format.latent_channels
    latent = torch.zeros([batch_size, channels, height // factor, width // factor])
    noise = comfy.sample.prepare_noise(latent, seed)

    denoiser = ComfyDenoiserBackend(model, vae, training=False)
    router = PreviewRouter(layout.slots[:1])
    with denoiser.route_attention(router):
        samples = comfy.sample.sample(
            denoiser.patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative_cond, latent, seed=seed
        )
    images = vae.decode(samples)  # (B, H, W, 3)
    captured = router.averaged()
    chosen = choose_layers({m.layer: m.probs.shape[1] for m in captured}, levels)
    maps = token_maps([m for m in captured if m.layer in chosen], layout, tuple(latent.shape[-2:])).float().cpu()  # (B, K, h, w)
    pictures = images.movedim(-1, 1).float()
    size = tuple(pictures.shape[-2:])
    overlays = torch.cat([heatmap.overlay(pictures[b:b + 1].expand(maps.shape[1], -1, -1, -1), maps[b], alpha) for b in range(maps.shape[0])])
    masks = heatmap.normalize_maps(heatmap.upsample_maps(maps.flatten(0, 1), size))
    return images, overlays.movedim(1, -1), masks, ", ".join(wanted)


class AttentionPreview:
    """Sample a prompt and output images, per-token attention overlays and the raw maps."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("images", "overlays", "maps", "tokens")
    FUNCTION = "preview"
    DESCRIPTION = "Generate images and show each token's cross-attention map (overlays are ordered image by image, one per token)."

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (with TextLoc adapters applied, or any model)."}),
                "clip": ("CLIP", {"tooltip": "The text encoder (from TextLoc Apply Adapter when the prompt uses adapter tokens)."}),
                "vae": ("VAE", {"tooltip": "Decodes the samples."}),
                "prompt": ("STRING", {"default": "photo of a <doll1> doll", "multiline": True, "tooltip": "Prompt to sample; may use adapter tokens."}),
                "negative": ("STRING", {"default": "", "multiline": True, "tooltip": "Negative prompt."}),
                "tokens": ("STRING", {"default": "", "tooltip": "Comma-separated tokens or words to map (empty: every adapter token in the prompt)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Sampling steps."}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "Classifier-free guidance scale."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip": "Sampler."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule."}),
                "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8, "tooltip": "Image width in pixels."}),
                "height": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8, "tooltip": "Image height in pixels."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per run."}),
            },
            "optional": {
                "levels": (list(LEVELS), {"default": "all_but_finest", "tooltip": "Attention resolutions averaged into the map (paper: all but the finest)."}),
                "overlay_alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Opacity of the heat map over the image."}),
            },
        }

    def preview(self, model, clip, vae, prompt, negative, tokens, seed, steps, cfg, sampler_name, scheduler,
                width, height, batch_size, levels="all_but_finest", overlay_alpha=0.5):
        return attention_preview(model, clip, vae, prompt, negative, tokens, seed, steps, cfg, sampler_name,
                                 scheduler, width, height, batch_size, levels, overlay_alpha)
