"""Many identical POSTs at once against a real uvicorn process: one post, no server error."""

import threading

import httpx
import pytest
from conftest import post_json
from sqlalchemy import func, select
from sqlmodel import Session

from app import tokens
from app.models import Post

CLIENTS = 24


def fire_together(url: str, headers: dict[str, str], body: dict[str, object]) -> list[int]:
    barrier = threading.Barrier(CLIENTS)
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            status = client.post(url, json=body, headers=headers).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def post_count(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(Post)).scalar_one())


@pytest.fixture
def engine_token(engine) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {tokens.create_token(engine, 'engine')}"}


def test_concurrent_identical_posts_create_exactly_one(live_server, engine, engine_token):
    statuses = fire_together(f"{live_server.url}/api/v1/posts", engine_token, post_json(cycle=803))
    assert len(statuses) == CLIENTS
    assert all(s < 500 for s in statuses), statuses
    assert statuses.count(201) == 1 and statuses.count(200) == CLIENTS - 1, statuses
    assert post_count(engine) == 1


def test_concurrent_posts_with_one_idempotency_key_create_exactly_one(
    live_server, engine, engine_token
):
    headers = {**engine_token, "Idempotency-Key": "cycle-less-essay"}
    statuses = fire_together(f"{live_server.url}/api/v1/posts", headers, post_json(cycle=None))
    assert all(s in (201, 409) for s in statuses), statuses  # 409: the first is still in flight
    assert 201 in statuses
    assert post_count(engine) == 1


def test_each_racing_put_is_answered_with_the_version_it_wrote(
    settings, engine, engine_token, tmp_path
):  # type: ignore[no-untyped-def]
    """Read after the commit, an answer could hold a concurrent PUT's title and ETag: the
    writer's next If-Match then passed over an edit it never saw."""
    from conftest import add_post, start_server, stop_server

    post = add_post(engine, cycle=7000)
    server = start_server(settings, tmp_path, workers=2)
    url = f"{server.url}/api/v1/posts/{post.id}"
    answers: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def put(title: str, barrier: threading.Barrier) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            reply = client.put(url, json=post_json(cycle=7000, title=title), headers=engine_token)
        assert reply.status_code == 200, reply.text
        with lock:
            answers.append((title, reply.json()["title"], reply.headers["etag"]))

    try:
        for round_ in range(4):
            barrier = threading.Barrier(6)
            threads = [
                threading.Thread(target=put, args=(f"Race {round_} writer {w}", barrier))
                for w in range(6)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        stop_server(server)
    assert len(answers) == 24
    assert [sent for sent, got, _ in answers if got != sent] == []
    assert len({etag for *_, etag in answers}) == 24  # each its own version
