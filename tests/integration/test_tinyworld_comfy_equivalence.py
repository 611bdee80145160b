"""ComfyUI and diffusers build the same TinyWorld denoiser.

The TinyWorld UNet is defined once as a diffusers config and once as a ComfyUI unet_config;
the loader node converts diffusers weights with ComfyUI's own ``unet_to_diffusers`` map. This
test builds both, moves the weights across with that map, and checks the two networks give
the same epsilon for the same latents, timestep and context. Skips loudly without ComfyUI.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from textloc_core.tinyworld import model_configs as mc


def _comfy_dir() -> Path | None:
    root = Path(os.environ.get("COMFYUI_DIR", Path.home() / "ComfyUI"))
    return root if (root / "comfy" / "model_base.py").exists() else None


COMFY = _comfy_dir()
if COMFY is None:  # pragma: no cover - environment dependent
    warnings.warn("ComfyUI not found (set COMFYUI_DIR): TinyWorld ComfyUI/diffusers equivalence NOT tested")
pytestmark = pytest.mark.skipif(COMFY is None, reason="SKIPPED LOUDLY: ComfyUI not found; set COMFYUI_DIR")


@pytest.fixture(scope="module")
def comfy_modules():
    if str(COMFY) not in sys.path:
        sys.path.insert(0, str(COMFY))
    import comfy.cli_args

    # this machine may have a CUDA build of torch but no GPU: ComfyUI must not probe one
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.ops
    import comfy.supported_models
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return comfy, UNetModel


def diffusers_to_comfy_unet(diffusers_sd: dict, comfy_utils) -> dict:
    """Rename a diffusers UNet state dict to ComfyUI/LDM names with ComfyUI's own map."""
    mapping = comfy_utils.unet_to_diffusers(mc.comfy_unet_config())
    out = {}
    for diff_key, ldm_key in mapping.items():
        if diff_key in diffusers_sd:
            out[ldm_key] = diffusers_sd[diff_key]
    missing = sorted(set(diffusers_sd) - set(mapping))
    assert not missing, f"diffusers keys without a ComfyUI name: {missing[:5]}"
    return out


def test_comfy_and_diffusers_unets_agree(comfy_modules):
    comfy, UNetModel = comfy_modules
    torch.manual_seed(0)
    unet = mc.build_unet().eval()
    # random init leaves zero-initialised output convs; perturb every weight so a wrong
    # mapping anywhere changes the output
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)

    sd15 = comfy.supported_models.SD15(mc.comfy_unet_config())
    comfy_unet = UNetModel(**sd15.unet_config, operations=comfy.ops.disable_weight_init).eval()
    converted = diffusers_to_comfy_unet(unet.state_dict(), comfy.utils)
    missing, unexpected = comfy_unet.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])

    x = torch.randn(2, mc.LATENT_CHANNELS, mc.LATENT_SIZE, mc.LATENT_SIZE)
    t = torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, mc.MAX_TOKENS, mc.TEXT_HIDDEN)
    with torch.no_grad():
        ours = unet(x, t, encoder_hidden_states=ctx).sample
        theirs = comfy_unet(x, timesteps=t, context=ctx)
    assert ours.shape == theirs.shape == x.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_attn2_names_follow_ldm_convention(comfy_modules):
    """Adapters key layers by LDM names; the TinyWorld UNet must have them where documented."""
    comfy, UNetModel = comfy_modules
    sd15 = comfy.supported_models.SD15(mc.comfy_unet_config())
    comfy_unet = UNetModel(**sd15.unet_config, operations=comfy.ops.disable_weight_init)
    names = {n for n, _ in comfy_unet.named_modules() if n.endswith("attn2")}
    assert "input_blocks.1.1.transformer_blocks.0.attn2" in names
    assert "middle_block.1.transformer_blocks.0.attn2" in names
    assert "output_blocks.3.1.transformer_blocks.0.attn2" in names
    assert len(names) == 2 + 1 + 4


def test_comfy_vae_config_decodes_like_diffusers(comfy_modules):
    """COMFY_VAE_CONFIG + ComfyUI's diffusers->LDM VAE key conversion (after the level shift
    TinyWorld's three-level decoder needs) rebuild the same VAE."""
    # the comfy_modules fixture put ComfyUI on sys.path (CPU only)
    import comfy.diffusers_convert
    from comfy.ldm.models.autoencoder import AutoencoderKL as ComfyAutoencoderKL

    torch.manual_seed(0)
    vae = mc.build_vae().eval()
    sd = comfy.diffusers_convert.convert_vae_state_dict(mc.shift_vae_up_blocks_for_comfy(vae.state_dict()))
    theirs = ComfyAutoencoderKL(**mc.COMFY_VAE_CONFIG["params"]).eval()
    missing, unexpected = theirs.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    z = torch.randn(1, mc.LATENT_CHANNELS, mc.LATENT_SIZE, mc.LATENT_SIZE)
    x = torch.rand(1, 3, mc.IMAGE_SIZE, mc.IMAGE_SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(theirs.decode(z), vae.decode(z).sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(theirs.encode(x), vae.encode(x).latent_dist.mode(), atol=1e-4, rtol=1e-4)
