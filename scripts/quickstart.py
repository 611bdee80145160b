#!/usr/bin/env python3
"""Set everything up for textloc and run the TinyWorld demo or the tests.

    python3 scripts/quickstart.py demo      # -> textloc-output/
    python3 scripts/quickstart.py test      # python -m pytest -q tests

Both commands first make sure that, inside this checkout:

1. a ComfyUI work tree of the chosen version exists (``--comfyui-version``, default the newest
   supported one), unpacked from a snapshot tarball ``ComfyUI-<version>.tar.gz`` found in
   ``$TEXTLOC_COMFYUI_SNAPSHOTS`` or ``../shared/comfyui/`` beside the checkout, else cloned
   from upstream at tag ``v<version>``; ``--comfyui-dir`` (or ``$COMFYUI_DIR``) uses a ComfyUI
   of your own instead and never changes it;
2. a virtual environment for that version exists with ComfyUI's requirements, the pack's
   requirements and the torch build that version runs with (``requirements/comfyui-<version>.txt``),
   every package held to the versions recorded in ``requirements/comfyui-<version>.lock``.

A second call reuses both: the environment is rebuilt only when one of the files it was
installed from changed. Everything is written under ``.textloc/`` (ignored by git). Runs on
the Python it is started with (3.10 or newer) and needs only the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".textloc"
REQUIREMENTS = REPO / "requirements"
UPSTREAM = "https://github.com/Comfy-Org/ComfyUI"
# The versions the pack is tested against, oldest first; the last one is the default.
SUPPORTED = ("0.3.64", "0.33.0")
# ComfyUI lists these without versions; the per-version pin file decides which build.
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")


class SetupError(RuntimeError):
    """A set-up step that cannot go on; the message says what to do."""


def say(msg: str) -> None:
    print(f"quickstart: {msg}", flush=True)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def tree_version(comfy_dir: Path) -> str | None:
    """The version a ComfyUI work tree declares in comfyui_version.py, if any."""
    text = (comfy_dir / "comfyui_version.py").read_text() if (comfy_dir / "comfyui_version.py").is_file() else ""
    m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else None


def pins_version_for(version: str) -> str:
    """The supported version whose pins a ComfyUI of ``version`` is installed with.

    An untested version takes the pins of the newest supported version not newer than it
    (the oldest for anything older)."""
    if version in SUPPORTED:
        return version
    older = [v for v in SUPPORTED if version_key(v) <= version_key(version)]
    chosen = older[-1] if older else SUPPORTED[0]
    say(
        f"ComfyUI {version} is not one of the tested versions {', '.join(SUPPORTED)}; "
        f"installing with the pins of {chosen}"
    )
    return chosen


# ---------------------------------------------------------------------------------- ComfyUI
def snapshot_dirs() -> list[Path]:
    env = os.environ.get("TEXTLOC_COMFYUI_SNAPSHOTS")
    return [Path(env)] if env else [REPO.parent / "shared" / "comfyui"]


def lay_out_comfyui(version: str, dest: Path) -> None:
    """Unpack or clone ComfyUI ``version`` into ``dest`` (which must not exist yet).

    Work happens in a temporary sibling that is renamed at the end, so an interrupted
    call never leaves a half tree that a later call would take for a finished one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for folder in snapshot_dirs():
            tarball = folder / f"ComfyUI-{version}.tar.gz"
            if tarball.is_file():
                say(f"unpacking {tarball}")
                with tarfile.open(tarball) as tar:
                    extract_kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(tmp, **extract_kwargs)
                (tmp / "ComfyUI").rename(dest)
                return
        if shutil.which("git") is None:
            raise SetupError(
                f"no ComfyUI-{version}.tar.gz snapshot in {', '.join(map(str, snapshot_dirs()))} "
                f"and no git to clone it: install git, or point --comfyui-dir at a ComfyUI"
            )
        say(f"cloning {UPSTREAM} at v{version}")
        proc = subprocess.run(
            ["git", "clone", "--quiet", "--depth", "1", "--branch", f"v{version}", UPSTREAM, str(tmp / "ComfyUI")],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SetupError(
                f"could not clone ComfyUI v{version} from {UPSTREAM}: {proc.stderr.strip()[-400:]}\n"
                f"Fix: connect to the network, put ComfyUI-{version}.tar.gz into "
                f"$TEXTLOC_COMFYUI_SNAPSHOTS, or point --comfyui-dir at a ComfyUI of your own"
            )
        (tmp / "ComfyUI").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def own_comfyui(own_dir: str) -> Path:
    """A user's own ComfyUI tree (``--comfyui-dir``), checked and used as it is."""
    comfy = Path(own_dir).expanduser().resolve()
    if not (comfy / "main.py").is_file():
        raise SetupError(
            f"--comfyui-dir / COMFYUI_DIR {comfy} holds no ComfyUI (no main.py); "
            f"point it at a ComfyUI work tree, or leave it unset to use a private one"
        )
    return comfy


def ensure_comfyui(version: str) -> Path:
    """The private ComfyUI ``version`` in .textloc/, laid out unless a finished one is there."""
    comfy = STATE / f"ComfyUI-{version}"
    if (comfy / "main.py").is_file() and tree_version(comfy) == version:
        return comfy
    if comfy.exists():
        say(f"{comfy} is incomplete or another version: laying it out again")
        shutil.rmtree(comfy)
    lay_out_comfyui(version, comfy)
    return comfy


# ------------------------------------------------------------------------------ environment
def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def comfy_requirements_without_torch(comfy: Path, out: Path) -> None:
    """ComfyUI's requirements.txt minus its unpinned torch lines (the pin file decides)."""
    pattern = re.compile(r"^\s*(" + "|".join(TORCH_PACKAGES) + r")\s*([<>=!~;].*)?$")
    lines = (comfy / "requirements.txt").read_text().splitlines()
    out.write_text("\n".join(line for line in lines if not pattern.match(line)) + "\n")


def pip_install_command(venv: Path, requirements: list[Path], constraints: Path | None) -> list[str]:
    """pip install of ``requirements`` into ``venv``, showing what it collects and downloads (a
    first install takes minutes: silence would look like a hang)."""
    cmd = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "on"]
    for path in requirements:
        cmd += ["-r", str(path)]
    return cmd + (["-c", str(constraints)] if constraints is not None else [])


def ensure_environment(pins: str, comfy: Path, tested_tree: bool) -> Path:
    """The virtual environment for ComfyUI pins ``pins``, installed when its inputs changed."""
    venv = STATE / f"venv-{pins}"
    pin_file = REQUIREMENTS / f"comfyui-{pins}.txt"
    lock_file = REQUIREMENTS / f"comfyui-{pins}.lock"
    inputs = [pin_file, REPO / "requirements.txt", REPO / "requirements-dev.txt", comfy / "requirements.txt"]
    if tested_tree and lock_file.is_file():
        inputs.append(lock_file)
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.read_bytes())
    digest.update(str(comfy).encode())
    stamp = venv / "textloc-installed.sha256"
    if venv_python(venv).is_file() and stamp.is_file() and stamp.read_text().strip() == digest.hexdigest():
        return venv
    if not venv_python(venv).is_file():
        say(f"creating the virtual environment {venv}")
        if subprocess.run([sys.executable, "-m", "venv", str(venv)]).returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise SetupError(
                f"{sys.executable} could not create a virtual environment; install its venv "
                f"module (Debian/Ubuntu: apt-get install python3-venv) and run the command again"
            )
    stamp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        comfy_reqs = Path(tmp) / "comfyui-requirements.txt"
        comfy_requirements_without_torch(comfy, comfy_reqs)
        cmd = pip_install_command(
            venv,
            [pin_file, comfy_reqs, REPO / "requirements-dev.txt"],
            lock_file if tested_tree and lock_file.is_file() else None,
        )
        say(
            f"installing packages for ComfyUI {pins} (first time: several minutes, torch is large; pip's "
            "progress follows)"
        )
        if subprocess.run(cmd).returncode != 0:
            raise SetupError(
                f"pip could not install the packages for ComfyUI {pins} (see above); "
                f"fix the network or index access and run the command again"
            )
    stamp.write_text(digest.hexdigest() + "\n")
    return venv


# ----------------------------------------------------------------------------- the commands
def chromium_hint() -> str | None:
    """What to run so the browser check can run, when Chromium is missing (None when present)."""
    chromium = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
    if chromium.is_file() and os.access(chromium, os.X_OK):
        return None
    if shutil.which("apt-get"):
        sudo = "sudo " if hasattr(os, "geteuid") and os.geteuid() != 0 else ""
        how = f"Install it with: {sudo}apt-get install -y chromium"
    else:
        how = "Install Chromium with your system's package manager"
    return (
        f"no Chromium at {chromium}: the browser check will not run. {how} "
        "(or set CHROMIUM_PATH to a Chromium binary), then run the tests again"
    )


def install_browser_tools() -> None:
    """``npm ci`` for the browser check's playwright-core when npm is there and it is missing.

    Chromium itself is a system package: without it the user is told the command that installs
    it (``chromium_hint``), and the browser check reports that it did not run."""
    hint = chromium_hint()
    if hint:
        say(hint)
    browser_dir = REPO / "tests" / "browser"
    if shutil.which("npm") and not (browser_dir / "node_modules" / "playwright-core").is_dir():
        say("npm ci in tests/browser (the browser check's playwright-core)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=browser_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to pytest (test) or to textloc_harness.demo (demo).",
    )
    parser.add_argument(
        "command",
        choices=("demo", "test", "setup"),
        help="demo: run the TinyWorld demo; test: run the tests; setup: only set up",
    )
    parser.add_argument(
        "--comfyui-version",
        default=os.environ.get("TEXTLOC_COMFYUI_VERSION", SUPPORTED[-1]),
        help=f"ComfyUI to lay out in .textloc/ (tested: {', '.join(SUPPORTED)}; default %(default)s)",
    )
    parser.add_argument(
        "--comfyui-dir",
        default=os.environ.get("COMFYUI_DIR"),
        help="use this ComfyUI work tree instead (it is read, never changed)",
    )
    parser.add_argument("--out", default="textloc-output", help="demo: output folder (default %(default)s)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # for pytest (test) or the demo (demo)
    opts = parser.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])

    if sys.version_info < (3, 10):
        say(f"Python 3.10 or newer is needed, this is {sys.version.split()[0]}: run it with python3.10+")
        return 2
    try:
        if opts.comfyui_dir:
            comfy = own_comfyui(opts.comfyui_dir)
            version = tree_version(comfy) or SUPPORTED[-1]
        else:
            version = opts.comfyui_version
            if version not in SUPPORTED:
                raise SetupError(
                    f"--comfyui-version {version} is not one this pack lays out; "
                    f"choose one of {', '.join(SUPPORTED)} or use --comfyui-dir"
                )
            comfy = ensure_comfyui(version)
        pins = pins_version_for(version)
        venv = ensure_environment(pins, comfy, tested_tree=(version == pins))
    except SetupError as err:
        say(f"ERROR: {err}")
        return 2
    python = str(venv_python(venv))
    env = dict(os.environ, COMFYUI_DIR=str(comfy), PYTHONUNBUFFERED="1")
    say(f"ComfyUI {version} at {comfy}, Python {python}")
    if opts.command == "setup":
        return 0
    if opts.command == "demo":
        cmd = [
            python,
            "-m",
            "textloc_harness.demo",
            "--comfyui",
            str(comfy),
            "--out",
            str(Path(opts.out).resolve()),
            *extra,
        ]
    else:
        install_browser_tools()
        # a laid-out ComfyUI means the integration suite must run, not skip
        env["TEXTLOC_REQUIRE_COMFYUI"] = "1"
        # with arguments of its own pytest still collects tests/ (pyproject's testpaths) unless given paths
        cmd = [python, "-m", "pytest", "-q", *(extra or ["tests"])]
    say(" ".join(cmd[1:]))
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
