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
    assert {"pytest", "torch"} <= names
    # torchaudio from PyPI breaks transformers' imports next to torch 2.14 (see DEVELOPERS.md)
    assert "torchaudio" not in names


def test_comfy_registry_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "requires-comfyui"):
        assert comfy.get(key), f"[tool.comfy] {key} is missing in pyproject.toml"
    # semantic X.Y.Z version, as the registry requires
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["project"]["version"])
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", data["project"]["name"])
    assert comfy["requires-comfyui"].startswith(">=")
