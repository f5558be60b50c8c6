"""An Idempotency-Key claimed by a request whose process was killed (SIGKILL, the OOM killer) is
taken over by the next retry at once; a claim whose owner still runs keeps answering 409; and a
request whose claim was taken over commits nothing, so the key's work commits exactly once."""

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import PG_URL, post_json, sample_input, start_server, stop_server
from sqlalchemy import Engine, make_url, select, text, update
from sqlmodel import Session
from test_concurrency import fire_together, post_count

from app import db, idempotency, posts, tokens
from app.config import Settings
from app.db import write_session
from app.models import IdempotencyKey, PostIn, utcnow

API = "/api/v1/posts"

# A process that claims a key as a request does (committed before its work starts), then holds
# it, as a request at work does, until it is killed.
HOLDER = """
import sys
from app import db, idempotency
from app.config import Settings

settings = Settings(_env_file=None, database_url=sys.argv[1])
claimed = idempotency.claim(db.make_engine(settings), settings, *sys.argv[2:5])
print(type(claimed).__name__, flush=True)
sys.stdin.read()
"""


def request_of(engine: Engine, token: str, body: dict[str, object]) -> tuple[str, str]:
    """The scope and fingerprint the server gives a POST of `body` with `token`."""
    with Session(engine) as session:
        caller = tokens.verify(session, token)
    request_hash = idempotency.fingerprint("POST", API, None, PostIn.model_validate(body))
    return f"token:{caller.token_id}", request_hash


def hold_claim(
    settings: Settings, tmp_path: Path, scope: str, request_hash: str, key: str = "essay-1"
) -> subprocess.Popen[str]:
    """A process of its own holding the claim of `key`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.database_url, scope, key, request_hash],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "Claim", "the holder did not claim the key"
    return holder


def kill(holder: subprocess.Popen[str]) -> None:
    """SIGKILL, and wait until it has died, without reaping it: a dead worker that its parent
    has not reaped yet (a zombie) is dead too."""
    holder.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)


def in_flight_claim(engine: Engine) -> IdempotencyKey | None:
    """The claim in flight (these tests have one key)."""
    with Session(engine, expire_on_commit=False) as session:
        return session.execute(
            select(IdempotencyKey).where(IdempotencyKey.state == idempotency.IN_FLIGHT)
        ).scalar()


def wait_until_its_lock_is_free(engine: Engine) -> None:
    """PostgreSQL frees a killed process's advisory lock when its backend sees the connection
    closed, a moment after the process died (nothing to wait for on SQLite)."""
    claimed = in_flight_claim(engine)
    owner = claimed.owner if claimed is not None else None
    kind, key, _claim = (owner or "- - -").split()
    if kind != "pg":
        return
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as conn:  # one transaction: the lock is let go with it
            try_lock = text("SELECT pg_try_advisory_xact_lock(:key)")
            if conn.execute(try_lock, {"key": int(key)}).scalar():
                return
        assert time.monotonic() < deadline, f"the lock of {owner} was never freed"
        time.sleep(0.01)


def test_a_killed_owners_claim_is_taken_over_by_the_next_retry_at_once(
    live_server, engine, settings, token, tmp_path
) -> None:
    body = post_json(cycle=None)  # deduplicated by its key alone
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "essay-1"}
    holder = hold_claim(settings, tmp_path, *request_of(engine, token, body))
    try:
        busy = httpx.post(live_server.url + API, json=body, headers=headers)
        assert busy.status_code == 409 and busy.headers["retry-after"] == "1"  # it still runs
        assert post_count(engine) == 0
        kill(holder)
        wait_until_its_lock_is_free(engine)
        first = httpx.post(live_server.url + API, json=body, headers=headers)
    finally:
        holder.kill()
        holder.wait()
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = httpx.post(live_server.url + API, json=body, headers=headers)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert post_count(engine) == 1


def test_retries_racing_for_a_killed_owners_claim_run_it_once(
    live_server, engine, settings, token, tmp_path
) -> None:
    body = post_json(cycle=None)
    holder = hold_claim(settings, tmp_path, *request_of(engine, token, body))
    try:
        kill(holder)
        wait_until_its_lock_is_free(engine)
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "essay-1"}
        statuses = fire_together(live_server.url + API, headers, body)
    finally:
        holder.kill()
        holder.wait()
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses  # 409: one is at work
    assert post_count(engine) == 1


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL: a table lock holds a write mid-work")
def test_a_worker_killed_mid_request_leaves_its_key_to_the_retry(
    engine, settings, token, tmp_path
) -> None:
    """A real `workshop serve` holds the claim: its write waits on a lock the test holds, the
    server is SIGKILLed there, and the engine's retry goes to another host."""
    body = post_json(cycle=None)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "essay-1"}
    doomed, other = (start_server(settings, tmp_path) for _ in range(2))  # one worker each
    plain_url = make_url(settings.database_url).set(drivername="postgresql")
    blocker = psycopg.connect(plain_url.render_as_string(hide_password=False))

    def send_to_the_doomed_host() -> None:
        with suppress(httpx.TransportError):  # its connection is cut when the host is killed
            httpx.post(doomed.url + API, json=body, headers=headers, timeout=60)

    sent = threading.Thread(target=send_to_the_doomed_host)
    try:
        blocker.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
        sent.start()
        wait_for_claim(engine)
        busy = httpx.post(other.url + API, json=body, headers=headers)
        assert busy.status_code == 409, busy.text  # its owner is alive, waiting on the lock
        doomed.process.kill()
        doomed.process.wait()
        wait_until_its_lock_is_free(engine)
        blocker.rollback()
        retry = httpx.post(other.url + API, json=body, headers=headers)
        assert retry.status_code == 201, retry.text
        assert "idempotent-replayed" not in retry.headers
    finally:
        blocker.close()
        sent.join(60)
        stop_server(doomed)
        stop_server(other)
    assert post_count(engine) == 1


def wait_for_claim(engine: Engine) -> None:
    deadline = time.monotonic() + 30
    while in_flight_claim(engine) is None:
        assert time.monotonic() < deadline, "the request never claimed its key"
        time.sleep(0.01)


def test_a_request_whose_claim_was_taken_over_commits_nothing(engine, settings) -> None:
    """The last resort takes over a claim older than ABANDONED_AFTER, whose owner may still
    be at work (a claim from before migration 0011, another machine on SQLite): that owner's
    write then rolls back, and the key's work is done once, by the retry."""
    first = idempotency.claim(engine, settings, "token:1", "key-1", "hash-1")
    assert isinstance(first, idempotency.Claim)
    with write_session(engine) as session:
        session.execute(
            update(IdempotencyKey).values(created_at=utcnow() - idempotency.ABANDONED_AFTER)
        )
        session.commit()
    retry = idempotency.claim(engine, settings, "token:1", "key-1", "hash-1")
    assert isinstance(retry, idempotency.Claim)

    def create(claimed: idempotency.Claim, title: str) -> int:
        completion = idempotency.Completion(claimed)

        def record(session: Session, post: posts.Post) -> None:
            answer = idempotency.StoredResponse(201, f'{{"id": {post.id}}}', None)
            completion.record(session, answer)

        with write_session(engine) as session:
            created = posts.create_post(
                session, sample_input(cycle=None, title=title), "Workshop", before_commit=record
            )
        assert created.post.id is not None
        return created.post.id

    with pytest.raises(idempotency.IdempotencyKeyInFlight):
        create(first, "The First Attempt")
    idempotency.release(engine, first)  # what run() does after the failed action
    post_id = create(retry, "The Retry")
    assert post_count(engine) == 1
    replay = idempotency.claim(engine, settings, "token:1", "key-1", "hash-1")
    assert isinstance(replay, idempotency.StoredResponse)
    assert replay.body == f'{{"id": {post_id}}}'


def test_a_different_request_under_a_dead_claims_key_is_still_refused(
    live_server, engine, settings, token, tmp_path
) -> None:
    """The key was first used for another body: 422 whether or not that request still runs
    (a take-over would have run the new body under the old key)."""
    first_body = post_json(cycle=None)
    holder = hold_claim(settings, tmp_path, *request_of(engine, token, first_body))
    try:
        kill(holder)
        wait_until_its_lock_is_free(engine)
        other = httpx.post(
            live_server.url + API,
            json=post_json(cycle=None, title="Another Essay Entirely"),
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "essay-1"},
        )
    finally:
        holder.kill()
        holder.wait()
    assert other.status_code == 422, other.text
    assert post_count(engine) == 0
    retry = httpx.post(
        live_server.url + API,
        json=first_body,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "essay-1"},
    )
    assert retry.status_code == 201 and post_count(engine) == 1


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL: the claims lock is a connection of its own")
def test_a_claims_lock_that_cannot_be_taken_does_not_stop_the_write(settings) -> None:
    """A server that refuses the lock's connection (here a role allowed one connection, which
    the pool holds): the claim names no owner anyone can judge (the one-minute rule), and the
    write goes on."""
    url = make_url(settings.database_url)
    role = f"claims_{os.getpid()}_{time.monotonic_ns()}"
    admin = psycopg.connect(url.set(drivername="postgresql").render_as_string(False))
    admin.autocommit = True
    admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
    admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    limited = Settings(_env_file=None, database_url=url.set(username=role).render_as_string(False))
    engine = db.make_engine(limited)
    try:
        with engine.connect() as conn:  # the one connection the role may have, kept by the pool
            conn.execute(text("SELECT 1"))
        claimed = idempotency.claim(engine, limited, "token:1", "essay-1", "hash")
        assert isinstance(claimed, idempotency.Claim) and claimed.owner.startswith("- - ")
        idempotency.complete(engine, claimed, idempotency.StoredResponse(201, "{}", None))
        again = idempotency.claim(engine, limited, "token:1", "essay-1", "hash")
        assert isinstance(again, idempotency.StoredResponse) and again.status == 201
    finally:
        engine.dispose()
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')
        admin.close()
