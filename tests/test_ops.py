"""Operator endpoints and observability: health, readiness, metrics, request ids, 503s."""

import httpx
import lxml.html
from conftest import add_post


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_reports_pending_migrations(settings, engine, client) -> None:
    from app import db

    db.downgrade(settings, "base")
    assert client.get("/readyz").status_code == 503
    db.upgrade(settings)
    assert client.get("/readyz").status_code == 200


def test_request_id_is_echoed_or_made(client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "x-request-id"
    ]
    assert made and " " not in made


def test_metrics_in_prometheus_format(engine, client) -> None:
    post = add_post(engine)
    client.get(f"/read/{post.id}/{post.slug}")
    body = client.get("/metrics").text
    assert "# TYPE workshop_http_requests_total counter" in body
    assert 'route="/read/{post_id}/{slug}"' in body


def test_unknown_methods_share_one_metric_label(client) -> None:
    for method in ("FOOBAR", "X" * 200, "PROPFIND"):
        assert client.request(method, "/").status_code == 405
    body = client.get("/metrics").text
    assert 'method="OTHER"' in body
    assert "FOOBAR" not in body and "X" * 200 not in body and "PROPFIND" not in body


def test_a_refused_method_is_named_with_every_method_the_path_answers(client) -> None:
    # Starlette named only the first route's methods: `Allow: POST` on /api/v1/posts, which
    # also lists the essays on GET.
    cases = {
        "/api/v1/posts": "GET, HEAD, POST",
        "/api/v1/posts/1": "GET, HEAD, PUT, DELETE",
        "/": "GET, HEAD",
        "/feed.xml": "GET, HEAD",
        "/static/app.css": "GET, HEAD",
    }
    for path, allowed in cases.items():
        for method in ("OPTIONS", "PATCH"):
            refused = client.request(method, path)
            assert refused.status_code == 405, (method, path)
            assert refused.headers["allow"] == allowed, (method, path)
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["detail"] == f"{method} is not allowed here; allowed: {allowed}"
    page = client.request("PUT", "/archive", headers={"Accept": "text/html"})
    assert page.status_code == 405
    assert page.headers["allow"] == "GET, HEAD"
    assert page.headers["content-type"].startswith("text/html")
    # A reader is told in plain words (tests/test_reader.py), and led to the page itself.
    doc = lxml.html.fromstring(page.text)
    assert ("Go to the page", "/archive") in [
        (a.text_content(), a.get("href")) for a in doc.iter("a")
    ]


def test_metrics_and_logs_from_a_real_server(engine, live_server) -> None:
    import json

    httpx.get(live_server.url + "/", headers={"X-Request-ID": "req-42"})
    metrics = httpx.get(live_server.url + "/metrics")
    assert metrics.status_code == 200 and "workshop_http_request_duration_seconds" in metrics.text
    lines = [
        json.loads(line)
        for line in live_server.log.read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == "req-42"]
    assert mine and mine[0]["path"] == "/" and mine[0]["status"] == 200 and "duration_ms" in mine[0]


def test_database_down_is_503_with_retry_after(tmp_path) -> None:
    import logging

    from conftest import test_settings
    from fastapi.testclient import TestClient

    from app.main import create_app

    # A database that cannot be opened: the directory does not exist.
    app = create_app(test_settings(f"sqlite:///{tmp_path}/missing/dir/x.db"))
    logged: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("workshop.errors").addHandler(capture)
    with TestClient(app) as client:
        api = client.get("/read/1/x")
        assert api.status_code == 503 and api.headers["retry-after"] == "5"
        page = client.get("/?before=x", headers={"accept": "text/html"})
        assert page.status_code == 503 and page.headers["retry-after"] == "5"
        # In a reader's words ("Service unavailable", "the database is unavailable; retry
        # shortly" was the API's problem), with the same page to try again.
        doc = lxml.html.fromstring(page.text)
        assert [h.text_content() for h in doc.xpath("//main//h1")] == [
            "This page can’t be shown right now"
        ]
        assert "database" not in doc.xpath("//main")[0].text_content()
        links = [(a.text_content(), a.get("href")) for a in doc.xpath("//main//a")]
        assert links[0] == ("Try again", "/?before=x")
    logging.getLogger("workshop.errors").removeHandler(capture)
    # Each one is logged with its cause: a data error mistaken for an outage must be visible.
    assert len(logged) == 2 and all(r.exc_info and r.levelname == "ERROR" for r in logged)


def test_log_lines_close_together_are_written_together(monkeypatch) -> None:
    """A quiet worker writes a request's log line at the next turn of its event loop; lines
    that follow a write within `_LINES_EVERY` wait for it and then go out in one write."""
    import asyncio

    from app import observability

    writes: list[str] = []

    class Stderr:
        def write(self, text: str) -> None:
            writes.append(text)

    monkeypatch.setattr("sys.stderr", Stderr())
    monkeypatch.setattr(observability, "_pending_lines", [])
    # Never written yet. (0.0 held the first line for an hour on a machine up for less than
    # that: the loop's clock counts from boot.)
    monkeypatch.setattr(observability, "_lines_written_at", float("-inf"))
    monkeypatch.setattr(observability, "_LINES_EVERY", 3600.0)  # no timing in the test

    async def serve() -> None:
        observability._write_line("one\n")
        await asyncio.sleep(0)
        assert writes == ["one\n"]
        observability._write_line("two\n")
        observability._write_line("three\n")
        for _ in range(3):
            await asyncio.sleep(0)
        assert writes == ["one\n"]  # held: lines were written just now
        observability._flush_lines()  # as at shutdown
        assert writes == ["one\n", "two\nthree\n"]

    asyncio.run(serve())
