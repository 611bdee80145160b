"""Replace several files as one: after an error, a kill or a power loss at any point, either
every old file or every new one is in place once ``recover`` has run, never a mix.

``commit_files(staged, journal)`` takes finished temporaries (``staged``: final path ->
temporary beside it, written and flushed) and

1. gives every existing final a hard-link backup beside it (the old set stays whole);
2. writes the journal atomically: from here on the new set is decided;
3. renames each temporary over its final;
4. removes the backups, then the journal.

A Python error in step 3 (a folder in the way, a full disk) rolls back instead: the journal is
rewritten as "rollback", the backups go back over their finals, new files are removed, and
the journal goes last. A process killed anywhere leaves the journal (or, before step 2, only
temporaries and backups, which readers skip); ``recover(journal)`` then finishes the commit or
the roll-back it records, and clears stray temporaries of a commit that never got a journal.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .safe_io import TEMP_MARKER, atomic_write_text, fsync_dir, is_temp_name

JOURNAL_VERSION = 1


def temporary_beside(path: Path, tag: str | None = None) -> Path:
    """A temporary name beside ``path`` that readers skip (``safe_io.is_temp_name``)."""
    return path.with_name(f".{path.name}.{tag or uuid.uuid4().hex[:8]}{TEMP_MARKER}")


def commit_files(staged: dict[Path, Path], journal: Path) -> None:
    """Move every temporary of ``staged`` over its final as one change (module doc).
    ``journal`` must not exist (``recover`` it first); it is gone when this returns or raises."""
    entries = []
    try:
        for final, temporary in staged.items():
            entries.append((final, temporary, _backup(final)))
        _write_journal(journal, "commit", entries)
    except BaseException:  # nothing was moved yet: drop what was made for the commit
        for final, temporary, backup in entries:
            if backup is not None:
                backup.unlink(missing_ok=True)
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        raise
    try:
        for final, temporary, _old in entries:
            os.replace(temporary, final)
            fsync_dir(final.parent)
    except BaseException:
        _write_journal(journal, "rollback", entries)
        _roll_back(entries)
        journal.unlink(missing_ok=True)
        raise
    _finish(entries, journal)


def _backup(final: Path) -> Path | None:
    """A hard link (else a copy) of an existing ``final`` beside it: the old file stays whole
    until every new one is in place. None when there is no file yet."""
    if not final.exists():
        return None
    if final.is_dir():
        raise IsADirectoryError(f"{final.name} is a folder where a file should go: remove or rename the folder")
    backup = temporary_beside(final)
    try:
        os.link(final, backup)
    except OSError:
        shutil.copy2(final, backup)
    fsync_dir(final.parent)
    return backup


def recover(journal: Path, finals: list[Path]) -> str | None:
    """Finish what an interrupted ``commit_files`` recorded in ``journal``: "committed" (the new
    set is now in place), "rolled back" (the old set is), or None when there was no journal; in
    every case stray temporaries of ``finals`` (a commit killed before its journal) are removed."""
    outcome = None
    if journal.exists():
        state, entries = _read_journal(journal)
        if state == "commit":
            try:
                for final, temporary, _old in entries:
                    if temporary.exists():  # not yet renamed when the process stopped
                        os.replace(temporary, final)
                _finish(entries, journal)
                outcome = "committed"
            except OSError:  # what failed the first time fails again: go back to the old set
                _write_journal(journal, "rollback", entries)
                state = "rollback"
        if state == "rollback":
            _roll_back(entries)
            journal.unlink(missing_ok=True)
            outcome = "rolled back"
    for final in [*finals, journal]:  # the journal's own temporary, when killed while writing it
        for stray in final.parent.glob(f".{final.name}.*{TEMP_MARKER}") if final.parent.is_dir() else ():
            stray.unlink(missing_ok=True)
    return outcome


def _write_journal(journal: Path, state: str, entries) -> None:
    files = [
        [str(final), str(temporary), None if backup is None else str(backup)] for final, temporary, backup in entries
    ]
    atomic_write_text(journal, json.dumps({"version": JOURNAL_VERSION, "state": state, "files": files}))


def _read_journal(journal: Path) -> tuple[str, list[tuple[Path, Path, Path | None]]]:
    """The journal's state and entries; every temporary and backup must be a temporary name
    beside its final (a journal can only move files within their own folders)."""
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        state, files = data["state"], data["files"]
        entries = [(Path(f), Path(t), None if b is None else Path(b)) for f, t, b in files]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"commit journal {journal.name} is unreadable ({type(error).__name__}): remove it") from None
    for final, temporary, backup in entries:
        for other in (temporary, backup):
            if other is not None and (other.parent != final.parent or not is_temp_name(other.name)):
                raise ValueError(f"commit journal {journal.name} names files outside their folders: remove it")
    if state not in ("commit", "rollback"):
        raise ValueError(f"commit journal {journal.name} has an unknown state: remove it")
    return state, entries


def _roll_back(entries) -> None:
    """Put the old set back: backups over their finals, and finals that were new removed
    (only those this commit renamed into place: their temporary is gone)."""
    for final, temporary, backup in reversed(entries):
        if backup is not None:
            if backup.exists():
                os.replace(backup, final)
                # a backup still linked to the final itself (never replaced) is left by rename
                backup.unlink(missing_ok=True)
        elif not temporary.exists():
            final.unlink(missing_ok=True)
        temporary.unlink(missing_ok=True)
        fsync_dir(final.parent)


def _finish(entries, journal: Path) -> None:
    for _final, _temporary, backup in entries:
        if backup is not None:
            backup.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    fsync_dir(journal.parent)
