"""The `Idempotency-Key` header (IETF draft-ietf-httpapi-idempotency-key-header, as Stripe does it).

A key is scoped to the token that sent it. The first request with a key claims it (a row in
state `in_flight`, committed before the work starts, so every worker sees the claim); when the
work succeeds its answer is stored and the key becomes `done`. Later requests with the key:

- a different request (method, path, If-Match or body) -> 422, nothing runs;
- while the first is still running -> 409 with Retry-After, nothing runs;
- the same request after it finished -> the stored answer again, nothing runs.

A refused request (any 4xx) stores nothing and releases its key, so the client may fix the
request and send it again with the same key. Keys expire after `idempotency_key_ttl_seconds`.

A claim names its owner, so that the claim of a worker killed mid-request (SIGKILL, the OOM
killer) is taken over by the next retry at once rather than answering 409 until
`ABANDONED_AFTER`. Only an owner known to be dead is taken over:

- PostgreSQL: each process holds an advisory lock of its own on a connection kept for its life;
  PostgreSQL frees it when that connection ends, however the process died. A retry that can take
  the owner's lock knows the owner is gone (on any host).
- SQLite (one machine): the owner's pid and start time; the owner is gone when no such process
  runs on this machine any more.

And a claim is fenced: the work commits its answer only if its claim is still the one in the
row. A request wrongly thought dead (a claim older than `ABANDONED_AFTER`, a lock connection
that broke) is refused with 409 when it tries to commit, so the key's work still commits once.
"""

import hashlib
import logging
import os
import secrets
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from pydantic import BaseModel
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from app import db
from app.config import Settings
from app.db import PG_CONNECT_TIMEOUT, write_session
from app.errors import WorkshopError
from app.models import IdempotencyKey, utcnow

log = logging.getLogger("workshop.errors")

IN_FLIGHT = "in_flight"
DONE = "done"
# The last resort, for an owner nobody here can judge (a claim from before migration 0011, or
# from another machine on SQLite's shared disk): a claim this old belongs to a request that
# died (no request runs this long), and the next retry takes the key over.
ABANDONED_AFTER = timedelta(minutes=1)
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


class IdempotencyKeyReused(WorkshopError):
    status = 422
    title = "Idempotency key reused for a different request"


class IdempotencyKeyInFlight(WorkshopError):
    status = 409
    title = "A request with this idempotency key is still in progress"


@dataclass
class Claim:
    row_id: int
    owner: str  # as written in the row: the work commits only while it is still there


@dataclass
class StoredResponse:
    status: int
    body: str
    location: str | None


def fingerprint(method: str, path: str, if_match: str | None, body: BaseModel | None) -> str:
    """What makes two requests "the same": validated content, so key order and spacing do not."""
    digest = hashlib.sha256(f"{method} {path}\n{if_match or ''}\n".encode())
    if body is not None:
        digest.update(body.model_dump_json().encode())
    return digest.hexdigest()


def claim(
    engine: Engine, settings: Settings, scope: str, key: str, request_hash: str
) -> Claim | StoredResponse:
    now = utcnow()
    owner = _new_owner(engine)
    with write_session(engine) as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # RETURNING tells whether this request made the claim (rowcount is unreliable here).
        inserted = session.execute(
            insert(IdempotencyKey)
            .values(
                scope=scope,
                key=key,
                request_hash=request_hash,
                state=IN_FLIGHT,
                created_at=now,
                owner=owner,
            )
            .on_conflict_do_nothing(index_elements=["scope", "key"])
            .returning(col(IdempotencyKey.id))
        ).scalar()
        if inserted is not None:
            session.commit()
            return Claim(inserted, owner)
        row = session.execute(
            select(IdempotencyKey)
            .where(col(IdempotencyKey.scope) == scope, col(IdempotencyKey.key) == key)
            .with_for_update()
        ).scalar_one_or_none()
        if row is None:  # released by its refused request between our insert and this read
            raise _in_flight(key)
        expired = row.created_at <= now - timedelta(seconds=settings.idempotency_key_ttl_seconds)
        if not expired and row.request_hash != request_hash:
            raise _reused(key)  # whether or not its first request is still alive
        abandoned = row.state == IN_FLIGHT and (
            row.created_at <= now - ABANDONED_AFTER or _owner_gone(session, row.owner)
        )
        if expired or abandoned:
            # Only if the row is still what was judged: of two retries racing for a dead
            # claim, one takes it and the other answers 409.
            taken = session.execute(
                update(IdempotencyKey)
                .where(
                    col(IdempotencyKey.id) == row.id,
                    col(IdempotencyKey.state) == row.state,
                    col(IdempotencyKey.owner).is_not_distinct_from(row.owner),
                )
                .values(
                    request_hash=request_hash,
                    state=IN_FLIGHT,
                    created_at=now,
                    owner=owner,
                    response_status=None,
                    response_body=None,
                    response_location=None,
                )
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                session.commit()
                return Claim(row.id, owner)
            raise _in_flight(key)
        if row.state == IN_FLIGHT:
            raise _in_flight(key)
        return StoredResponse(
            row.response_status or 200, row.response_body or "", row.response_location
        )


def _reused(key: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"Idempotency-Key {key!r} was first used for a different request; "
        "use a new key for a new request",
        errors=[{"field": "Idempotency-Key", "message": "already used for a different request"}],
    )


def _in_flight(key: str) -> IdempotencyKeyInFlight:
    return IdempotencyKeyInFlight(
        f"the first request with Idempotency-Key {key!r} has not finished; retry shortly",
        headers={"Retry-After": "1"},
    )


class Completion:
    """Handed to the action: lets it store the key's answer inside its own write transaction.

    Without it a worker that died between committing a post and recording the answer would
    leave the key "in flight"; the retry that takes the abandoned key over would then run again
    and, for a post without a cycle, create it twice. Recorded in the same transaction, the post
    and the answer are both there or neither is.
    """

    def __init__(self, claimed: Claim | None) -> None:
        self.claimed = claimed
        self.recorded = False

    def record(self, session: Session, answer: StoredResponse) -> None:
        if self.claimed is None:
            return
        if not _mark_done(session, self.claimed, answer):
            # A retry took the key over, taking this request for dead: raised inside the
            # write's transaction, so the write rolls back and the retry's alone commits.
            raise IdempotencyKeyInFlight(
                "a retry with this Idempotency-Key took it over; nothing was stored by this "
                "request: retry shortly for the retry's answer",
                headers={"Retry-After": "1"},
            )
        self.recorded = True


def _mark_done(session: Session, claimed: Claim, answer: StoredResponse) -> bool:
    """Store the answer if the claim is still this request's; whether it was."""
    done = session.execute(
        update(IdempotencyKey)
        .where(
            col(IdempotencyKey.id) == claimed.row_id,
            col(IdempotencyKey.state) == IN_FLIGHT,
            col(IdempotencyKey.owner) == claimed.owner,
        )
        .values(
            state=DONE,
            response_status=answer.status,
            response_body=answer.body,
            response_location=answer.location,
        )
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def complete(engine: Engine, claimed: Claim, answer: StoredResponse) -> None:
    with write_session(engine) as session:
        _mark_done(session, claimed, answer)
        session.commit()


def release(engine: Engine, claimed: Claim) -> None:
    with write_session(engine) as session:
        session.execute(
            delete(IdempotencyKey).where(
                col(IdempotencyKey.id) == claimed.row_id,
                col(IdempotencyKey.state) == IN_FLIGHT,
                col(IdempotencyKey.owner) == claimed.owner,  # not a retry's that took it over
            )
        )
        session.commit()


def run(
    engine: Engine,
    settings: Settings,
    scope: str,
    key: str | None,
    request_hash: str,
    action: Callable[[Completion], StoredResponse],
) -> tuple[StoredResponse, bool]:
    """Run `action` at most once per (scope, key); returns its answer and whether it is a replay."""
    if key is None:
        return action(Completion(None)), False
    claimed = claim(engine, settings, scope, key, request_hash)
    if isinstance(claimed, StoredResponse):
        return claimed, True
    completion = Completion(claimed)
    try:
        answer = action(completion)
    except BaseException:
        # Deletes only a claim still in flight: if the write committed its answer, that stays;
        # if the commit failed after the answer was recorded, the claim is freed for a retry.
        release(engine, claimed)
        raise
    if not completion.recorded:  # the action wrote nothing (e.g. a retry answered 200)
        complete(engine, claimed, answer)
    return answer, False


# --- owners ---------------------------------------------------------------------------------------


def _new_owner(engine: Engine) -> str:
    """What a new claim by this process names as its owner: how to tell whether the process
    still runs, and a part of the claim's own (so a take-over by this same process is still a
    different claim to the fence)."""
    claim_id = secrets.token_hex(6)
    if engine.dialect.name == "postgresql":
        lock = _process_lock(engine)
        return f"pg {lock} {claim_id}" if lock is not None else f"- - {claim_id}"
    process = _this_process()
    return f"proc {process} {claim_id}" if process is not None else f"- - {claim_id}"


def _owner_gone(session: Session, owner: str | None) -> bool:
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

# A silently dropped connection (a NAT or load balancer timing it out while it idles between
# essays) is found within a minute instead of TCP's fifteen, while claims wait on the mutex.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _process_lock(engine: Engine) -> int | None:
    """The key of the advisory lock this process holds on the database while it runs; None
    when it cannot be taken (then a claim names no owner anyone can judge, and a retry waits
    for `ABANDONED_AFTER`, as before owners were named): the lock speeds a retry up, it must
    not stop a write.

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
            conn = psycopg.connect(
                url,
                autocommit=True,
                application_name="workshop claims",
                connect_timeout=PG_CONNECT_TIMEOUT,
                **_KEEPALIVES,  # type: ignore[arg-type]
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
