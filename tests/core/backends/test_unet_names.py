"""diffusers -> LDM attn2 names: the keys adapters use must match ComfyUI's for SD1.5 and SDXL."""

import pytest

from textloc_core.backends.unet_names import diffusers_to_ldm_attn2, ldm_to_diffusers_attn2

SD15 = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "layers_per_block": 2}
SDXL = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "layers_per_block": 2}
T = "transformer_blocks.0.attn2"


@pytest.mark.parametrize(
    "config,diffusers,ldm",
    [
        (SD15, f"down_blocks.0.attentions.0.{T}", f"input_blocks.1.1.{T}"),
        (SD15, f"down_blocks.1.attentions.1.{T}", f"input_blocks.5.1.{T}"),
        (SD15, f"down_blocks.2.attentions.0.{T}", f"input_blocks.7.1.{T}"),
        (SD15, f"mid_block.attentions.0.{T}", f"middle_block.1.{T}"),
        (SD15, f"up_blocks.1.attentions.0.{T}", f"output_blocks.3.1.{T}"),
        (SD15, f"up_blocks.3.attentions.2.{T}", f"output_blocks.11.1.{T}"),
        (SDXL, "down_blocks.1.attentions.0.transformer_blocks.1.attn2", "input_blocks.4.1.transformer_blocks.1.attn2"),
        (SDXL, "down_blocks.2.attentions.1.transformer_blocks.9.attn2", "input_blocks.8.1.transformer_blocks.9.attn2"),
        (SDXL, f"up_blocks.0.attentions.2.{T}", f"output_blocks.2.1.{T}"),
        (SDXL, f"up_blocks.1.attentions.0.{T}", f"output_blocks.3.1.{T}"),
    ],
)
def test_known_names_round_trip(config, diffusers, ldm):
    assert diffusers_to_ldm_attn2(diffusers, config) == ldm
    assert ldm_to_diffusers_attn2(ldm, config) == diffusers


def test_non_attn2_name_is_rejected():
    with pytest.raises(ValueError, match="not a diffusers UNet attn2 path"):
        diffusers_to_ldm_attn2("down_blocks.0.resnets.0", SD15)
    with pytest.raises(ValueError, match="does not hold attention"):
        ldm_to_diffusers_attn2(f"input_blocks.3.1.{T}", SD15)
