"""The size rule of textloc_core/ and nodes/ (DEVELOPERS.md, "Where code goes"): no module over
450 lines, no function or method over 60 lines, so each reads as one job. Read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("textloc_core", "nodes")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def too_long(path: Path, source: str | None = None) -> list[str]:
    """'path: N lines' for the module and 'path:line name: N lines' for each function over the limits."""
    text = path.read_text() if source is None else source
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    return found


def test_no_module_or_function_passes_the_limits():
    found = [line for path in _sources() for line in too_long(path)]
    assert not found, "split these into parts with one job each:\n" + "\n".join(found)


def test_the_check_counts_a_function_from_def_to_its_last_line(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = f"def long():\n{body}\n\ndef short():\n    return 1\n"
    found = too_long(tmp_path / "m.py", source)
    assert found == [f"{tmp_path / 'm.py'}:1 long: {MAX_FUNCTION_LINES + 1} lines (at most {MAX_FUNCTION_LINES})"]
    assert too_long(tmp_path / "m.py", "x = 1\n" * (MAX_MODULE_LINES + 1))[0].endswith(
        f"{MAX_MODULE_LINES + 1} lines (at most {MAX_MODULE_LINES})"
    )
