"""The shipped TinyWorld weights: judge accuracy on fresh renders, pipeline loading, size budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textloc_core import tinyworld
from textloc_core.tinyworld import model_configs as mc
from textloc_core.tinyworld.judge import N_COLOUR_SHAPE, colour_shape_index
from tinyworld_build.train_world import judge_accuracy, render_dataset, to_float

# seeds no training or threshold choice used (training: 0, 1000, 2000; threshold: 12345)
FRESH_SEED = 777


def test_judge_is_accurate_on_fresh_renders():
    images, specs, _ = render_dataset(300, FRESH_SEED, any_kind=True, workers=1)
    judge = tinyworld.load_judge("cpu")
    acc = judge_accuracy(judge, images, specs, torch.device("cpu"))
    assert acc["background"] >= 0.95, acc
    assert acc["object_recall"] >= 0.95, acc
    assert acc["textures_exact"] >= 0.95, acc
    # every object of every image named exactly, no extra one: the strictest reading
    assert acc["objects_exact"] >= 0.90, acc
    # per-decision accuracy over all (colour, shape) labels
    verdicts = judge(to_float(images, "cpu"))
    right = 0
    for v, spec in zip(verdicts, specs):
        truth = np.zeros(N_COLOUR_SHAPE, bool)
        for o in spec.objects:
            truth[colour_shape_index(o.kind.colour, o.kind.shape)] = True
        right += ((v.object_probs > judge.threshold) == truth).sum()
    assert right / (len(specs) * N_COLOUR_SHAPE) >= 0.995


def test_judge_sees_held_out_concepts():
    judge = tinyworld.load_judge("cpu")
    hits = 0
    for concept in tinyworld.HELD_OUT:
        for seed in range(4):
            scene = tinyworld.render_scene(objects=[concept.kind], background="grass", seed=seed)
            v = judge(torch.from_numpy(scene.image).permute(2, 0, 1)[None])[0]
            hits += v.has(concept.kind, check_texture=True)
    assert hits >= 11, f"judge recognised {hits}/12 held-out concept renders"


def test_judge_rejects_bad_images():
    judge = tinyworld.load_judge("cpu")
    with pytest.raises(ValueError, match="RGB"):
        judge(torch.rand(2, 1, 64, 64))


def test_pipeline_loads_offline_and_samples_64px():
    pipe = tinyworld.load_pipeline("cpu")
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == mc.VAE_SCALE_FACTOR
    assert pipe.tokenizer.model_max_length == mc.MAX_TOKENS
    out = pipe(
        "a red star on grass",
        num_inference_steps=2,
        guidance_scale=3.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 3, 64, 64)
    assert torch.isfinite(out.images).all()


def test_vae_latents_suit_sd15_scaling():
    """The VAE was rescaled so latents x 0.18215 have roughly unit spread (ComfyUI's SD15 format)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tinyworld.weights_dir() / "vae", dtype=torch.float32).eval()
    assert vae.config.scaling_factor == pytest.approx(mc.SD_SCALING_FACTOR)
    images, _, _ = render_dataset(32, FRESH_SEED, any_kind=False, workers=1)
    x = to_float(images, "cpu")
    with torch.no_grad():
        z = vae.encode(x * 2 - 1).latent_dist.mean
        recon = (vae.decode(z).sample + 1) / 2
    assert z.shape == (32, 4, 16, 16)
    assert 0.6 < float((z * mc.SD_SCALING_FACTOR).std()) < 1.5
    assert float((recon - x).abs().mean()) < 0.08


def test_weights_fit_the_budget_and_record_their_build():
    root = tinyworld.weights_dir()
    total = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
    assert total <= 25 * 1024 * 1024, f"{total / 2**20:.1f} MB of weights exceeds 25 MB"
    build = json.loads((root / "tinyworld_build.json").read_text())
    assert build["seed"] == 0 and "steps_run" in build
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
