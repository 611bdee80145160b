"""Token-map aggregation: slots per token position, layers per level, resizing and normalising,
averaging over sampling steps."""

import pytest
import torch

from textloc_core.attention.cross_attention import AttentionRouter, AveragingRouter, CapturedMap
from textloc_core.attention.maps import choose_layers, layer_factors, slot_layout, token_maps


def test_slot_layout_tracks_every_position_and_averages_repeats():
    layout = slot_layout([{"<a>": [4], "<b>": [7, 9]}, {"<b>": [2]}, {}], ["<a>", "<b>"])
    assert layout.present.tolist() == [[True, True], [False, True], [False, False]]
    assert layout.slots[0].tolist() == [4, 7, 9]
    assert layout.weights[0].tolist() == [[1.0, 0.0], [0.0, 0.5], [0.0, 0.5]]
    assert layout.slots[1, 0].item() == 2 and layout.weights[1, 0].tolist() == [0.0, 1.0]
    assert layout.weights[2].abs().sum() == 0  # unused rows point at SOT with zero weight


def test_levels_are_factors_of_the_finest_resolution():
    counts = {"a": 64, "b": 16, "c": 16, "d": 4}
    assert layer_factors(counts) == {"a": 1, "b": 2, "c": 2, "d": 4}
    assert choose_layers(counts, "all_but_finest") == {"b", "c", "d"}
    assert choose_layers(counts, "all") == {"a", "b", "c", "d"}
    assert choose_layers(counts, (4,)) == {"d"}
    assert choose_layers({"a": 64}, "all_but_finest") == {"a"}  # one level: use it
    with pytest.raises(ValueError, match="available factors"):
        choose_layers(counts, (8,))


def test_token_maps_average_positions_layers_and_resolutions():
    layout = slot_layout([{"<a>": [1, 2]}], ["<a>"])
    fine = torch.zeros(1, 16, 2)
    fine[0, 0, 0], fine[0, 5, 1] = 1.0, 1.0  # two positions light different pixels
    coarse_1 = torch.zeros(1, 4, 2)
    coarse_1[0, 3] = 0.2
    coarse_2 = torch.zeros(1, 4, 2)
    coarse_2[0, 3] = 0.6
    captured = [CapturedMap("f", fine), CapturedMap("c1", coarse_1), CapturedMap("c2", coarse_2)]

    raw = token_maps(captured, layout, (4, 4), normalize=False)
    assert raw.shape == (1, 1, 4, 4)
    # fine level alone: positions averaged -> 0.5 at pixels 0 and 5
    fine_only = token_maps(captured[:1], layout, (4, 4), normalize=False)
    assert fine_only[0, 0].flatten()[[0, 5]].tolist() == [0.5, 0.5]
    # coarse level: layers averaged (0.4) then bilinear-upsampled; combined = mean of the two levels
    coarse_only = token_maps(captured[1:], layout, (4, 4), map_size=4, normalize=False)
    assert coarse_only[0, 0, 3, 3].item() == pytest.approx(0.4)
    assert torch.allclose(raw, (fine_only + coarse_only) / 2)

    normalised = token_maps(captured, layout, (4, 4))
    assert normalised.amax().item() <= 1.0 + 1e-6 and normalised.amin().item() >= 0.0
    # each level min-max normalised on its own before averaging
    expected = (fine_only / 0.5 + coarse_only / coarse_only.amax()) / 2
    assert torch.allclose(normalised, expected, atol=1e-6)


def test_token_maps_rows_and_common_size():
    layout = slot_layout([{"<a>": [1]}, {}], ["<a>"])
    probs = torch.rand(2, 16, 1)
    maps = token_maps([CapturedMap("x", probs)], layout, (4, 4), rows=slice(0, 1), map_size=8)
    assert maps.shape == (1, 1, 8, 8)
    wide = token_maps([CapturedMap("x", torch.rand(1, 8, 1))], slot_layout([{"<a>": [1]}], ["<a>"]), (2, 4))
    assert wide.shape == (1, 1, 2, 4)


def test_averaging_router_keeps_the_mean_of_the_kept_rows_per_layer():
    """What generate and the Attention Preview node use: per layer, the mean over calls of the
    kept rows' maps, exactly what the plain router would have captured."""
    gen = torch.Generator().manual_seed(0)
    calls = [[torch.randn(2, 4, 8, generator=gen) for _ in range(3)] for _ in range(2)]  # q, k, v per step
    slots = torch.tensor([[1, 2]])
    plain = AttentionRouter(token_slots=slots, keep_grad=False)
    averaging = AveragingRouter(token_slots=slots, keep_rows=slice(1, None))
    for q, k, v in calls:
        assert torch.equal(averaging("layer", q, k, v, 2), plain("layer", q, k, v, 2))
    assert averaging.captured == []
    (mean,) = averaging.averaged()
    expected = torch.stack([m.probs[1:] for m in plain.captured]).mean(0)
    assert mean.layer == "layer" and torch.allclose(mean.probs, expected)

    class NoRows(AveragingRouter):
        def rows(self, batch):
            return []

    skipping = NoRows(token_slots=slots)
    skipping("layer", *calls[0], 2)
    assert skipping.averaged() == []
