"""The TinyWorld adapter the pack ships (textloc_core/tinyworld/adapters/, made by
scripts/build_shipped_adapter.py): small, what the shipped train workflow trains, named by the
shipped generate workflow, and fitting the shipped TinyWorld weights (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch

from textloc_core import api, tinyworld
from textloc_core.adapters.adapter import load_adapter
from textloc_core.adapters.composition import check_compatible
from textloc_core.backends.diffusers_backend import bundle_from_diffusers
from textloc_core.backends.fingerprint import canonical_layers, kv_weights_of
from textloc_core.training.config import TrainConfig
from textloc_harness.comfy_launcher import PACK_ROOT, load_workflow

ADAPTER = tinyworld.shipped_adapters_dir() / "tinyworld_pair.safetensors"
API_WORKFLOWS = PACK_ROOT / "workflows" / "api"


def _inputs(workflow: str, class_type: str) -> list[dict]:
    graph = load_workflow(API_WORKFLOWS / workflow)
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(ADAPTER)  # verifies the checksum and the format


def test_shipped_adapter_is_small(adapter):
    assert ADAPTER.stat().st_size < 1_000_000, "keep the shipped adapter small (it is in git)"


def test_it_is_what_the_shipped_train_workflow_trains(adapter):
    (train,) = _inputs("train_multi_concept_api.json", "TextLocTrain")
    assert ADAPTER.stem == train["adapter_name"]
    assert adapter.metadata.guidance == train["guidance"] and adapter.metadata.steps == train["steps"]
    config = TrainConfig.from_json(adapter.metadata.train_config)
    assert config.attention_weight_mode == train["attention_weight_mode"]
    assert config.learning_rate == train["learning_rate"] and config.seed == train["seed"]
    tokens = [c["token"] for c in _inputs("train_multi_concept_api.json", "TextLocConceptFromMask")]
    assert sorted(adapter.tokens) == sorted(tokens)


def test_the_generate_workflow_names_it(adapter):
    (apply,) = _inputs("generate_with_adapter_api.json", "TextLocApplyAdapter")
    assert apply["adapter_file"] == ADAPTER.name
    prompts = [n["text"] for n in _inputs("generate_with_adapter_api.json", "CLIPTextEncode")]
    assert all(token in prompts[0] for token in adapter.tokens)


def test_it_fits_the_shipped_weights_and_its_tokens_attend(adapter):
    bundle = bundle_from_diffusers(tinyworld.load_pipeline("cpu"))
    # what TextLoc Apply Adapter checks: same architecture, same base fingerprint
    check_compatible(adapter, kv_weights_of(canonical_layers(bundle.denoiser)), bundle.fingerprint)
    prompt = "a <dotstar1> star and a <circle1> circle on sand"
    out = api.generate(bundle, prompt, adapters=[adapter], steps=2, seed=0, maps_for=adapter.tokens)
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
    assert all(float(m.max() - m.min()) > 0 for m in out.token_maps.values()), "blank attention maps"
