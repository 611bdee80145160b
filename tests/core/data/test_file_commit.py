"""Several files replaced as one (textloc_core.data.file_commit, used for an adapter's adapter,
LoRA and embedding files): a real process SIGKILLed before each file-system change of the
commit leaves, once ``recover`` has run, exactly the old set or exactly the new one."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from textloc_core.data import file_commit
from textloc_core.data.safe_io import TEMP_MARKER

CHILD = Path(__file__).with_name("file_commit_child.py")
NAMES = ("textloc/adapter.safetensors", "loras/lora.safetensors", "embeddings/doll.safetensors")


def _old_set(folder: Path) -> None:
    for name in NAMES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
    for name in NAMES[:2]:  # two files exist, the embedding is new
        (folder / name).write_bytes(b"old " + name.encode())


def commit_in_child(
    journal: Path, kill_at: int, fail_at: int, sources: dict[Path, Path]
) -> subprocess.CompletedProcess:
    """Run file_commit_child.py: commit ``sources`` (final -> file whose bytes it gets)."""
    pairs = [f"{final}={source}" for final, source in sources.items()]
    return subprocess.run(
        [sys.executable, str(CHILD), str(journal), str(kill_at), str(fail_at), *pairs],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _new_file(folder: Path, name: str) -> Path:
    source = folder / "new" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"new " + name.encode())
    return source


def _state(folder: Path) -> str:
    contents = {name: (folder / name).read_bytes() if (folder / name).is_file() else None for name in NAMES}
    if all(contents[name] == b"new " + name.encode() for name in NAMES):
        return "new"
    if all(contents[name] == b"old " + name.encode() for name in NAMES[:2]) and contents[NAMES[2]] is None:
        return "old"
    return f"mixed {contents}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if TEMP_MARKER in p.name)


FAIL_AT = 5
"""The change that fails in the roll-back case: after 2 backups and the journal, the second rename."""


@pytest.mark.slow
@pytest.mark.parametrize("fail_at", [0, FAIL_AT], ids=["commit", "rollback"])
def test_a_kill_before_any_change_of_the_commit_leaves_the_old_or_the_new_set(tmp_path, fail_at):
    outcomes = []
    for kill_at in range(fail_at + 1, 40):
        folder = tmp_path / f"kill{kill_at}"
        _old_set(folder)
        child = commit_in_child(
            folder / "textloc" / ".journal.textloc-tmp",
            kill_at,
            fail_at,
            {folder / name: _new_file(tmp_path, name) for name in NAMES},
        )
        if child.returncode == 0:
            break  # the commit (or its roll-back) ended before the kill_at-th change
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
        journal = folder / "textloc" / ".journal.textloc-tmp"
        decided = journal.exists() and '"commit"' in journal.read_text()
        outcome = file_commit.recover(journal, [folder / name for name in NAMES])
        state = _state(folder)
        outcomes.append((kill_at, outcome, state))
        # a journal saying "commit" decides the new set; before it, or once rolling back, the old
        assert state == ("new" if decided else "old"), (kill_at, outcome, state)
        assert _leftovers(folder) == [], (kill_at, _leftovers(folder))
    else:
        pytest.fail("the commit never finished")
    assert "failed" in child.stdout if fail_at else "failed" not in child.stdout
    assert _state(folder) == ("old" if fail_at else "new") and _leftovers(folder) == []
    assert len(outcomes) >= 5, outcomes  # links, journal, renames, removals: each was a kill point
    assert {outcome for _, outcome, _ in outcomes} >= ({"rolled back"} if fail_at else {None, "committed"})


def test_a_folder_where_a_file_goes_fails_before_anything_moves(tmp_path):
    _old_set(tmp_path)
    (tmp_path / NAMES[2]).mkdir()
    staged = {}
    for name in NAMES:
        staged[tmp_path / name] = file_commit.temporary_beside(tmp_path / name)
        staged[tmp_path / name].write_bytes(b"new")
    with pytest.raises(IsADirectoryError, match="doll.safetensors is a folder where a file should go"):
        file_commit.commit_files(staged, tmp_path / ".journal.textloc-tmp")
    assert _leftovers(tmp_path) == [] and (tmp_path / NAMES[0]).read_bytes() == b"old " + NAMES[0].encode()


def test_a_journal_naming_files_outside_their_folders_is_refused(tmp_path):
    journal = tmp_path / ".journal.textloc-tmp"
    journal.write_text('{"version": 1, "state": "commit", "files": [["%s", "/etc/passwd", null]]}' % (tmp_path / "a"))
    with pytest.raises(ValueError, match="names files outside their folders"):
        file_commit.recover(journal, [])
