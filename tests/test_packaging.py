"""Packaging metadata a user or the Comfy Registry relies on: deps in sync, registry fields set."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def _name(req: str) -> str:
    return re.split(r"[<>=!~; \[]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_txt_matches_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(_requirement_lines(ROOT / "requirements.txt")), (
        "requirements.txt and [project].dependencies in pyproject.toml differ: edit both together")


def test_dev_requirements_cover_runtime_and_test_tools():
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev
    names = {_name(r) for r in _requirement_lines(ROOT / "requirements-dev.txt")}
    assert "pytest" in names
    # the torch build is chosen per ComfyUI version (requirements/comfyui-<version>.txt)
    assert not names & {"torch", "torchvision", "torchaudio"}


def _pins(path: Path) -> dict[str, str]:
    return {_name(r): r.split("==", 1)[1] for r in _requirement_lines(path) if "==" in r}


def test_every_supported_comfyui_has_torch_pins_and_a_matching_lock():
    quickstart = _quickstart()
    for version in quickstart.SUPPORTED:
        pins = _pins(ROOT / "requirements" / f"comfyui-{version}.txt")
        assert {"torch", "torchvision"} <= pins.keys(), f"comfyui-{version}.txt must pin torch and torchvision"
        lock = _pins(ROOT / "requirements" / f"comfyui-{version}.lock")
        for name, pinned in pins.items():
            assert lock.get(name, "").split("+")[0] == pinned, (
                f"comfyui-{version}.lock holds {name}=={lock.get(name)} but the pin file says {pinned}: regenerate the lock")
    # 0.33.0 imports torchaudio at start-up; 0.3.64 runs without it
    assert "torchaudio" in _pins(ROOT / "requirements" / "comfyui-0.33.0.txt")


def _quickstart():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comfy_registry_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "requires-comfyui"):
        assert comfy.get(key), f"[tool.comfy] {key} is missing in pyproject.toml"
    # semantic X.Y.Z version, as the registry requires
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["project"]["version"])
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", data["project"]["name"])
    # the declared minimum is the oldest version CI tests
    assert comfy["requires-comfyui"] == f">={_quickstart().SUPPORTED[0]}"
