"""The ingest API's contract: create, retry, conflict, replace, delete, read, auth, idempotency."""

import hashlib
import json

import pytest
from conftest import add_post, post_json
from sqlalchemy import func, select, update
from sqlmodel import Session

from app import idempotency, posts
from app.db import write_session
from app.models import IdempotencyKey, Post, PostIn, Revision

API = "/api/v1/posts"


def count(engine, table=Post) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())


def assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    doc = response.json()
    assert doc["status"] == status and doc["title"] and doc["detail"] and doc["type"]
    return doc


# --- create and retry -----------------------------------------------------------------------------


def test_create_returns_201_with_location_etag_and_the_post(client, auth, engine):
    response = client.post(API, json=post_json(), headers=auth)
    assert response.status_code == 201
    doc = response.json()
    assert (
        response.headers["location"]
        == doc["url"]
        == f"http://testserver/read/{doc['id']}/{doc['slug']}"
    )
    # The test client asks for gzip, as httpx does: the gzipped answer's own strong tag.
    assert response.headers["etag"] == f'"p{doc["id"]}v1-gzip"'
    assert doc["slug"] == "breadth-is-thinning-under-a-calm-index"
    assert doc["cycle"] == 900 and doc["status"] == "published" and doc["version"] == 1
    assert doc["published_at"] == "2026-04-05T15:04:00Z"
    assert doc["debate"] == {
        "outcome": "split",
        "conviction": 0.42,
        "minds": [
            {"name": "Macro", "confidence": 0.35},
            {"name": "Flow", "confidence": 0.6},
            {"name": "Contrarian", "confidence": 0.3},
        ],
    }
    assert doc["tags"] == ["QQQ", "breadth"]
    assert doc["stories"] == [
        {"title": "Narrow Leadership", "slug": "narrow-leadership", "status": "developing"}
    ]
    page = client.get(response.headers["location"].removeprefix("http://testserver"))
    assert page.status_code == 200


def test_only_title_and_body_are_required(client, auth):
    response = client.post(API, json={"title": "Minimal", "body": "Just text."}, headers=auth)
    assert response.status_code == 201
    doc = response.json()
    assert doc["author"] == "Workshop" and doc["cycle"] is None and doc["debate"] is None
    assert doc["tags"] == [] and doc["stories"] == [] and doc["published_at"].endswith("Z")


def test_retry_of_same_cycle_returns_existing_post_and_changes_nothing(client, auth, engine):
    first = client.post(API, json=post_json(), headers=auth)
    retry = client.post(API, json=post_json(), headers=auth)
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["location"] == first.headers["location"]
    assert count(engine) == 1 and count(engine, Revision) == 0


def test_retry_without_published_at_still_matches(client, auth, engine):
    body = post_json()
    del body["published_at"]
    first = client.post(API, json=body, headers=auth)
    assert first.status_code == 201
    retry = client.post(API, json=body, headers=auth)
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
    assert count(engine) == 1


def test_same_cycle_different_content_is_409_naming_the_existing_post(client, auth, engine):
    first = client.post(API, json=post_json(), headers=auth).json()
    response = client.post(API, json=post_json(title="Something Else"), headers=auth)
    doc = assert_problem(response, 409)
    assert doc["post_id"] == first["id"] and doc["post_url"] == first["url"]
    assert first["url"] in doc["detail"]
    assert count(engine) == 1


# --- replace and delete ---------------------------------------------------------------------------


def test_put_replaces_keeps_a_revision_and_the_old_url_redirects(client, auth, engine):
    created = client.post(API, json=post_json(), headers=auth)
    doc = created.json()
    response = client.put(
        f"{API}/{doc['id']}",
        json=post_json(title="Breadth Snaps Back"),
        headers={**auth, "If-Match": created.headers["etag"]},
    )
    assert response.status_code == 200
    new = response.json()
    assert new["slug"] == "breadth-snaps-back" and new["version"] == 2
    assert response.headers["etag"] == f'"p{doc["id"]}v2-gzip"'
    old_page = client.get(f"/read/{doc['id']}/{doc['slug']}")
    assert old_page.status_code == 301
    assert old_page.headers["location"].endswith(f"/read/{doc['id']}/breadth-snaps-back")
    with Session(engine) as session:
        assert [r.reason for r in posts.revisions(session, doc["id"])] == ["update"]


def test_put_with_stale_if_match_is_412_and_changes_nothing(client, auth, engine):
    created = client.post(API, json=post_json(), headers=auth)
    post_id, stale = created.json()["id"], created.headers["etag"]
    client.put(f"{API}/{post_id}", json=post_json(title="Edit One"), headers=auth)
    response = client.put(
        f"{API}/{post_id}", json=post_json(title="Edit Two"), headers={**auth, "If-Match": stale}
    )
    assert_problem(response, 412)
    assert client.get(f"{API}/{post_id}").json()["title"] == "Edit One"
    deleting = client.delete(f"{API}/{post_id}", headers={**auth, "If-Match": stale})
    assert_problem(deleting, 412)
    assert client.get(f"{API}/{post_id}").status_code == 200


def test_put_unknown_post_is_404(client, auth):
    assert_problem(client.put(f"{API}/999", json=post_json(), headers=auth), 404)


def test_put_onto_another_posts_cycle_is_409(client, auth, engine):
    add_post(engine, cycle=1)
    other = add_post(engine, cycle=2, title="Second")
    response = client.put(f"{API}/{other.id}", json=post_json(cycle=1), headers=auth)
    assert_problem(response, 409)


def test_delete_unpublishes_and_keeps_everything(client, auth, engine):
    doc = client.post(API, json=post_json(), headers=auth).json()
    response = client.delete(f"{API}/{doc['id']}", headers=auth)
    assert response.status_code == 204 and response.content == b""
    assert client.get(f"/read/{doc['id']}/{doc['slug']}").status_code == 410
    assert_problem(client.get(f"{API}/{doc['id']}"), 410)
    assert client.get(API).json()["items"] == []
    assert count(engine) == 1 and count(engine, Revision) == 1
    assert client.delete(f"{API}/{doc['id']}", headers=auth).status_code == 204  # idempotent
    assert_problem(client.delete(f"{API}/4242", headers=auth), 404)


# --- reads ----------------------------------------------------------------------------------------


def test_get_one_with_etag_and_304(client, engine):
    post = add_post(engine)
    response = client.get(f"{API}/{post.id}")
    assert response.status_code == 200 and response.json()["id"] == post.id
    etag = response.headers["etag"]
    again = client.get(f"{API}/{post.id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert_problem(client.get(f"{API}/12345"), 404)
    assert_problem(client.get(f"{API}/not-a-number"), 422)
    assert_problem(client.get(f"{API}/{2**40}"), 422)


def test_list_is_newest_first_with_a_keyset_cursor(client, engine):
    for n in range(5):
        add_post(engine, cycle=n, title=f"Essay {n}", published_at=f"2026-04-0{n + 1}T12:00:00Z")
    seen: list[int] = []
    url: str | None = f"{API}?limit=2"
    pages = 0
    while url:
        response = client.get(url.removeprefix("http://testserver"))
        assert response.status_code == 200
        doc = response.json()
        seen += [item["cycle"] for item in doc["items"]]
        url = doc["next"]
        if url:
            assert response.headers["link"] == f'<{url}>; rel="next"'
        else:
            assert "link" not in response.headers
        pages += 1
    assert seen == [4, 3, 2, 1, 0] and pages == 3


def test_list_limit_is_capped_and_bad_cursors_are_refused(client, engine):
    add_post(engine)
    assert client.get(f"{API}?limit=100000").status_code == 200
    assert_problem(client.get(f"{API}?limit=0"), 422)
    doc = assert_problem(client.get(f"{API}?cursor=bm9wZQ"), 400)
    assert doc["errors"][0]["field"] == "cursor"
    etag = client.get(API).headers["etag"]
    assert client.get(API, headers={"If-None-Match": etag}).status_code == 304


# --- Idempotency-Key ------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer(client, auth, engine):
    body = post_json(cycle=None)
    headers = {**auth, "Idempotency-Key": "key-1"}
    first = client.post(API, json=body, headers=headers)
    replay = client.post(API, json=body, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json() and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["etag"] == first.headers["etag"]
    assert count(engine) == 1
    # Without a key (and without a cycle) each POST is a new essay.
    assert client.post(API, json=body, headers=auth).status_code == 201
    assert count(engine) == 2


def test_a_replay_comes_in_the_encoding_its_retry_asks_for(client, auth, engine):
    """The stored answer is the post's JSON; each answer of it is encoded, and tagged, for the
    request it answers, as a GET's is."""
    body = post_json(cycle=None)
    headers = {**auth, "Idempotency-Key": "key-2"}
    first = client.post(API, json=body, headers={**headers, "Accept-Encoding": "gzip"})
    replay = client.post(API, json=body, headers={**headers, "Accept-Encoding": "identity"})
    post_id = first.json()["id"]
    assert first.headers["content-encoding"] == "gzip"
    assert first.headers["etag"] == f'"p{post_id}v1-gzip"'
    assert "content-encoding" not in replay.headers and replay.headers["etag"] == f'"p{post_id}v1"'
    assert replay.json() == first.json() and count(engine) == 1


def test_idempotency_key_with_a_different_request_is_422(client, auth, engine):
    headers = {**auth, "Idempotency-Key": "key-2"}
    assert client.post(API, json=post_json(cycle=None), headers=headers).status_code == 201
    doc = assert_problem(
        client.post(API, json=post_json(cycle=None, title="Other"), headers=headers), 422
    )
    assert doc["errors"][0]["field"] == "Idempotency-Key"
    assert count(engine) == 1


def test_idempotency_key_in_flight_is_409(client, auth, engine, token):
    from app import idempotency, tokens

    with Session(engine) as session:
        caller = tokens.verify(session, token)
    body = post_json(cycle=None)
    from app.models import PostIn

    request_hash = idempotency.fingerprint("POST", API, None, PostIn.model_validate(body))
    claim = idempotency.claim(
        engine, client.app.state.settings, f"token:{caller.token_id}", "key-3", request_hash
    )
    assert isinstance(claim, idempotency.Claim)  # as if a first request were still running
    response = client.post(API, json=body, headers={**auth, "Idempotency-Key": "key-3"})
    assert_problem(response, 409)
    assert response.headers["retry-after"] == "1"
    assert count(engine) == 0


def test_idempotency_keys_are_per_token_and_refusals_release_them(client, auth, engine):
    from app import tokens

    other = {
        "Authorization": f"Bearer {tokens.create_token(engine, 'other')}",
        "Idempotency-Key": "shared",
    }
    mine = {**auth, "Idempotency-Key": "shared"}
    assert (
        client.post(API, json=post_json(cycle=None, title="Mine"), headers=mine).status_code == 201
    )
    assert (
        client.post(API, json=post_json(cycle=None, title="Theirs"), headers=other).status_code
        == 201
    )
    # A refused request stores nothing, so the fixed request may reuse its key.
    conflict = {**auth, "Idempotency-Key": "retry-me"}
    client.post(API, json=post_json(cycle=7), headers=auth)
    assert (
        client.post(API, json=post_json(cycle=7, title="Clash"), headers=conflict).status_code
        == 409
    )
    assert (
        client.post(API, json=post_json(cycle=8, title="Clash"), headers=conflict).status_code
        == 201
    )
    with Session(engine) as session:
        states = session.execute(select(IdempotencyKey.state)).scalars().all()
    assert sorted(states) == ["done", "done", "done"]


def test_delete_and_put_accept_idempotency_keys(client, auth, engine):
    post = add_post(engine)
    put = {**auth, "Idempotency-Key": "put-1"}
    first = client.put(f"{API}/{post.id}", json=post_json(title="Renamed"), headers=put)
    again = client.put(f"{API}/{post.id}", json=post_json(title="Renamed"), headers=put)
    assert (
        first.status_code == again.status_code == 200
        and again.headers["idempotent-replayed"] == "true"
    )
    gone = {**auth, "Idempotency-Key": "del-1"}
    assert client.delete(f"{API}/{post.id}", headers=gone).status_code == 204
    assert client.delete(f"{API}/{post.id}", headers=gone).status_code == 204
    bad_key = client.post(API, json=post_json(), headers={**auth, "Idempotency-Key": "x" * 256})
    assert assert_problem(bad_key, 422)["errors"][0]["field"] == "Idempotency-Key"


TAG_FORMS = {
    "plain": '"p{id}v{version}"',
    "gzip": '"p{id}v{version}-gzip"',
    "weak gzip": 'W/"p{id}v{version}-gzip"',
}


@pytest.mark.parametrize(
    ("first", "retry"), [("plain", "gzip"), ("gzip", "plain"), ("gzip", "weak gzip")]
)
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_retry_with_the_other_tag_of_the_same_version_is_replayed(
    client, auth, engine, method, first, retry
):
    """An engine may get the gzipped answer's tag once and the plain one later: both name the
    same version, so the retry is the same request; another version's tag is not."""
    post = add_post(engine)

    def send(form: str, version: int):  # type: ignore[no-untyped-def]
        tag = TAG_FORMS[form].format(id=post.id, version=version)
        headers = {**auth, "Idempotency-Key": "edit-1", "If-Match": tag}
        if method == "PUT":
            return client.put(f"{API}/{post.id}", json=post_json(title="Renamed"), headers=headers)
        return client.delete(f"{API}/{post.id}", headers=headers)

    done = send(first, 1)
    assert done.status_code in (200, 204), done.text
    revisions = count(engine, Revision)
    again = send(retry, 1)
    assert again.status_code == done.status_code, again.text
    assert again.headers["idempotent-replayed"] == "true" and again.content == done.content
    assert count(engine, Revision) == revisions  # written once
    doc = assert_problem(send(first, 2), 422)
    assert doc["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("if_match", ['"p1v1"', '"p1v1", "p1v2"', "*", None])
def test_an_if_match_spelled_canonically_keeps_the_fingerprint_keys_were_stored_under(if_match):
    """Keys stored before If-Match was read by version hashed it as sent: a retry after the
    upgrade that sends a lone plain tag (or a sorted list of them, `*`, none) still matches."""
    body = PostIn.model_validate(post_json())
    as_stored = hashlib.sha256(f"PUT {API}/1\n{if_match or ''}\n".encode())
    as_stored.update(body.model_dump_json().encode())
    assert idempotency.fingerprint("PUT", f"{API}/1", if_match, body) == as_stored.hexdigest()


def test_a_key_stored_under_its_if_match_as_sent_is_still_replayed(client, auth, engine):
    """A key first used by the code before 8ee84fd was stored under the hash of its If-Match as
    sent (here the gzipped answer's tag): its retry after the deploy, with the same headers, is
    replayed, not refused 422; another request under that key is still 422."""
    post = add_post(engine)
    tag = f'"p{post.id}v1-gzip"'
    headers = {**auth, "Idempotency-Key": "before-deploy", "If-Match": tag}
    done = client.put(f"{API}/{post.id}", json=post_json(title="Renamed"), headers=headers)
    assert done.status_code == 200, done.text
    body = PostIn.model_validate(post_json(title="Renamed"))
    as_sent = hashlib.sha256(f"PUT {API}/{post.id}\n{tag}\n".encode())
    as_sent.update(body.model_dump_json().encode())
    with write_session(engine) as session:  # as the code before that stored it
        session.execute(update(IdempotencyKey).values(request_hash=as_sent.hexdigest()))
        session.commit()
    again = client.put(f"{API}/{post.id}", json=post_json(title="Renamed"), headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    other = client.put(f"{API}/{post.id}", json=post_json(title="Other"), headers=headers)
    assert assert_problem(other, 422)["errors"][0]["field"] == "Idempotency-Key"


# --- OpenAPI --------------------------------------------------------------------------------------


def test_openapi_documents_every_endpoint_and_error(client):
    schema = client.get("/openapi.json").json()
    ops = {(m, p): op for p, item in schema["paths"].items() for m, op in item.items()}
    assert set(ops) == {
        ("post", API),
        ("get", API),
        ("put", f"{API}/{{post_id}}"),
        ("delete", f"{API}/{{post_id}}"),
        ("get", f"{API}/{{post_id}}"),
    }
    for (method, _), op in ops.items():
        codes = set(op["responses"])
        if method != "get":
            assert {"401", "429", "413"} <= codes
            assert op["security"] == [{"engineToken": []}]
        for code in codes - {"200", "201", "204", "304"}:
            assert "application/problem+json" in op["responses"][code]["content"]
    assert {"400", "409", "415", "422"} <= set(ops[("post", API)]["responses"])
    assert "412" in ops[("put", f"{API}/{{post_id}}")]["responses"]
    assert schema["components"]["schemas"]["PostIn"]["example"]["title"]
    assert client.get("/docs").status_code == 200
    json.dumps(schema)


def test_idempotency_answer_commits_with_the_post(engine, settings) -> None:
    """A worker killed right after the post commits leaves a replayable answer, not a stale
    in-flight claim that a retry would take over and run twice."""
    from conftest import sample_input

    from app import idempotency, posts
    from app.db import write_session

    claimed = idempotency.claim(engine, settings, "token:1", "key-1", "hash-1")
    assert isinstance(claimed, idempotency.Claim)
    completion = idempotency.Completion(claimed)

    def record(session, post) -> None:  # type: ignore[no-untyped-def]
        completion.record(session, idempotency.StoredResponse(201, f'{{"id": {post.id}}}', None))

    with write_session(engine) as session:
        created = posts.create_post(
            session, sample_input(cycle=None), "Workshop", before_commit=record
        )
    # The worker dies here: idempotency.complete() never runs.
    retry = idempotency.claim(engine, settings, "token:1", "key-1", "hash-1")
    assert isinstance(retry, idempotency.StoredResponse)
    assert retry.status == 201 and retry.body == f'{{"id": {created.post.id}}}'
