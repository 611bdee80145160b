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
