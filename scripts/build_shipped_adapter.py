"""Retrain the TinyWorld adapter the pack ships, the way a user would: TextLoc Train in ComfyUI.

    python scripts/build_shipped_adapter.py                     # ComfyUI from $COMFYUI_DIR, else ~/ComfyUI
    python scripts/build_shipped_adapter.py --comfyui ~/ComfyUI --out /tmp/check

Run it with the Python environment ComfyUI runs in. Through the demo runner (textloc_harness.demo)
it starts that ComfyUI headless (CPU, a private temporary base directory, the pack symlinked
in, as the tests do), queues workflows/api/train_multi_concept_api.json exactly as shipped
(TinyWorld loader with the shipped weights, dotted star + blue circle from 5 TinyWorld photos
with their masks, hard guidance, 200 steps, seed 0; under a minute on 2 CPU cores), and
copies the adapter it writes, models/textloc/tinyworld_pair.safetensors, into --out (default:
the shipped folder, textloc_core/tinyworld/adapters/). Trained on the TinyWorld loader's own
weights, it carries their base fingerprint, so TextLoc Apply Adapter accepts it on the
TinyWorld model.

nodes/paths.py registers that folder as a search path of ComfyUI's ``textloc`` model folder,
after models/textloc, so the adapter is in the Apply node's adapter_file list on a fresh install
(workflows/generate_with_adapter.json names it), and a user's own models/textloc/tinyworld_pair
(from running train_multi_concept) takes precedence over it.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textloc_core.adapters.adapter import load_adapter  # noqa: E402
from textloc_core.tinyworld import shipped_adapters_dir  # noqa: E402
from textloc_harness import demo  # noqa: E402
from textloc_harness.comfy_launcher import add_comfyui_option, load_workflow  # noqa: E402

WORKFLOW = ROOT / "workflows" / "api" / "train_multi_concept_api.json"


def adapter_name(workflow: dict) -> str:
    """The adapter_name of the workflow's one TextLoc Train node."""
    names = [n["inputs"]["adapter_name"] for n in workflow.values() if n["class_type"] == "TextLocTrain"]
    if len(names) != 1:
        raise ValueError(f"{WORKFLOW.name}: expected one TextLocTrain node, found {len(names)}")
    return names[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comfyui_option(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=shipped_adapters_dir(),
        help="folder for the adapter file (default: the shipped one)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="keep the run here (ComfyUI's log, summary.md, every model file it wrote); default: a temporary folder",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for training")
    args = parser.parse_args(argv)

    name = adapter_name(load_workflow(WORKFLOW))
    with tempfile.TemporaryDirectory(prefix="textloc-adapter-") as scratch:
        run_dir = args.run_dir or Path(scratch)
        # the demo runner: headless ComfyUI in a private layout, the workflow as shipped, and the
        # model files it wrote copied to run_dir/models/
        demo_args = ["--workflow", str(WORKFLOW), "--out", str(run_dir), "--timeout", str(args.timeout)]
        if args.comfyui:
            demo_args += ["--comfyui", str(args.comfyui)]
        # the shipped file sits in the textloc search path of that ComfyUI: Train would refuse to
        # replace it when its settings changed, so it is set aside while the new one trains
        shipped = shipped_adapters_dir() / f"{name}.safetensors"
        aside = Path(scratch) / "previous.safetensors"
        if shipped.is_file():
            shutil.move(shipped, aside)
        try:
            status = demo.main(demo_args)
        finally:
            if aside.is_file() and not shipped.is_file():
                shutil.move(aside, shipped)
        if status:
            return status
        trained = run_dir / "models" / "textloc" / f"{name}.safetensors"
        adapter = load_adapter(trained)  # refuses a damaged file
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / trained.name
        shutil.copyfile(trained, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(
        f"wrote {target} ({target.stat().st_size} bytes, sha256 {digest[:16]}...): tokens {adapter.tokens}, "
        f"{adapter.metadata.steps} steps, guidance {adapter.metadata.guidance}, base {adapter.metadata.base_fingerprint}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
