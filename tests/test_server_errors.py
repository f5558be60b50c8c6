"""An exception nothing handles: a reader gets the site's error page, an API client a problem
with the request's id, and the operator its traceback, logged once under that id. Nothing of the
exception reaches the client. Both ways a request is answered are checked: through ASGI (inside
FastAPI, and in the layers around it) and at `workshop serve`'s front door (app/serving.py).

The exceptions come from routes and layers that the tests add to apps they build: the app's own
code raises none on purpose."""

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import lxml.html
import pytest
import uvicorn
from conftest import SITE_URL, free_port, test_settings
from fastapi.responses import StreamingResponse
from fastapi.templating import Jinja2Templates
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.main import Workshop, create_app
from app.routes import reader
from app.serving import OneSendHttpProtocol

# What the exception says: it must reach the log, never an answer.
SECRET = "secret-detail-7f3a"
PAGE_HEADING = "This page can’t be shown right now"


def _fails() -> None:
    raise RuntimeError(SECRET)


def _with_failing_routes(settings: Settings) -> Workshop:
    """The site with two routes of the test's own that raise: one on the reader site, one under
    /api/."""
    app = create_app(settings)
    app.fastapi.add_api_route("/fails", _fails)
    app.fastapi.add_api_route("/api/v1/fails", _fails)
    return app


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def logged(*names: str) -> Iterator[list[logging.LogRecord]]:
    """The records of these loggers while the block runs (after `create_app`, which sets up
    the app's own handlers)."""
    capture = Captured()
    for name in names:
        logging.getLogger(name).addHandler(capture)
    try:
        yield capture.records
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(capture)


def _request_id(record: logging.LogRecord) -> str:
    return record.fields["request_id"]  # type: ignore[attr-defined]


def _assert_nothing_of_the_exception(answer: httpx.Response) -> None:
    for told in (SECRET, "RuntimeError", "Traceback", "_fails"):
        assert told not in answer.text, told
        assert all(told not in value for value in answer.headers.values()), told


def _assert_error_page(answer: httpx.Response, path: str) -> None:
    """The site's own error page in a reader's words, leading back to the same page."""
    assert answer.status_code == 500
    assert answer.headers["content-type"].startswith("text/html")
    doc = lxml.html.fromstring(answer.text)
    assert [h.text_content() for h in doc.xpath("//main//h1")] == [PAGE_HEADING]
    links = [(a.text_content(), a.get("href")) for a in doc.xpath("//main//a")]
    assert ("Try again", path) in links
    assert ("newest essays", "/") in links
    _assert_nothing_of_the_exception(answer)


def _assert_problem(answer: httpx.Response, request_id: str) -> None:
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 500 and problem["type"] == "about:blank"
    assert problem["title"] == "Internal server error"
    assert problem["request_id"] == request_id == answer.headers["x-request-id"]
    _assert_nothing_of_the_exception(answer)


def test_a_route_that_raises_answers_a_page_or_a_problem(settings: Settings) -> None:
    app = _with_failing_routes(settings)
    with logged("workshop.errors") as records, TestClient(app, base_url=SITE_URL) as client:
        page = client.get("/fails", headers={"Accept": "text/html", "X-Request-ID": "r-page"})
        api = client.get("/api/v1/fails", headers={"X-Request-ID": "r-api"})
        made = client.get("/api/v1/fails")  # no id of its own: the one made is in the problem
        other = client.get("/fails", headers={"Accept": "*/*", "X-Request-ID": "r-other"})
    app.state.engine.dispose()
    _assert_error_page(page, "/fails")
    assert page.headers["x-request-id"] == "r-page"
    _assert_problem(api, "r-api")
    _assert_problem(made, made.headers["x-request-id"])
    _assert_problem(other, "r-other")  # the reader site answers problem+json to non-browsers
    for answer in (page, other):
        assert "Accept" in answer.headers["vary"]  # HTML or JSON by Accept, as every error
    for answer in (page, api, made, other):
        assert answer.headers["cache-control"] == "no-store"
    # Each traceback once (uvicorn logs what reaches it: nothing does), under its request's id.
    assert [_request_id(r) for r in records] == [
        "r-page",
        "r-api",
        made.headers["x-request-id"],
        "r-other",
    ]
    for record in records:
        assert record.levelname == "ERROR" and record.exc_info is not None
        assert str(record.exc_info[1]) == SECRET
        assert "answered 500" in record.getMessage()


def _with_a_failing_layer(settings: Settings) -> Workshop:
    """The site as `create_app` puts it together (cache off), with a layer of the test's own
    between the stored essay pages and FastAPI, where the response cache sits, that raises on
    /fails: an exception outside FastAPI, which FastAPI's handlers never see."""
    built = create_app(test_settings(settings.database_url, response_cache=False))

    async def layer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/fails"):
            raise RuntimeError(SECRET)
        await built.fastapi(scope, receive, send)

    stored = reader.StoredEssayPages(layer, built.state.stored_pages)
    return Workshop(built.fastapi, stored, stored, None)


def test_a_layer_outside_fastapi_that_raises_answers_the_same(settings: Settings) -> None:
    app = _with_a_failing_layer(settings)
    with logged("workshop.errors") as records, TestClient(app, base_url=SITE_URL) as client:
        page = client.get("/fails", headers={"Accept": "text/html", "X-Request-ID": "r-page"})
        api = client.get("/api/v1/fails", headers={"X-Request-ID": "r-api"})
        head = client.head("/fails", headers={"Accept": "text/html"})
        fine = client.get("/healthz")
    app.state.engine.dispose()
    _assert_error_page(page, "/fails")
    _assert_problem(api, "r-api")
    assert (head.status_code, head.content) == (500, b"")
    assert fine.status_code == 200  # the worker goes on serving
    assert [_request_id(r) for r in records] == ["r-page", "r-api", head.headers["x-request-id"]]
    assert all(str(r.exc_info[1]) == SECRET for r in records if r.exc_info)


def test_a_broken_error_page_still_answers_in_words(settings: Settings, tmp_path) -> None:
    """A deploy that lost its templates: the reader still gets a page saying what happened,
    and the operator both tracebacks (the error page's, and the one it was to answer)."""
    app = _with_failing_routes(settings)
    app.state.templates = Jinja2Templates(directory=str(tmp_path))  # no error.html there
    with logged("workshop.errors") as records, TestClient(app, base_url=SITE_URL) as client:
        page = client.get("/fails", headers={"Accept": "text/html", "X-Request-ID": "r-bare"})
    app.state.engine.dispose()
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert [h.text_content() for h in lxml.html.fromstring(page.text).iter("h1")] == [PAGE_HEADING]
    _assert_nothing_of_the_exception(page)
    assert "error page failed" in records[0].getMessage()
    assert _request_id(records[1]) == "r-bare" and str(records[1].exc_info[1]) == SECRET  # type: ignore[index]


# --- through a real server: the front door, and uvicorn's own logging ------------------------


class FrontDoorFails:
    """The site behind a front door that raises (the test's own, standing for a bug in the
    app's): `workshop serve`'s protocol asks it first, then answers through ASGI, where the
    site itself answers. `later`: it raises in the read it gives to await (PostgreSQL's way
    with a stored page the worker does not keep), not when asked."""

    def __init__(self, app: Workshop, later: bool) -> None:
        self.app, self.later = app, later

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def front_door(self, method: str, path: str, query: bytes, headers: Any) -> Any:
        if self.later:
            return self._read()
        raise RuntimeError(SECRET)

    async def _read(self) -> None:
        raise RuntimeError(SECRET)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn with `workshop serve`'s protocol, on a real socket."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=OneSendHttpProtocol, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("later", [False, True], ids=["when-asked", "in-its-read"])
def test_a_front_door_that_raises_is_logged_once_under_the_answers_id(
    settings: Settings, later: bool
) -> None:
    site = _with_failing_routes(settings)
    with logged("workshop.errors") as records, logged("uvicorn.error") as uvicorn_records:
        with serving(FrontDoorFails(site, later)) as url, httpx.Client(base_url=url) as client:
            # The front door fails; the ASGI way answers, under the same request id.
            named = client.get("/healthz", headers={"X-Request-ID": "r-front"})
            made = client.get("/healthz")
            # Both fail: the front door, then the route. Each logged once, under one id.
            page = client.get("/fails", headers={"Accept": "text/html"})
    site.state.engine.dispose()
    assert named.status_code == made.status_code == 200
    _assert_error_page(page, "/fails")
    ids = [named.headers["x-request-id"], made.headers["x-request-id"]]
    assert ids[0] == "r-front"
    both = page.headers["x-request-id"]
    assert [_request_id(r) for r in records] == [*ids, both, both]
    messages = [r.getMessage() for r in records]
    assert all("answered the ASGI way" in m for m in messages[:3])
    assert "answered 500" in messages[3]
    assert all(r.exc_info is not None and str(r.exc_info[1]) == SECRET for r in records)
    # uvicorn logged nothing: no second traceback without the id, no plain-text 500.
    assert [r.getMessage() for r in uvicorn_records if r.levelno >= logging.WARNING] == []


# --- the database fails: 503, logged under the answer's id -------------------------------------


def _assert_logged_under_its_id(
    records: list[logging.LogRecord], answers: list[httpx.Response]
) -> None:
    """One record per answer, in order, under the id the answer carries, naming what it got."""
    for answer in answers:
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert [_request_id(r) for r in records] == [a.headers["x-request-id"] for a in answers]
    for record, answer in zip(records, answers, strict=True):
        assert record.levelname == "ERROR" and record.exc_info is not None
        assert isinstance(record.exc_info[1], OperationalError)
        message = record.getMessage()
        assert "database error answered 503" in message
        assert f"(request {answer.headers['x-request-id']})" in message


def test_a_database_error_is_logged_under_the_answers_id(tmp_path) -> None:
    """A database that cannot be opened: each request answers 503 (app/problems.py), and its
    traceback is logged once, under the request id its answer and the access log carry. Both
    ways: through ASGI, and at `workshop serve`'s front door, which fails to read the stored
    essay page and hands the request on."""
    missing = f"sqlite:///{tmp_path}/missing/dir/x.db"
    site = create_app(test_settings(missing))
    with logged("workshop.errors") as records, TestClient(site, base_url=SITE_URL) as client:
        asgi = [
            client.get("/api/v1/posts/1", headers={"X-Request-ID": "r-api"}),
            client.get("/?before=x", headers={"Accept": "text/html"}),
        ]
    site.state.engine.dispose()
    _assert_logged_under_its_id(records, asgi)
    assert asgi[0].headers["x-request-id"] == "r-api"

    site = create_app(test_settings(missing))
    with logged("workshop.errors") as records, logged("uvicorn.error") as uvicorn_records:
        with serving(site) as url, httpx.Client(base_url=url) as client:
            front = [
                client.get("/read/1/x", headers={"X-Request-ID": "r-front"}),
                client.get("/read/2/y", headers={"Accept": "text/html"}),
            ]
    site.state.engine.dispose()
    _assert_logged_under_its_id(records, front)
    assert front[0].headers["x-request-id"] == "r-front"
    assert [r.getMessage() for r in uvicorn_records if r.levelno >= logging.WARNING] == []


# --- an answer cut short: logged once, and not made to look complete --------------------------


async def _half_then_fails() -> AsyncIterator[bytes]:
    yield b"<urlset>" + b"<url><loc>/read/1/a</loc></url>" * 100  # sent before the failure
    raise RuntimeError(SECRET)


def _streams_then_fails() -> StreamingResponse:
    """A stream that fails partway, as a sitemap's would if its database went away."""
    return StreamingResponse(_half_then_fails(), media_type="application/xml")


async def _stops_unfinished(scope: Any, receive: Any, send: Any) -> None:
    """An app that leaves its answer unfinished without raising: nothing for us to log, so
    uvicorn's own error line must stay."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


def test_an_answer_cut_short_is_logged_once_and_left_incomplete(settings: Settings) -> None:
    site = create_app(settings)
    site.fastapi.add_api_route("/sitemap-fails.xml", _streams_then_fails)
    site.fastapi.mount("/unfinished", _stops_unfinished)
    with logged("workshop.errors") as records, logged("uvicorn.error") as uvicorn_records:
        with serving(site) as url:
            for path, request_id in (("/sitemap-fails.xml", "r-cut"), ("/unfinished/", "r-un")):
                with httpx.Client(base_url=url) as client:
                    # The client is told: the connection closes before the body's end.
                    with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
                        client.get(path, headers={"X-Request-ID": request_id})
    site.state.engine.dispose()
    assert [(_request_id(r), str(r.exc_info[1])) for r in records] == [("r-cut", SECRET)]  # type: ignore[index]
    assert "answer cut short" in records[0].getMessage()
    # uvicorn's note stays for the answer we did not log; for the one we did, it is not said
    # twice.
    said = [r.getMessage() for r in uvicorn_records if r.levelno >= logging.WARNING]
    assert said == ["ASGI callable returned without completing response."]
