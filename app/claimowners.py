"""Who holds an `Idempotency-Key` claim, and whether that process is known to have ended
(`app/idempotency.py`: the claim of a worker killed mid-request is taken over by the next retry
at once, instead of after `idempotency.ABANDONED_AFTER`).

- PostgreSQL: each process holds an advisory lock of its own on a connection kept for its life;
  PostgreSQL frees it when that connection ends, however the process died. A retry that can take
  the owner's lock knows the owner is gone (on any host).
- SQLite (one machine): the owner's pid and start time; the owner is gone when no such process
  runs on this machine any more.

An owner is a string in the claim's row: `pg <lock key> <claim id>`, `proc <machine/pid/start>
<claim id>`, or `- - <claim id>` for one nobody can judge. The claim id makes every claim
distinct, for the fence (`idempotency.Completion`).
"""

import logging
import os
import secrets
import threading
import weakref
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlmodel import Session

from app import db, pgwaits
from app.pgwaits import PG_CONNECT_TIMEOUT, PG_KEEPALIVES

log = logging.getLogger("workshop.errors")


def new_owner(engine: Engine) -> str:
    """What a new claim by this process names as its owner: how to tell whether the process
    still runs, and a part of the claim's own (so a take-over by this same process is still a
    different claim to the fence)."""
    claim_id = secrets.token_hex(6)
    if engine.dialect.name == "postgresql":
        lock = _process_lock(engine)
        return f"pg {lock} {claim_id}" if lock is not None else f"- - {claim_id}"
    process = _this_process()
    return f"proc {process} {claim_id}" if process is not None else f"- - {claim_id}"


def owner_gone(session: Session, owner: str | None) -> bool:
    """Whether the process that made a claim is known to have ended; False when in doubt."""
    kind, held_by, _claim_id = (owner or "- - -").split()
    if kind == "pg":
        # The lock is free only if the connection that held it has ended. Taken for this
        # transaction alone: released when the claim commits, under its new owner.
        got = session.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": int(held_by)}
        ).scalar()
        return bool(got)
    if kind == "proc":
        machine, pid, started = held_by.rsplit("/", 2)
        here = _this_process()
        same_machine = here is not None and here.rsplit("/", 2)[0] == machine
        return same_machine and _started(int(pid)) != started
    return False


def _this_process() -> str | None:
    """`machine/pid/start time` of this process; None where /proc cannot say (not Linux).

    The machine is the kernel's boot and pid namespace: a pid means something only within
    them (another container on the same disk, or a reboot, has other processes)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    pid = os.getpid()
    started = _started(pid)
    return f"{boot}.{namespace}/{pid}/{started}" if started is not None else None


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot), None if it is not running: a pid
    reused by a later process has another start time; a zombie (killed, not yet reaped) has
    ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After the name in parentheses (which may hold spaces): state, then field 22 is the start.
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


# Per PostgreSQL engine, in this process: the connection that holds this process's lock, the
# lock's key, and the fork count when it was taken (a forked child takes a lock of its own).
_locks: "weakref.WeakKeyDictionary[Engine, tuple[int, Any, int]]" = weakref.WeakKeyDictionary()
_locks_mutex = threading.Lock()
_inherited: list[Any] = []  # a parent's connections, never closed here: closing ends its session


def _after_fork_in_child() -> None:
    global _locks_mutex
    _locks_mutex = threading.Lock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def _process_lock(engine: Engine) -> int | None:
    """The key of the advisory lock this process holds on the database while it runs; None
    when it cannot be taken (then a claim names no owner anyone can judge, and a retry waits
    for `idempotency.ABANDONED_AFTER`, as before owners were named): the lock speeds a retry
    up, it must not stop a write.

    On a connection of its own, outside the pool, idle between claims: a pooled connection goes
    back to the pool with the lock (or drops it early), and one per request in flight could use
    up the pool that their work then waits for. Checked per claim, taken again (under a new
    key) if the connection broke: claims under the old key are then taken for dead, which the
    fence keeps safe."""
    with _locks_mutex:
        found = _locks.get(engine)
        if found is not None and found[0] != db.forks:
            _inherited.append(found[1])
            found = None
        try:
            if found is not None:
                try:
                    found[1].execute("SELECT 1")
                    return int(found[2])
                except psycopg.OperationalError:
                    found[1].close()
            url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            # Its waits are bounded as the pool's (`app/pgwaits.py`): claims wait on the mutex.
            # Keepalives: idle between essays, a connection silently dropped (a NAT or load
            # balancer timing it out) is found within a minute instead of TCP's fifteen.
            conn = pgwaits.connect(
                pgwaits.stall_of(engine),
                url,
                autocommit=True,
                application_name="workshop claims",
                connect_timeout=PG_CONNECT_TIMEOUT,
                **PG_KEEPALIVES,
            )
            # Random, so that no other process (on any host) has it; if one does, another.
            key = secrets.randbits(63)
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:  # type: ignore[index]
                key = secrets.randbits(63)
        except psycopg.Error:
            # A server at max_connections, say: the write goes on under the one-minute rule.
            log.warning("Idempotency-Key claims lock not taken", exc_info=True)
            _locks.pop(engine, None)
            return None
        _locks[engine] = (db.forks, conn, key)
        return key


def drop_process_lock(engine: Engine) -> None:
    """End the connection holding this process's lock: once PostgreSQL sees it end, a retry
    takes over the claims of this process at once (each request still holding one is then
    fenced off when it commits: it stores nothing). For a claim the process could not release
    (the database did not answer), which a retry would otherwise wait out for
    `idempotency.ABANDONED_AFTER`. The next claim takes a new lock."""
    with _locks_mutex:
        found = _locks.pop(engine, None)
    if found is not None and found[0] == db.forks:
        try:
            found[1].close()
        except psycopg.Error:
            pass
