"""The store-everything reference: attention computed the way the paper's code computes it.

The paper's released code (Custom Diffusion's diffusers scripts plus a prompt-to-prompt style
attention store) computes *every* attention layer of the UNet with an explicit softmax
(``baddbmm`` -> ``softmax`` -> ``bmm``, diffusers' classic ``AttnProcessor``), self-attention
at the finest latent grid included, and stores every cross-attention probability tensor, all
heads and all 77 context tokens, then picks the identifier token's maps out of the store to
build the loss.

Our efficient path (``attention.AttentionRouter``) computes explicit softmax only for the
cross-attention layers a loss needs, keeps only the tracked tokens' head-averaged columns,
and leaves every other attention on the framework's fused kernel. The performance benchmark
compares the two, so the reference must run through *the same trainer*: this module provides

* ``StoreEverythingRouter``: an ``AttentionRouter`` that selects every attn2 layer, computes
  it explicitly per head in the paper's layout, keeps the full (B, heads, N, L) probabilities
  of every call in ``stored``, and hands the wrapped router exactly the ``CapturedMap`` it
  would have captured itself (same layers, same slots, same head mean), so losses and
  gradients are those of the efficient path;
* ``explicit_self_attention``: swaps every ``attn1`` processor of a diffusers UNet for the
  explicit one while open;
* ``StoreEverythingDenoiser`` / ``store_everything_bundle``: a ``DenoiserBackend`` wrapper
  whose ``route_attention`` does both, so ``train(store_everything_bundle(bundle), ...)``
  trains the reference without any change to the trainer.

On a diffusion transformer (Flux, SD3) the same wrapper routes every joint block, stores each
block's image-to-text probabilities of all heads and all text tokens in one piece
(``StoreEverythingRouter.capture_text_map``, no head chunks, no recomputation) and computes
every attention in the transformer's forward explicitly (``explicit_joint_attention``).

It exists for measurement and for tests of fairness; nobody should train with it.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from textloc_core.attention.cross_attention import AttentionRouter, CapturedMap
from textloc_core.backends.base import ModelBundle


@dataclass
class StoreEverythingRouter(AttentionRouter):
    """Routes every attn2 layer explicitly and stores all heads' maps of all context tokens.

    ``target``: the router the trainer (or sampler) created; its ``layers``, ``token_slots``
    and ``keep_grad`` decide what it receives in ``target.captured``, exactly as if it had
    been called itself. ``stored``: layer -> full (B, heads, N, L) probabilities of the
    latest UNet forward (reset when a layer repeats, as the paper's attention store resets
    between steps). Maps stay on the autograd graph, as in the paper's code, where the loss
    is computed from the store.
    """

    target: AttentionRouter | None = None
    stored: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = None  # every cross-attention layer is computed and stored

    def clear(self) -> None:
        super().clear()
        self.stored.clear()

    def __call__(self, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        batch, n_query, inner = q.shape
        dim_head = inner // heads
        if k.shape[0] != batch:
            repeat = batch // k.shape[0]
            k, v = k.repeat_interleave(repeat, 0), v.repeat_interleave(repeat, 0)
        # diffusers' head_to_batch_dim layout and get_attention_scores arithmetic, as the
        # paper's processor uses them: (B*H, N, d) x (B*H, d, L) -> softmax -> (B*H, N, L).
        qb = q.reshape(batch, n_query, heads, dim_head).permute(0, 2, 1, 3).reshape(batch * heads, n_query, dim_head)
        kb = k.reshape(batch, -1, heads, dim_head).permute(0, 2, 1, 3).reshape(batch * heads, -1, dim_head)
        vb = v.reshape(batch, -1, heads, dim_head).permute(0, 2, 1, 3).reshape(batch * heads, -1, dim_head)
        scores = torch.baddbmm(
            torch.empty(qb.shape[0], n_query, kb.shape[1], dtype=qb.dtype, device=qb.device),
            qb,
            kb.transpose(-1, -2),
            beta=0,
            alpha=dim_head**-0.5,
        )
        probs = scores.float().softmax(dim=-1).to(vb.dtype)
        out = (
            torch.bmm(probs, vb)
            .reshape(batch, heads, n_query, dim_head)
            .permute(0, 2, 1, 3)
            .reshape(batch, n_query, inner)
        )

        full = probs.view(batch, heads, n_query, -1)
        if layer in self.stored:  # a new UNet forward began: the store holds one forward's maps
            self.stored.clear()
        self.stored[layer] = full
        self._deliver(layer, full, batch, n_query)
        return out

    def capture_text_map(self, layer: str, q_image: torch.Tensor, k_text: torch.Tensor) -> None:
        """A joint-attention block (diffusion transformer): its image-to-text probabilities for
        all heads and all text tokens in one piece, stored and kept on the autograd graph (no
        head chunks, no recomputation), and the tracked slots' head mean delivered from them."""
        scores = torch.matmul(q_image, k_text.transpose(-1, -2)) * q_image.shape[-1] ** -0.5
        full = scores.float().softmax(dim=-1)  # (B, heads, N, T)
        if layer in self.stored:
            self.stored.clear()
        self.stored[layer] = full
        self._deliver(layer, full, q_image.shape[0], q_image.shape[2])

    def _deliver(self, layer: str, full: torch.Tensor, batch: int, n_query: int) -> None:
        """Give the wrapped router the slice of the store it would have captured itself."""
        target = self.target
        if target is None or not target.selects(layer) or target.token_slots is None:
            return
        slots = target.token_slots.to(full.device)
        if slots.shape[0] != batch:
            slots = slots.repeat(batch // slots.shape[0], 1)
        mean_heads = full.float().mean(dim=1)  # (B, N, L), picked from the store like the paper
        picked = torch.gather(mean_heads, 2, slots.unsqueeze(1).expand(-1, n_query, -1))
        target.captured.append(CapturedMap(layer, picked if target.keep_grad else picked.detach()))


def _self_attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m for name, m in unet.named_modules() if name.split(".")[-1] == "attn1" and hasattr(m, "set_processor")
    }


@contextmanager
def explicit_self_attention(unet: nn.Module):
    """While open, every diffusers ``attn1`` runs diffusers' classic explicit ``AttnProcessor``
    (baddbmm + softmax + bmm: the full N x N probability tensor is materialised and saved for
    backward), as in the paper's code. The original processors are restored on exit."""
    from diffusers.models.attention_processor import AttnProcessor

    modules = _self_attention_modules(unet)
    if not modules:
        raise ValueError(
            "model: no diffusers self-attention (attn1) modules with set_processor found; the "
            "store-everything reference runs on diffusers UNets only"
        )
    previous = {name: m.processor for name, m in modules.items()}
    explicit = AttnProcessor()
    try:
        for module in modules.values():
            module.set_processor(explicit)
        yield
    finally:
        for name, module in modules.items():
            module.set_processor(previous[name])


def _explicit_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """``scaled_dot_product_attention`` computed the classic way: the probabilities materialised
    (float32 softmax) and saved for backward."""
    if dropout_p or is_causal:
        raise ValueError("the explicit reference attention has no dropout or causal mask")
    scores = torch.matmul(query, key.transpose(-1, -2)) * (scale or query.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.matmul(scores.float().softmax(dim=-1).to(value.dtype), value)


@contextmanager
def explicit_joint_attention(transformer: nn.Module):
    """While open, every attention inside ``transformer``'s forward (a diffusion transformer's
    joint and single-stream blocks, whichever processor runs them) computes its softmax
    explicitly (``_explicit_sdpa``) instead of the fused kernel; calls outside its forward (text
    encoders, VAE) keep the fused kernel. Restored on exit."""
    fused = torch.nn.functional.scaled_dot_product_attention
    inside = [0]

    def sdpa(*args, **kwargs):
        return (_explicit_sdpa if inside[0] else fused)(*args, **kwargs)

    def enter(*_):
        inside[0] += 1

    def leave(*_):
        inside[0] -= 1

    handles = [transformer.register_forward_pre_hook(enter), transformer.register_forward_hook(leave)]
    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = fused
        for handle in handles:
            handle.remove()


class StoreEverythingDenoiser:
    """A ``DenoiserBackend`` that runs its wrapped backend the paper's way.

    Everything is delegated to ``inner`` except ``route_attention``, which routes every
    attn2 layer through a ``StoreEverythingRouter`` wrapped around the caller's router and
    makes self-attention explicit. ``last_router`` exposes the store (for tests and for the
    benchmark's accounting).
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last_router: StoreEverythingRouter | None = None

    @property
    def unet(self) -> nn.Module:
        return self.inner.unet

    @property
    def prediction_type(self) -> str:
        return self.inner.prediction_type

    @property
    def latent_channels(self) -> int:
        return self.inner.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.inner.vae_scale_factor

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_images(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.decode_latents(latents)

    @property
    def needs_pooled(self) -> bool:
        return self.inner.needs_pooled

    def predict(self, noisy_latents, timesteps, context, pooled=None) -> torch.Tensor:
        return self.inner.predict(noisy_latents, timesteps, context, pooled)

    def canonical_layer_name(self, module_name: str) -> str:
        return self.inner.canonical_layer_name(module_name)

    def __getattr__(self, name: str):
        # anything beyond the protocol (helpers a backend offers) behaves as the wrapped one's
        return getattr(self.inner, name)

    @contextmanager
    def route_attention(self, router: AttentionRouter):
        store = StoreEverythingRouter(target=router)
        self.last_router = store
        # the wrapped router's own clear() is what the trainer calls between steps; the store
        # resets itself per forward, so its maps do not accumulate across steps either
        with ExitStack() as stack:
            stack.enter_context(self.inner.route_attention(store))
            # a diffusion transformer names its text K/V blocks; its attention is joint, not attn1
            joint = hasattr(self.inner, "text_kv_projections")
            stack.enter_context((explicit_joint_attention if joint else explicit_self_attention)(self.inner.unet))
            yield


def store_everything_bundle(bundle: ModelBundle) -> ModelBundle:
    """The same model bundle, its denoiser running in the store-everything reference mode."""
    return dataclasses.replace(bundle, denoiser=StoreEverythingDenoiser(bundle.denoiser))
