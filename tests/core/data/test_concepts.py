"""ConceptSet helpers: building from ComfyUI tensors, merging concepts, resizing, data hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from textloc_core.data.concepts import Concept, ConceptImage, ConceptSet
from textloc_core.data.readers import read_folder

DOLL = Concept("doll", "<doll>", "doll")
BUCKET = Concept("bucket", "<bucket>", "bucket")


def comfy_batch(count: int = 3, size: tuple[int, int] = (16, 24), seed: int = 0):
    """A ComfyUI IMAGE (B, H, W, 3) of 8-bit photos and two MASKs (B, H, W): left / right halves."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, *size, 3), generator=generator, dtype=torch.uint8)
    images = pixels.to(torch.float32) / 255
    left = torch.zeros(count, *size)
    left[:, :, : size[1] // 2] = 1
    return images, left, 1 - left


def test_from_tensors_makes_one_item_per_image():
    images, left, _ = comfy_batch()
    cs = ConceptSet.from_tensors(images, left * 0.9, DOLL)  # soft values are binarised
    assert cs.concepts == [DOLL] and len(cs.images) == 3
    item = cs.images[1]
    assert item.image.shape == (3, 16, 24) and torch.equal(item.image, images[1].permute(2, 0, 1))
    assert torch.equal(item.masks["doll"], left[1])
    assert item.source == "comfy:IMAGE[1]" and item.mask_sources == {"doll": "MASK[1]"}
    assert torch.equal(ConceptSet.from_tensors(images, left, DOLL, invert=True).images[0].masks["doll"], 1 - left[0])


def test_from_tensors_drops_alpha_and_accepts_a_single_image():
    images, left, _ = comfy_batch(count=1)
    rgba = torch.cat([images, torch.ones(1, 16, 24, 1)], dim=-1)
    cs = ConceptSet.from_tensors(rgba[0], left[0], DOLL)
    assert cs.images[0].image.shape == (3, 16, 24)


def test_from_tensors_accepts_mask_pictures_loaded_as_an_image():
    images, left, _ = comfy_batch()
    as_image = left[..., None].expand(-1, -1, -1, 3).contiguous()
    cs = ConceptSet.from_tensors(images, as_image, DOLL)
    assert torch.equal(cs.images[2].masks["doll"], left[2])


def test_from_tensors_count_mismatch_names_both_counts():
    images, left, _ = comfy_batch(count=3)
    with pytest.raises(ValueError, match=r"IMAGE has 3 image\(s\) but the MASK for concept 'doll' has 2"):
        ConceptSet.from_tensors(images, left[:2], DOLL)


def test_from_tensors_recognises_loadimage_placeholder_mask():
    images, _, _ = comfy_batch(count=1)
    with pytest.raises(ValueError, match="empty 64x64 placeholder.*mask editor"):
        ConceptSet.from_tensors(images, torch.zeros(1, 64, 64), DOLL)


def test_from_tensors_rejects_non_image_shapes():
    with pytest.raises(ValueError, match=r"IMAGE: expected a ComfyUI image batch"):
        ConceptSet.from_tensors(torch.zeros(2, 3, 16, 16), torch.zeros(2, 16, 16), DOLL)


def test_merge_combines_concepts_over_the_same_photos():
    images, left, right = comfy_batch()
    merged = ConceptSet.merge(
        ConceptSet.from_tensors(images, left, DOLL), ConceptSet.from_tensors(images, right, BUCKET)
    )
    assert [c.name for c in merged.concepts] == ["doll", "bucket"]
    for index, item in enumerate(merged.images):
        assert set(item.masks) == {"doll", "bucket"}
        assert torch.equal(item.masks["bucket"], right[index])
    assert merged.indices_with("bucket") == [0, 1, 2]


def test_merge_refuses_different_photos_and_duplicate_concepts():
    images, left, right = comfy_batch()
    other_images, _, _ = comfy_batch(seed=1)
    doll = ConceptSet.from_tensors(images, left, DOLL)
    with pytest.raises(ValueError, match="image 0 differs"):
        ConceptSet.merge(doll, ConceptSet.from_tensors(other_images, right, BUCKET))
    with pytest.raises(ValueError, match="has 2 image"):
        ConceptSet.merge(doll, ConceptSet.from_tensors(images[:2], right[:2], BUCKET))
    with pytest.raises(ValueError, match="concept 'doll' is given twice"):
        ConceptSet.merge(doll, ConceptSet.from_tensors(images, right, DOLL))
    # Merging leaves the inputs untouched.
    assert set(doll.images[0].masks) == {"doll"}


def test_same_photos_and_concat():
    images, left, right = comfy_batch(count=2)
    doll = ConceptSet.from_tensors(images, left, DOLL)
    bucket = ConceptSet.from_tensors(images, right, BUCKET)
    other = ConceptSet.from_tensors(comfy_batch(count=2, seed=3)[0], left, DOLL)
    assert doll.same_photos(bucket) and not doll.same_photos(other)
    both = ConceptSet.concat(doll, other, bucket)
    assert [c.name for c in both.concepts] == ["doll", "bucket"] and len(both.images) == 6
    assert both.indices_with("bucket") == [4, 5]
    with pytest.raises(ValueError, match="concept 'doll' is defined twice differently"):
        ConceptSet.concat(doll, ConceptSet.from_tensors(images, left, Concept("doll", "<doll2>", "doll")))


def test_resized_center_crops_image_and_masks_together():
    image = torch.zeros(3, 20, 40)
    image[0, :, 10:30] = 1.0  # the centre 20x20 square is red
    mask = torch.zeros(20, 40)
    mask[:, 10:30] = 1
    cs = ConceptSet([DOLL], [ConceptImage(image, {"doll": mask}, "x.png")])
    square = cs.resized(10).images[0]
    assert square.image.shape == (3, 10, 10) and square.masks["doll"].shape == (10, 10)
    assert bool((square.masks["doll"] == 1).all())  # only the masked centre survives the crop
    # The red centre fills the crop (the outer columns blend with the black border when downscaling).
    assert torch.allclose(square.image[0, :, 1:-1], torch.ones(10, 8), atol=1e-4)
    assert square.image[0].min() > 0.9
    stretched = cs.resized(10, center_crop=False).images[0]
    assert stretched.masks["doll"].sum() == 50  # half the columns, all the rows
    assert cs.images[0].image.shape == (3, 20, 40)  # the original is kept


def test_data_hash_tracks_every_pixel_and_mask_bit():
    images, left, right = comfy_batch()
    base = ConceptSet.merge(ConceptSet.from_tensors(images, left, DOLL), ConceptSet.from_tensors(images, right, BUCKET))
    digest = base.data_hash()
    assert len(digest) == 64 and digest == base.data_hash()
    flipped = left.clone()
    flipped[2, 5, 5] = 1 - flipped[2, 5, 5]
    assert (
        ConceptSet.merge(
            ConceptSet.from_tensors(images, flipped, DOLL), ConceptSet.from_tensors(images, right, BUCKET)
        ).data_hash()
        != digest
    )
    brighter = images.clone()
    brighter[0, 0, 0, 0] = (brighter[0, 0, 0, 0] * 255 + 1) % 256 / 255
    assert (
        ConceptSet.merge(
            ConceptSet.from_tensors(brighter, left, DOLL), ConceptSet.from_tensors(brighter, right, BUCKET)
        ).data_hash()
        != digest
    )


def test_data_hash_is_the_same_from_files_and_from_comfy_tensors(tmp_path):
    images, left, _ = comfy_batch(count=2)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks" / "doll").mkdir(parents=True)
    for index in range(2):
        pixels = (images[index] * 255).round().to(torch.uint8).numpy()
        # An RGBA photo: the alpha is dropped exactly as ComfyUI's LoadImage drops it.
        rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        Image.fromarray(rgba, "RGBA").save(tmp_path / "images" / f"{index}.png")
        Image.fromarray(left[index].numpy().astype(np.uint8) * 255, "L").save(
            tmp_path / "masks" / "doll" / f"{index}.png"
        )
    from_files = read_folder(tmp_path, concepts=[DOLL])
    assert from_files.data_hash() == ConceptSet.from_tensors(images, left, DOLL).data_hash()
