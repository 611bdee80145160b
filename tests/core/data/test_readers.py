"""Concept folder and manifest readers: round trips, and every bad folder gives a clear ValueError."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from textloc_core.data.concepts import Concept
from textloc_core.data.layout import default_class_word, default_token
from textloc_core.data.readers import read_concepts, read_folder, read_manifest, read_paper_folder


def save_photo(path, size=(8, 12), seed=0, mode="RGB"):
    """Write a random 8-bit photo; return it as the (3, H, W) tensor a reader should give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    if mode == "RGBA":
        Image.fromarray(np.concatenate([pixels, np.full((*size, 1), 200, np.uint8)], -1), "RGBA").save(path)
    else:
        Image.fromarray(pixels, "RGB").save(path)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def save_mask(path, plane):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(plane, dtype=np.uint8) * 255, "L").save(path)


def half_mask(size=(8, 12), left=True):
    plane = np.zeros(size, bool)
    plane[:, : size[1] // 2] = True
    return plane if left else ~plane


@pytest.fixture
def folder(tmp_path):
    """images/{1,2,10}.png with masks/doll/* on all and masks/bucket/* on two of them."""
    for seed, stem in enumerate(["10", "2", "1"]):
        save_photo(tmp_path / "images" / f"{stem}.png", seed=seed)
        save_mask(tmp_path / "masks" / "doll" / f"{stem}.png", half_mask())
        if stem != "2":
            save_mask(tmp_path / "masks" / "bucket" / f"{stem}.png", half_mask(left=False))
    return tmp_path


def test_folder_layout_reads_in_natural_order_with_default_concepts(folder):
    cs = read_folder(folder)
    assert [c.name for c in cs.concepts] == ["bucket", "doll"]
    assert cs.concept("doll").token == "<doll>" and cs.concept("doll").class_word == "doll"
    assert [item.source for item in cs.images] == ["images/1.png", "images/2.png", "images/10.png"]
    assert set(cs.images[1].masks) == {"doll"}  # the bucket is not in photo 2
    assert cs.images[0].mask_sources == {"doll": "masks/doll/1.png", "bucket": "masks/bucket/1.png"}
    assert torch.equal(cs.images[2].masks["doll"], torch.from_numpy(half_mask().astype(np.float32)))


def test_folder_overrides_and_resolution(folder):
    cs = read_folder(folder, tokens={"doll": "<sks1>"}, class_words={"bucket": "pail"}, resolution=4)
    assert cs.concept("doll").token == "<sks1>" and cs.concept("bucket").class_word == "pail"
    assert cs.images[0].image.shape == (3, 4, 4) and cs.images[0].masks["doll"].shape == (4, 4)
    with pytest.raises(ValueError, match=r"tokens: \['cat'\] are not concepts"):
        read_folder(folder, tokens={"cat": "<cat>"})
    with pytest.raises(ValueError, match="do not match the mask folders"):
        read_folder(folder, concepts=[Concept("doll", "<doll>", "doll")])


def test_default_tokens_are_one_lower_case_word():
    assert default_token("doll") == "<doll>"
    assert default_token("My Doll.v2") == "<my_doll_v2>"
    assert default_class_word("cat_figurine") == "cat figurine"


def test_hidden_and_os_files_are_skipped(folder):
    (folder / "images" / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "masks" / "doll" / "Thumbs.db").write_bytes(b"\x00")
    assert len(read_folder(folder).images) == 3


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "images" / "2.png").write_bytes(b"not a png"), r"images/2.png is not a readable image"),
        (lambda f: (f / "images" / "notes.txt").write_text("hi"), r"images/notes.txt is not an image file"),
        (lambda f: save_mask(f / "masks" / "doll" / "7.png", half_mask()), r"masks/doll/7.png has no photo images/7"),
        (lambda f: save_photo(f / "images" / "5.png"), r"image 2 \(images/5.png\) has no mask"),
        (lambda f: save_photo(f / "images" / "1.jpg"), r"images/1.jpg and images/1.png have the same name"),
        (
            lambda f: save_mask(f / "masks" / "doll" / "2.png", np.ones((4, 4), bool)),
            r"mask 1 of concept 'doll' \(masks/doll/2.png\) is 4x4 but its image images/2.png is 12x8",
        ),
        (
            lambda f: (f / "masks" / "doll" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n"),
            r"masks/doll/1.png is not a readable image",
        ),
    ],
)
def test_bad_folders_name_the_file_and_the_fix(folder, damage, message):
    damage(folder)
    with pytest.raises(ValueError, match=message):
        read_folder(folder)


def test_truncated_photo_is_reported(folder):
    data = (folder / "images" / "1.png").read_bytes()
    (folder / "images" / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="images/1.png is not a readable image"):
        read_folder(folder)


def test_not_a_concept_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a concept folder"):
        read_concepts(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        read_concepts(tmp_path / "nope")


# ----------------------------------------------------------------------------- manifests


def write_manifest(root, data, name="textloc.json"):
    path = root / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    return path


def manifest_folder(root):
    expected = save_photo(root / "photos" / "a.png", mode="RGBA")
    save_mask(root / "m" / "a_doll.png", half_mask())
    return expected


@pytest.mark.parametrize("name", ["textloc.json", "textloc.yaml", "manifest.yml"])
def test_manifest_round_trip(tmp_path, name):
    expected = manifest_folder(tmp_path)
    write_manifest(
        tmp_path,
        {
            "concepts": [{"name": "doll", "token": "<d1>", "init_word": "toy"}, {"name": "cat_figurine"}],
            "images": [{"file": "photos/a.png", "masks": {"doll": "m\\a_doll.png"}}],
        },
        name,
    )
    cs = read_concepts(tmp_path)
    assert cs.concepts == [
        Concept("doll", "<d1>", "doll", "toy"),
        Concept("cat_figurine", "<cat_figurine>", "cat figurine"),
    ]
    overridden = read_concepts(tmp_path, tokens={"doll": "<d2>"}, class_words={"cat_figurine": "figurine"}).concepts
    assert overridden == [Concept("doll", "<d2>", "doll", "toy"), Concept("cat_figurine", "<cat_figurine>", "figurine")]
    assert torch.equal(cs.images[0].image, expected)  # RGBA photo -> its RGB
    assert cs.images[0].source == "photos/a.png" and cs.images[0].mask_sources == {"doll": "m/a_doll.png"}


def test_manifest_invert_masks(tmp_path):
    manifest_folder(tmp_path)
    path = write_manifest(
        tmp_path,
        {
            "concepts": [{"name": "doll"}],
            "images": [{"file": "photos/a.png", "masks": {"doll": "m/a_doll.png"}}],
            "invert_masks": True,
        },
    )
    assert torch.equal(read_manifest(path).images[0].masks["doll"], torch.from_numpy((~half_mask()).astype(np.float32)))


@pytest.mark.parametrize(
    "hostile",
    [
        "../outside.png",
        "photos/../../outside.png",
        "/etc/passwd",
        "C:\\Windows\\x.png",
        "..\\x.png",
        "\\\\server\\share\\x.png",
    ],
)
def test_manifest_paths_cannot_leave_the_folder(tmp_path, hostile):
    (tmp_path / "data").mkdir()
    manifest_folder(tmp_path / "data")
    save_photo(tmp_path / "outside.png")
    path = write_manifest(
        tmp_path / "data",
        {"concepts": [{"name": "doll"}], "images": [{"file": hostile, "masks": {"doll": "m/a_doll.png"}}]},
    )
    with pytest.raises(ValueError, match=r"images\[0\].file: .* outside the dataset folder"):
        read_manifest(path)


def test_manifest_symlink_cannot_leave_the_folder(tmp_path):
    (tmp_path / "data").mkdir()
    manifest_folder(tmp_path / "data")
    save_photo(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", tmp_path / "data" / "link.png")
    path = write_manifest(
        tmp_path / "data",
        {"concepts": [{"name": "doll"}], "images": [{"file": "link.png", "masks": {"doll": "m/a_doll.png"}}]},
    )
    with pytest.raises(ValueError, match="outside the dataset folder through a link"):
        read_manifest(path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"concepts": [{"name": "doll", "tokn": "<d>"}], "images": []}, r"concepts\[0\]: unknown key\(s\) \['tokn'\]"),
        ({"concepts": [], "images": []}, "'concepts' must be a non-empty list"),
        (
            {"concepts": [{"name": "doll"}], "images": [{"file": "photos/a.png", "masks": {"cat": "m/a_doll.png"}}]},
            "names concept 'cat'",
        ),
        (
            {"concepts": [{"name": "doll"}], "images": [{"file": "photos/zz.png", "masks": {"doll": "m/a_doll.png"}}]},
            "photos/zz.png does not exist",
        ),
        ({"concepts": [{"name": 3}], "images": [{}]}, r"concepts\[0\].name: expected text"),
        (
            {"concepts": [{"name": "doll"}], "images": [{"file": "photos/a.png", "masks": {}}]},
            r"images\[0\].masks: expected",
        ),
        (
            {
                "concepts": [{"name": "doll"}],
                "images": [{"file": "photos/a.png", "masks": {"doll": "m/a_doll.png"}}],
                "invert_masks": "yes",
            },
            "invert_masks must be true or false",
        ),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_manifests(tmp_path, data, message):
    manifest_folder(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_manifest(write_manifest(tmp_path, data))


def test_manifest_syntax_errors_and_unsafe_yaml(tmp_path):
    (tmp_path / "textloc.json").write_text('{"concepts": [')
    with pytest.raises(ValueError, match="textloc.json is not valid JSON: line 1"):
        read_concepts(tmp_path)
    bad_yaml = tmp_path / "other" / "textloc.yaml"
    bad_yaml.parent.mkdir()
    bad_yaml.write_text("concepts: !!python/object/apply:os.system ['echo pwned']\nimages: []\n")
    with pytest.raises(ValueError, match="textloc.yaml is not valid YAML"):
        read_concepts(bad_yaml.parent)


def test_two_manifests_are_ambiguous(tmp_path):
    (tmp_path / "textloc.json").write_text("{}")
    (tmp_path / "textloc.yaml").write_text("{}")
    with pytest.raises(ValueError, match="several manifests"):
        read_concepts(tmp_path)


# ----------------------------------------------------------------------------- paper layout (synthetic)


def test_paper_layout_requires_every_mask(tmp_path):
    pair = tmp_path / "pot+penbag"
    for stem in ("a", "b"):
        save_photo(pair / "resized" / f"{stem}.png", mode="RGBA")
        save_mask(pair / "mask_1" / f"{stem}.png", half_mask())
    save_mask(pair / "mask_2" / "a.png", half_mask(left=False))
    with pytest.raises(
        ValueError, match=r"2 photos but 1 masks of 'penbag': pot\+penbag/resized/b.png has no mask in mask_2/"
    ):
        read_paper_folder(pair)
    save_mask(pair / "mask_2" / "b.png", half_mask(left=False))
    cs = read_concepts(pair)
    assert [c.token for c in cs.concepts] == ["<pot>", "<penbag>"]
    assert cs.images[1].mask_sources == {"pot": "pot+penbag/mask_1/b.png", "penbag": "pot+penbag/mask_2/b.png"}
