"""The researcher API end to end on a tiny model: train, adapter out and back in, generate
with token maps, and the base model untouched afterwards."""

import pytest
import torch

from textloc_core import api
from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet


def _concepts():
    torch.manual_seed(0)
    mask = torch.zeros(16, 16)
    mask[4:12, 2:10] = 1
    return ConceptSet([Concept("doll", "<doll1>", "doll")], [ConceptImage(torch.rand(3, 16, 16), {"doll": mask})])


def test_train_save_load_generate_with_maps(tiny_bundle, tmp_path):
    concepts = _concepts()
    config = api.TrainConfig(steps=2, learning_rate=1e-2, prior_images=0, instance_batch=1)
    result = api.train(tiny_bundle, concepts, config)
    adapter = api.make_adapter(result, concepts, tiny_bundle)
    path = api.save_adapter(adapter, tmp_path / "doll.safetensors")
    loaded = api.load_adapter(path)
    assert loaded.metadata.base_fingerprint == tiny_bundle.fingerprint and loaded.tokens == ["<doll1>"]

    kwargs = dict(steps=3, guidance_scale=5.0, seed=7, size=(16, 16), num_images=2, maps_for=["<doll1>"])
    base = api.generate(tiny_bundle, "photo of a doll", steps=3, seed=7, size=(16, 16), num_images=2)
    from_result = api.generate(tiny_bundle, "photo of a <doll1> doll", adapters=[result], **kwargs)
    from_file = api.generate(tiny_bundle, "photo of a <doll1> doll", adapters=[loaded], **kwargs)

    assert from_result.images.shape == (2, 3, 16, 16)
    assert torch.equal(from_result.latents, from_file.latents)  # the file restores the model exactly
    doll_map = from_file.token_maps["<doll1>"]
    # the tiny UNet has two attention resolutions (8 and 4), and both are kept (maps.choose_layers)
    assert doll_map.shape == (2, 8, 8) and doll_map.min() >= 0 and doll_map.max() <= 1
    # the adapter is gone once generate returns: the plain prompt samples as before
    again = api.generate(tiny_bundle, "photo of a doll", steps=3, seed=7, size=(16, 16), num_images=2)
    assert torch.equal(base.latents, again.latents)
    # strength 0 is the base model
    zero = api.generate(
        tiny_bundle, "photo of a doll", adapters=[loaded], strengths=[0.0], steps=3, seed=7, size=(16, 16), num_images=2
    )
    assert torch.allclose(zero.latents, base.latents, atol=1e-6)


def test_maps_find_the_attention_levels_once_per_latent_size(tiny_bundle, monkeypatch):
    """generate(maps_for=...) walks the UNet once per latent size to find its attn2 levels; later
    generations of that size reuse the walk, and give the same maps as the first."""
    concepts = _concepts()
    result = api.train(tiny_bundle, concepts, api.TrainConfig(steps=1, prior_images=0, instance_batch=1))
    calls = []
    predict = tiny_bundle.denoiser.predict
    monkeypatch.setattr(tiny_bundle.denoiser, "predict", lambda *a: calls.append(a[0].shape) or predict(*a))

    def maps(size):
        calls.clear()
        out = api.generate(
            tiny_bundle,
            "photo of a <doll1> doll",
            adapters=[result],
            steps=2,
            seed=3,
            size=size,
            maps_for=["<doll1>"],
            guidance_scale=5.0,
        )
        return out.token_maps["<doll1>"], len(calls)

    first, first_calls = maps((24, 24))  # a size no other test generates at
    second, second_calls = maps((24, 24))
    assert (first_calls, second_calls) == (3, 2)  # 2 sampling steps, plus the walk the first time
    assert torch.equal(first, second)
    _, other_size = maps((40, 40))
    assert other_size == 3


def test_maps_for_unknown_token_is_explained(tiny_bundle):
    with pytest.raises(ValueError, match="not identifier tokens"):
        api.generate(tiny_bundle, "photo of a doll", maps_for=["<cat9>"], steps=1, size=(16, 16))


def test_load_model_reads_a_local_diffusers_folder(tiny_parts, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_parts,
        scheduler=DDIMScheduler(
            prediction_type="v_prediction", clip_sample=False, beta_schedule="scaled_linear", steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "tiny-sd")
    bundle = api.load_model(tmp_path / "tiny-sd")
    from textloc_core.backends.diffusers_backend import bundle_from_diffusers

    assert bundle.fingerprint == bundle_from_diffusers(**tiny_parts).fingerprint
    assert bundle.denoiser.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="does not exist"):
        api.load_model(tmp_path / "missing")


def test_adapters_are_checked_against_the_model_as_the_apply_node_does(tiny_bundle):
    concepts = _concepts()
    result = api.train(tiny_bundle, concepts, api.TrainConfig(steps=1, prior_images=0, instance_batch=1))
    adapter = api.make_adapter(result, concepts, tiny_bundle)
    adapter.metadata.base_fingerprint = "0123456789abcdef"  # trained on other weights of this architecture
    kwargs = dict(steps=1, size=(16, 16))
    with pytest.raises(ValueError, match="trained on base model 0123456789abcdef.*allow_base_mismatch"):
        api.generate(tiny_bundle, "a <doll1> doll", adapters=[adapter], **kwargs)
    assert (
        api.generate(
            tiny_bundle, "a <doll1> doll", adapters=[adapter], allow_base_mismatch=True, **kwargs
        ).images.shape[0]
        == 1
    )
    key = next(iter(result.kv_deltas))
    result.kv_deltas[key] = torch.zeros(3, 3)  # a layer of another shape
    with pytest.raises(ValueError, match="another model architecture"), api.applied(tiny_bundle, [result]):
        pass
