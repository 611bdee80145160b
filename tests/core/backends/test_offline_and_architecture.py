"""Two promises users rely on: nothing ever reaches the network, and a model the method
cannot train (no text cross-attention) is refused up front with a readable error."""

import socket

import pytest
import torch

from textloc_core import api
from textloc_core.backends.diffusers_backend import bundle_from_diffusers
from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.training.config import TrainConfig
from textloc_core.training.loop import train


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test loudly."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("textloc tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_hub_model_id_is_refused_not_downloaded(no_network):
    with pytest.raises(ValueError, match="does not exist: give a diffusers folder"):
        api.load_model("runwayml/stable-diffusion-v1-5")


def test_training_and_generation_never_touch_the_network(no_network, tiny_bundle):
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    images = [
        ConceptImage(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)), {"doll": mask})
        for i in range(2)
    ]
    concepts = ConceptSet([Concept("doll", "<doll1>", "doll")], images)
    config = TrainConfig(steps=2, learning_rate=1e-3, prior_images=2, prior_sampling_steps=2)
    result = train(tiny_bundle, concepts, config)
    adapter = api.make_adapter(result, concepts, tiny_bundle)
    out = api.generate(tiny_bundle, "a <doll1> doll", adapters=[adapter], steps=2, maps_for=["<doll1>"])
    assert torch.isfinite(out.images).all() and "<doll1>" in out.token_maps


def test_a_unet_without_cross_attention_is_refused(tiny_parts, tiny_unet_builder):
    unet = tiny_unet_builder(cross_attention=False)
    with pytest.raises(ValueError, match=r"no cross-attention \(attn2\) layers found.*Stable-Diffusion-family"):
        bundle_from_diffusers(**{**tiny_parts, "unet": unet})
