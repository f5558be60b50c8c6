"""WebSub: hub links in every feed, and a background ping to a real hub stub on loopback after
each write made through the post service."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from xml.etree import ElementTree as ET

import pytest
from conftest import SITE_URL, add_post, sample_input, test_settings
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app import db, posts, websub
from app.main import create_app

ATOM = "{http://www.w3.org/2005/Atom}"
WAIT = 30  # generous upper bound for a background ping to arrive; the test never waits for it


class HubStub:
    """A tiny hub: records each publish ping; can fail the first N requests or hold them."""

    def __init__(self) -> None:
        self.pings: list[dict[str, list[str]]] = []
        self.fail_first = 0
        self.release = threading.Event()
        self.release.set()
        self.arrived = threading.Condition()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                stub.release.wait(WAIT)
                with stub.arrived:
                    if stub.fail_first > 0:
                        stub.fail_first -= 1
                        status = 503
                    else:
                        status = 204
                        stub.pings.append(form)
                    stub.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hub"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def published_urls(self) -> set[str]:
        return {url for form in self.pings for url in form.get("hub.url", [])}

    def wait_for(self, url: str) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: url in self.published_urls(), timeout=WAIT)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub() -> Iterator[HubStub]:
    stub = HubStub()
    yield stub
    stub.close()


@pytest.fixture
def hub_app(database_url: str, hub: HubStub, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    monkeypatch.setattr(websub, "RETRY_DELAYS", (0.01, 0.02, 0.04))
    app = create_app(test_settings(database_url, websub_hub=hub.url))
    yield app
    websub.uninstall(app)
    app.state.engine.dispose()


@pytest.fixture
def hub_client(hub_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(hub_app, base_url=SITE_URL) as client:
        yield client


def test_feeds_carry_hub_links(hub_client: TestClient, hub: HubStub) -> None:
    rss = ET.fromstring(hub_client.get("/feed.xml").content)
    assert [link.get("href") for link in rss.iterfind(f"channel/{ATOM}link[@rel='hub']")] == [
        hub.url
    ]
    atom = ET.fromstring(hub_client.get("/atom.xml").content)
    assert [link.get("href") for link in atom.iterfind(f"{ATOM}link[@rel='hub']")] == [hub.url]
    assert hub_client.get("/feed.json").json()["hubs"] == [{"type": "WebSub", "url": hub.url}]


def test_publish_pings_the_hub_in_the_background(
    hub_app: FastAPI, engine: Engine, hub: HubStub
) -> None:
    hub.fail_first = 2  # the hub is briefly down: the notifier retries with backoff
    add_post(engine)  # the service layer, on its own engine: the ping is per database
    for path in (
        "/feed.xml",
        "/atom.xml",
        "/feed.json",
        "/tags/qqq/feed.xml",
        "/stories/narrow-leadership/feed.json",
    ):
        assert hub.wait_for(SITE_URL + path), hub.pings
    assert all(form["hub.mode"] == ["publish"] for form in hub.pings)


def test_edit_pings_the_feeds_of_tags_it_dropped(
    hub_app: FastAPI, engine: Engine, hub: HubStub
) -> None:
    post = add_post(engine, tags=["QQQ", "breadth"])
    assert hub.wait_for(SITE_URL + "/tags/breadth/atom.xml")
    hub.pings.clear()
    with db.write_session(engine) as session:
        posts.update_post(session, post.id, sample_input(tags=["QQQ"]), "Workshop")  # type: ignore[arg-type]
    assert hub.wait_for(SITE_URL + "/tags/breadth/atom.xml")  # left that tag's feed
    with db.write_session(engine) as session:
        posts.delete_post(session, post.id)  # type: ignore[arg-type]
    assert hub.wait_for(SITE_URL + "/feed.xml")


def test_a_stuck_hub_never_blocks_a_write(hub_app: FastAPI, engine: Engine, hub: HubStub) -> None:
    hub.release.clear()  # the hub accepts the connection and then says nothing
    first = add_post(engine, cycle=1)
    second = add_post(engine, cycle=2, title="Another")  # returns while the first ping hangs
    assert first.id and second.id and not hub.pings
    hub.release.set()
    assert hub.wait_for(SITE_URL + "/feed.xml")


def test_a_failing_hub_never_fails_a_write(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websub, "RETRY_DELAYS", ())
    app = create_app(test_settings(database_url, websub_hub="http://127.0.0.1:9/unreachable"))
    try:
        post = add_post(engine)
        assert post.id is not None
    finally:
        websub.uninstall(app)
        app.state.engine.dispose()


def test_notify_hub_directly(hub: HubStub, database_url: str) -> None:
    settings = test_settings(database_url, websub_hub=hub.url)
    hub.fail_first = 1
    assert websub.notify_hub(settings, [SITE_URL + "/feed.xml"], delays=(0.01,))
    assert hub.published_urls() == {SITE_URL + "/feed.xml"}
    hub.fail_first = 5
    assert not websub.notify_hub(settings, [SITE_URL + "/atom.xml"], delays=(0.01, 0.01))
    assert websub.notify_hub(test_settings(database_url), ["ignored"])  # no hub: nothing to do


def test_no_hub_no_links(client: TestClient) -> None:
    assert "hubs" not in client.get("/feed.json").json()
    rss = ET.fromstring(client.get("/feed.xml").content)
    assert not list(rss.iterfind(f"channel/{ATOM}link[@rel='hub']"))
