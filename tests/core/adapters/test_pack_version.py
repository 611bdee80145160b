"""The pack's version comes from pyproject.toml, adapter files record it, and a file written by
a newer major version is refused with the fix while older files (versioned or not) load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomllib

from textloc_core.adapters import adapter as ad
from textloc_core.adapters import pack_version as pv
from textloc_core.data import safe_io

ROOT = Path(__file__).resolve().parents[3]
# a real adapter file, written by the pack before adapters recorded a version ("unknown")
SHIPPED = ROOT / "textloc_core" / "tinyworld" / "adapters" / "tinyworld_pair.safetensors"


def _written_by(tmp_path: Path, version: str | None) -> Path:
    """The shipped adapter re-saved as if the pack at ``version`` wrote it (None: no field)."""
    adapter = ad.load_adapter(SHIPPED)
    header = dataclasses.replace(adapter.metadata, textloc_version=version or "").to_header()
    if version is None:
        del header["textloc_version"]
    tensors = {f"kv.{k}": v for k, v in adapter.kv_deltas.items()}
    tensors.update({f"emb.{t}": e for t, e in adapter.token_embeddings.items()})
    return safe_io.save_tensors(tmp_path / f"written_by_{version}.safetensors", tensors, header)


def test_the_version_is_the_one_in_pyproject():
    assert pv.PYPROJECT == ROOT / "pyproject.toml"
    declared = tomllib.loads(pv.PYPROJECT.read_text())["project"]["version"]
    assert pv.pack_version() == declared != pv.UNKNOWN


def test_an_unreadable_pyproject_gives_no_version(tmp_path):
    assert pv.version_from_pyproject(tmp_path / "missing.toml") is None
    (tmp_path / "no_version.toml").write_text('[project]\nname = "x"\n')
    assert pv.version_from_pyproject(tmp_path / "no_version.toml") is None
    (tmp_path / "broken.toml").write_text('[project\nversion = "1.0.0"\n')
    assert pv.version_from_pyproject(tmp_path / "broken.toml") is None
    (tmp_path / "good.toml").write_text('[project]\nname = "x"\nversion = "3.1.4"\n')
    assert pv.version_from_pyproject(tmp_path / "good.toml") == "3.1.4"


def test_a_new_adapter_records_the_pack_version(tmp_path):
    meta = ad.AdapterMetadata(base_fingerprint="b", architecture={}, concepts=[], guidance="hard")
    assert meta.textloc_version == pv.pack_version()
    adapter = ad.load_adapter(SHIPPED)
    adapter.metadata = dataclasses.replace(adapter.metadata, textloc_version=pv.pack_version())
    path = ad.save_adapter(adapter, tmp_path / "now.safetensors")
    assert ad.read_adapter_metadata(path).textloc_version == pv.pack_version()


def test_an_adapter_of_a_newer_major_version_is_refused_naming_file_versions_and_fix(tmp_path):
    ours = pv.major_of(pv.pack_version())
    newer = f"{ours + 1}.0.0"
    path = _written_by(tmp_path, newer)
    for read in (ad.load_adapter, ad.read_adapter_metadata):
        with pytest.raises(ValueError) as err:
            read(path)
        message = str(err.value)
        assert str(path) in message and newer in message and pv.pack_version() in message
        assert f"update the textloc node pack to {ours + 1}.0.0 or newer" in message


@pytest.mark.parametrize("version", [None, "unknown", "", "0.1.0", "0.99.3", "not-a-version"])
def test_older_unversioned_and_same_major_adapters_load(tmp_path, version):
    loaded = ad.load_adapter(_written_by(tmp_path, version))
    assert loaded.tokens == ad.load_adapter(SHIPPED).tokens


def test_the_rule_compares_major_numbers_only():
    pv.refuse_newer_major("a.safetensors", "1.9.9", running="1.0.0")
    pv.refuse_newer_major("a.safetensors", "0.3.0", running="1.2.0")
    pv.refuse_newer_major("a.safetensors", "2.0.0", running=pv.UNKNOWN)  # nothing to compare against
    with pytest.raises(ValueError, match=r"a\.safetensors was written by textloc 2\.0\.0.*this textloc 1\.4\.2"):
        pv.refuse_newer_major("a.safetensors", "2.0.0", running="1.4.2")
    assert pv.major_of("12.3.4") == 12 and pv.major_of("unknown") is None and pv.major_of("7") is None
