"""Readers never echo a file's contents in errors and never follow links out of the dataset
(issue 14), for Python API callers as for nodes."""

from __future__ import annotations

import json
import os

import pytest
from test_readers import half_mask, manifest_folder, save_mask, save_photo

from textloc_core.data.readers import read_concepts, read_folder, read_manifest, read_paper_folder

SECRET = "hunter2-secret-value"

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="symlinks")


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_yaml_syntax_error_gives_line_and_column_only(tmp_path):
    (tmp_path / "textloc.yaml").write_text(f"concepts: [a\npassword = {SECRET}: [\n")
    message = error_of(read_concepts, tmp_path)
    assert "is not valid YAML: line" in message and "column" in message, message
    assert SECRET not in message and "password" not in message, message


def test_non_utf8_manifest_does_not_quote_the_byte(tmp_path):
    (tmp_path / "textloc.json").write_bytes(b'{"a": "\xff\xfe secret"}')
    message = error_of(read_concepts, tmp_path)
    assert "not UTF-8" in message and "byte offset" in message and "xff" not in message, message


@pytest.mark.parametrize("name", ["secret.cnf", "notes.yaml", "config.json"])
def test_only_manifest_names_are_parsed(tmp_path, name):
    path = tmp_path / name
    path.write_text(f"password: {SECRET}\n")
    message = error_of(read_concepts, path)
    assert "is not a concept folder or manifest" in message and SECRET not in message, message


@pytest.mark.parametrize(
    "data",
    [
        {"concepts": [{"name": "doll", SECRET: 1}], "images": []},
        {"concepts": [{"name": [SECRET]}], "images": []},
        {"concepts": [{"name": "doll"}], "images": [], "invert_masks": SECRET},
        {"concepts": [{"name": "doll"}], "images": [], "mask_channel": SECRET * 3},
        {"concepts": [{"name": "doll"}], "images": [{"file": "photos/a.png", "masks": [SECRET]}]},
        {"concepts": [{"name": "doll"}], "images": [{"file": "/etc/" + SECRET * 3, "masks": {"doll": "m/a_doll.png"}}]},
        {"concepts": [{"name": "doll"}], "images": [{"file": {"x": SECRET}, "masks": {"doll": "m/a_doll.png"}}]},
        {"concepts": [{"name": "doll"}], "images": [{"file": "photos/a.png", "masks": {SECRET * 3: "m/a_doll.png"}}]},
        [SECRET],
    ],
)
def test_manifest_values_are_not_echoed_at_length(tmp_path, data):
    manifest_folder(tmp_path)
    (tmp_path / "textloc.json").write_text(json.dumps(data))
    message = error_of(read_manifest, tmp_path / "textloc.json")
    assert SECRET * 2 not in message, message
    assert len(message) < 400, message


def folder_layout(root):
    save_photo(root / "images" / "a.png")
    save_mask(root / "masks" / "doll" / "a.png", half_mask())


@needs_symlinks
@pytest.mark.parametrize("linked", ["images/b.png", "masks/doll/b.png", "images"])
def test_folder_layout_refuses_links_out(tmp_path, linked):
    outside, root = tmp_path / "outside", tmp_path / "data"
    save_photo(outside / "b.png")
    save_photo(outside / "images" / "b.png")
    folder_layout(root)
    target = root / linked
    if linked == "images":
        target = root / "images"
        for entry in list(target.iterdir()):
            entry.unlink()
        target.rmdir()
        os.symlink(outside / "images", target)
    else:
        os.symlink(outside / "b.png", target)
    message = error_of(read_folder, root)
    assert "leads outside the dataset folder" in message, message
    assert str(outside) not in message, message


@needs_symlinks
def test_links_inside_the_dataset_are_fine(tmp_path):
    root = tmp_path / "data"
    folder_layout(root)
    os.symlink(root / "images" / "a.png", root / "images" / "b.png")
    os.symlink(root / "masks" / "doll" / "a.png", root / "masks" / "doll" / "b.png")
    assert len(read_folder(root).images) == 2


@needs_symlinks
def test_paper_layout_refuses_links_out(tmp_path):
    pair = tmp_path / "data" / "pot+penbag"
    for sub in ("resized", "mask_1", "mask_2"):
        (pair / sub).mkdir(parents=True)
    save_photo(pair / "resized" / "0.png")
    save_mask(pair / "mask_1" / "0.png", half_mask())
    save_mask(pair / "mask_2" / "0.png", half_mask(left=False))
    assert len(read_paper_folder(pair).images) == 1
    save_mask(tmp_path / "secret.png", half_mask())
    (pair / "mask_2" / "0.png").unlink()
    os.symlink(tmp_path / "secret.png", pair / "mask_2" / "0.png")
    message = error_of(read_paper_folder, pair)
    assert "pot+penbag/mask_2/0.png leads outside the dataset folder" in message, message


@needs_symlinks
def test_manifest_linked_out_is_refused(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"password": SECRET}))
    root = tmp_path / "data"
    root.mkdir()
    os.symlink(outside, root / "textloc.json")
    message = error_of(read_concepts, root)
    assert "leads outside the dataset folder" in message and SECRET not in message, message
