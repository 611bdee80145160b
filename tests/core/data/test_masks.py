"""Masks: every encoding a user may hand over gives the same binary mask; resizing keeps meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from textloc_core.data.masks import mask_area, mask_coverage, mask_to_grid, resize_mask, to_binary_mask

binary_planes = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(lambda hw: arrays(np.bool_, hw))


def encodings(plane: np.ndarray) -> dict[str, object]:
    """The same drawing in every encoding the pack accepts (1 = concept)."""
    u8 = plane.astype(np.uint8) * 255
    h, w = plane.shape
    rgb = np.stack([u8, u8, u8], axis=-1)
    red = np.zeros((h, w, 3), np.uint8)
    red[..., 0] = u8
    # Alpha mask over arbitrary colour content: alpha decides.
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgba = np.concatenate([noise, u8[..., None]], axis=-1)
    if plane.all():
        rgba = np.concatenate([rgb, u8[..., None]], axis=-1)  # fully opaque: read from colour
    # Soft (anti-aliased) edges that round to the same drawing.
    soft = np.where(plane, 0.8, 0.2).astype(np.float32)
    return {
        "L": Image.fromarray(u8, "L"),
        "1": Image.fromarray(plane),
        "RGB": Image.fromarray(rgb, "RGB"),
        "red paint": Image.fromarray(red, "RGB"),
        "RGBA alpha": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(np.stack([u8, u8], axis=-1), "LA"),
        "bool array": plane,
        "uint8 array": u8,
        "0/1 labels": plane.astype(np.uint8),
        "float soft": soft,
        "MASK (H,W)": torch.from_numpy(plane.astype(np.float32)),
        "MASK (1,H,W)": torch.from_numpy(plane.astype(np.float32))[None],
        "IMAGE (1,H,W,3)": torch.from_numpy(rgb.astype(np.float32) / 255)[None],
    }


@settings(max_examples=40, deadline=None)
@given(binary_planes)
def test_every_encoding_gives_the_same_mask(plane):
    expected = torch.from_numpy(plane.astype(np.float32))
    for label, encoded in encodings(plane).items():
        got = to_binary_mask(encoded)
        assert got.dtype == torch.float32 and got.shape == expected.shape, label
        assert torch.equal(got, expected), label


@settings(max_examples=20, deadline=None)
@given(binary_planes)
def test_invert_reads_comfyui_mask_editor_files(plane):
    # ComfyUI's mask editor keeps the photo in RGB and makes the painted region transparent.
    u8 = plane.astype(np.uint8) * 255
    photo = np.random.default_rng(1).integers(0, 256, plane.shape + (3,), dtype=np.uint8)
    editor_file = Image.fromarray(np.concatenate([photo, (255 - u8)[..., None]], axis=-1), "RGBA")
    got = to_binary_mask(editor_file, invert=True, channel="alpha")
    assert torch.equal(got, torch.from_numpy(plane.astype(np.float32)))


def test_opaque_rgba_is_read_from_its_colour_like_the_paper_masks():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1:3, 1:3] = 255
    opaque = np.concatenate([rgb, np.full((4, 4, 1), 255, np.uint8)], axis=-1)
    assert to_binary_mask(Image.fromarray(opaque, "RGBA")).sum() == 4
    # Forcing the alpha channel reads the (full) alpha instead.
    assert to_binary_mask(Image.fromarray(opaque, "RGBA"), channel="alpha").sum() == 16


def test_threshold_is_half():
    values = torch.tensor([[0.0, 0.49, 0.5, 1.0]])
    assert to_binary_mask(values).tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_sixteen_bit_masks():
    plane = np.zeros((3, 3), np.uint16)
    plane[0, 0] = 65535
    plane[1, 1] = 20000  # below half of 16-bit range
    assert to_binary_mask(Image.fromarray(plane)).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.full((2, 2), 255.0, np.float32), "divide 8-bit values by 255"),
        (np.array([[np.nan, 0.0]], np.float32), "NaN"),
        (torch.zeros(3, 4, 5), "split a batch"),
        ("mask.png", "expected a PIL image"),
        (np.array([[-1, 0]], np.int16), "negative"),
    ],
)
def test_bad_masks_are_named_with_the_fix(bad, words):
    with pytest.raises(ValueError, match="mask 3 of concept 'doll'") as info:
        to_binary_mask(bad, what="mask 3 of concept 'doll'")
    assert words in str(info.value)


def test_alpha_channel_requested_but_absent():
    with pytest.raises(ValueError, match="no alpha"):
        to_binary_mask(np.zeros((2, 2), np.uint8), channel="alpha")


def test_resize_mask_stays_binary_and_keeps_the_region():
    mask = torch.zeros(8, 8)
    mask[2:6, 4:8] = 1
    big = resize_mask(mask, (16, 16))
    assert set(big.unique().tolist()) <= {0.0, 1.0}
    region = torch.zeros(16, 16)
    region[4:12, 8:16] = 1
    assert torch.equal(big, region)
    small = resize_mask(mask, (4, 4))
    assert small.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    batch = resize_mask(torch.stack([mask, 1 - mask]), (4, 4))
    assert batch.shape == (2, 4, 4) and torch.equal(batch[1], 1 - small)


def test_mask_to_grid_is_the_covered_fraction_of_each_cell():
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1  # one pixel of the top-left 2x2 cell
    mask[2:4, 2:4] = 1  # the whole bottom-right cell
    grid = mask_to_grid(mask, 2)
    assert torch.allclose(grid, torch.tensor([[0.25, 0.0], [0.0, 1.0]]))
    assert mask_to_grid(mask[None], (2, 2)).shape == (1, 2, 2)


def test_mask_to_grid_interpolates_when_the_grid_is_larger():
    # a grid finer than the mask: bilinear (a smooth ramp at the edge), not area's pixel blocks
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    grid = mask_to_grid(mask[None, None], (4, 4))
    assert grid.shape == (1, 1, 4, 4)
    assert torch.allclose(grid[0, 0, 0], torch.tensor([1.0, 0.75, 0.25, 0.0]))
    # larger in one side only counts as growing too
    assert torch.allclose(mask_to_grid(mask, (1, 4))[0], torch.tensor([1.0, 0.75, 0.25, 0.0]))
    with pytest.raises(ValueError, match="expected"):
        mask_to_grid(torch.ones(4), 2)


def test_area_and_coverage():
    mask = torch.zeros(10, 20)
    assert mask_area(mask) == 0
    mask[3:5, 7:12] = 1
    assert mask_area(mask) == 10
    assert mask_coverage(mask) == pytest.approx(10 / 200)
