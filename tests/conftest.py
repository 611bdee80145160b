"""Shared fixtures: tiny, randomly initialised Stable-Diffusion-architecture models.

Built in code with the real CLIP BPE vocabulary (textloc_core/tinyworld/weights/tokenizer),
so tokenisation, token positions and layer discovery behave as with SD1.5, while a forward
pass takes milliseconds on CPU. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "textloc_core" / "tinyworld" / "weights" / "tokenizer"

# Tiny models gain nothing from intra-op threads, and on a shared CPU the threads' spin-waits
# made a training step ~30x slower (measured: 10 tiny steps 55 s with 2 threads, 1.5 s with 1).
torch.set_num_threads(int(os.environ.get("TEXTLOC_TEST_THREADS", "1")))


def build_tiny_unet(cross_attention: bool = True):
    """The tiny test UNet: two levels, latent 8, context 32. Without ``cross_attention`` it has
    the same shape but plain down/up blocks and no mid block: a UNet the method cannot train."""
    from diffusers import UNet2DConditionModel

    kinds = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "UNetMidBlock2DCrossAttn") if cross_attention else ("DownBlock2D", "UpBlock2D", None)
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


def build_tiny_pipeline_parts(seed: int = 0) -> dict:
    """tokenizer, text_encoder, unet, vae: an SD-shaped model small enough for unit tests.

    Two UNet levels with cross-attention at both (latent 8 -> attention grids 8x8 and 4x4),
    a 2-layer 32-wide CLIP text encoder, and a VAE with scale factor 2.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
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


def build_tiny_sdxl_parts(seed: int = 0) -> dict:
    """tokenizer(_2), text_encoder(_2), unet, vae: an SDXL-shaped model for unit tests.

    Like SDXL: two CLIP text encoders (CLIP-L-like, 32 wide; bigG-like with a projection, 48
    wide, padding with "!"), read at the penultimate layer and concatenated (context 80); a
    UNet with ``addition_embed_type="text_time"`` taking bigG's pooled vector and the six size
    numbers; no attention at the finest level and attention at two coarser levels.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    parts = build_tiny_pipeline_parts(seed)
    torch.manual_seed(seed + 1)
    common = dict(vocab_size=49408, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                  bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, **common))
    parts["text_encoder_2"] = CLIPTextModelWithProjection(
        CLIPTextConfig(hidden_size=48, intermediate_size=96, projection_dim=48, **common))
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
    return T5TokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def build_tiny_t5(width: int):
    """(tokenizer, encoder): ``build_tiny_t5_tokenizer`` and a 2-layer T5 encoder ``width`` wide."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tiny_t5_tokenizer()
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
                                    num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return tokenizer, model


def build_tiny_flux_parts(seed: int = 0, double_blocks: int = 2) -> dict:
    """FluxPipeline-named parts of a Flux-architecture model for unit tests: a
    ``FluxTransformer2DModel`` with ``double_blocks`` double-stream and 1 single-stream blocks
    (2 heads of 8, rotary axes 2 + 2 + 4, guidance embedding as in dev), a 32-wide T5
    (``build_tiny_t5``, sequence 16), the tiny CLIP-L (32 wide, pooled output) and the tiny VAE
    (4 latent channels, factor 2; the transformer reads 2 x 2 patches)."""
    from diffusers import FluxTransformer2DModel

    parts = build_tiny_pipeline_parts(seed)
    torch.manual_seed(seed + 2)
    t5_tokenizer, t5 = build_tiny_t5(32)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=double_blocks, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    return {
        "transformer": transformer, "vae": parts["vae"], "text_encoder": parts["text_encoder"],
        "tokenizer": parts["tokenizer"], "text_encoder_2": t5, "tokenizer_2": t5_tokenizer, "max_sequence_length": 16,
    }


def build_tiny_sd3_parts(seed: int = 0, joint_blocks: int = 3) -> dict:
    """StableDiffusion3Pipeline-named parts of an SD3.5-architecture model for unit tests: an
    ``SD3Transformer2DModel`` with ``joint_blocks`` joint blocks (2 heads of 8, patch 2, RMS
    q/k norm, the first block with SD3.5's second image-only attention), SDXL's tiny CLIP-L (32)
    and CLIP-G (48, projected) and a 96-wide T5 (sequence 16), the tiny VAE."""
    from diffusers import SD3Transformer2DModel

    parts = build_tiny_sdxl_parts(seed)
    torch.manual_seed(seed + 3)
    t5_tokenizer, t5 = build_tiny_t5(96)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=joint_blocks, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=16, pooled_projection_dim=32 + 48,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    return {
        "transformer": transformer, "vae": parts["vae"], "text_encoder": parts["text_encoder"],
        "tokenizer": parts["tokenizer"], "text_encoder_2": parts["text_encoder_2"], "tokenizer_2": parts["tokenizer_2"],
        "text_encoder_3": t5, "tokenizer_3": t5_tokenizer, "max_sequence_length": 16,
    }


@pytest.fixture
def tiny_flux_bundle():
    """A ModelBundle over fresh tiny Flux-architecture diffusers components."""
    from textloc_core.backends.flux_backend import bundle_from_flux

    return bundle_from_flux(**build_tiny_flux_parts())


@pytest.fixture
def tiny_sd3_bundle():
    """A ModelBundle over fresh tiny SD3.5-architecture diffusers components."""
    from textloc_core.backends.sd3_backend import bundle_from_sd3

    return bundle_from_sd3(**build_tiny_sd3_parts())


@pytest.fixture(scope="session")
def tiny_sdxl_parts_builder():
    """``build_tiny_sdxl_parts`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return build_tiny_sdxl_parts


@pytest.fixture
def tiny_sdxl_bundle():
    """A ModelBundle over fresh tiny SDXL-architecture diffusers components."""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    return bundle_from_diffusers(**build_tiny_sdxl_parts())


def run_routed_block(bundle, block: str, slots: torch.Tensor, latent_side: int = 8) -> dict:
    """One plain and one routed forward of a joint-block transformer on ``"photo of a <doll1>
    doll"`` and ``"a cat"``, capturing ``block`` only with token ``slots`` (2, S).

    Returns ``plain`` and ``routed`` outputs, the ``captured`` maps, the ``inputs`` (kwargs) of
    ``block``'s attention in the routed forward, and ``processors`` (block -> processor) before,
    during and after routing."""
    denoiser = bundle.denoiser
    bundle.text.check_token("<doll1>")
    encoded = bundle.text.encode(["photo of a <doll1> doll", "a cat"], {"<doll1>": bundle.text.initial_embedding("doll")})
    latents, t = torch.randn(2, denoiser.latent_channels, latent_side, latent_side), torch.tensor([100, 800])

    def processors():
        return {name: attn.processor for name, attn in denoiser.blocks().items()}

    from textloc_core.attention.cross_attention import AttentionRouter

    router = AttentionRouter(layers={block}, token_slots=slots, keep_grad=False)
    seen = {}
    handle = denoiser.blocks()[block].register_forward_pre_hook(lambda _m, _a, kwargs: seen.update(kwargs), with_kwargs=True)
    found = {"before": processors()}
    try:
        with torch.no_grad():
            found["plain"] = denoiser.predict(latents, t, encoded.context, encoded.pooled)
            with denoiser.route_attention(router):
                found["during"] = processors()
                found["routed"] = denoiser.predict(latents, t, encoded.context, encoded.pooled)
    finally:
        handle.remove()
    found.update(after=processors(), captured=list(router.captured), inputs=seen)
    return found


@pytest.fixture(scope="session")
def routed_block():
    """``run_routed_block`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return run_routed_block


def check_resume_is_bit_identical(bundle, concept_set, config, tmp_path: Path) -> None:
    """Train ``config`` (4 steps, a checkpoint every 2) straight through, and again stopped after
    step 3 whose checkpoint is then lost (as if killed before it landed), resumed from step 2:
    the history, K/V deltas and token embeddings must match bit for bit."""
    import shutil

    from textloc_core.training.loop import train

    full = train(bundle, concept_set, config, checkpoint_dir=tmp_path / "a")
    done = []
    train(bundle, concept_set, config, checkpoint_dir=tmp_path / "b", should_stop=lambda: len(done) >= 3, on_step=done.append)
    shutil.rmtree(tmp_path / "b" / "step-000000003")
    resumed = train(bundle, concept_set, config, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.steps_done == 4 and len(resumed.history) == 4
    assert resumed.history == full.history
    for key in full.kv_deltas:
        assert torch.equal(full.kv_deltas[key], resumed.kv_deltas[key]), key
    for token in full.token_embeddings:
        assert torch.equal(full.token_embeddings[token], resumed.token_embeddings[token]), token


@pytest.fixture(scope="session")
def resume_is_bit_identical():
    """``check_resume_is_bit_identical`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return check_resume_is_bit_identical


@pytest.fixture(scope="session")
def tiny_unet_builder():
    """``build_tiny_unet`` for tests (``import conftest`` can resolve to another folder's conftest)."""
    return build_tiny_unet


@pytest.fixture(scope="session")
def load_script():
    """Import ``scripts/NAME.py`` as a module (scripts/ is not a package)."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_parts():
    """Fresh tiny diffusers components (tests may train on them)."""
    return build_tiny_pipeline_parts()


@pytest.fixture
def tiny_bundle(tiny_parts):
    """A ModelBundle over fresh tiny diffusers components."""
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    return bundle_from_diffusers(**tiny_parts)


def square_mask(top: int, left: int, size: int, side: int) -> torch.Tensor:
    """A ``side`` x ``side`` mask with a ``size`` x ``size`` square of ones at (top, left)."""
    mask = torch.zeros(side, side)
    mask[top : top + size, left : left + size] = 1
    return mask


@pytest.fixture(scope="session")
def doll_bucket_set():
    """Builds the trainer tests' two-concept set (``<doll1>`` doll, ``<bucket1>`` bucket): one
    random ``side``-pixel photo per entry of ``placements`` (torch seeded with ``seed`` first),
    each with a ``size``-pixel square mask at ``{concept: (top, left)}`` for the concepts it names."""
    from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet

    def build(placements: list[dict[str, tuple[int, int]]], *, side: int, size: int, seed: int) -> ConceptSet:
        torch.manual_seed(seed)
        concepts = [Concept("doll", "<doll1>", "doll"), Concept("bucket", "<bucket1>", "bucket")]
        images = [
            ConceptImage(torch.rand(3, side, side), {name: square_mask(*at, size, side) for name, at in placed.items()})
            for placed in placements
        ]
        return ConceptSet(concepts, images)

    return build


TWO_CONCEPT_PLACEMENTS = [{"doll": (1, 1), "bucket": (9, 8)}, {"bucket": (2, 9)}, {"doll": (8, 2), "bucket": (1, 8)}]
"""Where the doll and bucket squares sit in the three 16-pixel photos of ``two_concepts``
(the second photo names only the bucket)."""


@pytest.fixture(scope="session")
def two_concepts_at(doll_bucket_set):
    """Builds the trainer tests' concept set at ``side`` pixels (default 16): three photos of a
    doll and a bucket, the doll not named in the second, squares and positions scaled with the
    side; a fresh set each call."""
    def at(side: int = 16):
        s = side // 16
        placements = [{name: (top * s, left * s) for name, (top, left) in placed.items()} for placed in TWO_CONCEPT_PLACEMENTS]
        return doll_bucket_set(placements, side=side, size=6 * s, seed=3)

    return at


@pytest.fixture
def two_concepts(two_concepts_at):
    """The trainer tests' concept set at 16 pixels (``two_concepts_at``)."""
    return two_concepts_at()


@pytest.fixture
def paper_dataset() -> Path:
    """The paper's dataset (read-only, outside the repo); skips loudly when absent."""
    from textloc_core.data.readers import find_paper_dataset

    root = find_paper_dataset(REPO)
    if root is not None and (root / "multi_concept").is_dir():
        return root
    pytest.skip("PAPER DATASET NOT FOUND: set TEXTLOC_PAPER_DATASET to ../shared/paper-dataset to run this test")


# --- Suites that could not run say so loudly at the end of the session -------------------
# Integration and browser suites need things this machine may lack (a ComfyUI tree,
# Chromium); they skip through ``not_run``, which also prints "<AREA> DID NOT RUN: why"
# in the session summary, so a skipped suite never reads as a pass.

_NOT_RUN = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_NOT_RUN] = {}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # a wrapper, so these lines come after pytest's own short summary: the last thing read
    result = yield
    for area, reason in config.stash.get(_NOT_RUN, {}).items():
        terminalreporter.write_sep("!", f"{area} DID NOT RUN: {reason}", red=True, bold=True)
    return result


@pytest.fixture(scope="session")
def not_run(request):
    """``not_run(area, reason, required_env=None)``: skip loudly, or fail when ``required_env`` is set.

    CI sets TEXTLOC_REQUIRE_COMFYUI=1 once it has laid ComfyUI out, so a harness that
    cannot find it fails instead of skipping.
    """
    def skip(area: str, reason: str, required_env: str | None = None):
        if required_env and os.environ.get(required_env):
            pytest.fail(f"{area} cannot run ({required_env} is set): {reason}", pytrace=False)
        request.config.stash[_NOT_RUN][area] = reason
        pytest.skip(f"{area} DID NOT RUN: {reason}")
    return skip
