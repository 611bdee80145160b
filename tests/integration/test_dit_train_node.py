"""TextLoc Train with Flux.1- and SD3.5-architecture models in a real ComfyUI server: the node runs
on the tiny models of ``tiny_dit_comfy`` (test-only loader node "TextLoc Test Tiny DiT Loader"),
writes an adapter keyed as the diffusers backend keys it, resumes bit-identically from its
checkpoints, stops on Cancel keeping the last checkpoint, and trains an fp8 base; Attention
Preview shows the maps of words on these models.
"""

from __future__ import annotations

import uuid

import pytest
import tiny_dit_comfy as tiny
import torch
from comfy_server import cancel_once_checkpointed
from tinyworld_graphs import TINYWORLD, attention_preview, concept_set, train_node

from textloc_core.adapters.adapter import load_adapter
from textloc_core.training import checkpoint as ckpt
from textloc_harness.comfy_launcher import ComfyError

KV_BLOCKS = {
    "flux": [f"double_blocks.{i}.txt_attn" for i in range(tiny.FLUX_DOUBLE_BLOCKS)],
    "sd3": [f"joint_blocks.{i}.context_block.attn" for i in range(tiny.SD3_JOINT_BLOCKS)],
}


def _train_graph(name: str, family: str, steps: int, checkpoint_every: int = 1) -> dict:
    """Tiny ``family`` model + two TinyWorld photos with masks -> TextLoc Train (hard, batch 1)."""
    loader = {"family": family, "seed": 0, "weight_dtype": "default"}
    return {
        "1": {"class_type": "TextLocTestTinyDiTLoader", "inputs": loader},
        "2": concept_set(images=2),
        "3": train_node(["2", 0], name, steps=steps, batch=1, checkpoint_every=checkpoint_every),
    }


def _adapter(comfy, name: str):
    return load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors")


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_train_runs_on_flux_and_sd3_and_resumes_bit_identically(comfy, family):
    straight, resumed = (f"{family}_{what}_{uuid.uuid4().hex[:6]}" for what in ("straight", "resumed"))
    comfy.run(_train_graph(straight, family, steps=3), timeout=900)
    comfy.run(_train_graph(resumed, family, steps=2), timeout=900)
    comfy.run(_train_graph(resumed, family, steps=3), timeout=900)  # resume on (default): from step 2
    a, b = _adapter(comfy, straight), _adapter(comfy, resumed)
    assert a.metadata.steps == b.metadata.steps == 3 and a.metadata.guidance == "hard"
    assert sorted(a.kv_deltas) == sorted(f"{block}.{p}" for block in KV_BLOCKS[family] for p in ("to_k", "to_v"))
    assert all(float(d.abs().sum()) > 0 for d in a.kv_deltas.values())
    (token,) = a.tokens
    t5 = tiny.FLUX_T5 if family == "flux" else tiny.SD3_T5
    clip_width = tiny.WIDTH_L if family == "flux" else tiny.WIDTH_L + tiny.WIDTH_G
    assert a.token_embeddings[token].shape == (1, t5 + clip_width)
    for key in a.kv_deltas:
        assert torch.equal(a.kv_deltas[key], b.kv_deltas[key]), key
    assert torch.equal(a.token_embeddings[token], b.token_embeddings[token])


def test_cancel_stops_a_flux_run_and_keeps_its_checkpoint(comfy):
    name = f"flux_cancel_{uuid.uuid4().hex[:6]}"
    runs = comfy.layout.models / "textloc" / "checkpoints" / name
    prompt_id = comfy.queue(_train_graph(name, "flux", steps=1000))
    folder, seen = cancel_once_checkpointed(comfy, prompt_id, runs)
    kept = ckpt.load_latest_checkpoint(folder)
    assert kept is not None and seen <= kept.step <= seen + 2, (seen, kept)
    assert not (comfy.layout.models / "textloc" / f"{name}.safetensors").exists()


def test_train_refuses_a_flux_clip_without_t5_before_training(comfy):
    """A CLIP without T5 (here: TinyWorld's CLIP-L) is named, with the loader that gives T5."""
    name = f"flux_no_t5_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name, "flux", steps=1)
    graph["9"] = TINYWORLD
    graph["3"]["inputs"]["clip"] = ["9", 1]
    with pytest.raises(ComfyError, match="DualCLIPLoader"):
        comfy.run(graph, timeout=300)


def test_an_fp8_flux_base_trains_in_the_node(comfy):
    name = f"flux_fp8_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name, "flux", steps=1)
    graph["1"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    comfy.run(graph, timeout=900)
    adapter = _adapter(comfy, name)
    assert adapter.metadata.steps == 1 and all(torch.isfinite(d).all() for d in adapter.kv_deltas.values())


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_attention_preview_node_shows_a_words_map_on_flux_and_sd3(comfy, family):
    prefix = f"dit_preview_{family}_{uuid.uuid4().hex[:6]}"
    loader = {"family": family, "seed": 0, "weight_dtype": "default"}
    graph = {
        "1": {"class_type": "TextLocTestTinyDiTLoader", "inputs": loader},
        "2": attention_preview("a star on grass", seed=1, steps=2, tokens="star, grass", cfg=1.0),
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": prefix}},
    }
    result = comfy.run(graph, timeout=600)
    assert len([p for p in result.all_files() if p.name.startswith(prefix)]) == 2  # one overlay per word
