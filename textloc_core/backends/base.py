"""The two seams between the training core and whatever framework built the model.

The core never imports ComfyUI or diffusers at module level. A backend adapts one
framework's objects to these protocols:

* ``TextBackend``   prompts (with identifier tokens in them) -> cross-attention context,
                    differentiable with respect to the identifier tokens' embeddings.
* ``DenoiserBackend`` the UNet (walked for ``attn2`` modules), the VAE, and one call that
                    predicts the training target for noisy latents.

``textloc_core.backends.diffusers_backend`` implements both for diffusers pipelines;
``nodes/comfy_backend.py`` implements both for ComfyUI's MODEL / CLIP / VAE objects.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover - import only for type checkers
    from ..attention.cross_attention import AttentionRouter


@dataclass
class EncodedPrompts:
    """What a text backend returns for a batch of prompts.

    ``context``: (B, L, D) cross-attention context (the text encoder's last hidden state or
    whatever the UNet consumes), differentiable w.r.t. the token embeddings passed in.
    ``token_positions``: one dict per prompt mapping an identifier token to the indices in
    ``context``'s L axis where that token's vector(s) sit. A token absent from a prompt is
    absent from its dict.
    """

    context: torch.Tensor
    token_positions: list[dict[str, list[int]]]
    pooled: torch.Tensor | None = None
    """(B, P) pooled text embedding for UNets conditioned on it (SDXL: OpenCLIP bigG's projected
    end-of-text vector, P = 1280), differentiable like ``context``; None for SD1.x/SD2.x."""


@runtime_checkable
class TextBackend(Protocol):
    """Turns prompts into UNet context, with trainable identifier-token embeddings."""

    embedding_dim: int

    def initial_embedding(self, init_word: str, what: str = "init_word") -> torch.Tensor:
        """The embedding vector(s) (n_vectors, embedding_dim) a new token starts from.

        The mean of the embeddings of ``init_word``'s vocabulary pieces (one piece: its own
        row; "cat figurine": the mean of "cat" and "figurine"), per text encoder: see
        ``mean_of_pieces``. ``what`` names the input the word came from in errors.
        """

    def check_token(self, token: str) -> None:
        """Raise ValueError if ``token`` cannot serve as a new identifier token (it already
        exists in the vocabulary, or the framework cannot place it in a prompt)."""

    def encode(self, prompts: list[str], token_embeddings: dict[str, torch.Tensor]) -> EncodedPrompts:
        """Encode ``prompts``; every occurrence of a key of ``token_embeddings`` in a prompt
        is replaced by that (n_vectors, D) tensor, keeping autograd to it."""


@runtime_checkable
class DenoiserBackend(Protocol):
    """The UNet and VAE of a latent-diffusion model, seen the same way for every framework.

    A denoiser whose text K/V are not attn2 ``to_k``/``to_v`` (a diffusion transformer's text
    stream: ``joint_blocks.JointBlockDenoiser``) also has

    * ``text_kv_projections()``: canonical key (``"<block>.<text attention>.to_k"``) -> the
      linear layer, in forward order; the trainer, adapters and fingerprint use these;
    * ``size_multiple``: the side rule for training images in pixels (VAE factor x patch);
    * ``detach_start_token``: False where the context has no start-of-text position (T5);
    * ``objective``: its training objective and sampler step (``flow_matching.FlowMatching``);

    and its ``route_attention`` hands each routed block's image-to-text map to
    ``AttentionRouter.capture_text_map`` instead of sending attention through the router.
    """

    unet: nn.Module
    """The module whose ``attn2`` cross-attention layers are trained and captured."""

    prediction_type: str
    """``"epsilon"`` or ``"v_prediction"``: what ``predict`` returns and the loss targets."""

    latent_channels: int
    vae_scale_factor: int
    """Pixels per latent cell along one side (8 for Stable Diffusion)."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, C, H/f, W/f) latents, already scaled for the UNet."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode_images``: scaled latents -> (B, 3, H, W) images in [0, 1]."""

    needs_pooled: bool
    """True for UNets that also take the pooled text embedding and size conditioning (SDXL):
    ``predict`` then needs ``pooled``; the size conditioning it derives from the latents."""

    def predict(
        self, noisy_latents: Tensor, timesteps: Tensor, context: Tensor, pooled: Tensor | None = None
    ) -> Tensor:
        """The UNet's raw output for DDPM-noised latents at integer ``timesteps`` (0..999).

        ``pooled`` (B, P): the text backend's ``EncodedPrompts.pooled`` rows matching
        ``context``; required when ``needs_pooled``, and cast by the backend to the dtype it
        runs the UNet in, so callers pass it as encoded. SDXL's size conditioning is taken as
        uncropped images of the latents' own size (original = target = latent side x factor)."""

    def route_attention(self, router: AttentionRouter) -> AbstractContextManager:
        """While the context is open, every ``attn2`` call whose layer the router selects goes
        through ``router`` (explicit softmax + capture); all others keep the framework's own
        fused attention. Must restore the model exactly on exit."""

    def canonical_layer_name(self, module_name: str) -> str:
        """Map this framework's module name of an ``attn2`` layer to the LDM / ComfyUI name
        (``input_blocks.1.1.transformer_blocks.0.attn2``) that adapters are keyed by."""


@dataclass
class ModelBundle:
    """Everything the trainer and sampler need from one base model."""

    text: TextBackend
    denoiser: DenoiserBackend
    fingerprint: str
    """Identifies the base weights (hash of the frozen K/V weights); adapters record it."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compute_dtype: torch.dtype = torch.float32
    """dtype of the frozen weights' forward pass; trainable parameters stay float32."""


def mean_of_pieces(rows: list[torch.Tensor], word: str, what: str) -> torch.Tensor:
    """The one rule for where a new token starts: the mean of the embedding rows of ``word``'s
    vocabulary pieces (common practice for multi-piece words), as a float32 CPU vector.
    ``what`` is the input ``word`` came from ("init_word", or "class_word" when init_word was
    left empty): a word with no pieces at all is blamed on it."""
    if not rows:
        raise ValueError(f"{what}: {word!r} has no vocabulary pieces to start the token from; give a word, e.g. 'doll'")
    return torch.stack([row.detach().to("cpu", torch.float32) for row in rows]).mean(0)


def check_embedding_width(token_embeddings: dict[str, torch.Tensor], width: int, encoders: str) -> None:
    """Refuse token vectors whose width is not the text backend's ``width`` (made for another
    model family); ``encoders`` says what takes that width, for the message."""
    for token, vectors in token_embeddings.items():
        if vectors.shape[-1] != width:
            raise ValueError(
                f"token {token!r}: its embedding has {vectors.shape[-1]} values per vector, {encoders} "
                f"{width}; was it trained on another model family?"
            )
