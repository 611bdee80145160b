"""Class-prior latents: generated once by the base model, cached on disk under a key of
everything that determines them, and reused."""

import torch

from textloc_core.training import prior
from textloc_core.training.config import TrainConfig


def test_prior_latents_are_cached_and_keyed(tiny_bundle, tmp_path):
    config = TrainConfig(prior_sampling_steps=2, seed=4)
    prior._MEMORY.clear()
    first = prior.prior_latents(tiny_bundle, "doll", 3, (8, 8), config, cache_dir=tmp_path)
    files = list(tmp_path.glob("prior-*.safetensors"))
    assert first.shape == (3, 4, 8, 8) and torch.isfinite(first).all() and len(files) == 1

    prior._MEMORY.clear()  # a new process: read back from disk, not regenerated
    mtime = files[0].stat().st_mtime_ns
    again = prior.prior_latents(tiny_bundle, "doll", 3, (8, 8), config, cache_dir=tmp_path)
    assert torch.equal(first, again) and files[0].stat().st_mtime_ns == mtime

    # the k-th image does not depend on how many are asked for
    prior._MEMORY.clear()
    five = prior.prior_latents(tiny_bundle, "doll", 5, (8, 8), config)
    assert torch.allclose(five[:3], first, atol=1e-6)
    keys = {
        prior.prior_key(tiny_bundle.fingerprint, "doll", 3, (8, 8), config),
        prior.prior_key(tiny_bundle.fingerprint, "bucket", 3, (8, 8), config),
        prior.prior_key("other-model", "doll", 3, (8, 8), config),
        prior.prior_key(tiny_bundle.fingerprint, "doll", 3, (8, 8), TrainConfig(prior_sampling_steps=2, seed=5)),
    }
    assert len(keys) == 4


def test_corrupt_cache_file_is_regenerated(tiny_bundle, tmp_path):
    config = TrainConfig(prior_sampling_steps=2)
    prior._MEMORY.clear()
    first = prior.prior_latents(tiny_bundle, "cup", 2, (8, 8), config, cache_dir=tmp_path)
    path = next(tmp_path.glob("prior-*.safetensors"))
    path.write_bytes(path.read_bytes()[:50])
    prior._MEMORY.clear()
    assert torch.equal(prior.prior_latents(tiny_bundle, "cup", 2, (8, 8), config, cache_dir=tmp_path), first)


def test_the_in_process_cache_keeps_only_the_most_recently_used_sets(monkeypatch):
    monkeypatch.setattr(prior, "_MEMORY", {})
    for index in range(prior.MEMORY_ENTRIES + 3):
        prior.remember(f"k{index}", torch.zeros(2, 4, 8, 8))
    prior.remember("k4", prior._MEMORY["k4"])  # used again: it survives the next additions
    prior.remember("new", torch.zeros(2, 4, 8, 8))
    assert len(prior._MEMORY) == prior.MEMORY_ENTRIES and "k4" in prior._MEMORY and "k0" not in prior._MEMORY
    assert list(prior._MEMORY)[-2:] == ["k4", "new"]
    # a byte bound too: one set larger than the bound is not kept at all
    monkeypatch.setattr(prior, "MEMORY_BYTES", 1000)
    prior.remember("huge", torch.zeros(1000))
    assert "huge" not in prior._MEMORY and sum(t.nbytes for t in prior._MEMORY.values()) <= 1000
