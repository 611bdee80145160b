"""Hard and soft attention losses against values computed by hand on tiny tensors."""

import pytest
import torch

from textloc_core.attention.guidance import attention_loss, hard_loss, soft_loss


def _one(map_values, mask_values):
    return torch.tensor(map_values).view(1, 1, 2, 2), torch.tensor(mask_values).view(1, 1, 2, 2)


def test_hard_loss_is_mean_squared_difference_over_all_pixels():
    maps, masks = _one([1.0, 0.5, 0.0, 0.25], [1.0, 1.0, 0.0, 0.0])
    # (0^2 + 0.5^2 + 0^2 + 0.25^2) / 4 = (0.25 + 0.0625) / 4
    assert hard_loss(maps, masks, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(0.078125)


def test_soft_loss_only_counts_pixels_outside_the_mask():
    maps, masks = _one([0.3, 0.9, 0.5, 0.25], [1.0, 1.0, 0.0, 0.0])
    # inside (0.3, 0.9) unconstrained; outside: (0.5^2 + 0.25^2) / 2
    assert soft_loss(maps, masks, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(0.15625)
    # changing the map inside the mask changes nothing
    maps_inside = maps.clone()
    maps_inside[0, 0, 0, :] = torch.tensor([0.0, 0.1])
    assert soft_loss(maps_inside, masks, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(0.15625)


def test_losses_average_over_present_concepts_then_images():
    maps = torch.stack([torch.full((2, 2), 0.5), torch.full((2, 2), 1.0)]).unsqueeze(0).repeat(2, 1, 1, 1)
    masks = torch.zeros(2, 2, 2, 2)
    present = torch.tensor([[True, True], [True, False]])
    # image 0: (0.25 + 1.0) / 2 = 0.625; image 1: only concept 0: 0.25; mean = 0.4375
    assert hard_loss(maps, masks, present).item() == pytest.approx(0.4375)
    assert soft_loss(maps, masks, present).item() == pytest.approx(0.4375)


def test_absent_concepts_get_no_gradient_and_none_is_zero():
    maps = torch.rand(1, 2, 4, 4, requires_grad=True)
    masks = torch.zeros(1, 2, 4, 4)
    present = torch.tensor([[True, False]])
    attention_loss("hard", maps, masks, present).backward()
    assert maps.grad[0, 0].abs().sum() > 0 and maps.grad[0, 1].abs().sum() == 0
    assert attention_loss("none", maps, masks, present).item() == 0.0


def test_bad_shapes_and_methods_are_named():
    with pytest.raises(ValueError, match="must agree"):
        attention_loss("hard", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="guidance"):
        attention_loss("medium", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, dtype=torch.bool))
