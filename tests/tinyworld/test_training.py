"""Pieces of the TinyWorld rebuild that must hold whatever the preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textloc_core.tinyworld import model_configs as mc
from tinyworld_build import build
from tinyworld_build import train_world as tw


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


def _saved_tensors(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for part in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "judge/judge.safetensors",
    ):
        tensors.update({f"{part}:{k}": v for k, v in load_file(str(folder / part)).items()})
    return tensors


def test_a_stopped_build_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    whole = build.build_all(tmp_path / "whole", "quick", "cpu", workers=1, state_dir=tmp_path / "state_whole")
    assert whole["steps_run"]["unet"] == 3

    first = build.build_all(
        tmp_path / "split", "quick", "cpu", workers=1, state_dir=tmp_path / "state_split", unet_stop_step=2
    )
    assert first["steps_run"]["unet"] == 2
    assert (tmp_path / "split" / "unet").is_dir(), "a stopped build still saves usable weights"
    second = build.build_all(
        tmp_path / "split", "quick", "cpu", workers=1, state_dir=tmp_path / "state_split", resume=True
    )
    assert second["steps_run"]["unet"] == 3
    # finished phases were taken from the state, with the first run's log entries
    assert second["timings_s"]["vae"] == first["timings_s"]["vae"]
    assert second["judge_accuracy_fresh"] == first["judge_accuracy_fresh"]

    a, b = _saved_tensors(tmp_path / "whole"), _saved_tensors(tmp_path / "split")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed build differs in {different[:5]}"


def test_resume_refuses_another_builds_state(tmp_path):
    build.build_all(tmp_path / "out", "quick", "cpu", workers=1, state_dir=tmp_path / "state", unet_stop_step=1)
    with pytest.raises(ValueError, match=r"--resume: .*seed 0.*seed 1"):
        build.build_all(tmp_path / "out", "quick", "cpu", seed=1, workers=1, state_dir=tmp_path / "state", resume=True)


def test_resume_from_a_damaged_checkpoint_says_how_to_start_over(tmp_path):
    build.build_all(tmp_path / "out", "quick", "cpu", workers=1, state_dir=tmp_path / "state", unet_stop_step=1)
    checkpoint = tmp_path / "state" / "unet_training.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # as a full disk would leave it
    with pytest.raises(ValueError, match=r"unet_training\.pt cannot be read.*leave out --resume"):
        build.build_all(tmp_path / "out", "quick", "cpu", workers=1, state_dir=tmp_path / "state", resume=True)


def test_resume_from_a_damaged_state_record_says_how_to_start_over(tmp_path):
    from tinyworld_build.build_state import BuildState

    identity = {"preset": "quick", "seed": 0}
    BuildState(tmp_path / "state", identity, resume=False)
    (tmp_path / "state" / "state.json").write_text('{"identity": {"pre')
    with pytest.raises(ValueError, match=r"state\.json is damaged.*leave out --resume"):
        BuildState(tmp_path / "state", identity, resume=True)
    # without --resume the same folder simply starts over
    assert not BuildState(tmp_path / "state", identity, resume=False).done("vae")
