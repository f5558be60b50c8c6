"""The `Idempotency-Key` header (IETF draft-ietf-httpapi-idempotency-key-header, as Stripe does it).

A key is scoped to the token that sent it. The first request with a key claims it (a row in
state `in_flight`, committed before the work starts, so every worker sees the claim); when the
work succeeds its answer is stored and the key becomes `done`. Later requests with the key:

- a different request (method, path, the version If-Match names, or body) -> 422, nothing runs;
- while the first is still running -> 409 with Retry-After, nothing runs;
- the same request after it finished -> the stored answer again, nothing runs.

A refused request (any 4xx) stores nothing and releases its key, so the client may fix the
request and send it again with the same key. Keys expire after `idempotency_key_ttl_seconds`.

A claim names its owner (`app/claimowners.py`), so that the claim of a worker killed
mid-request (SIGKILL, the OOM killer) is taken over by the next retry at once rather than
answering 409 until `ABANDONED_AFTER`. Only an owner known to be dead is taken over.

And a claim is fenced: the work commits its answer only if its claim is still the one in the
row. A request wrongly thought dead (a claim older than `ABANDONED_AFTER`, a lock connection
that broke) is refused with 409 when it tries to commit, so the key's work still commits once.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from app import claimowners
from app.config import Settings
from app.db import write_session
from app.errors import WorkshopError
from app.etags import state_tags
from app.models import IdempotencyKey, utcnow

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
    return fingerprints(method, path, if_match, body)[0]


def fingerprints(
    method: str, path: str, if_match: str | None, body: BaseModel | None
) -> tuple[str, str | None]:
    """The request's fingerprint (`fingerprint`), and the one keys stored by the code before
    8ee84fd have for it (If-Match as sent) when that differs: a retry of such a key, made
    across the deploy with the same headers, is still the same request. Keys live a day
    (`idempotency_key_ttl_seconds`), so the second can go once no key that old is left."""
    # The If-Match by the versions it names, as the precondition reads it (app/etags.py): a
    # retry that sends the other tag of the same version (the gzipped answer's, or weakened by
    # a proxy) is the same request. A lone plain tag, `*` or none reads as sent, so keys
    # stored before If-Match was read this way still match their retries.
    sent = if_match or ""
    condition = ", ".join(sorted(state_tags(sent))) if sent else ""
    content = body.model_dump_json().encode() if body is not None else b""
    as_sent = _digest(method, path, sent, content) if sent != condition else None
    return _digest(method, path, condition, content), as_sent


def _digest(method: str, path: str, condition: str, content: bytes) -> str:
    return hashlib.sha256(f"{method} {path}\n{condition}\n".encode() + content).hexdigest()


def claim(
    engine: Engine,
    settings: Settings,
    scope: str,
    key: str,
    request_hash: str,
    hash_as_sent: str | None = None,
) -> Claim | StoredResponse:
    """Claim `key` for this request (`request_hash`; a key stored under `hash_as_sent`, the
    fingerprint the code before 8ee84fd gave it, is the same request too), or its stored
    answer."""
    now = utcnow()
    owner = claimowners.new_owner(engine)
    with write_session(engine) as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # RETURNING tells whether this request made the claim (rowcount is unreliable here).
        claimed = {
            "request_hash": request_hash,
            "state": IN_FLIGHT,
            "created_at": now,
            "owner": owner,
        }
        inserted = session.execute(
            insert(IdempotencyKey)
            .values(scope=scope, key=key, **claimed)
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
        if not expired and row.request_hash not in (request_hash, hash_as_sent):
            raise _reused(key)  # whether or not its first request is still alive
        abandoned = row.state == IN_FLIGHT and (
            row.created_at <= now - ABANDONED_AFTER or claimowners.owner_gone(session, row.owner)
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
                .values(**claimed, response_status=None, response_body=None, response_location=None)
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
    hash_as_sent: str | None = None,
) -> tuple[StoredResponse, bool]:
    """Run `action` at most once per (scope, key); returns its answer and whether it is a replay."""
    if key is None:
        return action(Completion(None)), False
    claimed = claim(engine, settings, scope, key, request_hash, hash_as_sent)
    if isinstance(claimed, StoredResponse):
        return claimed, True
    completion = Completion(claimed)
    try:
        answer = action(completion)
    except BaseException:
        # Deletes only a claim still in flight: if the write committed its answer, that stays;
        # if the commit failed after the answer was recorded, the claim is freed for a retry.
        try:
            release(engine, claimed)
        except Exception:
            # The database did not answer (down, or stalled: `app/pgwaits.py`), so the claim
            # stays in flight under this live process: its retry would get 409 until
            # ABANDONED_AFTER. Without this process's lock, the retry takes it over at once.
            claimowners.drop_process_lock(engine)
        raise
    if not completion.recorded:  # the action wrote nothing (e.g. a retry answered 200)
        complete(engine, claimed, answer)
    return answer, False
