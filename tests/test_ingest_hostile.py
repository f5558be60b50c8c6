"""Hostile input: every case gets a 4xx problem naming what is wrong, and stores nothing."""

import json
from typing import Any

import pytest
from conftest import add_post, post_json
from sqlalchemy import text
from sqlmodel import Session

API = "/api/v1/posts"
TABLES = [
    "posts",
    "minds",
    "tags",
    "post_tags",
    "stories",
    "post_stories",
    "revisions",
    "idempotency_keys",
]


def snapshot(engine) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return {t: session.execute(text(f"SELECT * FROM {t} ORDER BY 1")).all() for t in TABLES}


def body(**overrides: Any) -> bytes:
    doc = post_json()
    for key, value in overrides.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def debate(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "outcome": "split",
        "conviction": 0.5,
        "minds": [{"name": "Macro", "confidence": 0.5}],
    }
    doc.update(overrides)
    return doc


def nested(depth: int) -> bytes:
    return b'{"title": "Deep", "body": "x", "tags": ' + b"[" * depth + b"]" * depth + b"}"


JSON = "application/json"
# (id, raw body, content type, expected status, the field (or word) the problem must name)
CASES: list[tuple[str, bytes, str | None, int, str]] = [
    ("malformed-json", b'{"title": "x", "body": ', JSON, 400, "char"),
    ("not-an-object", b'["title", "body"]', JSON, 422, "body"),
    ("trailing-garbage", body() + b" {}", JSON, 400, "char"),
    ("duplicate-keys", b'{"title": "a", "title": "b", "body": "x"}', JSON, 400, "title"),
    ("text-plain", body(), "text/plain", 415, "application/json"),
    (
        "form-encoded",
        b"title=x&body=y",
        "application/x-www-form-urlencoded",
        415,
        "application/json",
    ),
    ("no-content-type", body(), None, 415, "application/json"),
    ("empty-body", b"", JSON, 422, "body"),
    ("empty-object", b"{}", JSON, 422, "title"),
    ("missing-title", body(title=...), JSON, 422, "title"),
    ("missing-body", body(body=...), JSON, 422, "body"),
    ("empty-title", body(title=""), JSON, 422, "title"),
    ("blank-title", body(title="   "), JSON, 422, "title"),
    ("empty-body-text", body(body="\n\n  \n"), JSON, 422, "body"),
    ("null-title", body(title=None), JSON, 422, "title"),
    ("title-number", body(title=42), JSON, 422, "title"),
    ("title-object", body(title={"en": "x"}), JSON, 422, "title"),
    ("cycle-string", body(cycle="803"), JSON, 422, "cycle"),
    ("cycle-float", body(cycle=803.5), JSON, 422, "cycle"),
    ("cycle-negative", body(cycle=-1), JSON, 422, "cycle"),
    ("cycle-huge", body(cycle=2**63), JSON, 422, "cycle"),
    ("cycle-bool", body(cycle=True), JSON, 422, "cycle"),
    ("tags-string", body(tags="TSLA"), JSON, 422, "tags"),
    ("tags-numbers", body(tags=[1, 2]), JSON, 422, "tags.0"),
    ("tag-emoji-only", body(tags=["🚀"]), JSON, 422, "tags"),
    ("debate-list", body(debate=[]), JSON, 422, "debate"),
    ("conviction-above-1", body(debate=debate(conviction=1.01)), JSON, 422, "debate.conviction"),
    ("conviction-negative", body(debate=debate(conviction=-0.1)), JSON, 422, "debate.conviction"),
    ("conviction-string", body(debate=debate(conviction="high")), JSON, 422, "debate.conviction"),
    (
        "confidence-above-1",
        body(debate=debate(minds=[{"name": "Macro", "confidence": 2}])),
        JSON,
        422,
        "debate.minds.0.confidence",
    ),
    (
        "confidence-negative",
        body(debate=debate(minds=[{"name": "Macro", "confidence": -1e-9}])),
        JSON,
        422,
        "debate.minds.0.confidence",
    ),
    (
        "conviction-nan",
        body().replace(b'"conviction": 0.42', b'"conviction": NaN'),
        JSON,
        422,
        "debate.conviction",
    ),
    (
        "conviction-infinity",
        body().replace(b'"conviction": 0.42', b'"conviction": Infinity'),
        JSON,
        422,
        "debate.conviction",
    ),
    (
        "confidence-minus-infinity",
        body().replace(b'"confidence": 0.35', b'"confidence": -Infinity'),
        JSON,
        422,
        "debate.minds.0.confidence",
    ),
    (
        "duplicate-minds",
        body(
            debate=debate(
                minds=[{"name": "Flow", "confidence": 0.1}, {"name": "flow", "confidence": 0.2}]
            )
        ),
        JSON,
        422,
        "debate.minds",
    ),
    (
        "mind-without-name",
        body(debate=debate(minds=[{"confidence": 0.1}])),
        JSON,
        422,
        "debate.minds.0.name",
    ),
    (
        "ten-thousand-minds",
        body(debate=debate(minds=[{"name": f"M{i}", "confidence": 0.5} for i in range(10_000)])),
        JSON,
        422,
        "debate.minds",
    ),
    ("unknown-field", body(summary="extra"), JSON, 422, "summary"),
    ("unknown-nested-field", body(debate=debate(winner="Flow")), JSON, 422, "debate.winner"),
    ("naive-datetime", body(published_at="2026-04-03T17:51:27"), JSON, 422, "published_at"),
    ("invalid-datetime", body(published_at="2026-02-30T10:00:00Z"), JSON, 422, "published_at"),
    ("garbage-datetime", body(published_at="yesterday"), JSON, 422, "published_at"),
    ("datetime-object", body(published_at={"year": 2026}), JSON, 422, "published_at"),
    ("datetime-year-0001", body(published_at="0001-01-01T00:00:00Z"), JSON, 422, "published_at"),
    # Out of range once converted to UTC: an OverflowError inside the validator was a 500.
    ("datetime-past-9999-utc", body(published_at="9999-12-31T23:59:59-23:59"), JSON, 422, "publ"),
    ("datetime-before-1-utc", body(published_at="0001-01-01T00:00:00+01:00"), JSON, 422, "publ"),
    # A number was read as Unix seconds or milliseconds depending on its size (year 5138 here).
    ("datetime-unix-number", body(published_at=99999999999999), JSON, 422, "published_at"),
    ("datetime-unix-seconds", body(published_at=1775238687), JSON, 422, "published_at"),
    ("deeply-nested", nested(100_000), JSON, 400, "nested"),
    ("moderately-nested", nested(500), JSON, 422, "tags"),
    ("control-char-title", body(title="Bell\u0007 title"), JSON, 422, "title"),
    ("nul-in-title", body(title="Nul\u0000 title"), JSON, 422, "title"),
    ("newline-in-title", body(title="Two\nlines"), JSON, 422, "title"),
    ("escape-in-body", body(body="ok\u001b[31m red"), JSON, 422, "body"),
    (
        "lone-surrogate-title",
        body().replace(b'"title": "Breadth', b'"title": "\\ud800Breadth'),
        JSON,
        422,
        "title",
    ),
    (
        "invalid-utf8-title",
        body().replace(b"Breadth Is", b"Breadth \xff\xfe Is"),
        JSON,
        400,
        "title",
    ),
    (
        "latin1-title",
        body().replace(b"Breadth Is", "Breadth é Is".encode("latin-1")),
        JSON,
        400,
        "title",
    ),
    ("invalid-utf8-outside-strings", b'{"title": "x", \xff "body": "y"}', JSON, 400, "body"),
    (
        "huge-integer",
        b'{"title": "x", "body": "y", "cycle": ' + b"9" * 5000 + b"}",
        JSON,
        400,
        "JSON",
    ),
    ("title-too-long", body(title="t" * 301), JSON, 422, "title"),
    ("too-many-tags", body(tags=[f"t{i}" for i in range(31)]), JSON, 422, "tags"),
    ("story-without-title", body(stories=[{"status": "developing"}]), JSON, 422, "stories.0.title"),
    ("duplicate-stories", body(stories=[{"title": "A b"}, {"title": "a-B"}]), JSON, 422, "stories"),
]


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_post_is_refused_and_stores_nothing(
    client, auth, engine, raw, content_type, status, names
):
    add_post(engine, cycle=1, title="Already Here")
    before = snapshot(engine)
    headers = {**auth, "Idempotency-Key": "hostile"}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(API, content=raw, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    fields = [e["field"] for e in problem.get("errors", [])]
    assert (
        names in fields or any(f.startswith(names) for f in fields) or names in problem["detail"]
    ), problem
    assert snapshot(engine) == before


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_body_over_the_limit_is_413(client, auth, engine, method):
    post = add_post(engine)
    before = snapshot(engine)
    path = API if method == "POST" else f"{API}/{post.id}"
    big = body(body="x" * (1024 * 1024 + 1))
    response = client.request(method, path, content=big, headers={**auth, "Content-Type": JSON})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "limit" in response.json()["detail"]
    assert snapshot(engine) == before


def test_body_over_the_limit_is_refused_before_it_is_read(live_server):
    """A declared length over the limit gets 413 while the client has sent only the headers."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/posts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Authorization: Bearer wk_x\r\nContent-Length: 50000000\r\n\r\n{"title": '
        )
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "application/problem+json" in answer


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_cut_short_by_a_disconnect_changes_nothing(live_server, engine, token, framing):
    """A complete JSON object, then the client leaves before its declared length (or the last
    chunk): an abandoned request, not an essay to publish."""
    import socket
    import time
    from urllib.parse import urlsplit

    before = snapshot(engine)
    body = json.dumps(post_json(cycle=5200, title="Incomplete")).encode()
    head = (
        f"POST /api/v1/posts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\n"
    ).encode()
    if framing == "chunked":
        sent = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n"
    else:
        sent = head + b"Content-Length: %d\r\n\r\n" % (len(body) + 50) + body
    url = urlsplit(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(sent)
        time.sleep(0.3)  # the server has read all of it, and waits for the rest
    time.sleep(0.5)  # it sees the disconnect
    assert snapshot(engine) == before


def test_streamed_body_over_the_limit_is_413(client, auth, engine):
    before = snapshot(engine)
    sent = []

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            sent.append(1)
            yield b"x" * 65536

    response = client.post(API, content=chunks(), headers={**auth, "Content-Type": JSON})
    assert response.status_code == 413
    assert snapshot(engine) == before


def test_hostile_put_is_refused_and_changes_nothing(client, auth, engine):
    post = add_post(engine)
    before = snapshot(engine)
    for raw in (body(title=""), body(debate=debate(conviction=7)), b"{oops"):
        response = client.put(
            f"{API}/{post.id}", content=raw, headers={**auth, "Content-Type": JSON}
        )
        assert 400 <= response.status_code < 500
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "path",
    [
        f"{API}/0",
        f"{API}/-1",
        f"{API}/99999999999999999999",
        f"{API}/1.5",
        f"{API}?limit=-3",
        f"{API}?limit=abc",
        f"{API}?cursor=%00%ff",
        f"{API}?cursor=" + "A" * 300,
    ],
)
def test_hostile_reads_are_4xx(client, path):
    response = client.get(path)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"
