"""The content version of an SQLite database, shared by every process on the machine through a
memory-mapped file beside it (`<database>-version`, 8 bytes), so the response cache can check
it per request without a query.

An SQLite read of `site_state`, however small, opens and closes a WAL read transaction (file
locks, the shared-memory index): it was an eighth of a cached page's cost (py-spy). Reading
eight bytes of shared memory costs well under a microsecond.

How it stays correct:
- Every write bumps `site_state.content_version` in its own transaction; right after that
  transaction commits, and before the writer answers anybody, the writer raises the beacon to
  the version it committed (`publish`, under an exclusive `flock`, never lowering it). So any
  request that starts after a write was acknowledged sees the new version, on every worker.
- A reader that sees the old version while a write is between its commit and its `publish`
  overlaps that write: either answer is right. A reader never sees a version before its content
  is committed, because the beacon only ever holds committed versions.
- A writer killed between commit and `publish`, or a change made outside Workshop, leaves the
  beacon behind the database: readers also compare it with the database every
  `RECHECK_SECONDS` (`reconcile`) and set it to the database's value, so such a write shows
  within that time (it was never acknowledged to anybody).
- The 8-byte value sits at offset 0 of the mapping, aligned: one machine load or store, never a
  torn read on the platforms Workshop runs on. A wrong value would only miss the cache anyway.
"""

import fcntl
import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from app import db, watch

log = logging.getLogger(__name__)
RECHECK_SECONDS = 1.0
_FORMAT = struct.Struct("<q")
_INFO_KEY = "workshop.content_version"  # set on a session by the write that bumps the version


class Beacon:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _FORMAT.size:
                os.ftruncate(fd, _FORMAT.size)  # zero-filled: "nothing published yet"
            self._map = mmap.mmap(fd, _FORMAT.size)
        finally:
            os.close(fd)  # the mapping keeps the file; the lock file is opened per update

    def read(self) -> int:
        return int(_FORMAT.unpack_from(self._map, 0)[0])

    def publish(self, version: int) -> None:
        """Raise the shared version to `version` (a committed one); never lower it."""
        with self._locked():
            if version > self.read():
                _FORMAT.pack_into(self._map, 0, version)

    def reconcile(self, read_database: Any) -> int:
        """Set the shared version to the database's, read while no writer can publish. Readers
        run on the event loop and never wait for the lock: if a writer holds it (for
        microseconds), this round is skipped and the shared version answers."""
        try:
            with self._locked(wait=False):
                version = int(read_database())
                if version != self.read():
                    _FORMAT.pack_into(self._map, 0, version)
                return version
        except BlockingIOError:
            return self.read()

    def _locked(self, wait: bool = True) -> "_Flock":
        return _Flock(self.path, wait)


class _Flock:
    def __init__(self, path: Path, wait: bool) -> None:
        self.path, self.wait = path, wait

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)  # closing releases the lock


_beacons: dict[Path, Beacon | None] = {}  # None: it could not be made (warned once)
_owner: dict[Path, int] = {}  # the process that mapped it: a forked child maps it again
_beacons_lock = threading.Lock()


def path_for(engine: Engine) -> Path | None:
    """Where the beacon of this engine's database lives; None unless it is an SQLite file."""
    found = db.sqlite_file(engine)
    return None if found is None else found.with_name(found.name + "-version")


def for_engine(engine: Engine) -> Beacon | None:
    """The beacon of this engine's SQLite file; None for other databases, or when the file
    cannot be made (a read-only directory): readers then query the database every time."""
    path = path_for(engine)
    if path is None:
        return None
    with _beacons_lock:
        if path not in _beacons or os.getpid() != _owner.get(path):
            try:
                _beacons[path] = Beacon(path)
            except OSError:
                log.warning("no content-version beacon at %s; reading the database", path)
                _beacons[path] = None
            _owner[path] = os.getpid()
        return _beacons[path]


def note_version(session: Session, version: int) -> None:
    """Called by the write that bumped the content version: publish it once it commits (on
    PostgreSQL: tell every worker, and wait until they heard)."""
    session.info[_INFO_KEY] = version
    if session.get_bind().dialect.name == "postgresql":
        watch.notify(session, version)


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    version = session.info.pop(_INFO_KEY, None)
    if version is None:
        return
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    if engine.dialect.name == "postgresql":
        watch.wait_for_watchers(engine, version)  # every worker heard of it (app/watch.py)
        return
    beacon = for_engine(engine)
    if beacon is None:
        return
    try:
        beacon.publish(version)
    except OSError:  # the write is committed: readers catch up at their next recheck
        log.warning("could not publish content version %s", version, exc_info=True)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_INFO_KEY, None)
