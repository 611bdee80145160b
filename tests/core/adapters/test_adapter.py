"""The textloc adapter file: round trip, integrity, cheap metadata; composing adapters for one model."""

from __future__ import annotations

import json

import pytest
import torch

from textloc_core.adapters import adapter as ad
from textloc_core.adapters.composition import composed_deltas, composed_embeddings
from textloc_core.training.config import TrainConfig

LAYERS = {
    "input_blocks.1.1.transformer_blocks.0.attn2": (16, 8),
    "middle_block.1.transformer_blocks.0.attn2": (32, 8),
    "output_blocks.3.1.transformer_blocks.0.attn2": (16, 8),
}


def base_weights(seed: int = 0, layers=LAYERS) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{layer}.{proj}": torch.randn(shape, generator=gen)
        for layer, shape in layers.items()
        for proj in ("to_k", "to_v")
    }


def make_adapter(seed: int = 1, token: str = "<doll1>", fingerprint: str = "base-a", weights=None) -> ad.Adapter:
    weights = weights if weights is not None else base_weights()
    gen = torch.Generator().manual_seed(seed)
    deltas = {k: 0.01 * torch.randn(w.shape, generator=gen) for k, w in weights.items()}
    meta = ad.AdapterMetadata(
        base_fingerprint=fingerprint,
        architecture=ad.architecture_signature(weights),
        concepts=[{"name": "doll", "token": token, "class_word": "doll", "init_word": None}],
        guidance="hard",
        train_config=TrainConfig(steps=7).to_json(),
        steps=7,
        data_hashes={"img0.png": "ab" * 32},
    )
    return ad.Adapter(deltas, {token: torch.randn(1, 8, generator=gen)}, meta)


def test_round_trip_is_exact(tmp_path):
    adapter = make_adapter()
    path = ad.save_adapter(adapter, tmp_path / "doll.safetensors")
    loaded = ad.load_adapter(path)
    assert loaded.kv_deltas.keys() == adapter.kv_deltas.keys()
    for key in adapter.kv_deltas:
        assert torch.equal(loaded.kv_deltas[key], adapter.kv_deltas[key])
    assert torch.equal(loaded.token_embeddings["<doll1>"], adapter.token_embeddings["<doll1>"])
    assert loaded.metadata == adapter.metadata
    assert TrainConfig.from_json(loaded.metadata.train_config).steps == 7


def test_metadata_is_readable_from_the_header_alone(tmp_path):
    path = ad.save_adapter(make_adapter(), tmp_path / "doll.safetensors")
    meta = ad.read_adapter_metadata(path)
    assert meta.tokens == ["<doll1>"] and meta.class_words == ["doll"] and meta.guidance == "hard"
    assert meta.concept_names == ["doll"] and meta.steps == 7 and meta.format_version == ad.FORMAT_VERSION


def test_truncated_adapter_gets_the_documented_error(tmp_path):
    path = ad.save_adapter(make_adapter(), tmp_path / "doll.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
        ValueError, match=r"adapter file .*doll.safetensors is truncated or corrupt.*re-save it or retrain"
    ):
        ad.load_adapter(path)


def test_newer_format_and_foreign_files_are_refused(tmp_path):
    from textloc_core.data import safe_io

    adapter = make_adapter()
    header = adapter.metadata.to_header()
    header["format_version"] = str(ad.FORMAT_VERSION + 1)
    safe_io.save_tensors(tmp_path / "new.safetensors", {"kv.x.to_k": torch.zeros(1)}, header)
    with pytest.raises(ValueError, match="update the textloc node pack"):
        ad.load_adapter(tmp_path / "new.safetensors")
    safe_io.save_tensors(tmp_path / "lora.safetensors", {"a": torch.zeros(1)}, {"format": "pt"})
    with pytest.raises(ValueError, match="not a textloc adapter"):
        ad.read_adapter_metadata(tmp_path / "lora.safetensors")
    header = adapter.metadata.to_header()
    del header["architecture"]
    safe_io.save_tensors(tmp_path / "partial.safetensors", {"a": torch.zeros(1)}, header)
    with pytest.raises(ValueError, match="lacks header fields"):
        ad.load_adapter(tmp_path / "partial.safetensors")


def test_inconsistent_adapters_are_rejected():
    adapter = make_adapter()
    with pytest.raises(ValueError, match="do not match the stored embeddings"):
        ad.Adapter(adapter.kv_deltas, {"<other>": torch.zeros(1, 8)}, adapter.metadata)
    bad = dict(adapter.kv_deltas)
    bad["input_blocks.1.1.transformer_blocks.0.attn2.to_k"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="has shape"):
        ad.Adapter(bad, adapter.token_embeddings, adapter.metadata)


def test_composing_scales_each_delta_and_leaves_the_base_alone():
    weights = base_weights()
    originals = {k: v.clone() for k, v in weights.items()}
    adapter = make_adapter()
    total = composed_deltas([(adapter, 0.5)], weights, "base-a")
    for key in weights:
        assert torch.allclose(total[key], 0.5 * adapter.kv_deltas[key])
        assert torch.equal(weights[key], originals[key])


def test_several_adapters_compose_as_a_sum():
    weights = base_weights()
    a, b = make_adapter(1, "<a>"), make_adapter(2, "<b>")
    total = composed_deltas([(a, 1.0), (b, 2.0)], weights, "base-a")
    key = "middle_block.1.transformer_blocks.0.attn2.to_v"
    assert torch.allclose(total[key], a.kv_deltas[key] + 2 * b.kv_deltas[key], atol=1e-6)
    assert set(composed_embeddings([a, b])) == {"<a>", "<b>"}
    with pytest.raises(ValueError, match="defined by two of the adapters"):
        composed_embeddings([a, make_adapter(3, "<a>")])


def test_other_base_model_needs_an_explicit_override():
    weights, adapter = base_weights(), make_adapter()
    with pytest.raises(ValueError) as info:
        composed_deltas([(adapter, 1.0)], weights, "base-b")
    message = str(info.value)
    assert "base-a" in message and "base-b" in message and "allow_base_mismatch" in message
    assert composed_deltas([(adapter, 1.0)], weights, "base-b", allow_base_mismatch=True)


def test_other_architecture_fails_clearly_even_when_forced():
    sdxl_like = {k: (v[0] * 2, v[1] * 4) for k, v in LAYERS.items()}
    with pytest.raises(ValueError, match="another model architecture.*is \\[16, 8\\] in the adapter but \\[32, 32\\]"):
        composed_deltas([(make_adapter(), 1.0)], base_weights(layers=sdxl_like), "base-a", allow_base_mismatch=True)
    fewer = dict(list(LAYERS.items())[:2])
    with pytest.raises(ValueError, match="adapter has 6 K/V layers, the model 4"):
        composed_deltas([(make_adapter(), 1.0)], base_weights(layers=fewer))


def test_header_values_are_strings_for_listing_tools(tmp_path):
    path = ad.save_adapter(make_adapter(), tmp_path / "doll.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        header = handle.metadata()
    assert json.loads(header["tokens"]) == ["<doll1>"]
    assert header["format"] == "textloc.adapter"


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["architecture", "concepts", "data_hashes", "steps", "format_version"]),
    json_values.map(json.dumps) | st.text(max_size=20),
)
def test_a_damaged_header_field_is_a_value_error_never_a_crash(tmp_path, field_name, value):
    from textloc_core.data import safe_io

    adapter = make_adapter()
    header = adapter.metadata.to_header()
    if header[field_name] == value:
        return
    header[field_name] = value
    tensors = {f"kv.{k}": v for k, v in adapter.kv_deltas.items()}
    tensors.update({f"emb.{t}": e for t, e in adapter.token_embeddings.items()})
    path = safe_io.save_tensors(tmp_path / "fuzz.safetensors", tensors, header)
    try:
        ad.load_adapter(path)
    except ValueError:
        pass


@pytest.mark.parametrize("where, value", [("delta", float("nan")), ("delta", float("inf")), ("token", float("-inf"))])
def test_non_finite_values_are_refused_on_load_naming_the_file(tmp_path, where, value):
    adapter = make_adapter()
    if where == "delta":
        next(iter(adapter.kv_deltas.values()))[0, 0] = value
    else:
        adapter.token_embeddings["<doll1>"][0, 3] = value
    path = ad.save_adapter(adapter, tmp_path / "broken_doll.safetensors")
    with pytest.raises(
        ValueError, match=r"adapter file broken_doll.safetensors holds NaN or infinite values"
    ) as caught:
        ad.load_adapter(path)
    assert str(tmp_path) not in str(caught.value)
    assert ("emb.<doll1>" if where == "token" else "kv.") in str(caught.value)
