"""Issue 14, core side: cancel inside long loops, resume refusals before any set-up, one
image-side rule, pickles named .safetensors, the comfy embedding format constant."""

from __future__ import annotations

import pickle

import pytest
import torch
from test_trainer import _config

from textloc_core.adapters import formats
from textloc_core.data import safe_io
from textloc_core.data.validation import ConceptSetError, validate_concept_set
from textloc_core.sampling.schedule import ddim_sample
from textloc_core.stop import Cancelled
from textloc_core.training import loop, prior, setup
from textloc_core.training.loop import train


class StopAfter:
    """should_stop that says stop from its ``n``-th call on, counting the calls."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


# ----------------------------------------------------------------------------- cancel


def test_ddim_sample_polls_before_every_step(tiny_bundle):
    text, denoiser = tiny_bundle.text, tiny_bundle.denoiser
    context = text.encode(["a doll"], {}).context
    noise = torch.randn(1, denoiser.latent_channels, 4, 4)
    stop = StopAfter(2)
    with pytest.raises(Cancelled, match="at sampling step 2 of 5"):
        ddim_sample(denoiser, context, None, noise, steps=5, should_stop=stop)
    assert stop.calls == 3
    assert ddim_sample(denoiser, context, None, noise, steps=2).shape == noise.shape  # default: never stops


def test_prior_generation_stops_within_a_batch(tiny_bundle, two_concepts):
    config = _config(steps=2, lambda_prior=1.0, prior_images=2, prior_sampling_steps=6, seed=1234)
    stop = StopAfter(3)  # one poll before the batch, then one per sampling step
    with pytest.raises(Cancelled, match="sampling step 2 of 6 of prior images 0-2 of 2"):
        prior.prior_latents(tiny_bundle, "a fresh prompt 1234", 2, (4, 4), config, should_stop=stop)


def test_vae_encoding_is_cancellable(tiny_bundle, two_concepts, monkeypatch):
    monkeypatch.setattr(setup, "ENCODE_BATCH", 1)
    encoded = []
    original = tiny_bundle.denoiser.encode_images
    monkeypatch.setattr(tiny_bundle.denoiser, "encode_images", lambda x: encoded.append(len(x)) or original(x))
    flags = [p.requires_grad for p in tiny_bundle.denoiser.unet.parameters()]
    result = train(tiny_bundle, two_concepts, _config(steps=3), should_stop=lambda: len(encoded) >= 2)
    assert result.stopped_early and result.steps_done == 0 and result.history == []
    assert len(encoded) == 2  # stopped between VAE batches, before the last photo
    assert [p.requires_grad for p in tiny_bundle.denoiser.unet.parameters()] == flags


# ----------------------------------------------------------------------------- resume


def _no_setup(*args, **kwargs):
    raise AssertionError("set-up (VAE encoding, prior generation) ran before the checkpoint was checked")


def test_other_settings_are_refused_before_setup(tiny_bundle, two_concepts, tmp_path, monkeypatch):
    train(tiny_bundle, two_concepts, _config(steps=2, checkpoint_every=1), checkpoint_dir=tmp_path)
    monkeypatch.setattr(loop, "setup", _no_setup)
    with pytest.raises(ValueError, match=r"other settings \(learning_rate"):
        train(tiny_bundle, two_concepts, _config(steps=2, learning_rate=0.5), checkpoint_dir=tmp_path, resume=True)


def test_fewer_steps_than_the_checkpoint_are_refused(tiny_bundle, two_concepts, tmp_path, monkeypatch):
    train(tiny_bundle, two_concepts, _config(steps=3, checkpoint_every=1), checkpoint_dir=tmp_path)
    monkeypatch.setattr(loop, "setup", _no_setup)
    with pytest.raises(ValueError, match=r"already at step 3, more than steps=2: set steps to 3 or more"):
        train(tiny_bundle, two_concepts, _config(steps=2), checkpoint_dir=tmp_path, resume=True)


def test_same_or_more_steps_still_resume(tiny_bundle, two_concepts, tmp_path):
    train(tiny_bundle, two_concepts, _config(steps=2, checkpoint_every=1), checkpoint_dir=tmp_path)
    assert train(tiny_bundle, two_concepts, _config(steps=2), checkpoint_dir=tmp_path, resume=True).steps_done == 2
    assert train(tiny_bundle, two_concepts, _config(steps=3), checkpoint_dir=tmp_path, resume=True).steps_done == 3


# ----------------------------------------------------------------------------- smaller


def test_one_side_rule_named_in_validation(tiny_bundle, two_concepts):
    multiple = setup.size_multiple(tiny_bundle.denoiser)
    assert multiple == tiny_bundle.denoiser.vae_scale_factor * 2 ** sum(
        1 for m in tiny_bundle.denoiser.unet.modules() if type(m).__name__ in ("Downsample2D", "Downsample")
    )
    side = multiple + multiple // 2  # the model cannot take it
    assert side % multiple
    with pytest.raises(
        ConceptSetError,
        match=rf"resolution {side} must be a positive multiple of {multiple} pixels \(the VAE's factor times",
    ):
        validate_concept_set(two_concepts, resolution=side, size_multiple=multiple)
    with pytest.raises(ConceptSetError, match=rf"resolution {side} must be a positive multiple of {multiple} pixels"):
        train(tiny_bundle, two_concepts, _config(steps=1, resolution=side))
    two_concepts.images = [item for item in two_concepts.images[:1]]
    two_concepts.images[0].image = two_concepts.images[0].image[:, :side, :side]
    two_concepts.images[0].masks = {k: v[:side, :side] for k, v in two_concepts.images[0].masks.items()}
    with pytest.raises(
        ConceptSetError, match=rf"image 0 is {side}x{side}: photo sides must be a positive multiple of {multiple}"
    ):
        train(tiny_bundle, two_concepts, _config(steps=1))


def test_a_set_checked_for_the_run_is_not_checked_again(tiny_bundle, two_concepts, monkeypatch):
    """A host that checks the set before loading the model (the Train node) passes the
    ``CheckedConceptSet`` on, and training does not check it a second time; a set checked for
    another side, or without the vocabulary check, is checked again."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("resolution"))
        return validate_concept_set(*args, **kwargs)

    monkeypatch.setattr(setup, "validate_concept_set", counted)
    rule = setup.size_multiple(tiny_bundle.denoiser)
    checked = validate_concept_set(two_concepts, vocabulary_check=tiny_bundle.text.check_token, size_multiple=rule)
    assert train(tiny_bundle, checked, _config(steps=1)).steps_done == 1
    assert calls == []
    train(tiny_bundle, two_concepts, _config(steps=1))
    unchecked_words = validate_concept_set(two_concepts, size_multiple=rule)
    train(tiny_bundle, unchecked_words, _config(steps=1))
    train(tiny_bundle, checked, _config(steps=1, resolution=rule))
    assert calls == [None, None, rule]


def test_pickle_named_safetensors_is_called_a_pickle(tmp_path):
    for name, write in (
        ("zip.safetensors", lambda p: torch.save({"a": torch.zeros(2)}, p)),
        ("bare.safetensors", lambda p: p.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=2))),
    ):
        path = tmp_path / name
        write(path)
        for call in (safe_io.load_tensors, safe_io.read_metadata):
            with pytest.raises(ValueError, match="is a pickle file, not safetensors; textloc never unpickles"):
                call(path)
    real = tmp_path / "real.safetensors"
    safe_io.save_tensors(real, {"a": torch.randn(64)})
    real.write_bytes(real.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        safe_io.load_tensors(real)


def test_comfy_embedding_format_constant(tmp_path):
    path = formats.write_comfy_embedding(torch.randn(1, 8), tmp_path / "e.safetensors", {"clip_l": 8})
    assert safe_io.read_metadata(path)["format"] == formats.COMFY_EMBEDDING_FORMAT == "textloc.comfy_embedding"
