"""textloc's backend protocols (``textloc_core.backends.base``) for ComfyUI's MODEL / CLIP / VAE.

What this module is for: the trainer and the attention preview only see a ``ModelBundle``;
this file turns ComfyUI's objects into one, without changing the objects the rest of the
graph holds.

* Text: identifier tokens are injected as *embedding tensors* into ComfyUI's own token
  lists (``comfy.sd1_clip`` accepts tensors in place of token ids and concatenates them into
  the input embeddings, so autograd reaches them). The tokenizer we use is a private shallow
  copy whose ``embedding:NAME`` lookup first checks our in-memory tensors; a prompt's
  identifier token is rewritten to ``embedding:TOKEN`` before tokenising. This is exactly the
  path a stock ``CLIPTextEncode`` with an embedding file takes, so a trained token written to
  ``models/embeddings`` gives the same context as our in-memory one.
* Denoiser: ``predict`` calls ``diffusion_model(x_t, timesteps=t, context=c)`` directly, in
  DDPM scaling (no k-diffusion sigma scaling), with the ModelPatcher's transformer_options so
  other packs' patches still run.
* Routing: ``route_attention`` installs ``patches_replace["attn2"]`` entries, keyed
  ``(block, index, transformer_index)``, for the selected layers only, on a *clone* of the
  ModelPatcher, and restores the previous transformer_options object exactly on exit. If
  another pack already replaced one of those layers, its replacement still produces the
  output and our router only observes (captures) the attention alongside: we never drop
  someone else's patch.

ComfyUI runs every node under ``torch.inference_mode()``. Training must leave it, and the
frozen weights the backward pass saves must not be inference tensors; ``training_session``
swaps them for ordinary clones (same values) while the model is loaded.
"""

from __future__ import annotations

import copy
import functools
import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..textloc_core.adapter import base_model_fingerprint
from ..textloc_core.attention import AttentionRouter, find_cross_attention
from ..textloc_core.backends.base import EncodedPrompts, ModelBundle

_EMBED_PREFIX = "embedding:"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_<>\-]+$")
_LAYER_RE = re.compile(
    r"^(?:diffusion_model\.)?(?:(input_blocks|output_blocks)\.(\d+)\.\d+|(middle_block)\.\d+)\.transformer_blocks\.(\d+)\.attn2$"
)
_TEXT_ENCODERS = ("clip_l", "clip_g", "clip_h")


# ----------------------------------------------------------------------------- helpers
def canonical_layer_name(module_name: str) -> str:
    """ComfyUI module names already are the canonical LDM names; drop a model prefix."""
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if module_name.startswith(prefix):
            return module_name[len(prefix):]
    return module_name


def attn2_patch_key(layer: str) -> tuple[str, int, int]:
    """Canonical attn2 name -> the ``patches_replace["attn2"]`` key ComfyUI looks up.

    ``input_blocks.4.1.transformer_blocks.0.attn2`` -> ("input", 4, 0);
    ``middle_block.1.transformer_blocks.0.attn2`` -> ("middle", 0, 0) (ComfyUI numbers the
    middle block 0); output blocks like input blocks.
    """
    match = _LAYER_RE.match(layer)
    if not match:
        raise ValueError(f"layer {layer!r} is not a UNet attn2 layer name (input_blocks.N.M.transformer_blocks.K.attn2)")
    transformer = int(match.group(4))
    if match.group(3):
        return ("middle", 0, transformer)
    return ("input" if match.group(1) == "input_blocks" else "output", int(match.group(2)), transformer)


def check_token_text(token: str, what: str = "token") -> None:
    """Reject identifier tokens that cannot sit in a prompt or a file name safely."""
    if not token or not _TOKEN_RE.match(token) or ".." in token:
        raise ValueError(
            f"{what}: {token!r} may only contain letters, digits, _ - < > (no spaces, path separators "
            "or '..'); e.g. '<doll1>'"
        )
    if token.lower().startswith(_EMBED_PREFIX):
        raise ValueError(f"{what}: {token!r} must not start with 'embedding:'")


def rewrite_tokens(text: str, tokens: list[str]) -> str:
    """Write every identifier token in ``text`` as ComfyUI's `` embedding:TOKEN `` syntax.

    ComfyUI's tokenizer only recognises ``embedding:`` after a space or newline and takes
    the name up to the next whitespace, so the token is padded with spaces (CLIP's
    tokenizer ignores the extra whitespace). Longer tokens are replaced first so '<a1>'
    never eats part of '<a10>'. Tokens already written as ``embedding:TOKEN`` stay as they are.
    """
    if not tokens:
        return text
    ordered = sorted(tokens, key=len, reverse=True)
    # whole words only: a plain-word token like "sks" must not fire inside "asks"
    pattern = re.compile(r"(embedding:)?(?<![\w<>-])(" + "|".join(re.escape(t) for t in ordered) + r")(?![\w<>-])")

    def swap(match: re.Match) -> str:
        return f" {_EMBED_PREFIX}{match.group(2)} "

    return pattern.sub(swap, text)


def _text_encoders(clip) -> list[tuple[str, object, nn.Module]]:
    """(name, SDTokenizer, SDClipModel) for each CLIP-family text encoder of a ComfyUI CLIP."""
    found = []
    for name in _TEXT_ENCODERS:
        tokenizer = getattr(clip.tokenizer, name, None)
        encoder = getattr(clip.cond_stage_model, name, None)
        if tokenizer is not None and encoder is not None and hasattr(tokenizer, "_try_get_embedding"):
            found.append((name, tokenizer, encoder))
    if not found:
        raise ValueError(
            "clip: this text encoder is not a CLIP-family encoder (SD1.x/SD2.x/SDXL); Textual "
            "Localization needs one to place identifier tokens"
        )
    return found


def tokenizer_with_embeddings(clip, lookup: Callable[[str], torch.Tensor | None], tokens: list[str]):
    """A shallow copy of ``clip.tokenizer`` that resolves identifier tokens to tensors.

    ``lookup(name)`` returns the (n_vectors, total_dim) tensor for a token or None; each
    text encoder gets its own slice of the vector (SDXL: clip_l's 768 then clip_g's 1280).
    Earlier lookups (stacked adapters, embedding files) keep working for other names.
    """
    outer = copy.copy(clip.tokenizer)
    offset = 0
    for name, inner, _encoder in _text_encoders(clip):
        size = int(getattr(inner, "embedding_size"))
        inner_copy = copy.copy(inner)
        # ComfyUI only looks embeddings up when a directory list exists; an empty one makes
        # it call our lookup without searching any folder.
        searches_files = inner_copy.embedding_directory is not None
        if not searches_files:
            inner_copy.embedding_directory = []
        previous = inner_copy._try_get_embedding  # the original's, or an earlier adapter's

        def resolve(embedding_name: str, _prev=previous, _start=offset, _size=size, _files=searches_files):
            parts = embedding_name.split()
            if parts:
                stripped = parts[0].strip(",")
                if stripped in tokens:
                    vec = lookup(stripped)
                    if vec is not None:
                        rest = (parts[0][len(stripped):] + " " + " ".join(parts[1:])).strip()
                        return vec[:, _start:_start + _size], rest
            if not _files and getattr(_prev, "__self__", None) is not None:
                return None, " ".join(parts[1:])  # the original has no folder to search
            return _prev(embedding_name)

        inner_copy._try_get_embedding = resolve
        setattr(outer, name, inner_copy)
        offset += size
    # one rewrite over every token stacked so far, then the tokenizer's own method on *this*
    # copy (whose text encoders resolve all of them)
    known = list(getattr(outer, "textloc_tokens", []))
    outer.textloc_tokens = known + [t for t in tokens if t not in known]

    def tokenize_with_weights(text: str, return_word_ids: bool = False, **kwargs):
        return type(outer).tokenize_with_weights(outer, rewrite_tokens(text, outer.textloc_tokens), return_word_ids, **kwargs)

    outer.tokenize_with_weights = tokenize_with_weights
    return outer


@contextmanager
def ordinary_weights(*modules: nn.Module) -> Iterator[None]:
    """Swap inference-mode parameters/buffers of ``modules`` for ordinary clones.

    Tensors created under ``torch.inference_mode()`` (all weights a ComfyUI loader node
    made) cannot be saved for backward. Values are unchanged, so nothing is restored on
    exit; the clones simply stay (the originals are freed unless something else holds them).
    """
    with torch.inference_mode(False):
        for module in modules:
            for sub in module.modules():
                for name, param in list(sub._parameters.items()):
                    if param is not None and param.is_inference():
                        sub._parameters[name] = nn.Parameter(param.clone(), requires_grad=False)
                    elif param is not None:
                        param.requires_grad_(False)
                for name, buf in list(sub._buffers.items()):
                    if buf is not None and buf.is_inference():
                        sub._buffers[name] = buf.clone()
    yield


def _clip_layer_forward(layer, x, mask=None, optimized_attention=None):
    """comfy.clip_model.CLIPLayer.forward without its in-place ``x +=`` (same values).

    ComfyUI adds the residuals in place, which overwrites the tensor LayerNorm saved for
    backward; gradients to an injected token embedding then fail. Used only while training.
    """
    x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
    return x + layer.mlp(layer.layer_norm2(x))


@contextmanager
def differentiable_text_encoder(clip_model: nn.Module) -> Iterator[None]:
    """Route every CLIPLayer of ``clip_model`` through ``_clip_layer_forward``; undo on exit."""
    import comfy.clip_model

    layers = [m for m in clip_model.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    for layer in layers:
        layer.forward = functools.partial(_clip_layer_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


def base_fingerprint_and_weights(model) -> tuple[str, dict[str, torch.Tensor]]:
    """Fingerprint and K/V weights of a ModelPatcher's *base* weights.

    While a patched clone is loaded, ComfyUI has written patched weights into the shared
    modules and keeps the originals in ``backup``; those originals are what identifies the
    base model, whichever LoRAs or adapters happen to be applied at the moment.
    """
    backup = getattr(model, "backup", {}) or {}
    weights = {}
    for name, attn in find_cross_attention(model.model.diffusion_model).items():
        layer = canonical_layer_name(name)
        for proj in ("to_k", "to_v"):
            key = f"diffusion_model.{layer}.{proj}.weight"
            saved = backup.get(key)
            weights[f"{layer}.{proj}"] = saved.weight if saved is not None else getattr(attn, proj).weight
    return base_model_fingerprint(weights), weights


def find_positions(
    tokens: dict, embeddings: dict[str, torch.Tensor], words: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Context positions of identifier tokens (and plain words) in a ComfyUI token dict.

    An identifier token's vectors sit in the token list as views of its embedding tensor, so
    an entry belongs to a token when its data pointer falls inside that tensor's memory.
    ``words`` maps a plain word to its vocabulary ids; every run of those ids counts.
    Positions index the encoder output, whose 77-token chunks are concatenated.
    """
    ranges = {}
    for name, vec in embeddings.items():
        start = vec.data_ptr()
        ranges[name] = (start, start + vec.numel() * vec.element_size())
    entries = [entry[0] for chunk in next(iter(tokens.values())) for entry in chunk]  # all encoders: same layout
    positions: dict[str, list[int]] = {}
    for index, value in enumerate(entries):
        if torch.is_tensor(value):
            for name, (lo, hi) in ranges.items():
                if lo <= value.data_ptr() < hi:
                    positions.setdefault(name, []).append(index)
    for word, ids in (words or {}).items():
        for index in range(len(entries) - len(ids) + 1):
            window = entries[index:index + len(ids)]
            if all(not torch.is_tensor(v) and int(v) == i for v, i in zip(window, ids)):
                positions.setdefault(word, []).extend(range(index, index + len(ids)))
    return positions


# ----------------------------------------------------------------------------- text
class ComfyTextBackend:
    """``TextBackend`` over a ComfyUI CLIP object (SD1.x / SD2.x / SDXL CLIP encoders)."""

    def __init__(self, clip):
        self.clip = clip
        self.encoders = _text_encoders(clip)
        self.embedding_dim = sum(int(tok.embedding_size) for _, tok, _ in self.encoders)

    # -- vocabulary
    def _pieces(self, tokenizer, word: str) -> list[int]:
        ids = tokenizer.tokenizer(word)["input_ids"]
        return ids[tokenizer.tokens_start:-1] if tokenizer.tokenizer_adds_end_token else ids[tokenizer.tokens_start:]

    def initial_embedding(self, init_word: str) -> torch.Tensor:
        parts = []
        for name, tokenizer, encoder in self.encoders:
            pieces = self._pieces(tokenizer, init_word)
            if len(pieces) != 1:
                raise ValueError(
                    f"init_word: {init_word!r} is {len(pieces)} vocabulary pieces for {name}; pick a single "
                    "common word (e.g. the class word 'doll')"
                )
            table = encoder.transformer.get_input_embeddings().weight
            parts.append(table[pieces[0]].detach().to("cpu", torch.float32).clone())
        with torch.inference_mode(False):
            return torch.cat(parts).unsqueeze(0).clone()

    def check_token(self, token: str) -> None:
        check_token_text(token)
        for name, tokenizer, _encoder in self.encoders:
            if len(self._pieces(tokenizer, token)) == 1:
                raise ValueError(
                    f"token: {token!r} already exists in the {name} vocabulary; use a new made-up token "
                    "such as '<doll1>' so the concept gets its own embedding"
                )

    # -- encoding
    def tokenize(self, prompt: str, token_embeddings: dict[str, torch.Tensor]):
        """ComfyUI token dict for ``prompt`` with identifier tokens as tensors, and their positions."""
        names = list(token_embeddings)
        tokenizer = tokenizer_with_embeddings(self.clip, token_embeddings.get, names)
        tokens = tokenizer.tokenize_with_weights(prompt, False, **({"tokenizer_options": self.clip.tokenizer_options} if self.clip.tokenizer_options else {}))
        return tokens, find_positions(tokens, token_embeddings)

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        contexts, positions = [], []
        for prompt in prompts:
            tokens, where = self.tokenize(prompt, token_embeddings)
            cond = self.clip.encode_from_tokens(tokens)
            contexts.append(cond)
            positions.append(where)
        longest = max(c.shape[1] for c in contexts)
        padded = []
        for cond in contexts:
            if longest % cond.shape[1]:
                raise ValueError("prompts: prompts of different 77-token chunk counts cannot be batched; shorten the prompt")
            padded.append(cond.repeat(1, longest // cond.shape[1], 1))
        return EncodedPrompts(context=torch.cat(padded), token_positions=positions)


# ----------------------------------------------------------------------------- denoiser
class ComfyDenoiserBackend:
    """``DenoiserBackend`` over a ComfyUI ModelPatcher (SD1.x / SD2.x UNets) and VAE."""

    def __init__(self, model, vae, device: torch.device | None = None, *, training: bool = True):
        """``training=False`` (the preview: ComfyUI's sampler conditions the model itself)
        accepts any UNet with attn2 layers, SDXL included; training needs ``predict`` to be
        complete from (x_t, t, context) alone."""
        import comfy.model_base

        self.patcher = model.clone()  # our routing patches never reach the caller's MODEL
        self.base_model = model.model
        self.unet = self.base_model.diffusion_model
        self.vae = vae
        model_type = self.base_model.model_type
        types = {comfy.model_base.ModelType.EPS: "epsilon", comfy.model_base.ModelType.V_PREDICTION: "v_prediction"}
        self.prediction_type = types.get(model_type, model_type.name.lower())
        if training and model_type not in types:
            raise ValueError(
                f"model: prediction type {model_type.name} is not supported; Textual Localization trains "
                "epsilon- or v-prediction UNets (SD1.x, SD2.x)"
            )
        if training and getattr(self.unet, "num_classes", None) is not None:
            raise ValueError(
                "model: this UNet needs pooled/size conditioning (SDXL-style adm); TextLoc Train supports "
                "SD1.x/SD2.x-style UNets (the Apply and Preview nodes work with SDXL too)"
            )
        find_cross_attention(self.unet)  # raises a clear error for models without attn2
        self.latent_format = self.base_model.latent_format
        self.latent_channels = int(self.latent_format.latent_channels)
        self.vae_scale_factor = int(getattr(vae, "downscale_ratio", 8)) if vae is not None else 8
        self.device = device if device is not None else model.load_device
        dtype = self.base_model.get_dtype()
        if self.base_model.manual_cast_dtype is not None:
            dtype = self.base_model.manual_cast_dtype
        self.dtype = dtype

    def canonical_layer_name(self, module_name: str) -> str:
        return canonical_layer_name(module_name)

    # -- latents
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise ValueError("vae: a VAE is needed to encode the training images")
        with torch.no_grad():
            latents = self.vae.encode(images.movedim(1, -1).float().cpu())
            return self.latent_format.process_in(latents.float()).to(self.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = self.vae.decode(self.latent_format.process_out(latents.float()))
            return pixels.movedim(-1, 1).float().clamp(0, 1)

    # -- UNet
    def transformer_options(self) -> dict:
        return self.patcher.model_options.get("transformer_options", {})

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # openaimodel writes block/shape bookkeeping into transformer_options: give it a copy.
        options = dict(self.transformer_options())
        out = self.unet(
            noisy_latents.to(self.device, self.dtype),
            timesteps=timesteps.to(self.device).float(),
            context=context.to(self.device, self.dtype),
            transformer_options=options,
        )
        return out.float()

    @contextmanager
    def route_attention(self, router: AttentionRouter):
        layers = [canonical_layer_name(n) for n in find_cross_attention(self.unet)]
        previous = self.patcher.model_options.get("transformer_options", {})
        options = dict(previous)
        replace = dict(options.get("patches_replace", {}))
        attn2 = dict(replace.get("attn2", {}))
        for layer in layers:
            if router.selects(layer):
                key = attn2_patch_key(layer)
                attn2[key] = _routed_patch(router, layer, attn2.get(key))
        replace["attn2"] = attn2
        options["patches_replace"] = replace
        self.patcher.model_options["transformer_options"] = options
        try:
            yield router
        finally:
            self.patcher.model_options["transformer_options"] = previous


def _routed_patch(router: AttentionRouter, layer: str, existing):
    """An attn2 replace function sending ``layer`` through ``router``.

    When another pack already replaced this layer, its function still computes the output;
    the router then only captures (explicit softmax on the same q/k/v), so both packs work.
    """

    before = getattr(router, "before_call", None)

    def patch(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if before is not None:  # e.g. the preview learns which rows are conditional
            before(extra_options)
        if existing is None:
            return router(layer, q, k, v, heads)
        router(layer, q, k, v, heads)
        return existing(q, k, v, extra_options)

    patch.textloc_layer = layer
    patch.wrapped = existing
    return patch


# ----------------------------------------------------------------------------- bundle
@contextmanager
def training_session(model, clip, vae) -> Iterator[ModelBundle]:
    """A ModelBundle for training, with inference mode off and grads on.

    Loads MODEL and CLIP onto the compute device, swaps inference weights for ordinary
    ones (see ``ordinary_weights``), and on exit frees the cache ComfyUI's allocator holds.
    """
    import comfy.model_management as mm

    with torch.inference_mode(False), torch.enable_grad():
        denoiser = ComfyDenoiserBackend(model, vae)
        mm.load_models_gpu([denoiser.patcher, clip.patcher], force_full_load=True)
        with ordinary_weights(denoiser.unet, clip.cond_stage_model), differentiable_text_encoder(clip.cond_stage_model):
            text = ComfyTextBackend(clip)
            bundle = ModelBundle(
                text=text,
                denoiser=denoiser,
                fingerprint=base_fingerprint_and_weights(denoiser.patcher)[0],
                device=torch.device(denoiser.device),
                compute_dtype=denoiser.dtype,
            )
            try:
                yield bundle
            finally:
                mm.soft_empty_cache()
