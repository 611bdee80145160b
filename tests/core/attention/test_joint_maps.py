"""The generalisation from attn2 layers to blocks with text K/V and an image-to-text map:
the chunked map of a joint-attention block, the injector on named projections, and the
flow-matching objective a transformer backend brings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textloc_core.attention.cross_attention import AttentionRouter, AveragingRouter, KVDeltaInjector
from textloc_core.attention.joint_maps import image_text_map
from textloc_core.backends.flow_matching import FLUX_SHIFT, SD3_SHIFT, FlowMatching


def _direct(q, k, slots):
    """The definition: softmax over the text keys of each head's logits, mean over heads."""
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)
    return torch.gather(probs, 2, slots.unsqueeze(1).expand(-1, probs.shape[1], -1))


@pytest.mark.parametrize("chunk", [1, 2, 3, 8])
def test_the_chunked_map_is_the_softmax_over_text_keys_with_the_same_gradients(chunk):
    torch.manual_seed(0)
    q = torch.randn(2, 5, 12, 8, requires_grad=True)
    k = torch.randn(2, 5, 7, 8, requires_grad=True)
    slots = torch.tensor([[3, 4], [0, 6]])
    weights = torch.rand(2, 12, 2)
    mapped = image_text_map(q, k, slots, heads_per_chunk=chunk)
    direct = _direct(q, k, slots)
    torch.testing.assert_close(mapped, direct)
    grads = torch.autograd.grad((mapped * weights).sum(), (q, k))
    expected = torch.autograd.grad((direct * weights).sum(), (q, k))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    # a distribution over the text keys: all columns together sum to one per query
    assert torch.allclose(image_text_map(q, k, torch.arange(7).expand(2, 7), chunk).sum(-1), torch.ones(2, 12))


def test_routers_record_block_maps_and_the_averaging_router_averages_them():
    q, k = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 3, 8)
    router = AttentionRouter(token_slots=torch.tensor([[1]]), keep_grad=False)
    router.capture_text_map("double_blocks.0", q, k)
    assert router.captured[0].layer == "double_blocks.0" and router.captured[0].probs.shape == (2, 4, 1)
    averaging = AveragingRouter(token_slots=torch.tensor([[1]]), keep_rows=slice(1, None))
    averaging.capture_text_map("double_blocks.0", q, k)
    averaging.capture_text_map("double_blocks.0", q * 0, k)
    (average,) = averaging.averaged()
    expected = (_direct(q, k, torch.tensor([[1], [1]]))[1:] + 1 / 3) / 2
    torch.testing.assert_close(average.probs, expected)
    assert not averaging.captured
    assert not AttentionRouter().captured  # without slots nothing is recorded
    AttentionRouter().capture_text_map("x", q, k)


def test_the_injector_takes_named_projections_and_keeps_every_position_trainable_without_sot():
    text_k, text_v = nn.Linear(6, 4, bias=False), nn.Linear(6, 4, bias=False)
    with KVDeltaInjector(
        None, projections={"b.0.to_k": text_k, "b.0.to_v": text_v}, detach_start_token=False
    ) as injector:
        assert list(injector.deltas) == ["b.0.to_k", "b.0.to_v"] and injector.layers == {}
        context = torch.randn(1, 80, 6)
        (text_k(context) + text_v(context)).sum().backward()
        grad = injector.deltas["b.0.to_k"].grad
        assert grad is not None and grad.abs().sum() > 0
    before = text_k(context)
    injector.deltas["b.0.to_k"].data += 1
    assert torch.equal(text_k(context), before)  # removed: the base layer again


@pytest.mark.parametrize("shift", [1.0, SD3_SHIFT, FLUX_SHIFT])
def test_flow_matching_noises_along_a_straight_line_and_euler_steps_follow_it(shift):
    objective = FlowMatching(shift)
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 499, 999])
    s = objective.sigmas(t)
    u = (t.double() + 1) / 1000
    torch.testing.assert_close(s, (shift * u / (1 + (shift - 1) * u)).float())
    assert float(objective.sigmas(torch.tensor([999]))) == pytest.approx(1.0)
    assert float(objective.sigmas(torch.tensor([-1.0]))) == 0.0
    noisy = objective.add_noise(x0, noise, t)
    torch.testing.assert_close(noisy, (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise)
    velocity = objective.training_target(x0, noise, t)
    # with the exact velocity, Euler steps from pure noise land on x0 whatever the schedule
    x = noise.clone()
    steps = objective.sampling_timesteps(4)
    assert steps[0] == 999 and steps == sorted(steps, reverse=True)
    for i, step in enumerate(steps):
        x = objective.sample_step(velocity, x, step, steps[i + 1] if i + 1 < len(steps) else -1.0)
    torch.testing.assert_close(x, x0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shift"):
        FlowMatching(0.0)


def test_blocks_are_chosen_by_depth_and_bad_choices_are_explained():
    from textloc_core.attention.maps import choose_layers

    counts = {f"double_blocks.{i}": 16 for i in range(5)}  # one resolution: the default is the later blocks
    assert choose_layers(counts, "all") == set(counts)
    assert choose_layers(counts, "all_but_finest") == {"double_blocks.3", "double_blocks.4"}
    assert choose_layers({"double_blocks.0": 16}, "all_but_finest") == {"double_blocks.0"}
    assert choose_layers(counts, "blocks:first_half") == {"double_blocks.0", "double_blocks.1", "double_blocks.2"}
    assert choose_layers(counts, "blocks:second_half") == {"double_blocks.3", "double_blocks.4"}
    assert choose_layers(counts, "blocks:0,2-3") == {"double_blocks.0", "double_blocks.2", "double_blocks.3"}
    with pytest.raises(ValueError, match="names blocks \\[5\\]; this model's are 0 to 4"):
        choose_layers(counts, "blocks:4-5")
    with pytest.raises(ValueError, match="'blocks:first_half'"):
        choose_layers(counts, "blocks:early")
    with pytest.raises(ValueError, match="for a transformer's blocks"):
        choose_layers(counts, "most")


def test_the_chunked_map_keeps_nothing_of_its_probabilities_for_backward(load_script):
    script = load_script("dit_capture_memory")
    q, k = torch.randn(1, 8, 64, 16, requires_grad=True), torch.randn(1, 8, 32, 16, requires_grad=True)
    slots = torch.tensor([[3, 4]])
    whole = script.saved_bytes(script.direct_map, q, k, slots)
    assert whole >= 8 * 64 * 32 * 4  # every head's probabilities, float32
    assert script.saved_bytes(image_text_map, q, k, slots) < whole / 100
