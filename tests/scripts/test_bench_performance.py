"""The performance benchmark's model builders and harness: SD1.5 / SDXL architectures as published
(counted on the meta device, nothing allocated), the modes' trainer settings, and one end-to-end
run of every SDXL mode on the test-sized SDXL model (numbers meaningless, path real)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_performance")


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _attn2_kv(unet) -> tuple[int, int]:
    """(attn2 layers, their to_k + to_v parameters): what training makes trainable."""
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    return len(layers), sum(m.to_k.weight.numel() + m.to_v.weight.numel() for m in layers)


def test_sdxl_architecture_is_the_published_one():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from benchmarks import sdxl_models as xl

    with torch.device("meta"):
        full = UNet2DConditionModel(**xl.sdxl_unet_config())
        short = UNet2DConditionModel(**xl.sdxl_unet_config(32, transformer_depth=2))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(**xl.SDXL_TEXT_2_CONFIG))
    assert _parameters(full) == 2_567_463_684 and _attn2_kv(full) == (70, 340_787_200)
    assert _parameters(big_g) == 694_659_840
    assert short.config.sample_size == 32 and short.config.transformer_layers_per_block == (1, 2, 2)
    assert _attn2_kv(short) == (22, 89_128_960)
    assert xl.SDXL_VAE_CONFIG["scaling_factor"] == 0.13025
    with pytest.raises(ValueError, match="multiple of 4"):
        xl.sdxl_unet_config(30)
    with pytest.raises(ValueError, match="between 1 and 10"):
        xl.sdxl_unet_config(transformer_depth=11)


def test_sd15_builders_keep_their_shape_and_checks():
    from benchmarks import sd15_models as sd

    assert sd.sd15_unet_config(32)["sample_size"] == 32 and sd.SD15_UNET_CONFIG["sample_size"] == 64
    with pytest.raises(ValueError, match="multiple of 8"):
        sd.sd15_unet_config(12)
    text = sd.build_sd15_text_encoder(num_layers=1)
    assert text.config.num_hidden_layers == 1 and text.config.hidden_size == 768
    assert not any(p.requires_grad for p in text.parameters()) and not text.training
    with pytest.raises(ValueError, match="between 1 and 12"):
        sd.build_sd15_text_encoder(num_layers=13)


def test_modes_become_trainer_settings(bench):
    world = bench.WORLDS["sdxl-1024-gpu"]
    assert world.precision == "bf16" and bench.WORLDS["sd15-256-cpu"].precision == "fp32"
    assert bench.WORLDS["sdxl-256-cpu"].precision == "bf16"  # bf16 weights by choice on the CPU
    hard, coarse = bench.train_config(world, "hard", 3), bench.train_config(world, "hard-coarse", 3)
    assert (hard.guidance, hard.map_levels) == ("hard", "all_but_finest")  # SDXL: both grids
    assert (coarse.guidance, coarse.map_levels) == ("hard", (2,))  # SDXL: the coarser grid only
    assert bench.train_config(world, "store", 3).guidance == "hard"
    assert bench.train_config(world, "none", 3, gradient_checkpointing=True).gradient_checkpointing


def test_rounds_keep_the_median_round(bench):
    rounds = [
        {
            "step_s_median": s,
            "step_cpu_s_median": s,
            "peak_bytes": p,
            "step_extra_bytes": 1,
            "resident_between_steps_bytes": 2,
        }
        for s, p in ((3.0, 10), (1.0, 30), (2.0, 20))
    ]
    merged = bench._merge_rounds(rounds)
    assert merged["step_s_median"] == 2.0 and merged["peak_bytes"] == 20
    assert merged["rounds_step_s_median"] == [1.0, 2.0, 3.0]
    assert bench._merge_rounds(rounds[:1]) is rounds[0]


@pytest.mark.slow
def test_sdxl_modes_run_end_to_end(bench, tmp_path):
    out = tmp_path / "performance.json"
    bench.main(
        [
            "--configs",
            "tiny-sdxl-smoke",
            "--extras",
            "checkpointing",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "performance.md"),
        ]
    )
    res = json.loads(out.read_text())["tiny-sdxl-smoke"]
    assert set(res["modes"]) == {"none", "hard", "hard-coarse", "store", "none+ckpt", "hard+ckpt", "hard-coarse+ckpt"}
    assert not [k for k in res if k.endswith("_error")]
    assert {"hard/none", "store/none", "hard/hard-coarse", "hard+ckpt/none+ckpt", "hard+ckpt/hard-coarse+ckpt"} <= set(
        res["ratios"]
    )
    for r in res["modes"].values():
        assert r["step_s_median"] > 0 and r["peak_bytes"] > 0
    text = (tmp_path / "performance.md").read_text()
    assert "## tiny-sdxl-smoke" in text and "| hard/hard-coarse |" in text and "fp32" in text


def test_dit_architectures_are_the_published_ones():
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    from benchmarks import dit_models as dit

    with torch.device("meta"):
        flux = FluxTransformer2DModel(**dit.FLUX_DEV_CONFIG)
        medium = SD3Transformer2DModel(**dit.SD35_CONFIGS["medium"])
        large = SD3Transformer2DModel(**dit.SD35_CONFIGS["large"])
        t5 = T5EncoderModel(T5Config(**dit.T5_XXL_CONFIG))
    assert _parameters(flux) == 11_901_408_320 and len(flux.transformer_blocks) == 19
    assert _parameters(medium) == 2_243_171_520 and _parameters(large) == 8_056_627_520
    assert _parameters(t5) == 4_762_310_656
    with pytest.raises(ValueError, match="num_layers: 20 must be between 1 and 19"):
        dit.build_flux_bundle(double_blocks=20)


def test_dit_worlds_recompute_and_store_fp8_at_full_size(bench):
    world = bench.WORLDS["flux-1024-gpu"]
    assert (world.weight_dtype, world.blocks, world.text_layers) == ("fp8_e4m3fn", None, None)
    for mode in bench.DIT_MODES:
        assert bench.train_config(world, mode, 3).gradient_checkpointing
    cpu = bench.WORLDS["flux-256-cpu"]
    assert not bench.train_config(cpu, "hard", 3).gradient_checkpointing
    assert bench.train_config(cpu, "hard", 3, gradient_checkpointing=True).gradient_checkpointing


def test_a_shortened_flux_builds_with_fp8_weights_and_the_published_widths():
    from benchmarks import dit_models as dit
    from textloc_core.backends.fp8_base import FP8

    bundle = dit.build_flux_bundle(double_blocks=1, single_blocks=1, t5_layers=1, weight_dtype="fp8_e4m3fn")
    transformer = bundle.denoiser.unet
    assert bundle.compute_dtype == torch.bfloat16 and transformer.inner_dim == 3072
    assert transformer.transformer_blocks[0].attn.add_k_proj.weight.dtype == FP8
    assert bundle.text.t5.width == 4096 and bundle.text.t5.max_length == 512
    assert bundle.text.t5_encoder.encoder.block[0].layer[1].DenseReluDense.wi_0.weight.dtype == FP8


def test_store_on_a_diffusion_transformer_keeps_every_block_and_delivers_the_same_map(tiny_flux_bundle):
    from benchmarks.reference_mode import store_everything_bundle
    from textloc_core.attention.cross_attention import AttentionRouter

    def forward(bundle, router):
        torch.manual_seed(0)
        latents = torch.randn(2, 4, 8, 8)
        encoded = bundle.text.encode(["photo of a doll", "a cat"], {})
        router.token_slots = torch.tensor([[3], [1]])
        with bundle.denoiser.route_attention(router):
            return bundle.denoiser.predict(latents, torch.tensor([500, 500]), encoded.context, encoded.pooled)

    fused = torch.nn.functional.scaled_dot_product_attention
    efficient = AttentionRouter(layers={"double_blocks.1"}, keep_grad=False)
    want = forward(tiny_flux_bundle, efficient)
    store_bundle = store_everything_bundle(tiny_flux_bundle)
    stored = AttentionRouter(layers={"double_blocks.1"}, keep_grad=False)
    got = forward(store_bundle, stored)
    store = store_bundle.denoiser.last_router
    assert set(store.stored) == {"double_blocks.0", "double_blocks.1"}
    assert store.stored["double_blocks.0"].shape == (2, 2, 16, 16)  # all heads, every text token
    assert [m.layer for m in stored.captured] == ["double_blocks.1"]
    torch.testing.assert_close(stored.captured[0].probs, efficient.captured[0].probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # explicit attention, same model
    assert torch.nn.functional.scaled_dot_product_attention is fused  # restored on exit


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_dit_modes_run_end_to_end(bench, tmp_path, family):
    out = tmp_path / "performance.json"
    name = f"tiny-{family}-smoke"
    bench.main(["--configs", name, "--extras", "-", "--json", str(out), "--markdown", str(tmp_path / "perf.md")])
    res = json.loads(out.read_text())[name]
    assert set(res["modes"]) == {"none", "hard", "store"} and not [k for k in res if k.endswith("_error")]
    assert {"hard/none", "store/hard", "store/none"} <= set(res["ratios"])
