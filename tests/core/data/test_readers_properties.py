"""Property-based tests (hypothesis) of the concept folder and manifest readers.

Properties: whatever a valid folder or manifest holds (stems, sizes, mask encodings,
which concept is in which photo) is read back exactly; and whatever garbage a manifest or
image file holds, the reader answers with a ValueError, never another exception.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from textloc_core.data.layout import natural_key
from textloc_core.data.readers import read_concepts, read_manifest

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ("L", "RGB", "RGBA", "1")


@st.composite
def datasets(draw):
    """A small dataset: photos with random stems/sizes, masks of 1-3 concepts in random encodings."""
    names = draw(
        st.lists(st.sampled_from(["doll", "bucket", "cat_figurine", "cup"]), min_size=1, max_size=3, unique=True)
    )
    stems = draw(
        st.lists(
            st.text("abcXYZ0123456789_-", min_size=1, max_size=6).filter(lambda s: not s.startswith(".")),
            min_size=1,
            max_size=4,
            unique_by=lambda s: s.lower(),  # case-insensitive file systems
        )
    )
    items = []
    for stem in stems:
        h, w = draw(st.integers(2, 10)), draw(st.integers(2, 10))
        seed = draw(st.integers(0, 2**16))
        present = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        masks = {}
        for name in present:
            plane = np.random.default_rng(seed + len(masks)).random((h, w)) < 0.5
            masks[name] = (plane, draw(st.sampled_from(ENCODINGS)))
        items.append({"stem": stem, "size": (h, w), "seed": seed, "masks": masks})
    return names, items


def write_mask(path: Path, plane: np.ndarray, encoding: str) -> None:
    u8 = plane.astype(np.uint8) * 255
    if encoding == "L":
        picture = Image.fromarray(u8, "L")
    elif encoding == "RGB":
        picture = Image.fromarray(np.stack([u8] * 3, -1), "RGB")
    elif encoding == "1":
        picture = Image.fromarray(plane)
    else:  # RGBA with the mask in alpha over noise (a fully opaque one is read from colour)
        colour = np.random.default_rng(7).integers(0, 256, plane.shape + (3,), dtype=np.uint8)
        if plane.all():
            colour[:] = 255
        picture = Image.fromarray(np.concatenate([colour, u8[..., None]], -1), "RGBA")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def write_photo(path: Path, size, seed) -> torch.Tensor:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def check_round_trip(cs, names, items, order):
    assert sorted(c.name for c in cs.concepts) == sorted(names)
    assert len(cs.images) == len(items)
    for got, index in zip(cs.images, order):
        item = items[index]
        assert torch.equal(got.image, item["photo"])
        assert set(got.masks) == set(item["masks"])
        for name, (plane, _) in item["masks"].items():
            assert torch.equal(got.masks[name], torch.from_numpy(plane.astype(np.float32)))


@SETTINGS
@given(datasets())
def test_folder_layout_round_trips(dataset):
    names, items = dataset
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for item in items:
            item["photo"] = write_photo(root / "images" / f"{item['stem']}.png", item["size"], item["seed"])
            for name, (plane, encoding) in item["masks"].items():
                write_mask(root / "masks" / name / f"{item['stem']}.png", plane, encoding)
        for name in names:  # a concept no photo shows still has its folder
            (root / "masks" / name).mkdir(parents=True, exist_ok=True)
        cs = read_concepts(root)
        order = sorted(range(len(items)), key=lambda i: natural_key(items[i]["stem"] + ".png"))
        check_round_trip(cs, names, items, order)
        assert [c.token for c in cs.concepts] == [f"<{c.name}>" for c in cs.concepts]


@SETTINGS
@given(datasets(), st.sampled_from(["textloc.json", "textloc.yaml"]), st.sampled_from(["", "sub/", "a/b/"]))
def test_manifest_round_trips_in_manifest_order(dataset, manifest_name, prefix):
    names, items = dataset
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entries = []
        for number, item in enumerate(items):
            photo = f"{prefix}p{number}_{item['stem']}.png"
            item["photo"] = write_photo(root / photo, item["size"], item["seed"])
            masks = {}
            for name, (plane, encoding) in item["masks"].items():
                masks[name] = f"{prefix}m/{name}/{number}.png"
                write_mask(root / masks[name], plane, encoding)
            entries.append({"file": photo, "masks": masks})
        data = {"concepts": [{"name": n} for n in names], "images": entries}
        if manifest_name.endswith(".json"):
            (root / manifest_name).write_text(json.dumps(data))
        else:
            import yaml

            (root / manifest_name).write_text(yaml.safe_dump(data))
        cs = read_concepts(root)
        check_round_trip(cs, names, items, list(range(len(items))))
        assert [c.name for c in cs.concepts] == names


segments = st.text("ab.\\/:C", min_size=1, max_size=4)


@SETTINGS
@given(st.lists(segments, min_size=1, max_size=4), st.sampled_from(["", "/", "\\", "C:", "C:\\", "\\\\srv\\"]))
def test_manifest_paths_never_escape(parts, lead):
    """Any path with '..' or an absolute start is refused; any other stays inside the folder."""
    raw = lead + "/".join(parts)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        write_photo(root / "ok.png", (3, 3), 0)
        write_mask(root / "m.png", np.eye(3, dtype=bool), "L")
        (root / "textloc.json").write_text(
            json.dumps({"concepts": [{"name": "doll"}], "images": [{"file": raw, "masks": {"doll": "m.png"}}]})
        )
        escaping = lead != "" or ".." in raw.replace("\\", "/").split("/") or raw.startswith(("/", "\\"))
        try:
            read_manifest(root / "textloc.json")
        except ValueError as error:
            if escaping:
                assert "outside the dataset folder" in str(error)
            return
        # Read successfully: the path must have named a file inside the folder.
        assert not escaping


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["concepts", "images", "name", "file", "masks", "token", "x"]), children, max_size=4
        )
    ),
    max_leaves=12,
)


@SETTINGS
@given(json_values)
def test_any_manifest_document_gives_a_value_error(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "textloc.json"
        path.write_text(json.dumps(document))
        with pytest.raises(ValueError):
            read_manifest(path)


@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 400))
def test_corrupt_image_files_give_a_value_error_naming_them(noise, cut):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photo(root / "images" / "0.png", (6, 6), 1)
        write_mask(root / "masks" / "doll" / "0.png", np.eye(6, dtype=bool), "L")
        # Either a valid PNG cut short (with noise appended) or pure noise.
        data = (root / "images" / "0.png").read_bytes()
        assume(cut < len(data) - 12)  # keep the damage inside the pixel data or header
        (root / "images" / "0.png").write_bytes(data[:cut] + noise)
        try:
            read_concepts(root)
        except ValueError as error:
            assert "images/0.png" in str(error)
