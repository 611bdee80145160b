"""TextLoc Attention Preview: sample a prompt and show where each token looks.

Sampling is ComfyUI's own (``comfy.sample.sample``, any sampler and scheduler). During it,
the attn2 layers are routed through an ``AttentionRouter`` (``comfy_backend.route_attention``
on a clone of the MODEL, composing with other packs' attn2 replacements) that keeps, for the
conditional rows only, the chosen tokens' attention probabilities summed over all steps.
Those fold into one map per token (``textloc_core.attention.maps.token_maps``, the paper's recipe) and
come out three ways: the images, heat-map overlays (image-major, one per token), and the raw
maps as MASK for downstream nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..textloc_core.attention.cross_attention import AveragingRouter
from ..textloc_core.attention.maps import DEFAULT_MAP_LEVELS, NAMED_MAP_LEVELS, choose_layers, slot_layout, token_maps
from ..textloc_core.evaluation import heatmap
from .comfy_backend import ComfyDenoiserBackend
from .comfy_cancel import end_if_cancelled
from .comfy_dit_preview import dit_mapped_tokens
from .comfy_internals import conditional_chunks, dit_layout, model_parts
from .comfy_tokens import IdentifierPlacer, applied_identifiers
from .schema import NodeText, named, require_finite

ATTENTION_PREVIEW_DESCRIPTION = (
    "Generate images and show each token's cross-attention map (overlays are ordered image by image, one per token)."
)
PREVIEW_TOOLTIPS = {
    "model": "The model (with TextLoc adapters applied, or any model; Flux / SD3 too: words and adapter tokens are mapped).",
    "clip": "The text encoder (from TextLoc Apply Adapter when the prompt uses adapter tokens).",
    "vae": "Decodes the samples.",
    "prompt": "Prompt to sample; may use adapter tokens.",
    "negative": "Negative prompt (Flux at CFG 1 samples without it).",
    "tokens": "Comma-separated tokens or words to map (empty: every adapter token in the prompt).",
    "seed": "Noise seed.",
    "steps": "Sampling steps.",
    "cfg": "Classifier-free guidance scale.",
    "sampler_name": "Sampler.",
    "scheduler": "Noise schedule.",
    "width": "Image width in pixels.",
    "height": "Image height in pixels.",
    "batch_size": "Images per run.",
    "levels": "Attention resolutions averaged into the map (paper: all but the finest).",
    "overlay_alpha": "Opacity of the heat map over the image.",
}
"""What each Attention Preview input does, as its tooltip in the UI says."""
PREVIEW_NODE = NodeText(
    "TextLocAttentionPreview", "TextLoc Attention Preview", ATTENTION_PREVIEW_DESCRIPTION, PREVIEW_TOOLTIPS
)


class PreviewRouter(AveragingRouter):
    """The core's step-averaging router over the conditional rows of ComfyUI's batches."""

    def __init__(self, slots: torch.Tensor):
        super().__init__(layers=None, token_slots=slots)
        self._cond = [0]

    def before_call(self, extra_options: dict) -> None:
        # every attn2 call: a Cancel ends even one long sampling step (large images) early
        end_if_cancelled()
        self._cond = conditional_chunks(extra_options)

    def rows(self, batch: int) -> list[int]:
        """The rows of this call that are conditional (ComfyUI's cond_or_uncond, one chunk each)."""
        chunk = batch // max(1, len(self._cond))
        return [r for i, c in enumerate(self._cond) if c == 0 for r in range(i * chunk, (i + 1) * chunk)]


@dataclass(frozen=True)
class PreviewSettings:
    """Attention Preview's widgets (all its inputs but MODEL, CLIP and VAE), by their names."""

    prompt: str
    negative: str
    tokens: str
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int
    batch_size: int
    levels: str = DEFAULT_MAP_LEVELS
    overlay_alpha: float = 0.5


def attention_preview(model, clip, vae, s: PreviewSettings):
    """(images, overlays, maps, tokens): ``s.prompt`` sampled by ComfyUI with the chosen tokens'
    cross-attention captured, folded into one map per token at ``s.levels``."""
    import comfy.sample
    import comfy.utils

    token_dict, wanted, layout, denoiser = _mapped_and_denoiser(
        model, clip, vae, s.prompt, s.negative, s.tokens, s.cfg, s.batch_size
    )
    positive = clip.encode_from_tokens_scheduled(token_dict)
    negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(s.negative))
    factor = denoiser.vae_scale_factor
    latent = torch.zeros([s.batch_size, denoiser.latent_channels, s.height // factor, s.width // factor])
    noise = comfy.sample.prepare_noise(latent, s.seed)
    router = PreviewRouter(layout.slots[:1])
    end_if_cancelled()
    progress = comfy.utils.ProgressBar(s.steps)

    def on_step(step, _denoised, _x, total):
        # Cancel ends the sampling after the step in flight (the progress hook checks it on
        # ComfyUI's server; checked here too, so it holds whatever hook is installed)
        end_if_cancelled()
        progress.update_absolute(step + 1, total)

    with denoiser.route_attention(router):
        samples = comfy.sample.sample(
            denoiser.working_model,
            noise,
            s.steps,
            s.cfg,
            s.sampler_name,
            s.scheduler,
            positive,
            negative_cond,
            latent,
            seed=s.seed,
            callback=on_step,
        )
    end_if_cancelled()
    images = vae.decode(samples)  # (B, H, W, 3)
    maps = captured_maps(router, layout, s.levels, tuple(latent.shape[-2:]))
    overlays, masks = overlays_and_masks(images, maps, s.overlay_alpha)
    return images, overlays.movedim(1, -1), masks, ", ".join(wanted)


def _mapped_and_denoiser(model, clip, vae, prompt, negative, tokens, cfg, batch_size):
    """``mapped_tokens`` and the denoiser to route; Flux / SD3: words at their T5 (and CLIP) positions."""
    if dit_layout(model_parts(model)) is not None:
        return dit_mapped_tokens(model, clip, vae, prompt, negative, tokens, cfg, batch_size)
    return (*mapped_tokens(clip, prompt, tokens, batch_size), ComfyDenoiserBackend(model, vae, training=False))


def captured_maps(router, layout, levels, grid: tuple[int, int]):
    """The token maps (B, K, h, w) at the latent grid, from the attention the router averaged
    over the sampling steps, read at the chosen levels."""
    captured = router.averaged()
    chosen = choose_layers({m.layer: m.probs.shape[1] for m in captured}, levels)
    return token_maps([m for m in captured if m.layer in chosen], layout, grid).float().cpu()


def mapped_tokens(clip, prompt: str, tokens: str, batch_size: int):
    """(token_dict, wanted, layout): the prompt tokenized with the applied adapters' identifiers,
    the tokens or words to map (``tokens``, else every adapter token in the prompt), and where
    each sits in the batch's rows. Refuses, naming ``tokens``, what the prompt does not hold."""
    embeddings, _adapters = applied_identifiers(clip)  # put there by TextLoc Apply Adapter
    placer = IdentifierPlacer.for_clip(clip)
    token_dict, positions = placer.tokenize(prompt, embeddings)
    wanted = [t.strip() for t in tokens.split(",") if t.strip()]
    for word in wanted:
        if word not in embeddings:
            found = placer.word_positions(token_dict, word)
            if found:
                positions[word] = found
    if not wanted:
        wanted = [t for t in embeddings if t in positions]
        if not wanted:
            raise ValueError(
                "tokens: the prompt has no adapter token; name the words to map (e.g. 'doll, bucket') or use a "
                "token of an applied TextLoc adapter in the prompt"
            )
    missing = [t for t in wanted if t not in positions]
    if missing:
        raise ValueError(
            f"tokens: {missing} do not occur in the prompt {prompt!r}; write them in the prompt or remove them"
        )
    return token_dict, wanted, slot_layout([positions] * batch_size, wanted)


def overlays_and_masks(images, maps, alpha: float):
    """Each image with each token's heat map over it, and the maps at the images' size,
    normalised, as ComfyUI MASKs (one per image and token)."""
    pictures = images.movedim(-1, 1).float()
    size = tuple(pictures.shape[-2:])
    overlays = torch.cat(
        [
            heatmap.overlay(pictures[b : b + 1].expand(maps.shape[1], -1, -1, -1), maps[b], alpha)
            for b in range(maps.shape[0])
        ]
    )
    masks = heatmap.normalize_maps(heatmap.upsample_maps(maps.flatten(0, 1), size))
    return overlays, masks


def _preview_inputs() -> list:
    """Attention Preview's inputs: model, prompt, tokens to map, ComfyUI's sampler settings, levels."""
    import comfy.samplers  # ComfyUI's sampler lists, read when the server lists the nodes

    return [
        PREVIEW_NODE.input(io.Model, "model"),
        PREVIEW_NODE.input(io.Clip, "clip"),
        PREVIEW_NODE.input(io.Vae, "vae"),
        PREVIEW_NODE.input(io.String, "prompt", default="photo of a <doll1> doll", multiline=True),
        PREVIEW_NODE.input(io.String, "negative", default="", multiline=True),
        PREVIEW_NODE.input(io.String, "tokens", default=""),
        PREVIEW_NODE.seed(maximum=0xFFFFFFFFFFFFFFFF),
        PREVIEW_NODE.input(io.Int, "steps", default=20, min=1, max=1000),
        PREVIEW_NODE.input(io.Float, "cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01),
        # ComfyUI's lists as the server lists the nodes (they grow with other packs' samplers)
        PREVIEW_NODE.input(io.Combo, "sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
        PREVIEW_NODE.input(io.Combo, "scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
        PREVIEW_NODE.input(io.Int, "width", default=512, min=16, max=4096, step=8),
        PREVIEW_NODE.input(io.Int, "height", default=512, min=16, max=4096, step=8),
        PREVIEW_NODE.input(io.Int, "batch_size", default=1, min=1, max=64),
        PREVIEW_NODE.input(
            io.Combo, "levels", options=list(NAMED_MAP_LEVELS), default=DEFAULT_MAP_LEVELS, optional=True
        ),
        PREVIEW_NODE.input(io.Float, "overlay_alpha", default=0.5, min=0.0, max=1.0, step=0.05, optional=True),
    ]


class AttentionPreview(io.ComfyNode):
    """Sample a prompt and output images, per-token attention overlays and the raw maps."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return PREVIEW_NODE.schema(
            outputs=[
                named(io.Image, "images"),
                named(io.Image, "overlays"),
                named(io.Mask, "maps"),
                named(io.String, "tokens"),
            ],
            inputs=_preview_inputs(),
        )

    @classmethod
    def execute(cls, model, clip, vae, **widgets) -> io.NodeOutput:
        settings = PreviewSettings(**widgets)
        require_finite(cfg=settings.cfg, overlay_alpha=settings.overlay_alpha)
        return io.NodeOutput(*attention_preview(model, clip, vae, settings))
