"""Overlays and grids: colours, shapes, ranges, and the hot spot landing where the map peaks."""

from __future__ import annotations

import pytest
import torch

from textloc_core.evaluation import heatmap


def test_jet_endpoints_and_middle():
    colours = heatmap.jet(torch.tensor([0.0, 0.5, 1.0]))
    expected = torch.tensor([[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(colours, expected)
    # monotone "heat": red rises and blue falls from 0.25 to 0.75
    ramp = heatmap.jet(torch.linspace(0.25, 0.75, 11))
    assert (ramp[1:, 0] >= ramp[:-1, 0]).all() and (ramp[1:, 2] <= ramp[:-1, 2]).all()


def test_normalize_maps_per_map_and_constant_map_is_cold():
    maps = torch.stack([torch.arange(4.0).view(2, 2) * 0.01, torch.full((2, 2), 3.0)])
    out = heatmap.normalize_maps(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert out[1].abs().max() == 0


def test_overlay_hot_pixel_lands_where_the_map_peaks():
    images = torch.full((2, 3, 32, 32), 0.5)
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 1.0  # rows 8..15, cols 16..23 of the image
    maps[1, 3, 0] = 5.0  # any scale: rows 24..31, cols 0..7
    out = heatmap.overlay(images, maps, alpha=0.6)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    heat = out[:, 0] - out[:, 2]  # red minus blue
    for b, (row, col) in enumerate([(1, 2), (3, 0)]):
        peak = int(heat[b].flatten().argmax())
        y, x = divmod(peak, 32)
        assert (y // 8, x // 8) == (row, col)


def test_overlay_alpha_zero_is_the_image_and_broadcasts_one_map():
    images = torch.rand(3, 3, 16, 16)
    out = heatmap.overlay(images, torch.rand(1, 4, 4), alpha=0.0)
    torch.testing.assert_close(out, images)


def test_upsample_and_colorize_sizes():
    maps = torch.rand(2, 4, 4)
    assert heatmap.upsample_maps(maps, (12, 20)).shape == (2, 12, 20)
    pictures = heatmap.colorize(maps, (8, 8))
    assert pictures.shape == (2, 3, 8, 8) and 0 <= pictures.min() and pictures.max() <= 1


def test_token_grid_layout_and_content():
    images = torch.full((2, 3, 64, 64), 0.2)
    maps = torch.zeros(2, 2, 8, 8)
    maps[:, 0, :4] = 1.0  # token 0: top half hot
    maps[:, 1, 4:] = 1.0  # token 1: bottom half hot
    grid = heatmap.token_grid(images, maps, ["<star1>", "<ring1>"], pad=2)
    header = 10 + 2 * 2  # font size max(10, cell // 8) plus padding
    assert grid.shape == (3, header + 2 * 66 + 2, 3 * 66 + 2)
    assert 0 <= grid.min() and grid.max() <= 1
    # the label strip has dark text pixels; the background is white
    assert grid[:, :header].min() < 0.5
    # column 0 is the image itself; column 1's top half is hot (red), column 2's bottom half
    top = header
    torch.testing.assert_close(grid[:, top + 10, 2 + 10], torch.full((3,), 0.2), atol=1 / 255, rtol=0)
    left1, left2 = 2 + 66, 2 + 2 * 66
    assert grid[0, top + 8, left1 + 30] > grid[2, top + 8, left1 + 30]
    assert grid[0, top + 56, left1 + 30] < grid[2, top + 56, left1 + 30]
    assert grid[0, top + 56, left2 + 30] > grid[2, top + 56, left2 + 30]


def test_token_grid_row_labels_widen_and_bad_inputs_are_named():
    images, maps = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 4, 4)
    plain = heatmap.token_grid(images, maps, ["<a>"])
    labelled = heatmap.token_grid(images, maps, ["<a>"], row_labels=["hard", "none"])
    assert labelled.shape[2] > plain.shape[2] and labelled.shape[1] == plain.shape[1]
    with pytest.raises(ValueError, match="labels: 2 labels for 1 token maps"):
        heatmap.token_grid(images, maps, ["<a>", "<b>"])
    with pytest.raises(ValueError, match="movedim"):
        heatmap.overlay(torch.rand(1, 16, 16, 3), torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        heatmap.overlay(torch.rand(1, 3, 16, 16), torch.rand(1, 4, 4), alpha=2)


def test_pil_round_trip():
    image = torch.rand(3, 5, 7)
    back = heatmap.from_pil(heatmap.to_pil(image))
    torch.testing.assert_close(back, image, atol=1 / 255, rtol=0)
