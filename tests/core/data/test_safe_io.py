"""safe_io: names stay in their folder, writes are atomic, loading never unpickles."""

from __future__ import annotations

import os
import pickle
import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from textloc_core.data import safe_io

HOSTILE_NAMES = [
    "../evil",
    "..",
    ".",
    "a/../../b",
    "sub/dir",
    "back\\slash",
    "/etc/passwd",
    "C:evil",
    "C:\\Windows",
    "nul\x00byte",
    "line\nbreak",
    "",
    "   ",
    " lead",
    "a..b",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_rejected_with_the_input_named(name):
    with pytest.raises(ValueError) as info:
        safe_io.check_name(name, "adapter name")
    assert "adapter name" in str(info.value)


@pytest.mark.parametrize("name", ["doll", "my_concept-2", "v1.5", "ünïcode"])
def test_plain_names_pass(name):
    assert safe_io.check_name(name) == name


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=20))
def test_whatever_is_typed_a_joined_path_stays_inside_root(tmp_path_factory, text):
    root = tmp_path_factory.getbasetemp() / "root"
    try:
        path = safe_io.safe_join(root, text)
    except ValueError:
        return
    assert safe_io.is_inside(root, path)
    assert path.parent.resolve() == root.resolve()


def test_symlink_out_of_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        safe_io.safe_join(root, "link", "file.txt")


@given(st.text(alphabet=string.printable + "<>äß", max_size=12))
def test_safe_filename_from_a_token_is_a_legal_name(text):
    try:
        name = safe_io.safe_filename(text)
    except ValueError:
        assert not any(c.isalnum() for c in text)
        return
    assert safe_io.check_name(name) == name


def test_token_brackets_are_dropped_from_file_names():
    assert safe_io.safe_filename("<doll1>") == "doll1"


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    safe_io.atomic_write_text(target, "old")
    safe_io.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    safe_io.atomic_write_text(target, "old")

    def explode(handle):
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        safe_io.atomic_write(target, explode)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_temp_names_are_recognisable(tmp_path):
    tmp = safe_io.temp_path_for(tmp_path / "x.safetensors")
    assert safe_io.is_temp_name(tmp.name) and tmp.parent == tmp_path
    assert not safe_io.is_temp_name("x.safetensors")


def test_tensors_round_trip_with_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).to(torch.bfloat16)}
    shared = torch.randn(4)
    tensors["d"], tensors["e"] = shared, shared  # shared storage must not break saving
    safe_io.save_tensors(tmp_path / "t.safetensors", tensors, {"k": "v"})
    loaded, meta = safe_io.load_tensors(tmp_path / "t.safetensors")
    assert meta["k"] == "v" and safe_io.read_metadata(tmp_path / "t.safetensors")["k"] == "v"
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)


def test_truncated_and_bit_flipped_files_are_reported(tmp_path):
    path = tmp_path / "t.safetensors"
    safe_io.save_tensors(path, {"a": torch.randn(64)})
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt.*: re-save"):
        safe_io.load_tensors(path)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # inside the tensor bytes: safetensors alone would not notice
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        safe_io.load_tensors(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        safe_io.read_metadata(path)
    with pytest.raises(FileNotFoundError):
        safe_io.load_tensors(tmp_path / "missing.safetensors")


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_legacy_loader_refuses_pickled_code_but_reads_tensors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"string_to_param": {"*": torch.ones(1, 8)}}, good)
    assert torch.equal(safe_io.load_legacy_tensor_file(good)["string_to_param"]["*"], torch.ones(1, 8))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match="never unpickled"):
        safe_io.load_legacy_tensor_file(evil)
