"""Checkpoints: exact round trip, fallback past damage, ignored half-writes, config guard."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from textloc_core.data import safe_io
from textloc_core.training import checkpoint as ck
from textloc_core.training.config import TrainConfig

CONFIG = TrainConfig(steps=10).to_json()


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(8, 4, generator=gen)), torch.nn.Parameter(torch.randn(3, 4, generator=gen))]


def _step(params, optimizer, seed):
    gen = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    loss = sum((p * torch.randn(p.shape, generator=gen)).sum() ** 2 for p in params)
    loss.backward()
    optimizer.step()


def _save(directory, step, value=0.0, **kwargs):
    return ck.save_checkpoint(directory, step, {"w": torch.full((4,), float(value))}, {}, CONFIG, **kwargs)


def test_adamw_state_round_trip_gives_a_bit_identical_next_step(tmp_path):
    params = _params()
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01)
    for s in range(3):
        _step(params, optimizer, s)
    ck.save_checkpoint(tmp_path, 3, {f"p{i}": p for i, p in enumerate(params)}, optimizer.state_dict(), CONFIG)

    restored = ck.load_latest_checkpoint(tmp_path, CONFIG)
    params2 = [torch.nn.Parameter(restored.tensors[f"p{i}"].clone()) for i in range(2)]
    optimizer2 = torch.optim.AdamW(params2, lr=5.0)  # wrong lr on purpose: the state must restore it
    optimizer2.load_state_dict(restored.optimizer_state)
    assert optimizer2.param_groups[0]["lr"] == 1e-2 and optimizer2.param_groups[0]["betas"] == (0.9, 0.99)

    _step(params, optimizer, 99)
    _step(params2, optimizer2, 99)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)


def test_nested_state_comes_back_exactly(tmp_path):
    """numpy arrays, tuples, non-string keys and nan survive the JSON + safetensors split."""
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    ck.save_checkpoint(tmp_path, 1, {}, state, CONFIG, extra={"losses": [0.5, float("nan")], 3: "int key"})
    expected = (torch.rand(3), np.random.rand(3), random.random())

    restored = ck.load_latest_checkpoint(tmp_path).optimizer_state
    torch.set_rng_state(restored["torch"])
    np.random.set_state(restored["numpy"])
    random.setstate(restored["python"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    extra = ck.load_latest_checkpoint(tmp_path).extra
    assert extra[3] == "int key" and np.isnan(extra["losses"][1])


def test_checkpoints_of_the_previous_layout_still_resume(tmp_path):
    """Checkpoints of the earlier layout (an "rng" entry in state.json, an "extra" setting in
    the config) load, and resume under today's settings."""
    step_dir = _save(tmp_path, 10, 1.0)
    state = json.loads((step_dir / "state.json").read_text())
    config = json.loads(state["config_json"])
    config["extra"] = {}
    state.update(rng=None, config_json=json.dumps(config, sort_keys=True))
    (step_dir / "state.json").write_text(json.dumps(state))
    manifest = json.loads((step_dir / "manifest.json").read_text())
    manifest["files"]["state.json"] = {
        "sha256": safe_io.sha256_file(step_dir / "state.json"),
        "bytes": (step_dir / "state.json").stat().st_size,
    }
    (step_dir / "manifest.json").write_text(json.dumps(manifest))
    restored = ck.load_latest_checkpoint(tmp_path, CONFIG)
    assert restored.step == 10 and torch.equal(restored.tensors["w"], torch.ones(4))


def test_keeps_only_the_last_k(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, step, keep=2)
    assert ck.list_checkpoints(tmp_path) == [30, 40]
    assert ck.load_latest_checkpoint(tmp_path).step == 40


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "delete_file"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    _save(tmp_path, 10, 1.0)
    newest = _save(tmp_path, 20, 2.0)
    target = newest / "tensors.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "state.json").unlink()
    restored = ck.load_latest_checkpoint(tmp_path)
    assert restored.step == 10 and torch.equal(restored.tensors["w"], torch.full((4,), 1.0))
    assert restored.skipped and restored.skipped[0].startswith("step-000000020")


def test_half_written_temp_folder_is_ignored_and_cleaned(tmp_path):
    _save(tmp_path, 10, 1.0)
    stale = tmp_path / f".{ck.step_dir_name(20)}.abc.textloc-tmp"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"\x00" * 10)
    assert ck.list_checkpoints(tmp_path) == [10]
    assert ck.load_latest_checkpoint(tmp_path).step == 10
    _save(tmp_path, 30, 3.0)
    assert not stale.exists()


def test_nothing_to_resume_gives_none(tmp_path):
    assert ck.load_latest_checkpoint(tmp_path / "never-created") is None
    (tmp_path / "step-000000005").mkdir()  # empty: a crash before anything was written
    assert ck.load_latest_checkpoint(tmp_path) is None


def test_resuming_with_other_settings_is_a_clear_error(tmp_path):
    _save(tmp_path, 10)
    other = TrainConfig(steps=10, learning_rate=2e-5).to_json()
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 1e-05 in the checkpoint, 2e-05 now\)"):
        ck.load_latest_checkpoint(tmp_path, other)
    longer = TrainConfig(steps=500).to_json()  # extending a run is allowed
    assert ck.load_latest_checkpoint(tmp_path, longer).step == 10


def test_a_checkpoint_written_before_a_setting_existed_reads_as_what_it_ran(tmp_path):
    """An older fixed-weight run wrote neither the weight mode nor the newer settings; with the
    calibrated default it is named as a fixed run, and continues when the mode is set fixed."""
    older = json.loads(TrainConfig(steps=10, attention_weight_mode="fixed").to_json())
    del older["optimizer"], older["gradient_checkpointing"]  # settings added since
    ck.save_checkpoint(tmp_path, 10, {"w": torch.zeros(4)}, {}, json.dumps(older))
    with pytest.raises(ValueError, match=r"attention_weight_mode: 'fixed' in the checkpoint, 'calibrated' now"):
        ck.load_latest_checkpoint(tmp_path, TrainConfig(steps=10).to_json())
    assert (
        ck.load_latest_checkpoint(tmp_path, TrainConfig(steps=10, attention_weight_mode="fixed").to_json()).step == 10
    )


def test_a_checkpoint_saved_under_former_setting_names_resumes(tmp_path):
    """A run saved before the settings took the Train widgets' names (``method``,
    ``lambda_attn``, ``prior_images_per_class``, ``use_8bit_adam``) is the same run today; a
    former name with another value is named as today's setting."""
    now = TrainConfig(steps=10, guidance="soft", attention_weight=0.5, prior_images=3, attention_weight_mode="fixed")
    older = json.loads(now.to_json())
    for former, field in (
        ("method", "guidance"),
        ("lambda_attn", "attention_weight"),
        ("prior_images_per_class", "prior_images"),
    ):
        older[former] = older.pop(field)
    older["use_8bit_adam"] = older.pop("optimizer") == "adamw_8bit"
    ck.save_checkpoint(tmp_path, 10, {"w": torch.zeros(4)}, {}, json.dumps(older))
    assert ck.load_latest_checkpoint(tmp_path, now.to_json()).step == 10
    with pytest.raises(ValueError, match=r"guidance: 'soft' in the checkpoint, 'hard' now"):
        ck.load_latest_checkpoint(tmp_path, TrainConfig(steps=10, attention_weight=0.5, prior_images=3).to_json())


def test_unpicklable_state_is_refused_not_pickled(tmp_path):
    with pytest.raises(TypeError, match="cannot be saved without pickle"):
        ck.save_checkpoint(tmp_path, 1, {}, {"fn": object()}, CONFIG)
    assert ck.list_checkpoints(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == []  # and the temp folder was removed


WRITER = textwrap.dedent(
    """
    import sys, torch
    from textloc_core.training import checkpoint as ck
    directory = sys.argv[1]
    big = torch.randn(4_000_000)  # 16 MB per file: each save takes a while
    step = 0
    while True:
        step += 1
        ck.save_checkpoint(directory, step, {"w": big + step}, {"step": step}, "{}", keep=2)
        print(step, flush=True)
    """
)


def test_sigkill_during_checkpoint_writes_leaves_a_verifying_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete checkpoint exists
        time.sleep(0.37)  # then kill it at an arbitrary point, most likely mid-write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    restored = ck.load_latest_checkpoint(tmp_path)
    assert restored is not None
    assert restored.optimizer_state == {"step": restored.step} and restored.tensors["w"].numel() == 4_000_000
    ck.verify_checkpoint(restored.path)
    # the next save still works and cleans up whatever the kill left behind
    ck.save_checkpoint(tmp_path, restored.step + 100, {"w": torch.zeros(1)}, {}, "{}")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".textloc-tmp")]
    assert (
        json.loads((tmp_path / ck.step_dir_name(restored.step + 100) / "manifest.json").read_text())["step"]
        == restored.step + 100
    )
