"""Tiny, randomly initialised Stable-Diffusion-architecture models, built in code: the one
home of the tiny builders the tests, the benchmarks and the scripts use.

Built with the real CLIP BPE vocabulary (textloc_core/tinyworld/weights/tokenizer), so
tokenisation, token positions and layer discovery behave as with SD1.5, while a forward pass
takes milliseconds on CPU. Nothing is downloaded. (The full-size random builders are
sd15_models / sdxl_models here; the ComfyUI-side tiny SDXL model, which needs ComfyUI, is
tests/integration/tiny_sdxl_comfy.py.)
"""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "textloc_core" / "tinyworld" / "weights" / "tokenizer"


def build_tiny_unet(cross_attention: bool = True):
    """The tiny test UNet: two levels, latent 8, context 32. Without ``cross_attention`` it has
    the same shape but plain down/up blocks and no mid block: a UNet the method cannot train."""
    from diffusers import UNet2DConditionModel

    kinds = (
        ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "UNetMidBlock2DCrossAttn")
        if cross_attention
        else ("DownBlock2D", "UpBlock2D", None)
    )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=(kinds[0], kinds[0]),
        up_block_types=(kinds[1], kinds[1]),
        mid_block_type=kinds[2],
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_random_tinyworld_pipeline():
    """A StableDiffusionPipeline of TinyWorld's architecture (``textloc_core.tinyworld.model_configs``)
    with random weights drawn from seed 0, and its tokenizer: the whole path runs, numbers mean nothing."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from textloc_core.tinyworld import model_configs as mc

    torch.manual_seed(0)
    text_encoder = mc.build_text_encoder()
    return StableDiffusionPipeline(
        vae=mc.build_vae(),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)),
        unet=mc.build_unet(),
        scheduler=mc.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_clip_text_config(width: int, layers: int, **extra):
    """A ``CLIPTextConfig`` ``width`` wide (MLP twice that, 2 heads) over CLIP's own vocabulary,
    77 positions and special tokens: the tokenizer TinyWorld ships reads it."""
    from transformers import CLIPTextConfig

    vocab = dict(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407
    )
    return CLIPTextConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        **vocab,
        **extra,
    )


def build_tiny_pipeline_parts(seed: int = 0) -> dict:
    """tokenizer, text_encoder, unet, vae: an SD-shaped model small enough for unit tests.

    Two UNet levels with cross-attention at both (latent 8 -> attention grids 8x8 and 4x4),
    a 2-layer 32-wide CLIP text encoder, and a VAE with scale factor 2.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    text_encoder = CLIPTextModel(tiny_clip_text_config(32, layers=2))
    unet = build_tiny_unet()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae}


TINY_SDXL_TRAINING = {
    "steps": 2,
    "learning_rate": 1e-3,
    "instance_batch": 1,
    "prior_batch": 1,
    "prior_images": 2,
    "prior_sampling_steps": 2,
}
"""``TrainConfig`` fields (all but ``guidance``) of a two-step training with prior images on a tiny
SDXL-shaped model: the diffusers and the ComfyUI backend's tests train alike."""


def build_tiny_sdxl_parts(seed: int = 0) -> dict:
    """tokenizer(_2), text_encoder(_2), unet, vae: an SDXL-shaped model for unit tests.

    Like SDXL: two CLIP text encoders (CLIP-L-like, 32 wide; bigG-like with a projection, 48
    wide, padding with "!"), read at the penultimate layer and concatenated (context 80); a
    UNet with ``addition_embed_type="text_time"`` taking bigG's pooled vector and the six size
    numbers; no attention at the finest level and attention at two coarser levels.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    parts = build_tiny_pipeline_parts(seed)
    torch.manual_seed(seed + 1)
    parts["text_encoder"] = CLIPTextModel(tiny_clip_text_config(32, layers=3))
    parts["text_encoder_2"] = CLIPTextModelWithProjection(tiny_clip_text_config(48, layers=3, projection_dim=48))
    parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!")
    parts["unet"] = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=80,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=48 + 6 * 8,
        norm_num_groups=8,
    )
    return parts


TINY_T5_WORDS = (
    "a an the photo of and with in on at next to by picture image doll bucket cat dog toy figurine "
    "red green blue yellow white black small big wooden plastic table floor"
).split()
"""The tiny T5 tokenizer's vocabulary (besides pad, end and unknown): the words test prompts use."""


def build_tiny_t5_tokenizer():
    """A T5TokenizerFast built in code: word-level over ``TINY_T5_WORDS``, lower-casing, ending
    every sequence with </s> and padding with <pad> (id 0) as T5's own tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *TINY_T5_WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def build_tiny_t5(width: int):
    """(tokenizer, encoder): ``build_tiny_t5_tokenizer`` and a 2-layer T5 encoder ``width`` wide."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tiny_t5_tokenizer()
    model = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=8,
            d_ff=2 * width,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    return tokenizer, model


def _with_t5(base: dict, seed: int, t5_width: int, t5_slot: str) -> dict:
    """A DiT pipeline's parts but its transformer: ``base``'s tokenizers, text encoders and VAE
    (its UNet dropped) and a ``t5_width``-wide T5 as ``text_encoder<t5_slot>`` (sequence 16),
    drawn after seeding torch with ``seed`` (the transformer is drawn next)."""
    torch.manual_seed(seed)
    t5_tokenizer, t5 = build_tiny_t5(t5_width)
    parts = {name: part for name, part in base.items() if name != "unet"}
    parts.update({f"text_encoder{t5_slot}": t5, f"tokenizer{t5_slot}": t5_tokenizer, "max_sequence_length": 16})
    return parts


def _tiny_transformer(transformer_class: type, blocks: int, text_width: int, pooled_width: int, **config):
    """A diffusers DiT ``transformer_class`` of ``blocks`` blocks with 2 attention heads of 8,
    reading a ``text_width``-wide text sequence and a ``pooled_width``-wide pooled vector;
    ``config`` is the rest of its config."""
    return transformer_class(
        num_layers=blocks,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=text_width,
        pooled_projection_dim=pooled_width,
        **config,
    )


def build_tiny_flux_parts(seed: int = 0, double_blocks: int = 2) -> dict:
    """FluxPipeline-named parts of a Flux-architecture model for unit tests: a
    ``FluxTransformer2DModel`` with ``double_blocks`` double-stream and 1 single-stream blocks
    (2 heads of 8, rotary axes 2 + 2 + 4, guidance embedding as in dev), a 32-wide T5
    (``build_tiny_t5``, sequence 16), the tiny CLIP-L (32 wide, pooled output) and the tiny VAE
    (4 latent channels, factor 2; the transformer reads 2 x 2 patches)."""
    from diffusers import FluxTransformer2DModel

    parts = _with_t5(build_tiny_pipeline_parts(seed), seed + 2, 32, "_2")
    parts["transformer"] = _tiny_transformer(
        FluxTransformer2DModel,
        double_blocks,
        32,
        32,
        patch_size=1,
        in_channels=16,
        num_single_layers=1,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    return parts


def build_tiny_sd3_parts(seed: int = 0, joint_blocks: int = 3) -> dict:
    """StableDiffusion3Pipeline-named parts of an SD3.5-architecture model for unit tests: an
    ``SD3Transformer2DModel`` with ``joint_blocks`` joint blocks (2 heads of 8, patch 2, RMS
    q/k norm, the first block with SD3.5's second image-only attention), SDXL's tiny CLIP-L (32)
    and CLIP-G (48, projected) and a 96-wide T5 (sequence 16), the tiny VAE."""
    from diffusers import SD3Transformer2DModel

    parts = _with_t5(build_tiny_sdxl_parts(seed), seed + 3, 96, "_3")
    # the image side: 16 x 16 latents of 4 channels, read in 2 x 2 patches
    image = dict(sample_size=16, pos_embed_max_size=16, patch_size=2, in_channels=4, out_channels=4)
    parts["transformer"] = _tiny_transformer(
        SD3Transformer2DModel,
        joint_blocks,
        96,
        32 + 48,
        caption_projection_dim=16,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
        **image,
    )
    return parts
