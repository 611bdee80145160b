"""textloc_core's dependencies point one way, and it never imports ComfyUI, the nodes, the
harness or the benchmarks.

The role packages, lowest first (README, Architecture):

    stop <- data <- attention <- backends <- adapters <- sampling <- training <- tinyworld <- evaluation <- api

A module may import from its own package and from any package below it, never from one above.
Every import counts, also the ones inside functions and under ``TYPE_CHECKING``: a lazy import
hides a dependency, it does not remove it. Read from the source with ``ast``; nothing is
imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "textloc_core"
LAYERS = ["stop", "data", "attention", "backends", "adapters", "sampling", "training", "tinyworld", "evaluation", "api"]
FOREIGN = (
    "comfy",
    "comfy_api",
    "comfy_extras",
    "folder_paths",
    "server",
    "nodes",
    "textloc_harness",
    "benchmarks",
    "tinyworld_build",
)


def _module_name(path: Path) -> str:
    parts = ["textloc_core", *path.relative_to(CORE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def _imports(name: str, path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved; for
    ``from package import module`` the submodule itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    modules = _modules()
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
                if node.level - 1 >= len(package.split(".")):
                    target = "<outside textloc_core>." + (node.module or "")
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
            found += [(node.lineno, sub) for sub in subs] or [(node.lineno, target)]
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"  # the package's own __init__ sits with the facade


def test_every_module_is_in_a_layer():
    outside = [name for name in _modules() if _layer(name) not in LAYERS]
    assert not outside, f"modules outside the role packages {LAYERS}: {outside}; put each in the package of its role"


def _upward(name: str, path: Path, source: str | None = None) -> list[str]:
    rank = LAYERS.index(_layer(name))
    return [
        f"{path.relative_to(CORE.parent)}:{line} ({_layer(name)}) imports {target} ({_layer(target)})"
        for line, target in _imports(name, path, source)
        if target.startswith("textloc_core.") and LAYERS.index(_layer(target)) > rank
    ]


def test_imports_never_point_to_a_higher_layer():
    upward = [line for name, path in _modules().items() for line in _upward(name, path)]
    assert not upward, "imports pointing up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)


def test_the_check_sees_upward_imports_lazy_or_not():
    """The rule itself, on made-up modules: relative, absolute and in-function imports of a
    higher layer are reported; the same layer and lower ones are not."""
    fake = CORE / "data" / "fake.py"
    source = (
        "from ..training.config import TrainConfig\n"
        "from textloc_core.adapters import adapter\n"
        "def f():\n    from ..evaluation import metrics\n"
        "from .masks import mask_to_grid\n"
    )
    found = _upward("textloc_core.data.fake", fake, source)
    assert [f.split(" imports ")[1] for f in found] == [
        "textloc_core.training.config (training)",
        "textloc_core.adapters.adapter (adapters)",
        "textloc_core.evaluation.metrics (evaluation)",
    ]
    assert not _upward("textloc_core.evaluation.fake", CORE / "evaluation" / "fake.py", source)
    # stop is the lowest: every package may import it, and it imports none of them
    assert not _upward("textloc_core.data.fake", fake, "from ..stop import check_stop\n")
    assert _upward("textloc_core.stop", CORE / "stop.py", "from .data import masks\n")


def test_the_core_never_imports_comfyui_the_nodes_the_harness_or_the_benchmarks():
    found = [
        f"{path.relative_to(CORE.parent)}:{line} imports {target}"
        for name, path in _modules().items()
        for line, target in _imports(name, path)
        if target.split(".")[0] in FOREIGN or target.startswith("<outside")
    ]
    assert not found, "\n".join(found)


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {
        name: {t for _line, t in _imports(name, path) if t in modules and t != name} for name, path in modules.items()
    }
    # a package's __init__ is imported with each of its modules; only its own imports count
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_core_and_tinyworld_tests_need_no_comfyui():
    """tests/core, tests/tinyworld and tests/scripts run without ComfyUI (DEVELOPERS.md); tests
    that import it belong in tests/integration."""
    roots = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server")
    tests = CORE.parent / "tests"
    found = []
    for path in sorted(p for folder in ("core", "tinyworld", "scripts") for p in (tests / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            )
            found += [f"{path.relative_to(tests)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in roots]
    assert not found, "\n".join(found)
