"""Pieces of the TinyWorld rebuild that must hold whatever the preset."""

from __future__ import annotations

import numpy as np
import torch

from textloc_core.tinyworld import model_configs as mc
from textloc_core.tinyworld import train_world as tw


def test_vae_rescale_keeps_reconstructions_and_sets_sd15_latent_scale():
    torch.manual_seed(0)
    vae = mc.build_vae().eval()
    images, _, _ = tw.render_dataset(16, 5, any_kind=False, workers=1)
    x = tw.to_float(images, "cpu") * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x).latent_dist.mean).sample
        s = tw.rescale_vae_latents(vae, images, torch.device("cpu"))
        z = vae.encode(x).latent_dist.mean
        after = vae.decode(z).sample
    assert s > 0
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert abs(float((z * mc.SD_SCALING_FACTOR).std()) - 1.0) < 1e-3


def test_dataset_does_not_depend_on_worker_count():
    a_img, a_specs, a_orders = tw.render_dataset(12, 9, any_kind=True, workers=1)
    b_img, b_specs, b_orders = tw.render_dataset(12, 9, any_kind=True, workers=2)
    np.testing.assert_array_equal(a_img, b_img)
    assert a_specs == b_specs and a_orders == b_orders


def test_lr_schedule_warms_up_then_decays_to_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = tw.warmup_cosine(opt, total=100, warmup_frac=0.1, floor=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert max(lrs) == 1.0 and abs(lrs[-1] - 0.1) < 0.01
    assert all(b <= a + 1e-9 for a, b in zip(lrs[10:], lrs[11:]))


def test_deadline_stops_a_phase_and_records_where():
    torch.manual_seed(0)
    images, specs, _ = tw.render_dataset(16, 1, any_kind=True, workers=1)
    deadline = tw.Deadline(0.0)
    tw.train_judge(images, specs, tw.PRESETS["quick"], torch.device("cpu"), 0, deadline)
    assert deadline.stopped_at == 0
