"""The README's main command: run the TinyWorld demo in a real, headless ComfyUI.

    python3 scripts/quickstart.py demo            # sets up, then runs this module
    python -m textloc_harness.demo --out textloc-output

Starts ComfyUI (``--cpu``) with this pack installed in a private temporary layout, queues
workflows/api/tinyworld_demo_api.json (personalise a held-out TinyWorld concept from
multi-concept images with hard guidance, then generate it alone and in a new scene with
attention-map previews), waits, and writes the images and overlays the graph produced, the
trained adapter files (under models/) and a summary.md into --out. Nothing is downloaded;
ComfyUI comes from --comfyui, else $COMFYUI_DIR, else the tree scripts/quickstart.py laid out
for the running environment, else ~/ComfyUI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .comfy_launcher import (
    PACK_PYTHON_MODULE,
    PACK_ROOT,
    ComfyClient,
    ComfyError,
    ComfyLayout,
    ComfyServer,
    ProgressWatcher,
    add_comfyui_option,
    comfyui_dir,
    load_workflow,
    missing_comfyui_reason,
    output_files,
)

DEFAULT_WORKFLOW = PACK_ROOT / "workflows" / "api" / "tinyworld_demo_api.json"


@dataclass
class NodeResult:
    """What one node of the finished graph produced: copied files and any text it reported."""

    node_id: str
    class_type: str
    title: str
    files: list[Path] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "node"


def _node_order(node_id: str) -> list[tuple]:
    """Sort key for API node ids: "2" < "10", subgraph ids like "12:3" after their parent."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in node_id.split(":")]


def _title(workflow: dict, node_id: str) -> str:
    node = workflow.get(node_id, {})
    return (node.get("_meta") or {}).get("title") or node.get("class_type", f"node {node_id}")


def collect_results(history: dict, workflow: dict, layout: ComfyLayout, out_dir: Path) -> list[NodeResult]:
    """Copy every file the graph reported (saved and previewed) into ``out_dir``.

    Files are named after the node's title, its id and ComfyUI's file name, so node 7
    "Heat map overlay" saving tinyworld_alone_00001_.png gives
    heat_map_overlay_n7_tinyworld_alone_00001_.png; text outputs (e.g. the losses a node
    reports) are kept as text. Nodes come in graph order (numeric ids).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = output_files(history, layout, kinds=("output", "temp"))
    results = []
    outputs = history.get("outputs") or {}
    for node_id in sorted(outputs, key=_node_order):
        node_out = outputs[node_id]
        title = _title(workflow, node_id)
        res = NodeResult(node_id, workflow.get(node_id, {}).get("class_type", "?"), title)
        for src in files.get(node_id, []):
            dst = out_dir / f"{_slug(title)}_n{node_id}_{src.name}"
            shutil.copy2(src, dst)
            res.files.append(dst)
        for key, items in node_out.items():
            if isinstance(items, list) and items and all(isinstance(t, str) for t in items):
                res.text += [f"{key}: {kept_paths(t, layout)}" for t in items]
        results.append(res)
    return results


def kept_paths(text: str, layout: ComfyLayout) -> str:
    """``text`` with the temporary layout's model paths (a Train report's adapter, LoRA) written
    as the copies ``collect_model_files`` keeps: ``models/...`` beside summary.md."""
    return text.replace(f"{layout.models}{os.sep}", "models/")


def collect_model_files(layout: ComfyLayout, out_dir: Path) -> list[Path]:
    """Copy the model files the graph wrote (adapter, stock LoRA, embeddings) to out_dir/models/.

    The demo's ComfyUI layout is temporary; these keep their relative paths, so copying
    ``models/`` over a ComfyUI's models folder installs them. Training checkpoints and
    cached prior latents stay behind (they are only for resuming).
    """
    copied = []
    for src in sorted(layout.models.rglob("*.safetensors")):
        rel = src.relative_to(layout.models)
        if {"checkpoints", "prior_cache"} & set(rel.parts):
            continue
        dst = out_dir / "models" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(dst)
    return copied


def pack_settings(workflow: dict, pack_classes: set[str]) -> list[str]:
    """The literal inputs of this pack's nodes (steps, guidance, ...), one line per node."""
    lines = []
    for node_id, node in workflow.items():
        if node.get("class_type") in pack_classes:
            values = {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}
            lines.append(
                f"- **{_title(workflow, node_id)}** (`{node['class_type']}`): "
                + ", ".join(f"{k}={v!r}" for k, v in values.items())
            )
    return lines


def write_summary(
    out_dir: Path,
    workflow_path: Path,
    results: list[NodeResult],
    settings: list[str],
    seconds: float,
    comfy_version: str,
    model_files: list[Path] = (),
) -> Path:
    """summary.md: what ran, with which settings, how long, and every picture it made."""
    lines = [
        "# textloc demo run",
        "",
        f"- workflow: `{workflow_path.name}`",
        f"- ComfyUI {comfy_version}, CPU; wall time {seconds:.0f} s",
        "",
    ]
    if settings:
        lines += ["## Settings", "", *settings, ""]
    if model_files:
        lines += ["## Trained files (copy models/ into ComfyUI's models folder to use them)", ""]
        lines += [f"- `{f.relative_to(out_dir)}`" for f in model_files] + [""]
    lines += ["## Outputs", ""]
    for r in results:
        if not (r.files or r.text):
            continue
        lines.append(f"### {r.title} (`{r.class_type}`, node {r.node_id})")
        lines.append("")
        lines += [f"![{r.title}]({f.name})" for f in r.files]
        if r.text:
            lines += ["```", *r.text, "```"]
        lines.append("")
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines))
    return path


def run_on_server(
    client: ComfyClient, layout: ComfyLayout, workflow_path: Path, out_dir: Path, timeout: float, log=print
) -> Path:
    """Queue ``workflow_path`` on a running server, wait, collect outputs; returns summary.md."""
    workflow = load_workflow(workflow_path)
    started = time.monotonic()
    last_report = [started]
    with ProgressWatcher(client, workflow) as watcher:

        def progress(elapsed: float) -> None:
            if time.monotonic() - last_report[0] >= 20:
                last_report[0] = time.monotonic()
                log(f"  ... {elapsed:.0f} s  {watcher.describe() or ''}")

        prompt_id = client.queue_prompt(workflow)
        log(f"queued {workflow_path.name} (prompt {prompt_id}); waiting up to {timeout:.0f} s")
        history = client.wait_for_completion(prompt_id, timeout=timeout, on_poll=progress)
    seconds = time.monotonic() - started
    info = client.object_info()
    pack_classes = {n for n, i in info.items() if i.get("python_module") == PACK_PYTHON_MODULE}
    results = collect_results(history, workflow, layout, out_dir)
    version = client.get_json("/system_stats").get("system", {}).get("comfyui_version", "?")
    return write_summary(
        out_dir,
        workflow_path,
        results,
        pack_settings(workflow, pack_classes),
        seconds,
        version,
        collect_model_files(layout, out_dir),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textloc_harness.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("textloc-output"), help="folder for images, overlays and summary.md (created)"
    )
    parser.add_argument(
        "--workflow",
        type=Path,
        default=DEFAULT_WORKFLOW,
        help="API-format workflow to queue (default: the shipped TinyWorld demo)",
    )
    add_comfyui_option(parser)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the graph")
    parser.add_argument(
        "--keep-work-dir", action="store_true", help="keep ComfyUI's temporary base directory (models, outputs, log)"
    )
    args = parser.parse_args(argv)

    if not args.workflow.is_file():
        print(
            f"textloc demo: workflow {args.workflow} does not exist. The shipped TinyWorld demo "
            f"is {DEFAULT_WORKFLOW}; pass --workflow PATH to queue another API-format workflow.",
            file=sys.stderr,
        )
        return 2
    comfy_dir = comfyui_dir(args.comfyui)
    reason = missing_comfyui_reason(comfy_dir)
    if reason:
        print(f"textloc demo: {reason}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="textloc-demo-"))
    out_dir = args.out.resolve()
    server = ComfyServer(comfy_dir, ComfyLayout.create(work))
    print(f"starting ComfyUI from {comfy_dir} on port {server.port} (log: {server.layout.log_file})")
    try:
        with server:
            failure = server.pack_import_failure()
            if failure:
                print(f"textloc demo: ComfyUI could not import the pack:\n{failure}", file=sys.stderr)
                return 1
            summary = run_on_server(server.client, server.layout, args.workflow.resolve(), out_dir, args.timeout)
        print(f"done: {summary}")
        return 0
    except (ComfyError, TimeoutError, ValueError) as e:
        print(f"textloc demo failed: {e}\n--- last lines of ComfyUI's log ---\n{server.log_tail(40)}", file=sys.stderr)
        return 1
    finally:
        if server.layout.log_file.is_file():  # kept next to the results, run failed or not
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(server.layout.log_file, out_dir / "comfyui.log")
            print(f"ComfyUI's log: {out_dir / 'comfyui.log'}")
        if not args.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
