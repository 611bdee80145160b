"""The diffusers backend: a ``ModelBundle`` from a StableDiffusionPipeline or its parts.

Used by the Python API for standalone training and by every CPU test (with tiny random
models). Identifier tokens enter the CLIP tokenizer as added tokens; their vectors are
injected by a forward hook on the text encoder's input embedding, so gradients reach them
without touching the embedding table (transformers' CLIPTextModel has no inputs_embeds
path). Cross-attention routing swaps the attn processor of selected attn2 modules only;
every other attention keeps diffusers' own (SDPA) processor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.cross_attention import TOKENS_PER_CHUNK, AttentionRouter, find_cross_attention
from ..data.tokens import check_token_text
from .base import EncodedPrompts, ModelBundle, check_embedding_width, mean_of_pieces
from .fingerprint import base_model_fingerprint, kv_weights
from .unet_names import diffusers_to_ldm_attn2


class _Encoder:
    """One transformers CLIP tokenizer + text model, and which of its hidden states the UNet reads."""

    def __init__(self, tokenizer: Any, model: nn.Module, hidden_layer: int | None, max_length: int):
        self.tokenizer = tokenizer
        self.model = model
        self.hidden_layer = hidden_layer
        """None: the last hidden state (final layer norm applied; SD1.x/SD2.x); -2: the
        penultimate layer's output (SDXL's choice for both encoders)."""
        self.max_length = max_length
        self.width = int(model.config.hidden_size)
        self.token_ids: dict[str, int] = {}

    @property
    def embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def pieces(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def check_token(self, token: str) -> None:
        vocab = self.tokenizer.get_vocab()
        added = set(getattr(self.tokenizer, "added_tokens_encoder", {}))
        if token not in added and (token in vocab or f"{token}</w>" in vocab):
            raise ValueError(
                f"token {token!r} is already a word of the CLIP vocabulary; an identifier must be new, e.g. '<{token}1>'"
            )
        if token not in added:
            self.tokenizer.add_tokens([token])

    def added_ids(self, tokens: list[str]) -> dict[int, str]:
        ids = {}
        for token in tokens:
            if token not in self.token_ids:  # checked once: get_vocab() copies 49k entries
                self.check_token(token)
                self.token_ids[token] = self.tokenizer.convert_tokens_to_ids(token)
            ids[self.token_ids[token]] = token
        return ids

    def layout(self, prompt: str, added: dict[int, str], token_embeddings: dict[str, torch.Tensor]):
        """(padded ids, {token: positions}, [(position, token, vector index)]) of one prompt;
        identifier positions hold a placeholder id whose embedding is replaced."""
        tokenizer = self.tokenizer
        ids, where, fill = [tokenizer.bos_token_id], {}, []
        for piece in self.pieces(prompt):
            token = added.get(piece)
            if token is None:
                if piece >= self.embedding.num_embeddings:
                    raise ValueError(
                        f"prompt {prompt!r}: token id {piece} is an added token this encoder has no vector for"
                    )
                ids.append(piece)
                continue
            for j in range(token_embeddings[token].shape[0]):
                where.setdefault(token, []).append(len(ids))
                fill.append((len(ids), token, j))
                ids.append(0)
        ids.append(tokenizer.eos_token_id)
        if len(ids) > self.max_length:
            raise ValueError(
                f"prompt {prompt!r} is {len(ids)} tokens long; the text encoder takes {self.max_length}. Shorten it."
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return ids + [pad] * (self.max_length - len(ids)), where, fill

    def run(self, rows: list[list[int]], fills: list, vectors: dict[str, torch.Tensor]):
        """(hidden states the UNet reads, the model's pooled output) with ``vectors`` injected
        at the fill positions; gradients reach ``vectors``."""
        input_ids = torch.tensor(rows, dtype=torch.long, device=self.embedding.weight.device)

        def inject(_module, _inputs, output):
            output = output.clone()
            for b, fill in enumerate(fills):
                for position, token, j in fill:
                    output[b, position] = vectors[token][j].to(output.device, output.dtype)
            return output

        handle = self.embedding.register_forward_hook(inject)
        try:
            out = self.model(input_ids=input_ids, output_hidden_states=self.hidden_layer is not None)
        finally:
            handle.remove()
        hidden = out.last_hidden_state if self.hidden_layer is None else out.hidden_states[self.hidden_layer]
        pooled = getattr(out, "text_embeds", None)
        return hidden, out.pooler_output if pooled is None else pooled


class DiffusersText:
    """``TextBackend`` over transformers CLIP tokenizers + text models.

    SD1.x/SD2.x: one ``CLIPTextModel``, its last hidden state. SDXL (``tokenizer_2`` and
    ``text_encoder_2`` given): CLIP-L and OpenCLIP bigG (``CLIPTextModelWithProjection``), each
    one's penultimate layer, concatenated along the feature axis (768 + 1280 = 2048), plus
    bigG's projected pooled vector. An identifier's vector is one row of ``embedding_dim``
    values holding each encoder's slice in that order (CLIP-L's first), so it trains as one
    parameter per concept and still gives every encoder its own embedding.
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        max_length: int = TOKENS_PER_CHUNK,
        tokenizer_2: Any = None,
        text_encoder_2: nn.Module | None = None,
        pool_both: bool = False,
    ):
        if (tokenizer_2 is None) != (text_encoder_2 is None):
            raise ValueError("text: SDXL needs both tokenizer_2 and text_encoder_2 (or neither for SD1.x/SD2.x)")
        sdxl = text_encoder_2 is not None
        self.encoders = [_Encoder(tokenizer, text_encoder, -2 if sdxl else None, max_length)]
        if sdxl:
            self.encoders.append(_Encoder(tokenizer_2, text_encoder_2, -2, max_length))
        self.embedding_dim = sum(e.width for e in self.encoders)
        self.pooled = sdxl
        self.pool_both = pool_both
        """SD3's pooled vector is both encoders' side by side; SDXL's is bigG's alone."""
        # (file key, width) per encoder in vector order, for SDXL's per-encoder embedding files
        self.encoder_sizes = list(zip(("clip_l", "clip_g"), (e.width for e in self.encoders)))

    @property
    def tokenizer(self) -> Any:
        return self.encoders[0].tokenizer

    @property
    def text_encoders(self) -> list[nn.Module]:
        """The text models (one for SD1.x/SD2.x, CLIP-L then bigG for SDXL)."""
        return [e.model for e in self.encoders]

    def _pieces(self, text: str) -> list[int]:
        return self.encoders[0].pieces(text)

    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        parts = [
            mean_of_pieces([e.embedding.weight[i] for i in e.pieces(init_word)], init_word, what) for e in self.encoders
        ]
        return torch.cat(parts).clone().unsqueeze(0)

    def check_token(self, token: str) -> None:
        check_token_text(token)
        if token != token.lower():
            raise ValueError(f"token {token!r}: CLIP lower-cases prompts; use a lower-case token, like '<doll1>'")
        for encoder in self.encoders:
            encoder.check_token(token)

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        check_embedding_width(token_embeddings, self.embedding_dim, "this text encoder takes")
        hidden, pooled, positions, start = [], [], None, 0
        for encoder in self.encoders:
            added = encoder.added_ids(list(token_embeddings))
            laid = [encoder.layout(p, added, token_embeddings) for p in prompts]
            where = [w for _, w, _ in laid]
            if positions is None:
                positions = where
            elif where != positions:
                raise ValueError(f"prompts {prompts!r}: the two tokenizers place the identifier tokens differently")
            sliced = {t: v[:, start : start + encoder.width] for t, v in token_embeddings.items()}
            states, pooled_one = encoder.run([ids for ids, _, _ in laid], [f for _, _, f in laid], sliced)
            hidden.append(states)
            pooled.append(pooled_one)
            start += encoder.width
        context = torch.cat(hidden, dim=-1) if len(hidden) > 1 else hidden[0]
        pooled = torch.cat(pooled, dim=-1) if self.pool_both else pooled[-1]
        return EncodedPrompts(context=context, token_positions=positions, pooled=pooled if self.pooled else None)


class _RoutedProcessor:
    """A diffusers attn processor that sends the attention core through an AttentionRouter."""

    def __init__(self, router: AttentionRouter, layer: str):
        self.router = router
        self.layer = layer

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
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
        self.needs_pooled = getattr(unet.config, "addition_embed_type", None) == "text_time"
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

    def predict(
        self, noisy_latents: Tensor, timesteps: Tensor, context: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        if not self.needs_pooled:
            return self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample
        if pooled is None:
            raise ValueError(
                "this UNet (SDXL) needs the pooled text embedding; encode prompts with its two text encoders"
            )
        added = {
            "text_embeds": pooled.to(context.dtype),
            "time_ids": self.size_conditioning(noisy_latents).to(context.dtype),
        }
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample

    def size_conditioning(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's ``add_time_ids`` (B, 6) for uncropped images of the latents' size: original
        (h, w), crop (top, left) = (0, 0), target (h, w), in pixels."""
        h, w = (int(s) * self.vae_scale_factor for s in latents.shape[-2:])
        row = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32, device=latents.device)
        return row.expand(latents.shape[0], 6)

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
    """The base-model fingerprint of a diffusers denoiser: ``fingerprint.base_model_fingerprint`` of
    its text K/V weights under their canonical names (as the ComfyUI backend hashes them)."""
    return base_model_fingerprint(kv_weights(denoiser))


def bundle_from_diffusers(
    pipeline: Any = None,
    *,
    unet: nn.Module | None = None,
    vae: nn.Module | None = None,
    text_encoder: nn.Module | None = None,
    tokenizer: Any = None,
    text_encoder_2: nn.Module | None = None,
    tokenizer_2: Any = None,
    prediction_type: str | None = None,
) -> ModelBundle:
    """A ``ModelBundle`` from a StableDiffusion(XL)Pipeline, or from its components.

    SDXL: also ``text_encoder_2`` / ``tokenizer_2`` (taken from the pipeline when it has them),
    and a UNet with ``addition_embed_type="text_time"``. ``prediction_type`` defaults to the
    pipeline scheduler's (else "epsilon"). The models are put in eval mode; their weights are
    never modified by training.
    """

    def part(name, given):
        return given if given is not None else getattr(pipeline, name, None)

    parts = {
        "unet": part("unet", unet),
        "vae": part("vae", vae),
        "text_encoder": part("text_encoder", text_encoder),
        "tokenizer": part("tokenizer", tokenizer),
    }
    second = {"text_encoder_2": part("text_encoder_2", text_encoder_2), "tokenizer_2": part("tokenizer_2", tokenizer_2)}
    missing = [name for name, value in parts.items() if value is None]
    if missing:
        raise ValueError(f"diffusers bundle: missing {missing}; pass a StableDiffusionPipeline or every component")
    if prediction_type is None:
        scheduler = getattr(pipeline, "scheduler", None)
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None) or "epsilon"
    denoiser = DiffusersDenoiser(parts["unet"], parts["vae"], prediction_type)
    has_second = all(v is not None for v in second.values())
    if denoiser.needs_pooled and not has_second:
        raise ValueError(
            "diffusers bundle: this UNet is SDXL-style (text_time conditioning); pass text_encoder_2 and tokenizer_2 too"
        )
    if not denoiser.needs_pooled:
        second = {"text_encoder_2": None, "tokenizer_2": None}
    for model in (parts["unet"], parts["vae"], parts["text_encoder"], second["text_encoder_2"]):
        if model is not None:
            model.eval()
    weight = next(parts["unet"].parameters())
    return ModelBundle(
        text=DiffusersText(parts["tokenizer"], parts["text_encoder"], **second),
        denoiser=denoiser,
        fingerprint=kv_fingerprint(denoiser),
        device=weight.device,
        compute_dtype=weight.dtype,
    )


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ModelBundle:
    """A ``ModelBundle`` from a local diffusers folder or a single-file SD1.x/SD2.x/SDXL checkpoint.

    Never downloads: a folder must hold the pipeline, a file must be a full checkpoint. A file
    whose text conditioner has a second embedder (``conditioner.embedders.1``) is read as SDXL.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    if path.is_dir():
        index = path / "model_index.json"
        sdxl = index.is_file() and "XL" in json.loads(index.read_text()).get("_class_name", "")
        kind = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
        extra = {} if sdxl else {"safety_checker": None}
        pipe = kind.from_pretrained(str(path), dtype=dtype, local_files_only=True, **extra)
    elif path.is_file():
        kind = StableDiffusionXLPipeline if _is_sdxl_file(path) else StableDiffusionPipeline
        pipe = kind.from_single_file(str(path), dtype=dtype, local_files_only=True)
    else:
        raise ValueError(f"model path {path} does not exist: give a diffusers folder or a .safetensors checkpoint")
    pipe.to(device)
    return bundle_from_diffusers(pipe)


def _is_sdxl_file(path: Path) -> bool:
    """Whether a single-file checkpoint holds SDXL's two-embedder text conditioner."""
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(key.startswith("conditioner.embedders.1.") for key in handle.keys())
