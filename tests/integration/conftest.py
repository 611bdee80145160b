"""The session-wide real ComfyUI for integration tests (headless, CPU, pack installed).

ComfyUI comes from $COMFYUI_DIR, else the tree scripts/quickstart.py laid out for the running
environment, else ~/ComfyUI. Without it every integration test skips
and the session ends with "INTEGRATION TESTS DID NOT RUN: ..." (or fails, when CI set
TEXTLOC_REQUIRE_COMFYUI=1 after laying ComfyUI out).
"""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from comfy_server import ComfyHarness, import_pack

from textloc_core.data.readers import find_paper_dataset
from textloc_harness.comfy_launcher import (
    PACK_ROOT,
    ComfyError,
    ComfyLayout,
    ComfyServer,
    comfyui_dir,
    missing_comfyui_reason,
)

_HERE = Path(__file__).resolve().parent
TEST_NODES = _HERE / "tiny_sdxl_nodes"
#: nodes/read_access.py's setting (the pack's nodes import ComfyUI, so it is named here)
READ_ROOTS_ENV = "TEXTLOC_READ_ROOTS"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfy_tree(not_run) -> Path:
    """The ComfyUI work tree under test (servers start from it; in-process tests import it)."""
    comfy_dir = comfyui_dir()
    reason = missing_comfyui_reason(comfy_dir)
    if reason:
        not_run("INTEGRATION TESTS", reason, required_env="TEXTLOC_REQUIRE_COMFYUI")
    return comfy_dir


@pytest.fixture(scope="session")
def comfy(comfy_tree, tmp_path_factory):
    """A running ComfyUI (ComfyHarness) shared by the whole session; stopped at the end."""
    comfy_dir = comfy_tree
    layout = ComfyLayout.create(tmp_path_factory.mktemp("comfyui"))
    # the test-only loader of a tiny SDXL-architecture model (shipped SDXL workflows run with it)
    (layout.custom_nodes / TEST_NODES.name).symlink_to(TEST_NODES, target_is_directory=True)
    # what a fresh ComfyUI's input folder holds (shipped workflows' Load Image names it)
    for example in (comfy_dir / "input").glob("example.png"):
        shutil.copy2(example, layout.input / example.name)
    # what the server owner lets nodes read besides the input folder (README, Security): a folder
    # of the session's own, and the paper dataset when this machine has it
    read_root = tmp_path_factory.mktemp("read_root")
    paper = find_paper_dataset(PACK_ROOT)
    roots = os.pathsep.join(str(p) for p in (read_root, paper) if p is not None)
    server = ComfyServer(comfy_dir, layout)
    previous = os.environ.get(READ_ROOTS_ENV)
    os.environ[READ_ROOTS_ENV] = roots  # the server's environment is copied from ours at start
    try:
        server.start()
    except ComfyError as e:
        pytest.fail(f"ComfyUI at {comfy_dir} did not start:\n{e}", pytrace=False)
    finally:
        if previous is None:
            os.environ.pop(READ_ROOTS_ENV)
        else:
            os.environ[READ_ROOTS_ENV] = previous
    harness = ComfyHarness(server)
    harness.read_root = read_root
    try:
        yield harness
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pack(comfy_tree):
    """(comfy_backend, tinyworld_models) of the pack imported as package ``textloc_pack``, the way
    ComfyUI imports it (relative imports resolve as in a server), with ComfyUI importable (CPU)."""
    comfy_dir = comfy_tree
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import_pack()
    from textloc_pack.nodes import comfy_backend, tinyworld_models

    return comfy_backend, tinyworld_models
