"""On PostgreSQL, each worker hears of every write through NOTIFY, and every write waits until
every worker has heard of it: so a worker answers with the content version it holds, without a
round trip per request, and still never serves a page older than a write acknowledged before
the request began, on any host.

A round trip per batch of requests (`app/pgshared.py`) held PostgreSQL's cached pages to about
0.3-0.4 of nginx, where SQLite's shared-memory beacon (`app/beacon.py`) reaches 0.5-0.6: the
worker spent more CPU on the query than on the answer. Workers on several hosts share no memory,
so the database carries the news, and leases keep it strict:

- Each worker (`Watcher`) LISTENs on `CHANNEL` and holds a row in `version_watchers`: a lease
  (`lease_until`, in the database's clock) that it renews every `RENEW_SECONDS`, and the latest
  version it has heard of (`seen_version`). It trusts what it holds only until its own clock
  passes the time it *sent* its last renewal plus the lease, less `MARGIN_SECONDS`: so its trust
  ends before the database's lease does.
- A write bumps the version and NOTIFYs it in the same transaction (delivered at commit). After
  the commit, and before the writer answers anybody, it waits until no watcher with a live lease
  is behind that version (`wait_for_watchers`). A watcher whose lease ran out is not waited for,
  and by then it no longer trusts what it holds.
- A watcher whose trust lapsed (a renewal late, its connection lost, at start) reads the version
  again in a statement begun after its renewal committed, before it trusts anything again: a
  writer that checked the leases while it had none is already in that read.
- Renewals also carry the database's version back, so a change made outside Workshop (no NOTIFY)
  shows within `RENEW_SECONDS`, as the beacon's recheck does on SQLite.

- A watcher trusts nothing until it has heard its own probe notice on its connection: through a
  proxy that does not keep the session (PgBouncer in transaction mode), LISTEN hears nothing.

The notice also names the posts whose stored pages the write changed (`note_pages`, by
`app/essaypage.py`'s `store_pages` and `drop_pages`): `VERSION:ID,ID,...`. A watcher keeps, for
the versions it heard of one after the other, the newest version that changed each post's page
(`changed`, from `pages_from` on): so the machine's copy of pages (`app/pagestore.py`) keeps a
page through the writes that did not change it. A notice without the list (`VERSION`, or
`VERSION:*` when the list would not fit), a version skipped (a notice missed while the
connection was down, a change made outside Workshop), or a reconnection starts the record
again at that version: pages kept before it are not trusted.

A watcher that never answers holds a writer for at most `WAIT_LIMIT_SECONDS` (a dead one only
until its lease ends). While a worker does not trust its watcher, it reads the version per batch
of requests as before.
"""

import asyncio
import logging
import os
import re
import secrets
import socket
import time

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.pgshared import Wire

log = logging.getLogger(__name__)

CHANNEL = "workshop_content"
LEASE_SECONDS = 2.0
RENEW_SECONDS = 0.5
MARGIN_SECONDS = 0.5  # for the renewal's round trip and clocks running at slightly other rates
RETRY_SECONDS = 1.0  # after a failure, before connecting again
WAIT_LIMIT_SECONDS = 5.0
PAGES_CHANGED = "workshop.pages_changed"  # a write's session: the posts whose pages it changed
PAYLOAD_LIMIT = 7900  # bytes: PostgreSQL's NOTIFY takes under 8000
# A write's notice (`notify`): VERSION, VERSION:* or VERSION:ID,ID,... Anything else on the
# channel is another worker's probe, its id: host:pid:token, where the host may be all digits
# (a container's id): so the whole payload is matched, not its first part.
NOTICE = re.compile(rb"(\d+)(?::(\*|[\d,]*))?")
CHANGED_LIMIT = 100_000  # posts recorded before the record starts again (bounded memory)

VERSION_SQL = "SELECT value FROM site_state WHERE name = 'content_version'"
RENEW_SQL = (
    "INSERT INTO version_watchers (id, lease_until, seen_version)"
    " VALUES ($1, now() + make_interval(secs => $2::float8), $3::bigint)"
    " ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until,"
    " seen_version = GREATEST(version_watchers.seen_version, EXCLUDED.seen_version)"
    f" RETURNING ({VERSION_SQL})"
)
ACK_SQL = (
    "UPDATE version_watchers SET seen_version = GREATEST(seen_version, $2::bigint)"
    " WHERE id = $1 RETURNING 1"
)
PROBE_SQL = f"SELECT pg_notify('{CHANNEL}', $1)"
LEAVE_SQL = "DELETE FROM version_watchers WHERE id = $1 RETURNING 1"
BEHIND_SQL = text(
    "SELECT count(*) FROM version_watchers WHERE lease_until > now() AND seen_version < :version"
)


class Watcher:
    """One worker's view of the content version, kept by NOTIFY (see the module)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.loop = asyncio.get_running_loop()
        self.version = 0  # the newest committed version heard of
        self._trusted_until = 0.0  # time.monotonic(): till then `version` is current
        self._acked = 0
        self._wire: Wire | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self._acking: asyncio.Task[None] | None = None
        self._heard_own = False  # its own notice came back: LISTEN works on this connection
        # The pages the writes heard of changed (see the module): for each post the newest
        # version that changed its page, for the notices heard one after the other in
        # (`pages_from`, `pages_known`]. The copy of pages answers only while `pages_known`
        # is `version`: between a version read and its notice, it waits for the notice.
        self.pages_from = self.pages_known = -1
        self.changed: dict[int, int] = {}
        self._pages_wanted = -1  # the version read at the last renewal
        self._warned = False
        self._task = self.loop.create_task(self._run())

    @property
    def trusted(self) -> bool:
        return time.monotonic() < self._trusted_until

    async def close(self) -> None:
        """Leave: writers stop waiting for this worker at once, not when its lease ends.

        A statement on the wire (a renewal) is let finish first, for at most a second: a
        statement cancelled halfway leaves its answer unread, and the connection could not
        send the leave. Skipping the leave instead left the lease behind in two of four
        workers' closes, a renewal having begun 3-200 ms before."""
        self._lapse()
        try:
            await asyncio.wait_for(self._lock.acquire(), 1.0)
            locked = True
        except TimeoutError:
            locked = False
        self._task.cancel()  # asleep, or waiting for the lock: nothing left half done
        if self._acking is not None:
            self._acking.cancel()
        self._lapse()
        wire, self._wire = self._wire, None
        try:
            if wire is not None and locked and wire.usable:
                await asyncio.wait_for(wire.query(LEAVE_SQL, [self.id.encode()]), 1.0)
        except Exception:  # the lease ends by itself
            pass
        finally:
            if locked:
                self._lock.release()
            if wire is not None:
                wire.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._watch()
            except Exception:
                if not self._warned:
                    log.warning(
                        "content-version watcher lost; reading the database per request",
                        exc_info=True,
                    )
                    self._warned = True
            self._lapse()
            if self._wire is not None:
                self._wire.close()
                self._wire = None
            await asyncio.sleep(RETRY_SECONDS)

    async def _watch(self) -> None:
        self._wire = wire = await Wire.open(self.engine, name="workshop watcher")
        wire.on_notify = self._heard
        wire.on_broken = self._lapse
        await wire.command(f"LISTEN {CHANNEL}")
        # Trusted only once it hears its own notice: through a proxy that does not keep the
        # session (PgBouncer in transaction mode) LISTEN hears nothing, and it must not trust.
        self._heard_own = False
        self._forget_pages(-1)  # notices may have been missed while it was not listening
        await self._query(PROBE_SQL, [self.id.encode()])
        me, lease = self.id.encode(), b"%r" % LEASE_SECONDS
        while True:
            sent = time.monotonic()
            rows = await self._query(RENEW_SQL, [me, lease, b"%d" % self.version])
            read = _int(rows[0][0])
            if time.monotonic() >= self._trusted_until:
                # Lapsed, or never trusted: a writer may have passed this worker by while it
                # held no lease. A statement begun after the renewal committed sees that write.
                read = max(read, _int((await self._query(VERSION_SQL))[0][0]))
                if self.pages_known < read:  # it heard no notice of these: none will come
                    self._forget_pages(read)
            elif self.pages_known < self._pages_wanted:
                # A version read a renewal ago whose notice never came: written outside.
                self._forget_pages(self._pages_wanted)
            self._pages_wanted = read
            self._raise(read)
            if self._heard_own:
                self._trusted_until = sent + LEASE_SECONDS - MARGIN_SECONDS
                self._warned = False
            await asyncio.sleep(RENEW_SECONDS)

    async def _query(self, sql: str, params: list[bytes | None] | None = None) -> list[tuple]:
        wire = self._wire
        if wire is None:
            raise ConnectionError("watcher not connected")
        async with self._lock:
            return await wire.query(sql, params or ())

    def _heard(self, payload: bytes) -> None:
        if payload == self.id.encode():
            self._heard_own = True
            return
        notice = NOTICE.fullmatch(payload)
        if notice is None:
            return  # another worker's probe
        version, ids = int(notice[1]), notice[2]
        self._note_pages(version, ids if ids != b"*" else None)
        self._raise(version)

    def _note_pages(self, version: int, ids: bytes | None) -> None:
        """Record the posts whose pages `version` changed (None: maybe any)."""
        if version <= self.pages_known:
            return  # heard of already (or before the record starts)
        if ids is None or version != self.pages_known + 1 or self.pages_known < 0:
            self._forget_pages(version)
            return
        for post_id in ids.split(b","):
            if post_id:
                self.changed[int(post_id)] = version
        self.pages_known = version
        if len(self.changed) > CHANGED_LIMIT:
            self._forget_pages(version)

    def kept_since(self, post_id: int) -> int | None:
        """The oldest content version a post's page may have been read under and still be its
        page at `self.version`: no notice since named it. None: the notices heard so far do
        not tell (a version read whose notice has not come yet)."""
        if self.pages_known != self.version:
            return None
        return max(self.pages_from, self.changed.get(post_id, -1))

    def _forget_pages(self, version: int) -> None:
        """Start the record of changed pages again at `version` (-1: at the next version
        read): pages kept under an older one are no longer trusted."""
        self.pages_from = self.pages_known = version
        self.changed = {}

    def _raise(self, version: int) -> None:
        if version > self.version:
            self.version = version
        if self.version > self._acked and (self._acking is None or self._acking.done()):
            self._acking = self.loop.create_task(self._ack())

    async def _ack(self) -> None:
        """Tell writers this worker holds the version (the renewals say it too, later)."""
        try:
            while self.version > self._acked:
                version = self.version
                await self._query(ACK_SQL, [self.id.encode(), b"%d" % version])
                self._acked = version
        except Exception:  # the renewal loop sees the connection's state and reconnects
            pass

    def _lapse(self) -> None:
        self._trusted_until = 0.0


def _int(value: bytes | None) -> int:
    return int(value) if value else 0


_watchers: dict[int, Watcher] = {}  # id(engine) -> this process's watcher on the current loop


def for_engine(engine: Engine) -> Watcher:
    """The running loop's watcher of this engine's database, started on first use."""
    watcher = _watchers.get(id(engine))
    loop = asyncio.get_running_loop()
    if watcher is None or watcher.loop is not loop or watcher.engine is not engine:
        watcher = _watchers[id(engine)] = Watcher(engine)
    return watcher


async def close(engine: Engine) -> None:
    watcher = _watchers.get(id(engine))
    if watcher is not None and watcher.loop is asyncio.get_running_loop():
        del _watchers[id(engine)]
        await watcher.close()


# --- the writer's side ----------------------------------------------------------------------------


def note_pages(session: Session, post_ids: set[int]) -> None:
    """In a write's transaction: these posts' stored pages changed (named in its notice)."""
    session.info.setdefault(PAGES_CHANGED, set()).update(post_ids)


def notify(session: Session, version: int) -> None:
    """In the write's transaction: PostgreSQL sends the notice when it commits. It names the
    posts whose pages the write changed (`note_pages`); a write that named none may have
    changed any (`VERSION` alone)."""
    changed = session.info.pop(PAGES_CHANGED, None)
    payload = str(version)
    if changed is not None:
        listed = ",".join(str(i) for i in sorted(changed))
        payload += ":" + (listed if len(payload) + len(listed) < PAYLOAD_LIMIT else "*")
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload}
    )


def wait_for_watchers(engine: Engine, version: int) -> None:
    """After the commit of `version`: return once no watcher with a live lease is behind it."""
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    pause = 0.0005
    try:
        with engine.connect() as conn:
            while conn.execute(BEHIND_SQL, {"version": version}).scalar():
                conn.rollback()  # each check sees the watchers' latest answers
                if time.monotonic() > deadline:
                    log.warning("answering before every worker heard of version %s", version)
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
    except Exception:
        # Unknown which workers heard of it: wait until every lease taken so far has ended.
        log.warning("could not check the watchers of version %s", version, exc_info=True)
        time.sleep(LEASE_SECONDS)
