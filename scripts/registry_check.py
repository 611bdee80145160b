#!/usr/bin/env python3
"""Check the pack with the Comfy Registry's own tool, comfy-cli, without publishing anything.

    python3 scripts/registry_check.py      # validate pyproject.toml, build and list the archive

1. comfy-cli (``requirements/registry-tools.txt``, every package held to
   ``requirements/registry-tools.lock``) is installed into its own virtual environment,
   ``.textloc/registry-tools`` (``$TEXTLOC_REGISTRY_TOOLS`` if set), so its dependencies (ruff, uv, typer, telemetry clients) stay out
   of the test environments; it is reinstalled only when one of those two files changes.
2. ``comfy node validate`` runs in the checkout. comfy-cli exits 0 even when it warns that a
   field is malformed and will not be published, so any warning or error line fails here.
3. The archive ``comfy node publish`` would upload is built by comfy-cli's own ``zip_files``
   (git's files minus ``.comfyignore``, plus ``[tool.comfy] includes``) into a temporary folder,
   listed, and checked: what runs in ComfyUI (nodes, textloc_core with the TinyWorld weights and
   the shipped adapter, the workflows, pyproject.toml, requirements.txt, LICENSE) and every file
   the README links are in; tests, benchmarks, CI and development tools are out.

comfy-cli runs with telemetry off (``DO_NOT_TRACK``) and a temporary HOME, so it writes no
configuration of yours. Needs the package index once (for step 1); the tests call the same
functions (tests/test_registry.py). Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# TEXTLOC_REGISTRY_TOOLS puts the environment elsewhere (a shared or read-only checkout)
TOOLS_VENV = Path(os.environ.get("TEXTLOC_REGISTRY_TOOLS") or REPO / ".textloc" / "registry-tools")
TOOLS_INPUTS = (REPO / "requirements" / "registry-tools.txt", REPO / "requirements" / "registry-tools.lock")
PASSED = "All validation checks passed successfully"
# published: what the pack runs inside ComfyUI, found by these prefixes among git's files
MUST_SHIP = (
    "__init__.py",
    "pyproject.toml",
    "requirements.txt",
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "nodes/",
    "textloc_core/",
    "workflows/api/",
)
MUST_NOT_SHIP = ("tests/", "benchmarks/", "scripts/", ".ci/", "requirements/", "textloc_harness/")
_LINK = re.compile(r"\]\(([^)#\s]+)[^)]*\)")


class ToolError(RuntimeError):
    """comfy-cli could not be installed or run; the message says why and what to do."""


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    for path in TOOLS_INPUTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_tools() -> Path:
    """The Python of the comfy-cli environment, installed first when its inputs changed.

    Built in a temporary sibling and renamed into place, so an interrupted install is redone
    and a concurrent run never sees half an environment (comfy-cli is run as ``python -m``,
    which does not care where the environment was built)."""
    digest = _inputs_digest()
    stamp = TOOLS_VENV / "textloc-installed.sha256"
    if _python(TOOLS_VENV).is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return _python(TOOLS_VENV)
    TOOLS_VENV.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="registry-tools.", dir=TOOLS_VENV.parent))
    try:
        steps = (
            [sys.executable, "-m", "venv", str(building)],
            [
                str(_python(building)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                "-r",
                str(TOOLS_INPUTS[0]),
                "-c",
                str(TOOLS_INPUTS[1]),
            ],
        )
        for step in steps:
            if subprocess.run(step).returncode != 0:
                raise ToolError(
                    f"could not install comfy-cli ({' '.join(step[:4])} ... failed, see above): "
                    "check access to the package index and run again"
                )
        (building / stamp.name).write_text(digest + "\n")
        shutil.rmtree(TOOLS_VENV, ignore_errors=True)
        building.rename(TOOLS_VENV)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return _python(TOOLS_VENV)


def _run(python: Path, args: list[str], home: str, folder: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HOME=home,
        USERPROFILE=home,
        XDG_CONFIG_HOME=os.path.join(home, ".config"),
        DO_NOT_TRACK="1",
        COMFY_NO_TELEMETRY="1",
        NO_COLOR="1",
        COLUMNS="200",
    )
    return subprocess.run(
        [str(python), *args], cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )


def validate(python: Path, folder: Path = REPO) -> tuple[str, list[str]]:
    """(comfy-cli's output, problems) of ``comfy node validate`` in ``folder`` (the checkout)."""
    with tempfile.TemporaryDirectory() as home:
        done = _run(python, ["-m", "comfy_cli", "--skip-prompt", "node", "validate"], home, folder)
    output = done.stdout + done.stderr
    problems = [line.strip() for line in output.splitlines() if re.search(r"\b(warning|error)\b", line, re.IGNORECASE)]
    if done.returncode != 0:
        problems.append(f"comfy node validate exited with {done.returncode}")
    if PASSED not in output:
        problems.append(f"comfy node validate did not say '{PASSED}'")
    return output, problems


_ZIP = """import sys
from comfy_cli.file_utils import zip_files
from comfy_cli.registry.config_parser import extract_node_configuration
config = extract_node_configuration()
zip_files(sys.argv[1], includes=config.tool_comfy.includes)
print("repository=" + config.project.urls.repository)
"""


def build_archive(python: Path) -> tuple[list[str], str]:
    """(the files of the archive ``comfy node publish`` would upload, built as it builds it;
    the Repository URL it would publish)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "node.zip"
        done = _run(python, ["-c", _ZIP, str(archive)], tmp)
        if done.returncode != 0 or not archive.is_file():
            raise ToolError(f"comfy-cli's zip_files failed:\n{done.stdout}{done.stderr}")
        with zipfile.ZipFile(archive) as zipped:
            names = sorted(zipped.namelist())
    repository = [line.split("=", 1)[1] for line in done.stdout.splitlines() if line.startswith("repository=")]
    return names, "".join(repository).strip()


def linked_files() -> set[str]:
    """Repository files the README links to, and the images the documents show."""
    linked = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in _LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or (doc.name != "README.md" and not target.endswith((".png", ".jpg", ".svg"))):
                continue
            path = (doc.parent / target).resolve()
            if path.is_file() and REPO in path.parents:
                linked.add(path.relative_to(REPO).as_posix())
    return linked


def archive_problems(names: list[str], tracked: list[str]) -> list[str]:
    """What is missing from or wrongly in an archive holding ``names``, given git's files."""
    shipped = set(names)
    wanted = {f for f in tracked if f.startswith(MUST_SHIP) or re.fullmatch(r"workflows/[^/]+\.json", f)}
    wanted |= linked_files()
    problems = [f"missing from the archive: {f}" for f in sorted(wanted - shipped)]
    problems += [f"in the archive but development-only: {f}" for f in names if f.startswith(MUST_NOT_SHIP)]
    return problems


def tracked_files() -> list[str]:
    done = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def main() -> int:
    try:
        python = ensure_tools()
        output, problems = validate(python)
        print(output.rstrip())
        names, repository = build_archive(python)
    except ToolError as err:
        print(f"registry_check: {err}", file=sys.stderr)
        return 1
    print(f"\narchive ({len(names)} files):")
    print("\n".join(f"  {name}" for name in names))
    if not repository:
        # comfy-cli does not check it; the Registry links to it, and none exists yet to name
        print(
            "registry_check: NOTE [project.urls] Repository is not set: add the public repository's URL "
            "before `comfy node publish`"
        )
    problems += archive_problems(names, tracked_files())
    for problem in problems:
        print(f"registry_check: FAIL {problem}", file=sys.stderr)
    print("registry_check: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
