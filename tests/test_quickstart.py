"""scripts/quickstart.py: where ComfyUI comes from, what is reused, and what a user is told.

The full set-up (virtual environment, pip) is what CI runs for real through this script;
these tests cover its decisions on small fake trees in pytest's tmp folder.
"""

import importlib.util
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def quickstart(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("quickstart_under_test", ROOT / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STATE", tmp_path / "state")
    return module


def _snapshot(folder: Path, version: str) -> Path:
    """A tarball laid out like upstream's: ComfyUI/main.py + comfyui_version.py."""
    tree = folder / "src" / "ComfyUI"
    tree.mkdir(parents=True)
    (tree / "main.py").write_text("print('comfy')\n")
    (tree / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (tree / "requirements.txt").write_text("torch\ntorchvision\nnumpy>=1.25.0\ntorchaudio\n")
    tarball = folder / f"ComfyUI-{version}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="ComfyUI")
    return tarball


def test_lays_out_a_snapshot_once_and_reuses_it(quickstart, tmp_path, monkeypatch):
    _snapshot(tmp_path, "0.33.0")
    monkeypatch.setenv("TEXTLOC_COMFYUI_SNAPSHOTS", str(tmp_path))
    comfy = quickstart.ensure_comfyui("0.33.0")
    assert comfy == tmp_path / "state" / "ComfyUI-0.33.0"
    assert quickstart.tree_version(comfy) == "0.33.0"
    (comfy / "marker").write_text("kept")
    assert quickstart.ensure_comfyui("0.33.0") == comfy and (comfy / "marker").is_file()  # reused
    assert not [p for p in comfy.parent.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_a_half_laid_out_tree_is_replaced(quickstart, tmp_path, monkeypatch):
    _snapshot(tmp_path, "0.3.64")
    monkeypatch.setenv("TEXTLOC_COMFYUI_SNAPSHOTS", str(tmp_path))
    broken = tmp_path / "state" / "ComfyUI-0.3.64"
    broken.mkdir(parents=True)
    (broken / "requirements.txt").write_text("")  # no main.py: an interrupted copy
    assert (quickstart.ensure_comfyui("0.3.64") / "main.py").is_file()


def test_without_snapshot_or_network_the_error_says_what_to_do(quickstart, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTLOC_COMFYUI_SNAPSHOTS", str(tmp_path / "none"))
    monkeypatch.setattr(quickstart, "UPSTREAM", str(tmp_path / "no-such-repository"))
    with pytest.raises(quickstart.SetupError, match="--comfyui-dir"):
        quickstart.ensure_comfyui("0.33.0")
    assert not (tmp_path / "state" / "ComfyUI-0.33.0").exists()


def test_a_users_own_comfyui_is_used_as_it_is(quickstart, tmp_path):
    own = tmp_path / "MyComfy"
    own.mkdir()
    with pytest.raises(quickstart.SetupError, match="no main.py"):
        quickstart.own_comfyui(str(own))
    (own / "main.py").write_text("")
    assert quickstart.own_comfyui(str(own)) == own.resolve()
    assert not (tmp_path / "state").exists()  # nothing laid out


def test_untested_versions_take_the_nearest_older_pins(quickstart):
    assert quickstart.pins_version_for("0.33.0") == "0.33.0"
    assert quickstart.pins_version_for("0.20.1") == "0.3.64"
    assert quickstart.pins_version_for("0.40.0") == "0.33.0"
    assert quickstart.pins_version_for("0.3.10") == "0.3.64"


def test_comfyui_torch_lines_are_left_to_the_pin_file(quickstart, tmp_path):
    tree = tmp_path / "c"
    tree.mkdir()
    (tree / "requirements.txt").write_text(
        "torch\ntorchsde\ntorchvision>=0.20\nnumpy>=1.25.0\ntorchaudio ; sys_platform == 'linux'\n"
    )
    out = tmp_path / "r.txt"
    quickstart.comfy_requirements_without_torch(tree, out)
    assert out.read_text().split() == ["torchsde", "numpy>=1.25.0"]


def test_an_unsupported_version_is_refused_before_any_work(quickstart, capsys, monkeypatch):
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    assert quickstart.main(["setup", "--comfyui-version", "0.1.0"]) == 2
    assert "choose one of 0.3.64, 0.33.0" in capsys.readouterr().out


def test_pip_shows_its_progress_during_the_long_first_install(quickstart, tmp_path):
    cmd = quickstart.pip_install_command(
        tmp_path / "venv", [tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "c.lock"
    )
    assert "--quiet" not in cmd and "-q" not in cmd
    assert cmd[cmd.index("--progress-bar") + 1] == "on"
    assert cmd[-6:] == ["-r", str(tmp_path / "a.txt"), "-r", str(tmp_path / "b.txt"), "-c", str(tmp_path / "c.lock")]
    assert "-c" not in quickstart.pip_install_command(tmp_path / "venv", [tmp_path / "a.txt"], None)


def test_a_machine_without_chromium_is_told_the_command_that_installs_it(quickstart, tmp_path, monkeypatch):
    monkeypatch.setenv("CHROMIUM_PATH", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(quickstart.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    hint = quickstart.chromium_hint()
    assert "the browser check will not run" in hint and "apt-get install -y chromium" in hint
    monkeypatch.setattr(quickstart.shutil, "which", lambda name: None)
    assert "Install Chromium with your system's package manager" in quickstart.chromium_hint()
    browser = tmp_path / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("CHROMIUM_PATH", str(browser))
    assert quickstart.chromium_hint() is None
