"""Memory levers on diffusion transformers (tiny Flux / SD3.5 architectures, CPU): a base
transformer stored in float8 trains as the same model with its weights rounded through float8
does, autograd keeps the 8-bit weights (no full-precision copy), and 8-bit AdamW, which needs
CUDA, is refused on the CPU before any work, naming the input and the fix.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.tiny_models import build_tiny_flux_parts, build_tiny_sd3_parts
from textloc_core.backends.flux_backend import bundle_from_flux
from textloc_core.backends.fp8_base import FP8, Fp8Linear, store_fp8
from textloc_core.backends.sd3_backend import bundle_from_sd3
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train

pytestmark = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8")

BUILDERS = {"flux": (build_tiny_flux_parts, bundle_from_flux), "sd3": (build_tiny_sd3_parts, bundle_from_sd3)}


def _config(**overrides) -> TrainConfig:
    values = dict(
        guidance="hard", steps=2, learning_rate=1e-3, prior_images=0, instance_batch=2, checkpoint_every=10**9
    )
    return TrainConfig(**{**values, **overrides})


def _rounded_through_fp8(module: nn.Module) -> None:
    """Round every linear weight of ``module`` to float8 values, kept in its own dtype."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(layer.weight.to(FP8).to(layer.weight.dtype))


def test_fp8_linear_matches_the_rounded_weight_forward_and_backward():
    torch.manual_seed(0)
    plain = nn.Linear(16, 8)
    _rounded_through_fp8(plain)
    stored = nn.Linear(16, 8)
    stored.load_state_dict(plain.state_dict())
    assert store_fp8(stored, torch.float32) == 1
    assert isinstance(stored, Fp8Linear) and stored.weight.dtype == FP8
    x = torch.randn(3, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(stored(x2), plain(x), rtol=0, atol=1e-6)
    stored(x2).square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=0, atol=1e-5)
    assert stored.weight.grad is None


def test_autograd_keeps_the_8bit_weight_not_an_upcast_copy():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    store_fp8(layer, torch.float32)
    saved: list[torch.Tensor] = []
    x = torch.randn(2, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    out.sum().backward()
    weights = [t for t in saved if t.shape == (64, 64)]
    assert [t.dtype for t in weights] == [FP8]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_fp8_base_trains_as_the_fp8_rounded_model(family, pair_at_32):
    build, bundle_from = BUILDERS[family]
    stored = bundle_from(**build(), weight_dtype="fp8_e4m3fn")
    reference_parts = build()
    _rounded_through_fp8(reference_parts["transformer"])
    reference = bundle_from(**reference_parts)
    transformer = stored.denoiser.unet
    linear = [m for m in transformer.modules() if isinstance(m, nn.Linear)]
    assert linear and all(isinstance(m, Fp8Linear) and m.weight.dtype == FP8 for m in linear)
    assert stored.compute_dtype == torch.float32 and stored.fingerprint == reference.fingerprint
    before = {k: v.clone() for k, v in transformer.state_dict().items()}

    got = train(stored, pair_at_32, _config(gradient_checkpointing=True))
    want = train(reference, pair_at_32, _config())

    assert all(torch.equal(v, transformer.state_dict()[k]) for k, v in before.items())
    assert got.history and all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in got.history)
    for key, delta in want.kv_deltas.items():
        assert delta.abs().sum() > 0
        torch.testing.assert_close(got.kv_deltas[key], delta, rtol=1e-3, atol=1e-6)
    for token, vector in want.token_embeddings.items():
        torch.testing.assert_close(got.token_embeddings[token], vector, rtol=1e-3, atol=1e-6)


def test_fp8_base_trains_under_bf16_autocast(pair_at_32):
    bundle = bundle_from_flux(**build_tiny_flux_parts(), weight_dtype="fp8_e4m3fn")
    result = train(bundle, pair_at_32, _config(mixed_precision="bf16", gradient_checkpointing=True))
    assert all(delta.abs().sum() > 0 for delta in result.kv_deltas.values())
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in result.history)


def test_unknown_weight_dtype_is_named():
    with pytest.raises(ValueError, match="weight_dtype: 'fp4' is not one of default, fp8_e4m3fn"):
        bundle_from_flux(**build_tiny_flux_parts(), weight_dtype="fp4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_8bit_adamw_on_cpu_is_refused_before_any_work(family, pair_at_32):
    build, bundle_from = BUILDERS[family]
    bundle = bundle_from(**build())
    hooks_before = sum(len(m._forward_hooks) for m in bundle.denoiser.unet.modules())
    with pytest.raises(ValueError, match=r"optimizer: adamw_8bit .*CUDA.* cpu.*use adamw"):
        train(bundle, pair_at_32, _config(optimizer="adamw_8bit"))
    assert sum(len(m._forward_hooks) for m in bundle.denoiser.unet.modules()) == hooks_before


def build() -> dict:
    return build()


@pytest.fixture
def pair_at_32(doll_bucket_set):
    """Two 32-pixel photos, each naming the doll and the bucket."""
    return doll_bucket_set(
        [{"doll": (2, 2), "bucket": (16, 16)}, {"doll": (16, 4), "bucket": (3, 18)}], side=32, size=12, seed=5
    )
