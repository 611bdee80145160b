"""Start a real ComfyUI headless with the textloc pack installed, and talk to it over HTTP.

Used by the README's demo command (textloc_harness.demo) and by the integration tests, so
both exercise ComfyUI exactly the way a user's headless queue does. ComfyUI is never
imported here: it runs as a subprocess (``main.py --cpu --listen 127.0.0.1``) in a
private directory layout (models/input/output/temp/user/custom_nodes), so nothing is
written into the user's ComfyUI tree, and the pack is installed by a symlink in that
layout's custom_nodes folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the textloc pack lives: the repository root (holds __init__.py, nodes/, textloc_core/).
PACK_ROOT = Path(__file__).resolve().parent.parent
#: The folder name the pack gets inside ComfyUI's custom_nodes (its module name there).
PACK_NAME = "textloc"
#: ComfyUI's python_module value for nodes of our pack in /object_info.
PACK_PYTHON_MODULE = f"custom_nodes.{PACK_NAME}"


class ComfyError(RuntimeError):
    """ComfyUI refused or failed a request; the message is meant to be read by a person."""


#: Where scripts/quickstart.py lays out ComfyUI trees and their virtual environments.
SETUP_DIR = PACK_ROOT / ".textloc"


def comfyui_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The ComfyUI work tree to use: ``explicit``, else $COMFYUI_DIR, else the tree
    scripts/quickstart.py laid out for the running environment (``.textloc/venv-V`` ->
    ``.textloc/ComfyUI-V``), else ~/ComfyUI.

    The path is returned whether or not it exists; see :func:`missing_comfyui_reason`.
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("COMFYUI_DIR")
    if env:
        return Path(env).expanduser().resolve()
    venv = Path(sys.prefix)
    if venv.parent == SETUP_DIR and venv.name.startswith("venv-"):
        laid_out = SETUP_DIR / f"ComfyUI-{venv.name[len('venv-') :]}"
        if (laid_out / "main.py").is_file():
            return laid_out
    return Path.home() / "ComfyUI"


def add_comfyui_option(parser) -> None:
    """``--comfyui PATH`` on an argparse parser: the work tree ``comfyui_dir`` resolves (None: its default)."""
    parser.add_argument(
        "--comfyui",
        type=Path,
        default=None,
        help="ComfyUI work tree (default: $COMFYUI_DIR, else the one quickstart.py laid out, else ~/ComfyUI)",
    )


def missing_comfyui_reason(comfy_dir: Path) -> str | None:
    """None when ``comfy_dir`` holds a runnable ComfyUI, else a sentence saying what is wrong."""
    if not (comfy_dir / "main.py").is_file():
        return (
            f"no ComfyUI at {comfy_dir} (no main.py there); run `python3 scripts/quickstart.py test` "
            f"(sets up ComfyUI and its environment), or set COMFYUI_DIR to a ComfyUI work tree"
        )
    return None


def _under_base(name: str) -> property:
    """A read-only attribute: the path ``name`` under the layout's base directory."""
    return property(lambda layout: layout.base / name)


@dataclass(frozen=True)
class ComfyLayout:
    """A private ComfyUI base directory: models, inputs, outputs, user settings, custom nodes."""

    base: Path
    custom_nodes = _under_base("custom_nodes")
    models = _under_base("models")
    input = _under_base("input")
    output = _under_base("output")
    temp = _under_base("temp")
    user = _under_base("user")
    log_file = _under_base("comfyui.log")

    @classmethod
    def create(cls, base: str | os.PathLike, pack_root: Path = PACK_ROOT) -> ComfyLayout:
        """Make the folders under ``base`` and install the pack by symlinking ``pack_root``."""
        layout = cls(Path(base).resolve())
        for d in (
            layout.custom_nodes,
            layout.models,
            layout.input,
            layout.output,
            layout.temp,
            layout.user / "default",
        ):
            d.mkdir(parents=True, exist_ok=True)
        link = layout.custom_nodes / PACK_NAME
        if link.is_symlink() or link.exists():
            if not (link.is_symlink() and link.resolve() == pack_root.resolve()):
                raise ValueError(f"{link} already exists and is not a link to {pack_root}: use an empty base directory")
        else:
            link.symlink_to(pack_root.resolve(), target_is_directory=True)
        # A fresh user would get the template browser on first page load, a minimap over
        # the canvas, and text-less nodes when a whole graph is zoomed to fit; the browser
        # check and screenshots want the plain, readable graph.
        settings = layout.user / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(
                json.dumps(
                    {
                        "Comfy.TutorialCompleted": True,
                        "Comfy.Minimap.Visible": False,
                        "LiteGraph.Canvas.MinFontSizeForLOD": 0,
                    }
                )
            )
        return layout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI subprocess serving one :class:`ComfyLayout`; use as a context manager.

    ``start()`` returns once the HTTP server answers (ComfyUI loads every custom node before
    it listens), or raises :class:`ComfyError` with the tail of ComfyUI's log when the
    process dies or the timeout passes.
    """

    def __init__(
        self,
        comfy_dir: Path,
        layout: ComfyLayout,
        port: int | None = None,
        extra_args: Iterable[str] = (),
        python: str = sys.executable,
    ):
        self.comfy_dir = Path(comfy_dir)
        self.layout = layout
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.client = ComfyClient(f"http://127.0.0.1:{self.port}")

    def command(self) -> list[str]:
        lay = self.layout
        return [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            # models/, input/, output/, temp/, user/ and custom_nodes/ all live under it
            # (--temp-directory would add a second "temp" level, so it is not passed)
            "--base-directory",
            str(lay.base),
            # keep ComfyUI's own user/comfyui.db untouched
            "--database-url",
            "sqlite:///:memory:",
            "--disable-auto-launch",
            *self.extra_args,
        ]

    def start(self, timeout: float = 180.0) -> ComfyServer:
        reason = missing_comfyui_reason(self.comfy_dir)
        if reason:
            raise ComfyError(reason)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(self.layout.log_file, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.comfy_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(
                    f"ComfyUI exited with code {self.proc.returncode} while starting; "
                    f"log {self.layout.log_file}:\n{self.log_tail()}"
                )
            try:
                self.client.get_json("/system_stats", timeout=2)
                return self
            except (OSError, ComfyError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(
            f"ComfyUI did not answer on port {self.port} within {timeout:.0f} s; "
            f"log {self.layout.log_file}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.layout.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def pack_import_failure(self) -> str | None:
        """ComfyUI's traceback for our pack when it failed to import it, else None."""
        lines = self.log_text().splitlines()
        ours = f"custom_nodes{os.sep}{PACK_NAME}"
        if not any("IMPORT FAILED" in ln and ours in ln for ln in lines):
            return None
        # ComfyUI prints "Traceback ..." then "Cannot import <path> module for custom nodes: <error>"
        # when the import raised, or one line when the pack's comfy_entrypoint (V3) raised
        for i, ln in enumerate(lines):
            if ln.startswith("Cannot import") and ours in ln:
                start = max((j for j in range(i) if lines[j].startswith("Traceback")), default=max(0, i - 40))
                return "\n".join(lines[start : i + 1])
            if ln.startswith("Error while calling comfy_entrypoint in") and ours in ln:
                return ln
        return self.log_tail(80)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _format_node_errors(body: dict) -> str:
    """Turn a POST /prompt 400 answer into lines a person can act on."""
    err = body.get("error", {})
    lines = [f"{err.get('type', 'error')}: {err.get('message', '')} {err.get('details', '')}".strip()]
    for node_id, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            lines.append(
                f"  node {node_id} ({ne.get('class_type', '?')}): {e.get('message', '')} - {e.get('details', '')}"
            )
    return "\n".join(lines)


def _format_execution_error(messages: list) -> str:
    for event, data in messages:
        if event == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                + "".join(data.get("traceback") or [])
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "no execution_error message in the history"


class ComfyClient:
    """The handful of ComfyUI HTTP routes a headless user needs (stdlib only)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, data: dict | None = None, timeout: float = 30.0) -> Any:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base_url + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "error" in parsed:
                raise ComfyError(f"{path} answered {e.code}:\n{_format_node_errors(parsed)}") from None
            raise ComfyError(f"{path} answered {e.code}: {raw[:2000]!r}") from None
        return json.loads(raw) if raw else None

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        return self._request(path, timeout=timeout)

    def object_info(self) -> dict:
        """Every registered node class with its inputs and outputs (GET /object_info)."""
        return self.get_json("/object_info", timeout=60)

    def queue_prompt(self, api_workflow: dict) -> str:
        """Queue an API-format workflow (POST /prompt); returns its prompt id.

        Raises ComfyError listing each node's validation error when ComfyUI refuses it.
        """
        if not isinstance(api_workflow, dict) or not api_workflow:
            raise ValueError(
                "api_workflow must be a non-empty dict in ComfyUI's API format "
                "({node_id: {'class_type': ..., 'inputs': {...}}})"
            )
        if "nodes" in api_workflow and "links" in api_workflow:
            raise ValueError(
                "this is a UI-format workflow; queue its API-format twin "
                "(workflows/api/*_api.json, or 'Export (API)' in ComfyUI)"
            )
        answer = self._request("/prompt", {"prompt": api_workflow, "client_id": self.client_id})
        if answer.get("node_errors"):
            raise ComfyError(
                "ComfyUI accepted the prompt with node errors:\n"
                + _format_node_errors({"node_errors": answer["node_errors"]})
            )
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The finished history entry of ``prompt_id``, or None while it is queued or running."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait_for_completion(
        self, prompt_id: str, timeout: float = 600.0, poll: float = 0.5, on_poll: Callable[[float], None] | None = None
    ) -> dict:
        """Block until ``prompt_id`` finishes; return its history entry.

        ``on_poll(elapsed_seconds)`` is called on every poll (progress reports).
        Raises ComfyError with the failing node, exception and traceback when execution
        failed or was interrupted, and TimeoutError (after interrupting it) on timeout.
        """
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll(time.monotonic() - start)
            entry = self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "success" and status.get("completed", True):
                    return entry
                raise ComfyError(f"prompt {prompt_id} failed: " + _format_execution_error(status.get("messages", [])))
            time.sleep(poll)
        self.interrupt()
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s (interrupted)")

    def run(self, api_workflow: dict, timeout: float = 600.0) -> dict:
        """Queue ``api_workflow`` and wait for it; returns the history entry."""
        return self.wait_for_completion(self.queue_prompt(api_workflow), timeout=timeout)

    def interrupt(self) -> None:
        """Ask ComfyUI to stop the running prompt (what the UI's Cancel button does)."""
        self._request("/interrupt", {})

    def queue_remaining(self) -> int:
        return self.get_json("/prompt")["exec_info"]["queue_remaining"]


class ProgressWatcher:
    """Follows ComfyUI's websocket (/ws) in a thread and remembers the running node and step.

    The HTTP routes say only "queued" or "done"; the websocket carries the per-node progress
    bars (training steps, sampling steps) a person waiting on a long graph wants to see.
    Needs aiohttp, which ComfyUI itself requires; without it ``describe()`` stays None.
    """

    def __init__(self, client: ComfyClient, workflow: dict | None = None):
        self.client = client
        self.workflow = workflow or {}
        self.node: str | None = None
        self.step: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        # queue only once connected, or the first node's messages are missed
        self._connected.wait(timeout=5)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def describe(self) -> str | None:
        """e.g. "node 4 (TextLocTrain) step 120/200", or None before anything ran."""
        if self.node is None:
            return None
        cls = self.workflow.get(self.node, {}).get("class_type", "?")
        text = f"node {self.node} ({cls})"
        return text + (f" step {self.step[0]}/{self.step[1]}" if self.step else "")

    def _handle(self, msg: dict) -> None:
        kind, data = msg.get("type"), msg.get("data") or {}
        if kind == "executing" and data.get("node") is not None:
            self.node, self.step = str(data["node"]), None
        elif kind == "progress":
            self.node = str(data.get("node", self.node))
            self.step = (int(data.get("value", 0)), int(data.get("max", 0)))

    def _run(self) -> None:
        try:
            import asyncio

            import aiohttp
        except ImportError:
            self._connected.set()
            return

        async def follow() -> None:
            url = self.client.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client.client_id}"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url, heartbeat=30) as ws:
                    self._connected.set()
                    while not self._stop.is_set():
                        try:
                            msg = await ws.receive(timeout=0.5)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._handle(json.loads(msg.data))
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            return

        try:
            asyncio.run(follow())
        except Exception:  # progress display is best effort; the HTTP wait decides success
            self._connected.set()


def output_files(history_entry: dict, layout: ComfyLayout, kinds: Iterable[str] = ("output",)) -> dict[str, list[Path]]:
    """Files the prompt's nodes reported (images etc.), by node id, as paths on disk.

    ``kinds`` selects ComfyUI's folder types: "output" (SaveImage), "temp" (PreviewImage).
    """
    roots = {"output": layout.output, "temp": layout.temp, "input": layout.input}
    found: dict[str, list[Path]] = {}
    for node_id, node_out in (history_entry.get("outputs") or {}).items():
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item and item.get("type", "output") in kinds:
                    root = roots[item.get("type", "output")]
                    found.setdefault(node_id, []).append(root / item.get("subfolder", "") / item["filename"])
    return found


def is_api_workflow(path: Path) -> bool:
    """Shipped workflows follow one naming rule: ``*_api.json`` is API format, the rest UI."""
    return path.name.endswith("_api.json")


def load_workflow(path: str | os.PathLike) -> dict:
    """Read a workflow JSON, naming the file in the error when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"workflow {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"workflow {path} is not valid JSON: {e}") from None
