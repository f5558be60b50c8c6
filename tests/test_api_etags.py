"""A post's ETag names its representation: the gzipped answer has a strong tag of its own
(RFC 9110 sections 8.8.1 and 8.8.3), and If-Match / If-None-Match take either tag of the
current version, and neither of an older one."""

import gzip

import httpx
import pytest
from conftest import add_post, post_json, start_server, stop_server
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import Post

API = "/api/v1/posts"
GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}
ENCODINGS = pytest.mark.parametrize("encoding", ["gzip", "identity"])


def tags_of(post_id: int, version: int) -> dict[str, str]:
    """The post's two strong tags at `version`, by the encoding they go with."""
    return {"identity": f'"p{post_id}v{version}"', "gzip": f'"p{post_id}v{version}-gzip"'}


def raw_get(client: TestClient, path: str, headers: dict[str, str]) -> httpx.Response:
    """GET keeping the bytes as sent (httpx would decode the gzip)."""
    with client.stream("GET", path, headers=headers) as response:
        response.read_raw = b"".join(response.iter_raw())  # type: ignore[attr-defined]
    return response


@pytest.fixture(params=["cached", "uncached"])
def either_client(request, client, uncached_client) -> TestClient:  # type: ignore[no-untyped-def]
    """The app with the response cache (which answers conditional GETs itself) and without."""
    return client if request.param == "cached" else uncached_client


def test_gzipped_and_plain_answers_carry_different_strong_tags(either_client, engine) -> None:
    post = add_post(engine)
    path = f"{API}/{post.id}"
    zipped = raw_get(either_client, path, GZIP)
    plain = raw_get(either_client, path, PLAIN)
    assert zipped.status_code == plain.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert gzip.decompress(zipped.read_raw) == plain.read_raw  # type: ignore[attr-defined]
    assert zipped.headers["etag"] == tags_of(post.id, 1)["gzip"]  # type: ignore[arg-type]
    assert plain.headers["etag"] == tags_of(post.id, 1)["identity"]  # type: ignore[arg-type]
    for answer in (zipped, plain):
        assert not answer.headers["etag"].startswith("W/")
        assert "accept-encoding" in answer.headers["vary"].lower()
    # One strong tag, one sequence of bytes: the gzip is the same every time it is made.
    again = raw_get(either_client, path, GZIP)
    assert again.read_raw == zipped.read_raw  # type: ignore[attr-defined]
    assert again.headers["etag"] == zipped.headers["etag"]
    head = either_client.head(path, headers=GZIP)
    assert head.headers["etag"] == zipped.headers["etag"]
    assert head.headers["content-length"] == zipped.headers["content-length"]


def test_writes_answer_with_the_tag_of_the_encoding_asked(uncached_client, auth) -> None:
    client = uncached_client
    created = client.post(API, json=post_json(), headers={**auth, **PLAIN})
    post_id = created.json()["id"]
    assert created.headers["etag"] == tags_of(post_id, 1)["identity"]
    replaced = client.put(
        f"{API}/{post_id}", json=post_json(title="Second Thoughts"), headers={**auth, **GZIP}
    )
    assert replaced.headers["content-encoding"] == "gzip"
    assert replaced.headers["etag"] == tags_of(post_id, 2)["gzip"]
    assert replaced.json()["title"] == "Second Thoughts"


@pytest.mark.parametrize("sent", ["gzip", "identity", "weak gzip"])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_write_with_either_current_tag_succeeds(client, auth, engine, sent, method) -> None:
    post = add_post(engine)
    tag = tags_of(post.id, 1)[sent.removeprefix("weak ")]  # type: ignore[arg-type]
    if sent.startswith("weak"):  # a compressing proxy in front weakens what it passes on
        tag = "W/" + tag
    headers = {**auth, "If-Match": tag}
    if method == "PUT":
        answer = client.put(f"{API}/{post.id}", json=post_json(title="Edited"), headers=headers)
        assert answer.status_code == 200, answer.text
        assert client.get(f"{API}/{post.id}").json()["title"] == "Edited"
    else:
        answer = client.delete(f"{API}/{post.id}", headers=headers)
        assert answer.status_code == 204, answer.text
        assert client.get(f"{API}/{post.id}").status_code == 410


@pytest.mark.parametrize("sent", ["gzip", "identity"])
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_write_with_either_old_tag_is_412_and_changes_nothing(
    client, auth, engine, sent, method
) -> None:
    post = add_post(engine)
    old = tags_of(post.id, 1)[sent]  # type: ignore[arg-type]
    client.put(f"{API}/{post.id}", json=post_json(title="Edit One"), headers=auth)
    for tag in (old, f'"other", {old}', f"W/{old}"):
        headers = {**auth, "If-Match": tag}
        if method == "PUT":
            answer = client.put(
                f"{API}/{post.id}", json=post_json(title="Edit Two"), headers=headers
            )
        else:
            answer = client.delete(f"{API}/{post.id}", headers=headers)
        assert answer.status_code == 412, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
    with Session(engine) as session:
        kept = session.get(Post, post.id)
        assert kept is not None and kept.title == "Edit One" and kept.version == 2
        assert kept.status == "published"


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_write_with_if_match_star_succeeds(client, auth, engine, method) -> None:
    post = add_post(engine)
    headers = {**auth, "If-Match": "*"}
    if method == "PUT":
        answer = client.put(f"{API}/{post.id}", json=post_json(title="Edited"), headers=headers)
    else:
        answer = client.delete(f"{API}/{post.id}", headers=headers)
    assert answer.status_code in (200, 204), answer.text


@pytest.mark.parametrize("sent", ["gzip", "identity"])
@ENCODINGS
def test_if_none_match_with_either_tag_is_304_with_the_tag_asked_for(
    either_client, engine, sent, encoding
) -> None:
    post = add_post(engine)
    tags = tags_of(post.id, 1)  # type: ignore[arg-type]
    path = f"{API}/{post.id}"
    for condition in (tags[sent], f'"other", {tags[sent]}', f"W/{tags[sent]}", "*"):
        answer = either_client.get(
            path, headers={"Accept-Encoding": encoding, "If-None-Match": condition}
        )
        assert answer.status_code == 304 and answer.content == b"", condition
        assert answer.headers["etag"] == tags[encoding]
        assert "accept-encoding" in answer.headers["vary"].lower()


@ENCODINGS
def test_if_none_match_with_an_old_tag_is_the_new_post(either_client, auth, engine, encoding):
    post = add_post(engine)
    old = tags_of(post.id, 1)  # type: ignore[arg-type]
    either_client.put(f"{API}/{post.id}", json=post_json(title="Edit One"), headers=auth)
    for condition in old.values():
        answer = either_client.get(
            f"{API}/{post.id}", headers={"Accept-Encoding": encoding, "If-None-Match": condition}
        )
        assert answer.status_code == 200 and answer.json()["title"] == "Edit One"
        assert answer.headers["etag"] == tags_of(post.id, 2)[encoding]  # type: ignore[arg-type]


def test_a_real_client_puts_with_the_tag_its_get_received(settings, engine, token, tmp_path):
    """httpx over real HTTP, as the engine runs: it asks for gzip by default, so the tag it
    keeps is the gzipped answer's, and it sends that back."""
    post = add_post(engine)
    server = start_server(settings, tmp_path)
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            got = http.get(f"{API}/{post.id}")
            assert got.status_code == 200 and got.headers["content-encoding"] == "gzip"
            assert got.headers["etag"] == tags_of(post.id, 1)["gzip"]  # type: ignore[arg-type]
            put = http.put(
                f"{API}/{post.id}",
                json=post_json(title="Edited Over HTTP"),
                headers={"If-Match": got.headers["etag"]},
            )
            assert put.status_code == 200, put.text
            assert put.json()["title"] == "Edited Over HTTP"
            stale = http.put(
                f"{API}/{post.id}",
                json=post_json(title="Lost Update"),
                headers={"If-Match": got.headers["etag"]},
            )
            assert stale.status_code == 412
            fresh = http.get(f"{API}/{post.id}", headers={"If-None-Match": put.headers["etag"]})
            assert fresh.status_code == 304 and fresh.headers["etag"] == put.headers["etag"]
            deleted = http.delete(f"{API}/{post.id}", headers={"If-Match": put.headers["etag"]})
            assert deleted.status_code == 204
    finally:
        stop_server(server)
