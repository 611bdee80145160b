"""The session-wide real ComfyUI for integration tests (headless, CPU, pack installed).

ComfyUI comes from $COMFYUI_DIR, else ~/ComfyUI. Without it every integration test skips
and the session ends with "INTEGRATION TESTS DID NOT RUN: ..." (or fails, when CI set
TEXTLOC_REQUIRE_COMFYUI=1 after laying ComfyUI out).
"""
from pathlib import Path

import pytest

from comfy_server import ComfyHarness
from textloc_core.comfy_launcher import (
    ComfyError, ComfyLayout, ComfyServer, comfyui_dir, missing_comfyui_reason,
)

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfy(not_run, tmp_path_factory):
    """A running ComfyUI (ComfyHarness) shared by the whole session; stopped at the end."""
    comfy_dir = comfyui_dir()
    reason = missing_comfyui_reason(comfy_dir)
    if reason:
        not_run("INTEGRATION TESTS", reason, required_env="TEXTLOC_REQUIRE_COMFYUI")
    layout = ComfyLayout.create(tmp_path_factory.mktemp("comfyui"))
    server = ComfyServer(comfy_dir, layout)
    try:
        server.start()
    except ComfyError as e:
        pytest.fail(f"ComfyUI at {comfy_dir} did not start:\n{e}", pytrace=False)
    try:
        yield ComfyHarness(server)
    finally:
        server.stop()
