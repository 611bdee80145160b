"""What a concept folder may cost to read: pixels per file from the header before decoding
(decompression bombs refused, large photos decoded reduced), photos and concepts per set,
pixels per set, Cancel before each photo, and no server path in Pillow's messages."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from textloc_core.data import imaging, layout
from textloc_core.data.readers import read_folder, read_manifest
from textloc_core.stop import Cancelled


def _folder(root, photos: dict[str, np.ndarray], concept: str = "thing"):
    (root / "images").mkdir(parents=True)
    (root / "masks" / concept).mkdir(parents=True)
    for stem, pixels in photos.items():
        Image.fromarray(pixels).save(root / "images" / f"{stem}.png")
        mask = np.zeros(pixels.shape[:2], np.uint8)
        mask[: pixels.shape[0] // 2, : pixels.shape[1] // 2] = 255
        Image.fromarray(mask).save(root / "masks" / concept / f"{stem}.png")
    return root


def test_pixel_limits_follow_the_resolution():
    assert imaging.pixel_limit(None) == imaging.pixel_limit(0) == imaging.DEFAULT_MAX_PIXELS == 4096 * 4096
    assert imaging.pixel_limit(512) == imaging.DEFAULT_MAX_PIXELS
    assert imaging.pixel_limit(768) == (8 * 768) ** 2
    assert imaging.pixel_limit(2048) == imaging.MAX_PIXELS == 8192 * 8192
    assert imaging.reduce_factor(1000, 1000, 512) == 1 and imaging.reduce_factor(4096, 3000, 512) == 2
    assert imaging.reduce_factor(8192, 8192, 512) == 8 and imaging.reduce_factor(8192, 8192, None) == 1


@pytest.mark.parametrize("resolution", [None, 512])
def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file_and_limit(tmp_path, constant_png, resolution):
    root = _folder(tmp_path / "set", {"0": np.full((64, 64, 3), 90, np.uint8)})
    constant_png(root / "images" / "1.png", 12000, 12000)
    constant_png(root / "masks" / "thing" / "1.png", 12000, 12000, value=255, gray=True)
    assert (root / "images" / "1.png").stat().st_size < 600_000
    began = time.monotonic()
    with pytest.raises(ValueError) as caught:
        read_folder(root, resolution=resolution)
    message = str(caught.value)
    assert "images/1.png is 12000x12000 (144.0 megapixels), above the limit of 16.8 megapixels" in message, message
    assert str(tmp_path) not in message
    assert time.monotonic() - began < 5  # nothing was decoded


def test_a_large_photo_is_decoded_reduced_and_matches_the_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = np.kron(small, np.ones((16, 16, 1), np.uint8))  # 1024 x 1024, smooth at 64 px
    root = _folder(tmp_path / "set", {"0": big})
    reduced = read_folder(root, resolution=64).images[0]
    full = imaging.open_picture(root / "images" / "0.png", "0.png")
    assert imaging.reduce_factor(1024, 1024, 64) == 8
    expected, _ = imaging.fit_pair(imaging.picture_to_image(full), {}, 64)
    assert reduced.image.shape == (3, 64, 64)
    assert (reduced.image - expected).abs().mean() < 0.02  # measured 0.013 (of 1): both are antialiased
    assert torch.equal(reduced.masks["thing"][:32, :32], torch.ones(32, 32)) and reduced.masks["thing"].sum() == 32 * 32


def test_manifest_entries_and_concepts_are_limited_before_any_photo_is_read(tmp_path):
    root = _folder(tmp_path / "set", {"0": np.full((64, 64, 3), 90, np.uint8)})
    entry = {"file": "images/0.png", "masks": {"thing": "masks/thing/0.png"}}
    manifest = root / "textloc.json"
    manifest.write_text(json.dumps({"concepts": [{"name": "thing"}], "images": [entry] * (layout.MAX_IMAGES + 1)}))
    with pytest.raises(
        ValueError,
        match=rf"manifest textloc.json has {layout.MAX_IMAGES + 1} images, more than the "
        rf"{layout.MAX_IMAGES} one concept set may hold",
    ):
        read_manifest(manifest, resolution=64)
    concepts = [{"name": f"c{i}"} for i in range(layout.MAX_CONCEPTS + 1)]
    manifest.write_text(json.dumps({"concepts": concepts, "images": [entry]}))
    with pytest.raises(ValueError, match=rf"has {layout.MAX_CONCEPTS + 1} concepts"):
        read_manifest(manifest, resolution=64)


def test_the_same_small_file_listed_many_times_at_a_large_resolution_hits_the_set_budget(tmp_path):
    root = _folder(tmp_path / "set", {"0": np.full((64, 64, 3), 90, np.uint8)})
    entry = {"file": "images/0.png", "masks": {"thing": "masks/thing/0.png"}}
    manifest = root / "textloc.json"
    manifest.write_text(json.dumps({"concepts": [{"name": "thing"}], "images": [entry] * 500}))
    fits = layout.MAX_SET_PIXELS // (2048 * 2048)
    with pytest.raises(
        ValueError, match=r"images/0.png: the photos read so far and this one hold more than 33.6 megapixels"
    ):
        read_manifest(manifest, resolution=2048)
    manifest.write_text(json.dumps({"concepts": [{"name": "thing"}], "images": [entry] * fits}))
    assert len(read_manifest(manifest, resolution=2048).images) == fits


def test_cancel_is_checked_before_each_photo(tmp_path):
    """The readers poll the host's ``should_stop`` before each photo and stop with the core's
    one stop, ``Cancelled``, naming the photo they had reached."""
    root = _folder(tmp_path / "set", {str(i): np.full((16, 16, 3), 20 * i, np.uint8) for i in range(5)})
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(Cancelled, match="before reading photo 2"):
        read_folder(root, resolution=16, should_stop=should_stop)
    assert len(calls) == 3
    assert len(read_folder(root, resolution=16, should_stop=lambda: False).images) == 5


def test_pillow_errors_name_the_file_relative_to_the_set(tmp_path):
    root = _folder(tmp_path / "set", {"0": np.full((16, 16, 3), 90, np.uint8)})
    (root / "images" / "0.png").write_bytes(b"not a picture at all")
    with pytest.raises(ValueError) as caught:
        read_folder(root)
    assert "images/0.png is not a readable image" in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_merge_key_chains_in_yaml_load_in_linear_time():
    """PyYAML before 6.0.4 expands ``<<: [*a, *a]`` chains exponentially (a 1 KB manifest took
    hours): the floor is 6.0.4, and this holds the installed version to it."""
    import time

    import yaml

    lines = ["a0: &a0 {x: 1}"] + [f"a{i}: &a{i}\n  <<: [*a{i - 1}, *a{i - 1}]\n  y{i}: 1" for i in range(1, 40)]
    began = time.monotonic()
    loaded = yaml.safe_load("\n".join(lines))
    assert loaded["a39"]["x"] == 1 and time.monotonic() - began < 5
