"""The shipped workflow files are what ``workflows/build_workflows.py`` writes today.

The builder reads widget order and optional widgets from the node classes, so a node that gains
an input (Train's ``unmasked_weight``, say) changes its output; a committed file that was not
rebuilt would then load in ComfyUI without that widget's value. The files are built with the
newest supported ComfyUI (0.33.0): older versions title a few stock nodes differently and list
V1 nodes' outputs otherwise, so on them the comparison is skipped.
"""

import subprocess
import sys

import pytest
from comfy_server import PACK_ROOT, WORKFLOWS_DIR

BUILT_WITH = "0.33.0"


def test_the_shipped_workflows_are_the_builders_output(comfy_tree, tmp_path):
    version = (comfy_tree / "comfyui_version.py").read_text().split('"')[1]
    if version != BUILT_WITH:
        pytest.skip(f"the shipped workflows are built with ComfyUI {BUILT_WITH}; this is {version}")
    subprocess.run(
        [
            sys.executable,
            str(WORKFLOWS_DIR / "build_workflows.py"),
            "--comfyui",
            str(comfy_tree),
            "--out",
            str(tmp_path),
        ],
        check=True,
        cwd=PACK_ROOT,
        capture_output=True,
    )
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    shipped = sorted(p.relative_to(WORKFLOWS_DIR) for p in WORKFLOWS_DIR.rglob("*.json"))
    assert built == shipped, f"the builder writes {built}, workflows/ holds {shipped}"
    stale = [str(p) for p in built if (tmp_path / p).read_text() != (WORKFLOWS_DIR / p).read_text()]
    assert not stale, (
        f"workflows/{', '.join(stale)} differ from what build_workflows.py writes: run "
        f"python workflows/build_workflows.py --comfyui <ComfyUI {BUILT_WITH}> and commit the files"
    )
