"""Hostile and careless inputs through a real ComfyUI over HTTP (issue 14, the node side).

1. Nodes read only ComfyUI's input folder and the folders the server owner lists
   (TEXTLOC_READ_ROOTS; the session's server lists ``comfy.read_root`` and the paper dataset),
   symlinks resolved; missing and not-allowed paths get one message; no file content in errors.
2. What cannot finish is refused before any work (resolution far above the model's native
   size), and Cancel stops the long phases (preview sampling, prior generation).
3. No adapter's files overwrite another's: per-adapter embedding folders, no silent
   replacement of another training's adapter, all of an adapter's files or none.
4. Names that would fail when the files are written fail before training.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tinyworld_graphs import TINYWORLD, attention_preview, concept_from_mask, concept_set, score_images, train_node

from textloc_core.adapters.adapter import load_adapter
from textloc_harness.comfy_launcher import ComfyError, ProgressWatcher

SECRET = "password = hunter2"
NOT_READABLE = "is not a file or folder this server lets nodes read"


def _concept_folder(root: Path, concept: str = "thing", size: int = 64, count: int = 2) -> Path:
    """images/ + masks/<concept>/ with ``count`` photos of a square."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / concept).mkdir(parents=True)
    for i in range(count):
        photo = np.full((size, size, 3), 40 + 30 * i, np.uint8)
        photo[size // 8 : size // 2, size // 8 : size // 2] = 230
        Image.fromarray(photo).save(root / "images" / f"{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[size // 8 : size // 2, size // 8 : size // 2] = 255
        Image.fromarray(mask).save(root / "masks" / concept / f"{i}.png")
    return root


def _folder_graph(folder: str, resolution: int = 64) -> dict:
    return {
        "1": {
            "class_type": "TextLocConceptFolder",
            "inputs": {"folder": folder, "resolution": resolution, "tokens": "", "class_words": ""},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }


def _error(comfy, graph: dict, timeout: float = 300) -> str:
    with pytest.raises(ComfyError) as caught:
        comfy.run(graph, timeout=timeout)
    return str(caught.value)


@pytest.fixture(scope="module")
def places(comfy, tmp_path_factory):
    """Folders inside and outside what the server lets nodes read."""
    unique = uuid.uuid4().hex[:6]
    outside = tmp_path_factory.mktemp("outside")  # not a listed root
    _concept_folder(outside / "set")
    (outside / "secret.cnf").write_text(f"[client]\n{SECRET}\n")
    inside = comfy.layout.input / f"sec_{unique}"
    _concept_folder(inside / "set")
    (inside / "secret.cnf").write_text(f"[client]\n{SECRET}\n")
    _concept_folder(inside / "filelink")  # one photo is a link to a file outside
    os.remove(inside / "filelink" / "images" / "0.png")
    os.symlink(outside / "set" / "images" / "0.png", inside / "filelink" / "images" / "0.png")
    _concept_folder(inside / "dirlink_inside")  # a masks folder linked out
    os.symlink(outside / "set" / "masks" / "thing", inside / "dirlink_inside" / "masks" / "other")
    os.symlink(outside / "set", inside / "dirlink")  # the folder itself is a link out
    _concept_folder(inside / "badmanifest")
    (inside / "badmanifest" / "textloc.yaml").write_text(f"concepts: [{{name: thing}}\n{SECRET}\n")
    listed = _concept_folder(comfy.read_root / f"set_{unique}")
    return {"outside": outside, "inside": inside, "rel": f"sec_{unique}", "listed": listed}


# ------------------------------------------------------------------ 1. confined reads


@pytest.mark.parametrize(
    "case", ["absolute_outside", "absolute_missing", "dotdot", "tilde", "missing", "dirlink", "secret_outside", "etc"]
)
def test_concept_folder_refuses_paths_outside_the_readable_folders_with_one_message(comfy, places, case):
    folder = {
        "absolute_outside": str(places["outside"] / "set"),
        "absolute_missing": str(places["outside"] / "no_such_set"),
        "dotdot": os.path.relpath(places["outside"] / "set", comfy.layout.input),
        "tilde": "~",
        "missing": f"{places['rel']}/no_such_set",
        "dirlink": f"{places['rel']}/dirlink",
        "secret_outside": str(places["outside"] / "secret.cnf"),
        "etc": "/etc",
    }[case]
    message = _error(comfy, _folder_graph(folder))
    assert NOT_READABLE in message and "TEXTLOC_READ_ROOTS" in message, message
    assert "hunter2" not in message


@pytest.mark.parametrize("case", ["filelink", "dirlink_inside"])
def test_concept_folder_refuses_a_link_inside_that_leads_out(comfy, places, case):
    message = _error(comfy, _folder_graph(f"{places['rel']}/{case}"))
    assert "holds a link that leads outside the readable folders" in message, message


def test_concept_folder_never_parses_other_files_or_echoes_their_content(comfy, places):
    message = _error(comfy, _folder_graph(f"{places['rel']}/secret.cnf"))
    assert "is a file but not a manifest" in message and "hunter2" not in message, message
    message = _error(comfy, _folder_graph(f"{places['rel']}/badmanifest"))
    assert "manifest textloc.yaml is not valid" in message and "line 2" in message, message
    assert "hunter2" not in message


def test_concept_folder_reads_the_input_folder_and_listed_roots(comfy, places):
    for folder in (f"{places['rel']}/set", str(places["inside"] / "set"), str(places["listed"])):
        result = comfy.run(_folder_graph(folder), timeout=120)
        assert len(result.all_files()) == 2, folder


def test_paper_pairs_load_when_the_owner_lists_the_dataset(comfy, paper_dataset):
    pairs = sorted(p.name for p in (paper_dataset / "multi_concept").iterdir() if p.is_dir())
    assert "cup+cat_figurine" in pairs
    for pair in pairs:
        result = comfy.run(_folder_graph(f"paper:{pair}"), timeout=300)
        assert len(result.all_files()) == len(
            list((paper_dataset / "multi_concept" / pair / "resized").glob("*.png"))
        ), pair


def _score_graph(feature_model: str) -> dict:
    """Score Images on two TinyWorld renders with ``feature_model``."""
    return {
        "1": {"class_type": "TextLocTinyWorldReferences", "inputs": {"concept": "dotstar", "images": 2, "seed": 1}},
        "2": score_images(
            ["1", 0],
            ["1", 0],
            "a star",
            f"textloc_test/{uuid.uuid4().hex[:6]}",
            feature_model=feature_model,
            kid_subset_size=2,
        ),
    }


def test_score_images_reads_a_clip_folder_only_where_nodes_may_read(comfy, places):
    graph = _score_graph
    for folder in ("/etc", str(places["outside"] / "no_clip_here"), str(places["outside"] / "secret.cnf")):
        message = _error(comfy, graph(folder))
        assert NOT_READABLE in message and "hunter2" not in message, message
    pickled = places["inside"] / "pickled_clip"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "clip"}')
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    message = _error(comfy, graph(f"{places['rel']}/pickled_clip"))
    assert "pickle" in message and "never loaded" in message, message


# ------------------------------------------------------------------ training graphs


def _train_graph(name: str, concept: str = "dotstar", seed: int = 0, steps: int = 1, **train) -> dict:
    """Train on three TinyWorld stars made into concept ``concept`` (token <tw7>) by Concept from Mask."""
    return {
        "1": TINYWORLD,
        "2": concept_set(images=3, seed=seed),
        "4": concept_from_mask(["2", 1], ["2", 2], concept, "<tw7>"),
        "3": train_node(["4", 0], name, steps=steps, **train),
    }


def _files_of(comfy, name: str) -> list[Path]:
    """Every file the pack may have written for adapter ``name`` (temporaries included)."""
    models = comfy.layout.models
    found = [p for p in (models / "textloc").glob(f"*{name}*") if p.is_file()]
    found += [p for p in (models / "loras" / "textloc").glob(f"*{name}*")]
    found += [p for p in (models / "embeddings" / "textloc").rglob("*") if name in str(p) and p.is_file()]
    found += [p for p in (models / "textloc" / "checkpoints").glob(f"{name}*")]
    return found


# ------------------------------------------------------------------ 2. refuse what cannot finish


def test_train_refuses_a_resolution_far_above_the_models_native_size_before_any_work(comfy):
    name = f"big_{uuid.uuid4().hex[:6]}"
    began = time.monotonic()
    message = _error(comfy, _train_graph(name, resolution=2048), timeout=120)
    assert "resolution: 2048 is more than 2x this model's native 64 px" in message, message
    assert "at most 128" in message and "allow_large_resolution" in message
    assert time.monotonic() - began < 60
    assert _files_of(comfy, name) == []


def test_train_refuses_large_photos_kept_at_their_size_and_trains_when_allowed(comfy, places):
    big = _concept_folder(places["inside"] / "big_photos", size=256)
    name = f"large_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name)
    graph["4"] = {
        "class_type": "TextLocConceptFolder",
        "inputs": {"folder": str(big), "resolution": 0, "tokens": "thing=<thing7>", "class_words": "thing=square"},
    }
    message = _error(comfy, graph)
    assert "resolution: 0 keeps the photos' size, 256 px" in message, message
    graph["3"]["inputs"].update(resolution=192, allow_large_resolution=True)
    comfy.run(graph, timeout=600)
    assert load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors").metadata.steps == 1


def _interrupt_when(comfy, graph: dict, started, settle: float = 0.0) -> float:
    """Queue ``graph``, Cancel ``settle`` s after ``started(watcher)`` holds; seconds from Cancel to its end."""
    with ProgressWatcher(comfy.client, graph) as watcher:
        prompt_id = comfy.queue(graph)
        deadline = time.monotonic() + 300
        while not started(watcher) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started(watcher), f"never started: {watcher.describe()}"
        time.sleep(settle)
        comfy.interrupt()
        cancelled = time.monotonic()
        with pytest.raises(ComfyError, match="interrupted"):
            comfy.client.wait_for_completion(prompt_id, timeout=240)
    return time.monotonic() - cancelled


def test_cancel_stops_attention_preview_sampling(comfy):
    seed = int(time.time()) % 100000
    graph = {
        "1": TINYWORLD,
        "2": attention_preview("a star on grass", seed=seed, steps=1000, tokens="star"),
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    # the preview reports its steps now: Cancel lands in the middle of the sampling
    took = _interrupt_when(comfy, graph, lambda w: w.node == "2" and w.step is not None and w.step[0] >= 2)
    assert took < 30, f"sampling went on {took:.0f} s after Cancel"
    after = {
        "1": {
            "class_type": "TextLocTinyWorldReferences",
            "inputs": {"concept": "dotstar", "images": 1, "seed": graph["2"]["inputs"]["seed"]},
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    comfy.run(after, timeout=60)  # the next prompt is not cancelled too


def test_cancel_stops_prior_generation_and_writes_nothing(comfy):
    name = f"prior_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name, prior_images=1000, seed=3)
    # 1000 prior images take minutes: 3 s after Train starts, it is generating them
    took = _interrupt_when(comfy, graph, lambda w: w.node == "3", settle=3.0)
    assert took < 30, f"prior generation went on {took:.0f} s after Cancel"
    assert not (comfy.layout.models / "textloc" / f"{name}.safetensors").exists()
    comfy.run(_train_graph(f"after_{uuid.uuid4().hex[:6]}"), timeout=300)  # the flag does not leak


# ------------------------------------------------------------------ 3. no overwriting


def test_embedding_files_of_two_adapters_never_collide(comfy):
    unique = uuid.uuid4().hex[:4]
    first, second = f"col{unique}", f"col{unique}_p"
    comfy.run(_train_graph(first, concept="p_q"), timeout=300)
    comfy.run(_train_graph(second, concept="q"), timeout=300)
    embeddings = comfy.layout.models / "embeddings" / "textloc"
    assert (embeddings / first / "p_q.safetensors").is_file() and (embeddings / second / "q.safetensors").is_file()
    # and the stock loader finds each under the name the node reports
    graph = {
        "1": TINYWORLD,
        "2": {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["1", 1], "text": f"a embedding:textloc/{first}/p_q star"},
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    comfy.run(graph, timeout=120)
    assert f"embedding:textloc/{first}/p_q does not exist" not in comfy.log_text()


def test_retraining_a_name_on_other_data_is_refused_unless_overwrite(comfy):
    name = f"same_{uuid.uuid4().hex[:6]}"
    adapter = comfy.layout.models / "textloc" / f"{name}.safetensors"
    comfy.run(_train_graph(name, seed=1), timeout=300)
    before = adapter.read_bytes()
    message = _error(comfy, _train_graph(name, seed=2))
    assert f"adapter_name: {name!r} already names an adapter" in message and "photos or masks" in message, message
    assert "overwrite" in message and adapter.read_bytes() == before
    # the same training continued (same data and settings, more steps) replaces it without asking
    comfy.run(_train_graph(name, seed=1, steps=2), timeout=300)
    assert load_adapter(adapter).metadata.steps == 2
    # and so does running it again (here with only checkpoint_every changed, so ComfyUI does not
    # answer from its cache): it resumes at the last step and writes the same adapter again
    comfy.run(_train_graph(name, seed=1, steps=2, checkpoint_every=2), timeout=300)
    assert load_adapter(adapter).metadata.steps == 2
    # the same data with another setting is another training, and the message names the setting
    message = _error(comfy, _train_graph(name, seed=1, steps=2, learning_rate=1e-3))
    assert "settings (learning_rate: 0.005 in that adapter, 0.001 now)" in message, message
    # other data with overwrite on replaces the adapter, and the old concept's embedding goes
    comfy.run(_train_graph(name, seed=2, concept="other", overwrite=True), timeout=300)
    assert load_adapter(adapter).metadata.concept_names == ["other"]
    folder = comfy.layout.models / "embeddings" / "textloc" / name
    assert sorted(p.name for p in folder.iterdir()) == ["other.safetensors"]


def test_an_adapters_files_appear_together_or_not_at_all(comfy):
    name = f"whole_{uuid.uuid4().hex[:6]}"
    blocker = comfy.layout.models / "loras" / "textloc" / f"{name}.safetensors"
    blocker.mkdir(parents=True)  # the LoRA cannot be put in place
    message = _error(comfy, _train_graph(name))
    assert "already has files" in message, message  # refused up front
    with pytest.raises(ComfyError):
        comfy.run(_train_graph(name, overwrite=True), timeout=300)  # trains, then cannot rename the LoRA
    written = [p for p in _files_of(comfy, name) if p != blocker and "checkpoints" not in str(p)]
    assert written == [], written  # no adapter, no embedding, no temporary left
    blocker.rmdir()


# ------------------------------------------------------------------ 4. names that would fail late


def test_long_names_fail_before_training(comfy, places):
    message = _error(comfy, _train_graph(f"n_{uuid.uuid4().hex[:6]}", concept="c" * 250))
    assert "name 'cccc" in message and "250 bytes long" in message and "at most 128" in message, message
    long_adapter = "a" * 250
    message = _error(comfy, _train_graph(long_adapter))
    assert "adapter_name" in message and "250 bytes long" in message, message
    assert _files_of(comfy, long_adapter) == []
    # a concept named by a folder: Train refuses it before any step
    concept = "m" * 200
    folder = _concept_folder(places["inside"] / "long_concept", concept=concept)
    name = f"lc_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name)
    graph["4"] = {
        "class_type": "TextLocConceptFolder",
        "inputs": {
            "folder": str(folder),
            "resolution": 64,
            "tokens": f"{concept}=<long7>",
            "class_words": f"{concept}=square",
        },
    }
    message = _error(comfy, graph)
    assert "concept name" in message and "200 bytes long" in message, message
    assert _files_of(comfy, name) == []


@pytest.mark.parametrize(
    "adapter_name, expected",
    [
        ("my adapter", "which a prompt's embedding:NAME cannot carry"),
        ("x(1)", "which a prompt's embedding:NAME cannot carry"),
    ],
)
def test_adapter_names_a_prompt_cannot_use_are_refused(comfy, adapter_name, expected):
    assert expected in _error(comfy, _train_graph(adapter_name))


def test_concepts_sharing_an_embedding_file_are_refused(comfy):
    graph = _train_graph(f"share_{uuid.uuid4().hex[:6]}", concept="a+b")
    graph["5"] = concept_from_mask(["2", 1], ["2", 2], "ab", "<tw8>", concepts=["4", 0])
    graph["3"]["inputs"]["concepts"] = ["5", 0]
    message = _error(comfy, graph)
    assert "would share the embedding file ab.safetensors" in message, message


# ------------------------------------------------------------------ non-finite values, several-word class words


def test_non_finite_widget_values_are_refused_naming_the_input(comfy):
    name = f"nan_{uuid.uuid4().hex[:6]}"
    message = _error(comfy, _train_graph(name, attention_weight=float("nan")), timeout=120)
    assert "attention_weight: nan is not a finite number" in message, message
    assert _files_of(comfy, name) == []


def test_a_paper_pair_with_a_two_word_class_trains_with_default_settings(comfy, paper_dataset):
    """cup+cat_figurine: the class word "cat figurine" is two vocabulary pieces; with init_word
    left empty the token starts from their mean instead of failing."""
    name = f"paper_{uuid.uuid4().hex[:6]}"
    graph = _train_graph(name)
    # the photos at TinyWorld's native size; every other Concept Folder / Train setting as shipped
    graph["4"] = {
        "class_type": "TextLocConceptFolder",
        "inputs": {"folder": "paper:cup+cat_figurine", "resolution": 64, "tokens": "", "class_words": ""},
    }
    comfy.run(graph, timeout=600)
    adapter = load_adapter(comfy.layout.models / "textloc" / f"{name}.safetensors")
    assert sorted(c["class_word"] for c in adapter.metadata.concepts) == ["cat figurine", "cup"]
    assert len(adapter.token_embeddings) == 2
