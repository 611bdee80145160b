"""Bounded memory and disk, files that survive a kill, values and paths that stay safe: through
a real ComfyUI over HTTP (issue 23). These tests start a server of their own, so its memory is
theirs to measure and its disk budget (TEXTLOC_DISK_BUDGET_MB) small enough to be reached.

Measured numbers (server RSS, peak RSS, seconds, disk use against the budget) are printed:
``pytest -s`` shows them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from comfy_server import ComfyHarness
from PIL import Image
from safetensors.torch import load_file, save_file
from test_hostile_inputs import NOT_READABLE, _interrupt_when, _score_graph, _train_graph
from test_hostile_inputs import _error as _error_and_traceback
from tinyworld_graphs import TINYWORLD, apply_adapter, attention_preview, score_images

from textloc_core.adapters.adapter import load_adapter
from textloc_core.tinyworld import shipped_adapters_dir
from textloc_harness.comfy_launcher import ComfyLayout, ComfyServer

BUDGET_MB = 4
"""The disk budget of this module's server: a few TinyWorld checkpoints exceed it."""
RSS_LIMIT = 2 << 30


def _memory(server: ComfyServer) -> dict[str, int]:
    """The server process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    fields = {}
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture(scope="module")
def bounded(comfy_tree, tmp_path_factory):
    """A ComfyUI of this module's own, with a disk budget of BUDGET_MB."""
    layout = ComfyLayout.create(tmp_path_factory.mktemp("bounded"))
    server = ComfyServer(comfy_tree, layout)
    previous = os.environ.get("TEXTLOC_DISK_BUDGET_MB")
    os.environ["TEXTLOC_DISK_BUDGET_MB"] = str(BUDGET_MB)  # copied into the server's environment at start
    try:
        server.start()
    finally:
        if previous is None:
            os.environ.pop("TEXTLOC_DISK_BUDGET_MB")
        else:
            os.environ["TEXTLOC_DISK_BUDGET_MB"] = previous
    harness = ComfyHarness(server)
    try:
        yield harness
    finally:
        server.stop()


def _error(comfy: ComfyHarness, graph: dict, timeout: float = 300) -> str:
    """The node's error as ComfyUI reports it, without the traceback (whose code paths are the
    server's, and are not what a node's message says)."""
    return _error_and_traceback(comfy, graph, timeout).split('\n  File "')[0]


def _upload(comfy: ComfyHarness, path: Path, subfolder: str) -> None:
    """POST a file to ComfyUI's own /upload/image into input/<subfolder> (what a browser does)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n{subfolder}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(
        comfy.client.base_url + "/upload/image",
        data=b"".join(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200


def _folder_graph(folder: str, resolution: int) -> dict:
    return {
        "1": {
            "class_type": "TextLocConceptFolder",
            "inputs": {"folder": folder, "resolution": resolution, "tokens": "", "class_words": ""},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }


def _small_prompt(seed: int) -> dict:
    return {
        "1": {"class_type": "TextLocTinyWorldReferences", "inputs": {"concept": "dotstar", "images": 1, "seed": seed}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


# ------------------------------------------------------------------ 1. decompression bombs


def test_uploaded_decompression_bombs_are_refused_from_their_headers(bounded, tmp_path, constant_png):
    photo = constant_png(tmp_path / "photo.png", 12000, 12000)
    mask = constant_png(tmp_path / "mask.png", 12000, 12000, value=255, gray=True)
    sizes = (photo.stat().st_size, mask.stat().st_size)
    for index in range(3):  # three photos, each with its mask, as the issue uploaded them
        for source, subfolder in ((photo, "bomb/images"), (mask, "bomb/masks/thing")):
            renamed = tmp_path / f"{index}.png"
            renamed.write_bytes(source.read_bytes())
            _upload(bounded, renamed, subfolder)
    assert (bounded.layout.input / "bomb" / "images" / "2.png").stat().st_size == sizes[0]
    before = _memory(bounded.server)
    for resolution in (0, 512):
        began = time.monotonic()
        message = _error(bounded, _folder_graph("bomb", resolution), timeout=300)
        took = time.monotonic() - began
        after = _memory(bounded.server)
        print(
            f"\nbomb (3 x 12000x12000 PNG, {sizes[0]} + {sizes[1]} bytes) at resolution {resolution}: refused in "
            f"{took:.1f} s; server RSS {before['VmRSS'] / 2**20:.0f} -> {after['VmRSS'] / 2**20:.0f} MiB, "
            f"peak {after['VmHWM'] / 2**20:.0f} MiB"
        )
        assert "images/0.png is 12000x12000 (144.0 megapixels), above the limit of 16.8 megapixels" in message, message
        assert str(bounded.layout.base) not in message
        assert after["VmHWM"] < RSS_LIMIT and took < 60
    bounded.run(_small_prompt(int(time.time()) % 1000), timeout=120)  # the server still serves the next prompt


def test_a_large_photo_is_decoded_reduced(bounded, tmp_path, constant_png):
    folder = bounded.layout.input / "large"
    (folder / "masks" / "thing").mkdir(parents=True)
    (folder / "images").mkdir()
    constant_png(folder / "images" / "0.png", 4096, 4096, value=90)
    plane = np.zeros((4096, 4096), np.uint8)
    plane[1024:3072, 1024:3072] = 255
    Image.fromarray(plane).save(folder / "masks" / "thing" / "0.png")
    began = time.monotonic()
    result = bounded.run(_folder_graph("large", 64), timeout=300)
    took, memory = time.monotonic() - began, _memory(bounded.server)
    print(
        f"\n4096x4096 photo at resolution 64: read in {took:.1f} s (decoded at 1/32), server peak RSS "
        f"{memory['VmHWM'] / 2**20:.0f} MiB"
    )
    (preview,) = result.all_files()
    assert Image.open(preview).size == (64, 64) and memory["VmHWM"] < RSS_LIMIT


def test_a_manifest_listing_one_file_thousands_of_times_is_refused_before_reading(bounded):
    folder = bounded.layout.input / "repeated"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "images" / "0.png")
    entry = {"file": "images/0.png", "masks": {"thing": "images/0.png"}}
    (folder / "textloc.json").write_text(json.dumps({"concepts": [{"name": "thing"}], "images": [entry] * 5000}))
    began = time.monotonic()
    message = _error(bounded, _folder_graph("repeated", 2048))
    assert "manifest textloc.json has 5000 images, more than the 1000 one concept set may hold" in message, message
    assert time.monotonic() - began < 30


# ------------------------------------------------------------------ 2. Cancel inside Score Images


def test_cancel_stops_score_images_within_a_chunk(bounded):
    """4096 images to score: Cancel, pressed while Score Images works, ends it within seconds."""
    graph = {
        "1": {
            "class_type": "TextLocTinyWorldReferences",
            "inputs": {"concept": "dotstar", "images": 8, "seed": int(time.time()) % 100000},
        },
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 512}},
        "3": score_images(["2", 0], ["2", 0], "a <tw1> star", f"textloc_test/cancel_{uuid.uuid4().hex[:6]}"),
    }
    took = _interrupt_when(bounded, graph, lambda watcher: watcher.node == "3", settle=2.0)
    print(f"\nScore Images on 4096 + 4096 images: stopped {took:.1f} s after Cancel")
    assert took < 30
    bounded.run(_small_prompt(int(time.time()) % 1000 + 1), timeout=120)  # the next prompt runs


# ------------------------------------------------------------------ 6. non-finite adapters, 5. shipped names, 7. paths


def test_an_adapter_with_nan_values_is_refused_on_load_naming_the_file(bounded):
    tensors = load_file(shipped_adapters_dir() / "tinyworld_pair.safetensors")
    from safetensors import safe_open

    with safe_open(str(shipped_adapters_dir() / "tinyworld_pair.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    key = next(k for k in tensors if k.startswith("kv."))
    tensors[key][0, 0] = float("nan")
    metadata.pop("textloc.sha256", None)  # the checksum would (rightly) catch the edit first
    name = f"nan_{uuid.uuid4().hex[:6]}"
    (bounded.layout.models / "textloc").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(bounded.layout.models / "textloc" / f"{name}.safetensors"), metadata)
    graph = {
        "1": TINYWORLD,
        "2": apply_adapter(f"{name}.safetensors"),
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a star"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    message = _error(bounded, graph, timeout=120)
    assert f"adapter file {name}.safetensors holds NaN or infinite values ({key})" in message, message
    assert str(bounded.layout.base) not in message


def test_training_under_the_shipped_adapters_name_is_refused_unless_overwrite(bounded):
    message = _error(bounded, _train_graph("tinyworld_pair", seed=5), timeout=120)
    assert (
        "adapter_name: 'tinyworld_pair' already names an adapter (textloc pack: tinyworld_pair.safetensors, which "
        "the pack ships and the shipped workflows use for every user of this server) trained with other" in message
    ), message
    assert str(bounded.layout.base) not in message and str(shipped_adapters_dir()) not in message
    assert not (bounded.layout.models / "textloc" / "tinyworld_pair.safetensors").exists()


def test_messages_and_the_train_report_name_paths_relative_to_the_comfyui_folder(bounded):
    name = f"rel_{uuid.uuid4().hex[:6]}"
    result = bounded.run(_train_graph(name, seed=7), timeout=300)
    (report,) = [text for out in result.history["outputs"].values() for text in out.get("text", [])]
    assert f"adapter: models/textloc/{name}.safetensors" in report, report
    assert f"lora (LoraLoaderModelOnly): models/loras/textloc/{name}.safetensors" in report
    message = _error(bounded, _train_graph(name, seed=8))
    assert f"already names an adapter (models/textloc/{name}.safetensors) trained with other photos" in message, message
    for text in (report, message):
        assert str(bounded.layout.base) not in text


# ------------------------------------------------------------------ 8. CLIP shard index


def test_a_clip_index_naming_files_anywhere_is_refused_with_one_message(bounded):
    graph = _score_graph
    messages = set()
    for index, shard in enumerate(
        [
            "/etc/passwd",
            "/no/such/file.safetensors",
            "/etc",
            "../../../../etc/hostname",
            "/usr/lib/os-release.safetensors",
        ]
    ):
        folder = bounded.layout.input / f"clip_index_{index}"
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "clip"}')
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"text_model.x": shard}}))
        message = _error(bounded, graph(folder.name))
        assert shard not in message and "passwd" not in message, message
        assert not any(
            kind in message for kind in ("FileNotFound", "IsADirectory", "Unpickling", "RuntimeError", "OSError")
        )
        messages.add(re.sub(r"prompt \S+ failed", "prompt failed", message.replace(folder.name, "<folder>")))
    assert len(messages) == 1, messages  # what lies at the named paths changes nothing
    (message,) = messages
    assert "model.safetensors.index.json names a shard that is not a .safetensors file in the folder itself" in message
    # a folder outside the readable ones is still refused before its index is read
    assert NOT_READABLE in _error(bounded, graph("/etc"))


# ------------------------------------------------------------------ 4. a commit killed halfway


COMMIT_CHILD = Path(__file__).resolve().parents[1] / "core" / "data" / "file_commit_child.py"


@pytest.mark.parametrize("kill_at, outcome", [(2, None), (6, "committed")], ids=["before-journal", "after-journal"])
def test_the_next_train_finishes_or_rolls_back_a_commit_killed_halfway(bounded, tmp_path, kill_at, outcome):
    """Train writes set A (1 step), then set B (2 steps, the same training continued); A is put
    back and B's commit is replayed in a process killed at its ``kill_at``-th file change: before
    the journal (2: after one backup) or after it (6: three backups, the journal, the embedding
    renamed, so the files on disk are a mix). The next Train of that name, without overwrite,
    recovers and runs."""
    name = f"kill_{kill_at}_{uuid.uuid4().hex[:4]}"
    models = bounded.layout.models
    finals = [
        models / "embeddings" / "textloc" / name / "dotstar.safetensors",
        models / "loras" / "textloc" / f"{name}.safetensors",
        models / "textloc" / f"{name}.safetensors",
    ]
    bounded.run(_train_graph(name, seed=21), timeout=300)
    set_a = [final.read_bytes() for final in finals]
    bounded.run(_train_graph(name, seed=21, steps=2), timeout=300)
    set_b = []
    for index, final in enumerate(finals):
        set_b.append(tmp_path / f"b{index}")
        set_b[-1].write_bytes(final.read_bytes())
        final.write_bytes(set_a[index])
    journal = models / "textloc" / f".{name}.commit.textloc-tmp"
    pairs = [f"{final}={source}" for final, source in zip(finals, set_b)]
    child = subprocess.run(
        [sys.executable, str(COMMIT_CHILD), str(journal), str(kill_at), "0", *pairs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert journal.exists() == (outcome is not None)
    if outcome:
        assert finals[0].read_bytes() == set_b[0].read_bytes() and finals[2].read_bytes() == set_a[2]  # a mix
    bounded.run(_train_graph(name, seed=21, steps=2, checkpoint_every=2), timeout=300)  # no overwrite needed
    assert not journal.exists()
    leftovers = [p for final in finals for p in final.parent.iterdir() if "textloc-tmp" in p.name]
    assert leftovers == [] and load_adapter(finals[2]).metadata.steps == 2
    if outcome:
        assert f"the interrupted writing of adapter '{name}' was committed" in bounded.log_text()


# ------------------------------------------------------------------ 3. disk budget


def test_the_disk_budget_prunes_finished_checkpoints_and_refuses_when_spent(bounded):
    textloc = bounded.layout.models / "textloc"
    first = f"budget_a_{uuid.uuid4().hex[:4]}"
    bounded.run(_train_graph(first, seed=11, steps=2), timeout=300)
    assert (textloc / "checkpoints" / first).is_dir()
    # fill the budget with a finished adapter's checkpoint folder (older than everything else)
    filler = textloc / "checkpoints" / first / "filler"
    filler.mkdir()
    (filler / "state.safetensors").write_bytes(b"\0" * (BUDGET_MB << 20))
    os.utime(filler, (0, 0))
    second = f"budget_b_{uuid.uuid4().hex[:4]}"
    bounded.run(_train_graph(second, seed=12), timeout=300)
    assert not filler.exists() and (textloc / f"{second}.safetensors").is_file()
    assert "disk budget: removed models/textloc/checkpoints/" in bounded.log_text()
    # an unfinished training's checkpoints are never removed: the next training is refused
    ghost = textloc / "checkpoints" / f"unfinished_{uuid.uuid4().hex[:4]}" / "run"
    ghost.mkdir(parents=True)
    (ghost / "state.safetensors").write_bytes(b"\0" * (BUDGET_MB << 20))
    message = _error(bounded, _train_graph(f"budget_c_{uuid.uuid4().hex[:4]}", seed=13))
    assert "the pack's disk budget is spent" in message and "TEXTLOC_DISK_BUDGET_MB" in message, message
    assert ghost.exists()
    (ghost / "state.safetensors").unlink()
    ghost.rmdir()
    ghost.parent.rmdir()


# ------------------------------------------------------------------ soak: memory and disk stay bounded


def _soak_graph(kind: str, index: int, salt: int) -> dict:
    """One of the four kinds of work a server does with the pack, made unique by ``salt``."""
    seed = salt * 100 + index
    if kind == "train":
        return _train_graph(f"soak_{salt}_{index}", seed=seed, prior_images=2 if index == 0 else 0)
    if kind == "apply":
        return {
            "1": TINYWORLD,
            "2": apply_adapter("tinyworld_pair.safetensors"),
            "3": {
                "class_type": "CLIPTextEncode",
                "inputs": {"clip": ["2", 1], "text": "a <tw1> star and a <tw2> circle"},
            },
            "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {
                "class_type": "KSampler",
                "inputs": {
                    "model": ["2", 0],
                    "positive": ["3", 0],
                    "negative": ["4", 0],
                    "latent_image": ["5", 0],
                    "seed": seed,
                    "steps": 4,
                    "cfg": 4.0,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "denoise": 1.0,
                },
            },
            "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
            "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
        }
    if kind == "preview":
        return {
            "1": TINYWORLD,
            "2": attention_preview("a star on grass", seed=seed, steps=4, tokens="star"),
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        }
    return {
        "1": {"class_type": "TextLocTinyWorldReferences", "inputs": {"concept": "dotstar", "images": 6, "seed": seed}},
        "2": {
            "class_type": "TextLocTinyWorldReferences",
            "inputs": {"concept": "dotstar", "images": 6, "seed": seed + 1},
        },
        "3": score_images(["1", 0], ["2", 0], "a <tw1> star", f"textloc_test/soak_{seed}"),
    }


KINDS = ("train", "apply", "preview", "score")


@pytest.mark.slow
def test_soak_ten_mixed_workflows_keep_memory_and_disk_bounded(bounded):
    from_disk = lambda: sum(
        p.stat().st_size
        for folder in ("checkpoints", "prior_cache")  # noqa: E731
        for p in (bounded.layout.models / "textloc" / folder).rglob("*")
        if p.is_file()
    )
    salt = int(time.time()) % 100000
    for index, kind in enumerate(KINDS):  # warm-up: every kind once (imports, model loads, caches)
        bounded.run(_soak_graph(kind, index, salt), timeout=600)
    before, disk_before = _memory(bounded.server), from_disk()
    began = time.monotonic()
    salt += 1
    queued = [bounded.queue(_soak_graph(KINDS[index % 4], index, salt)) for index in range(10)]
    for prompt_id in queued:  # back to back: all ten were queued before the first finished
        bounded.client.wait_for_completion(prompt_id, timeout=600)
    took, after, disk_after = time.monotonic() - began, _memory(bounded.server), from_disk()
    growth = after["VmRSS"] / before["VmRSS"] - 1
    print(
        f"\nsoak: 10 workflows (train, apply, preview, score, ...) in {took:.0f} s; server RSS "
        f"{before['VmRSS'] / 2**20:.0f} -> {after['VmRSS'] / 2**20:.0f} MiB ({growth:+.1%}), peak "
        f"{after['VmHWM'] / 2**20:.0f} MiB; checkpoints + prior caches {disk_before / 2**20:.2f} -> "
        f"{disk_after / 2**20:.2f} MiB, budget {BUDGET_MB} MiB"
    )
    assert growth <= 0.10
    # the budget is checked before each training: at most the last training's checkpoints go over it
    last_training = sum(
        p.stat().st_size
        for p in (bounded.layout.models / "textloc" / "checkpoints" / f"soak_{salt}_8").rglob("*")
        if p.is_file()
    )
    assert disk_after <= (BUDGET_MB << 20) + last_training
