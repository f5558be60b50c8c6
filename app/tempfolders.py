"""Folders that one `workshop serve` keeps in the temp dir while it runs: its workers' metrics
files (`app/observability.py`) and, on PostgreSQL, their local copy of pages (`app/pagestore.py`).

A serve removes its folders when it stops. A serve that was killed (SIGKILL, the OOM killer, a
container stopped hard) cannot, and its folders stayed for good: a machine that had run the test
suite a few times held 500 metrics folders and 100 page copies. So a serve holds a lock on each
of its folders while it runs (`flock`, which the kernel releases when the process dies, whatever
kills it), and the next serve on the machine, as it starts, removes the serve folders that
nobody holds (`remove_abandoned`).
"""

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

# An unheld folder younger than this may be a serve's that is starting (made, not yet locked).
ABANDONED_AFTER = 60  # seconds
# The names a serve's folders start with; every serve clears those left by killed serves, once
# as it starts (`workshop serve`), so a machine that now serves SQLite also loses the page
# copies of its PostgreSQL days.
METRICS = "workshop-metrics-"
PAGES = "workshop-pages-"
SERVE_PREFIXES = (METRICS, PAGES)


@contextlib.contextmanager
def held(prefix: str) -> Iterator[str]:
    """A new folder in the temp dir, named `prefix` and a random part, locked while the block
    runs and removed after it. Raises OSError when no folder can be made there."""
    folder = tempfile.mkdtemp(prefix=prefix)
    lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by the workers
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a folder of its own: nobody else holds it
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def remove_abandoned(tempdir: str, prefix: str | tuple[str, ...] = SERVE_PREFIXES) -> int:
    """Remove the folders in `tempdir` whose names start with `prefix` (or one of them) that no
    running serve holds and that are at least `ABANDONED_AFTER` seconds old; how many."""
    try:
        found = [e for e in os.scandir(tempdir) if e.name.startswith(prefix)]
    except OSError:
        return 0
    removed = 0
    for entry in found:
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            lock = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a serve holds it
            if time.time() - os.fstat(lock).st_mtime >= ABANDONED_AFTER:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(lock)
    if removed:
        log.info("removed %d folders in %s left by serves that were killed", removed, tempdir)
    return removed
