"""Packaging metadata a user or the Comfy Registry relies on: deps in sync, registry fields set."""

import re
from pathlib import Path

import tomllib

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


FRONTEND = "comfyui-frontend-package"


def test_requirements_txt_matches_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the frontend entry declares what the workflows were checked with; pip must not install it
    runtime = [dep for dep in project["dependencies"] if _name(dep) != FRONTEND]
    assert sorted(runtime) == sorted(_requirement_lines(ROOT / "requirements.txt")), (
        "requirements.txt and [project].dependencies in pyproject.toml differ: edit both together"
    )


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
                f"comfyui-{version}.lock holds {name}=={lock.get(name)} but the pin file says {pinned}: regenerate the lock"
            )
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


def test_the_declared_frontend_range_is_the_frontends_the_workflows_were_checked_with():
    """Its bounds are the frontends of the oldest and newest supported ComfyUI (their locks),
    the ones the browser check loads every shipped workflow in."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = [dep for dep in deps if _name(dep) == FRONTEND]
    assert len(declared) == 1, f"[project].dependencies must declare {FRONTEND} once (the Registry's frontend range)"
    supported = _quickstart().SUPPORTED
    oldest = _pins(ROOT / "requirements" / f"comfyui-{supported[0]}.lock")[FRONTEND]
    newest = _pins(ROOT / "requirements" / f"comfyui-{supported[-1]}.lock")[FRONTEND]
    assert declared[0] == f"{FRONTEND}>={oldest},<={newest}", (
        f"the frontend range must be >={oldest},<={newest}, the frontends of ComfyUI {supported[0]} and {supported[-1]}"
    )


def test_license_is_declared_and_shipped():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "GPL-3.0-or-later"
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split("\n")[0].strip() == "GNU GENERAL PUBLIC LICENSE"
    assert "Version 3, 29 June 2007" in license_text and "END OF TERMS AND CONDITIONS" in license_text
    for name in project["license-files"]:
        assert (ROOT / name).is_file(), f"license-files names {name}, which does not exist"
    readme = (ROOT / "README.md").read_text()
    assert "## License" in readme and "GPL-3.0-or-later" in readme.split("## License", 1)[1]


def test_the_changelog_starts_with_the_version_in_pyproject():
    """The one version (pyproject.toml) has its section in CHANGELOG.md, newest first."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert releases and releases[0] == version, (
        f"CHANGELOG.md's newest section is {releases[:1]}, pyproject.toml says {version}: add a section for it"
    )
    keys = [tuple(int(n) for n in r.split(".")) for r in releases]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys), f"sections out of order: {releases}"
