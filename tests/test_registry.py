"""The Comfy Registry's own tool (comfy-cli, scripts/registry_check.py) accepts pyproject.toml
without a warning, and the archive it would publish holds what a user needs and nothing of
development. comfy-cli is installed once into its own environment (.textloc/registry-tools)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _registry_check():
    spec = importlib.util.spec_from_file_location("registry_check", ROOT / "scripts" / "registry_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _registry_check()


@pytest.fixture(scope="module")
def comfy_cli() -> Path:
    try:
        return check.ensure_tools()
    except check.ToolError as err:
        pytest.fail(str(err))


@pytest.mark.slow
def test_comfy_node_validate_passes_without_a_warning(comfy_cli):
    output, problems = check.validate(comfy_cli)
    assert not problems, f"comfy node validate:\n{output}"


@pytest.mark.slow
def test_validation_fails_on_a_field_the_registry_would_drop(comfy_cli, tmp_path):
    text = (ROOT / "pyproject.toml").read_text()
    assert '"Environment :: GPU :: NVIDIA CUDA"' in text
    (tmp_path / "pyproject.toml").write_text(text.replace("GPU :: NVIDIA CUDA", "GPU :: Any Card"))
    _, problems = check.validate(comfy_cli, tmp_path)
    assert any("Invalid Environment classifier" in p for p in problems), problems


@pytest.mark.slow
def test_the_published_archive_holds_what_a_user_needs(comfy_cli):
    names, _repository = check.build_archive(comfy_cli)
    assert not check.archive_problems(names, check.tracked_files())
    for needed in (
        "LICENSE",
        "pyproject.toml",
        "textloc_core/tinyworld/adapters/tinyworld_pair.safetensors",
        "textloc_core/tinyworld/weights/unet/diffusion_pytorch_model.safetensors",
        "textloc_core/tinyworld/weights/tokenizer/NOTICE.md",
        "workflows/generate_with_adapter.json",
    ):
        assert needed in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/", "scripts/"))]


def test_the_archive_rules_catch_a_missing_weight_and_a_test_file():
    tracked = check.tracked_files()
    shipped = [f for f in tracked if not f.startswith(check.MUST_NOT_SHIP)]
    weight = "textloc_core/tinyworld/weights/vae/diffusion_pytorch_model.safetensors"
    problems = check.archive_problems([f for f in shipped if f != weight] + ["tests/conftest.py"], tracked)
    assert f"missing from the archive: {weight}" in problems
    assert "in the archive but development-only: tests/conftest.py" in problems
    screenshot = "docs/screenshots/train_sdxl.png"  # the README shows it
    assert f"missing from the archive: {screenshot}" in check.archive_problems(
        [f for f in shipped if f != screenshot], tracked
    )
