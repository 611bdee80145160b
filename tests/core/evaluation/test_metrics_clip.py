"""The CLIP feature adapter loads local checkpoints (both layouts) and computes what the
transformers model computes; nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from benchmarks.tiny_models import tiny_clip_text_config
from textloc_core.evaluation import features, metrics

TOKENIZER = Path(__file__).resolve().parents[3] / "textloc_core" / "tinyworld" / "weights" / "tokenizer"

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return CLIPModel(
        CLIPConfig(text_config=tiny_clip_text_config(32, layers=1).to_dict(), vision_config=VISION, projection_dim=16)
    ).eval()


def test_saved_clipmodel_directory(tmp_path, tiny_clip):
    tiny_clip.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, tmp_path / name)
    model = features.ClipFeatureModel.from_directory(tmp_path)
    assert isinstance(model, features.FeatureModel)

    images = torch.rand(3, 3, 48, 40)
    encoded = model.encode_image(images)
    pixels = features.clip_preprocess(images, 32)
    with torch.no_grad():
        pooled = tiny_clip.vision_model(pixel_values=pixels).pooler_output
        expected = tiny_clip.visual_projection(pooled)
    assert encoded.shape == (3, 16)
    torch.testing.assert_close(encoded, expected, rtol=1e-4, atol=1e-5)
    # CLIP-I pair's features (not the paper's CLIP-I): the pooler output itself, the projected model unchanged
    unprojected = model.unprojected()
    torch.testing.assert_close(unprojected.encode_image(images), pooled, rtol=1e-4, atol=1e-5)
    assert unprojected.encode_image(images).shape == (3, 32) and model.encode_image(images).shape == (3, 16)

    text = model.encode_text(["a red star", "a blue ring on grass"])
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    batch = tokenizer(["a red star"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        direct = tiny_clip.text_projection(tiny_clip.text_model(**batch).pooler_output)
    assert text.shape == (2, 16)
    torch.testing.assert_close(text[:1], direct, rtol=1e-4, atol=1e-5)
    # a different prompt gives a different feature: the pooled EOS position is really found
    assert not torch.allclose(text[0], text[1])


def test_separate_towers_and_preprocessor_config(tmp_path, tiny_clip):
    torch.manual_seed(1)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**VISION, "image_size": 24}, projection_dim=16))
    text = CLIPTextModelWithProjection(tiny_clip_text_config(32, layers=1, projection_dim=16))
    vision.save_pretrained(tmp_path / "vision")
    text.save_pretrained(tmp_path / "text")
    shutil.copytree(TOKENIZER, tmp_path / "tokenizer")
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": {"height": 24, "width": 24}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    model = features.ClipFeatureModel.from_directory(tmp_path)
    assert model.image_size == 24 and model.mean == (0.5, 0.5, 0.5)
    assert model.encode_image(torch.rand(2, 3, 50, 50)).shape == (2, 16)
    # CLIP-I of a batch against itself through the real adapter
    images = torch.rand(2, 3, 24, 24)
    assert metrics.clip_i(model, images[:1], images[:1]) == pytest.approx(1.0, abs=1e-6)


def test_missing_directory_and_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        features.ClipFeatureModel.from_directory(tmp_path / "nope")
    with pytest.raises(ValueError, match="expected a saved CLIPModel"):
        features.ClipFeatureModel.from_directory(tmp_path)


def test_clip_preprocess_crops_centre_square():
    images = torch.zeros(1, 3, 20, 40)
    images[..., 10:30] = 1.0  # the centre 20x20 square is white, the sides black
    out = features.clip_preprocess(images, 10, mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == (1, 3, 10, 10)
    assert out.min().item() > 0.9  # only bicubic ringing at the crop edge; the black sides are cut


def test_pickled_weights_are_never_loaded(tmp_path, tiny_clip):
    """Only safetensors weights are read (use_safetensors=True): a folder whose weights exist
    only as a pickle (pytorch_model.bin) is refused, never unpickled (issue 14)."""
    tiny_clip.config.save_pretrained(tmp_path)
    torch.save(tiny_clip.state_dict(), tmp_path / "pytorch_model.bin")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, tmp_path / name)
    with pytest.raises((OSError, ValueError), match="safetensors"):
        features.ClipFeatureModel.from_directory(tmp_path)


def _sharded_clip(folder: Path, tiny_clip) -> Path:
    tiny_clip.save_pretrained(folder, max_shard_size="100KB")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder / "model.safetensors.index.json"


def test_a_sharded_checkpoint_loads_when_its_index_names_only_shards_beside_it(tmp_path, tiny_clip):
    index = _sharded_clip(tmp_path, tiny_clip)
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    model = features.ClipFeatureModel.from_directory(tmp_path)
    assert model.encode_image(torch.rand(1, 3, 32, 32)).shape == (1, 16)


@pytest.mark.parametrize(
    "shard",
    [
        "/etc/passwd",
        "../outside.safetensors",
        "sub/model.safetensors",
        "model-00001-of-00002.bin",
        "/no/such/file.safetensors",
        "link.safetensors",
    ],
)
def test_an_index_naming_files_outside_the_folder_is_refused_with_one_message(tmp_path, tiny_clip, shard):
    folder = tmp_path / "clip"
    index = _sharded_clip(folder, tiny_clip)
    (tmp_path / "outside.safetensors").write_bytes(b"never opened")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = shard
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError) as caught:
        features.ClipFeatureModel.from_directory(folder)
    assert str(caught.value) == (
        f"CLIP directory {str(folder)!r}: model.safetensors.index.json names a shard that is not a .safetensors file in "
        "the folder itself (a path with a separator, '..', another suffix, or a link leading out); keep the index "
        "transformers wrote, whose shards are .safetensors files beside it"
    )


def test_a_pickle_index_is_refused(tmp_path, tiny_clip):
    _sharded_clip(tmp_path, tiny_clip)
    (tmp_path / "pytorch_model.bin.index.json").write_text('{"weight_map": {"a": "/etc/passwd"}}')
    with pytest.raises(ValueError, match="pytorch_model.bin.index.json is the index of pickle weights"):
        features.ClipFeatureModel.from_directory(tmp_path)
