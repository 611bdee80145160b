"""A process that commits a set of files with ``file_commit.commit_files`` and SIGKILLs itself
just before its N-th file-system change (a rename, link or removal), for
tests/core/data/test_file_commit.py and tests/integration/test_bounded_server.py. With F > 0, its
F-th change fails with an OSError instead (a full disk, say), so the commit rolls back and the
kill lands in the roll-back. Each final gets the bytes of its source file. Prints "done" when
the commit ended before the N-th change.

    python file_commit_child.py <journal> <N> <F> <final>=<source> ...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from textloc_core.data import file_commit  # noqa: E402


def main(journal: Path, kill_at: int, fail_at: int, pairs: list[str]) -> None:
    staged = {}
    for pair in pairs:
        final, source = (Path(part) for part in pair.split("=", 1))
        staged[final] = file_commit.temporary_beside(final)
        staged[final].write_bytes(source.read_bytes())
    changes = 0

    def counted(operation):
        def run(*args, **kwargs):
            nonlocal changes
            changes += 1
            if changes == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if changes == fail_at:
                raise OSError(28, "No space left on device (injected)")
            return operation(*args, **kwargs)

        return run

    os.replace, os.link, os.unlink = counted(os.replace), counted(os.link), counted(os.unlink)
    try:
        file_commit.commit_files(staged, journal)
    except OSError as error:
        print("failed", error)
    print("done", changes)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
