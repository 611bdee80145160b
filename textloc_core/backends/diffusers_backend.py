"""The diffusers backend: a ``ModelBundle`` from a StableDiffusionPipeline or its parts.

Used by the Python API for standalone training and by every CPU test (with tiny random
models). Identifier tokens enter the CLIP tokenizer as added tokens; their vectors are
injected by a forward hook on the text encoder's input embedding, so gradients reach them
without touching the embedding table (transformers' CLIPTextModel has no inputs_embeds
path). Cross-attention routing swaps the attn processor of selected attn2 modules only;
every other attention keeps diffusers' own (SDPA) processor.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..attention.cross_attention import TOKENS_PER_CHUNK, AttentionRouter, find_cross_attention
from ..data.tokens import check_token_text
from .unet_names import diffusers_to_ldm_attn2
from .base import EncodedPrompts, ModelBundle, mean_of_pieces
from .fingerprint import base_model_fingerprint, canonical_layers, kv_weights_of


class DiffusersText:
    """``TextBackend`` over a transformers ``CLIPTokenizer`` + ``CLIPTextModel``."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, max_length: int = TOKENS_PER_CHUNK):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.embedding_dim = int(text_encoder.config.hidden_size)
        self._token_ids: dict[str, int] = {}

    @property
    def _embedding(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def _pieces(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        rows = [self._embedding.weight[i] for i in self._pieces(init_word)]
        return mean_of_pieces(rows, init_word, what).clone().unsqueeze(0)

    def check_token(self, token: str) -> None:
        check_token_text(token)
        if token != token.lower():
            raise ValueError(f"token {token!r}: CLIP lower-cases prompts; use a lower-case token, like '<doll1>'")
        vocab = self.tokenizer.get_vocab()
        added = set(getattr(self.tokenizer, "added_tokens_encoder", {}))
        if token not in added and (token in vocab or f"{token}</w>" in vocab):
            raise ValueError(
                f"token {token!r} is already a word of the CLIP vocabulary; an identifier must be new, e.g. '<{token}1>'"
            )
        if token not in added:
            self.tokenizer.add_tokens([token])

    def _added_ids(self, tokens: list[str]) -> dict[int, str]:
        ids = {}
        for token in tokens:
            if token not in self._token_ids:  # checked once: get_vocab() copies 49k entries
                self.check_token(token)
                self._token_ids[token] = self.tokenizer.convert_tokens_to_ids(token)
            ids[self._token_ids[token]] = token
        return ids

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        added = self._added_ids(list(token_embeddings))
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        rows, positions, fills = [], [], []
        for prompt in prompts:
            ids, where, fill = [bos], {}, []
            for piece in self._pieces(prompt):
                token = added.get(piece)
                if token is None:
                    if piece >= self._embedding.num_embeddings:
                        raise ValueError(f"prompt {prompt!r}: token id {piece} is an added token this encoder has no vector for")
                    ids.append(piece)
                    continue
                vectors = token_embeddings[token]
                for j in range(vectors.shape[0]):
                    where.setdefault(token, []).append(len(ids))
                    fill.append((len(ids), token, j))
                    ids.append(0)  # placeholder id; its embedding is replaced below
            ids.append(eos)
            if len(ids) > self.max_length:
                raise ValueError(
                    f"prompt {prompt!r} is {len(ids)} tokens long; the text encoder takes {self.max_length}. Shorten it."
                )
            rows.append(ids + [pad] * (self.max_length - len(ids)))
            positions.append(where)
            fills.append(fill)
        device = self._embedding.weight.device
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)

        def inject(_module, _inputs, output):
            output = output.clone()
            for b, fill in enumerate(fills):
                for position, token, j in fill:
                    output[b, position] = token_embeddings[token][j].to(output.device, output.dtype)
            return output

        handle = self._embedding.register_forward_hook(inject)
        try:
            context = self.text_encoder(input_ids=input_ids).last_hidden_state
        finally:
            handle.remove()
        return EncodedPrompts(context=context, token_positions=positions)


class _RoutedProcessor:
    """A diffusers attn processor that sends the attention core through an AttentionRouter."""

    def __init__(self, router: AttentionRouter, layer: str):
        self.router = router
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None:
            raise ValueError(f"{self.layer}: attention masks are not supported while capturing token maps")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        out = self.router(self.layer, query, key, value, attn.heads).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class DiffusersDenoiser:
    """``DenoiserBackend`` over a diffusers ``UNet2DConditionModel`` + ``AutoencoderKL``."""

    def __init__(self, unet: nn.Module, vae: nn.Module, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type: {prediction_type!r} is not 'epsilon' or 'v_prediction'")
        self.unet = unet
        self.vae = vae
        self.prediction_type = prediction_type
        self.latent_channels = int(unet.config.in_channels)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._scale = float(vae.config.scaling_factor)
        self._shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        # The distribution's mean: latents are cached once, so they should not carry one draw's noise.
        posterior = self.vae.encode((images * 2 - 1).to(param.device, param.dtype)).latent_dist
        return (posterior.mean - self._shift) * self._scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        images = self.vae.decode((latents / self._scale + self._shift).to(param.device, param.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample

    def canonical_layer_name(self, module_name: str) -> str:
        return diffusers_to_ldm_attn2(module_name, self.unet.config)

    @contextmanager
    def gradient_checkpointing(self) -> Iterator[None]:
        """Recompute UNet activations in the backward pass (less memory, ~30% more time).

        Optional extra of this backend (the trainer uses it when ``TrainConfig.gradient_checkpointing``
        is set). Safe with capture: recomputed attn2 calls only append maps nobody reads.
        """
        was = bool(getattr(self.unet, "is_gradient_checkpointing", False))
        self.unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            if not was:
                self.unet.disable_gradient_checkpointing()

    @contextmanager
    def route_attention(self, router: AttentionRouter) -> Iterator[AttentionRouter]:
        previous = {}
        try:
            for name, attn in find_cross_attention(self.unet).items():
                layer = self.canonical_layer_name(name)
                if router.selects(layer):
                    previous[name] = (attn, attn.processor)
                    attn.set_processor(_RoutedProcessor(router, layer))
            yield router
        finally:
            for attn, processor in previous.values():
                attn.set_processor(processor)


def kv_fingerprint(denoiser: DiffusersDenoiser | Any) -> str:
    """The base-model fingerprint of a diffusers UNet: ``fingerprint.base_model_fingerprint`` of
    its attn2 K/V weights under their canonical names (as the ComfyUI backend hashes them)."""
    return base_model_fingerprint(kv_weights_of(canonical_layers(denoiser)))


def bundle_from_diffusers(
    pipeline: Any = None,
    *,
    unet: nn.Module | None = None,
    vae: nn.Module | None = None,
    text_encoder: nn.Module | None = None,
    tokenizer: Any = None,
    prediction_type: str | None = None,
) -> ModelBundle:
    """A ``ModelBundle`` from a StableDiffusionPipeline, or from its four components.

    ``prediction_type`` defaults to the pipeline scheduler's (else "epsilon"). The models are
    put in eval mode; their weights are never modified by training.
    """
    parts = {
        "unet": unet if unet is not None else getattr(pipeline, "unet", None),
        "vae": vae if vae is not None else getattr(pipeline, "vae", None),
        "text_encoder": text_encoder if text_encoder is not None else getattr(pipeline, "text_encoder", None),
        "tokenizer": tokenizer if tokenizer is not None else getattr(pipeline, "tokenizer", None),
    }
    missing = [name for name, part in parts.items() if part is None]
    if missing:
        raise ValueError(f"diffusers bundle: missing {missing}; pass a StableDiffusionPipeline or every component")
    if prediction_type is None:
        scheduler = getattr(pipeline, "scheduler", None)
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None) or "epsilon"
    for model in (parts["unet"], parts["vae"], parts["text_encoder"]):
        model.eval()
    denoiser = DiffusersDenoiser(parts["unet"], parts["vae"], prediction_type)
    weight = next(parts["unet"].parameters())
    return ModelBundle(
        text=DiffusersText(parts["tokenizer"], parts["text_encoder"]),
        denoiser=denoiser,
        fingerprint=kv_fingerprint(denoiser),
        device=weight.device,
        compute_dtype=weight.dtype,
    )


def load_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A ``ModelBundle`` from a local diffusers folder or a single-file SD checkpoint.

    Never downloads: a folder must hold the pipeline, a file must be a full checkpoint.
    """
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if path.is_dir():
        pipe = StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True, safety_checker=None)
    elif path.is_file():
        pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, local_files_only=True)
    else:
        raise ValueError(f"model path {path} does not exist: give a diffusers folder or a .safetensors checkpoint")
    pipe.to(device)
    return bundle_from_diffusers(pipe)
