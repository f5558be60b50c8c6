"""The operator's logs: every line the app configures shows its time in UTC, ISO 8601 to the
millisecond with `Z`, whatever the machine's time zone: the access log, the error log, the app's
own warnings and, under `workshop serve`, uvicorn's lines."""

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import post_json, start_server, stop_server
from sqlalchemy import make_url

from app import observability
from app.config import Settings
from app.main import create_app

UTC_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
NOT_UTC = "America/Los_Angeles"  # never UTC: -8 or -7 hours


def _instant(stamp: str) -> datetime:
    assert UTC_STAMP.fullmatch(stamp), stamp
    return datetime.fromisoformat(stamp)


def _near(stamp: str, before: datetime, after: datetime) -> bool:
    return before - timedelta(seconds=1) <= _instant(stamp) <= after + timedelta(seconds=1)


def test_every_line_of_serve_is_json_with_its_time_in_utc(
    settings: Settings, token: str, tmp_path: Path
) -> None:
    """`workshop serve` on a machine whose time zone is not UTC: its access lines, its error
    lines (a database error answered 503) and uvicorn's own warnings are each one JSON object,
    with the time in UTC."""
    before = datetime.now(UTC)
    server = start_server(settings, tmp_path, TZ=NOT_UTC, WORKSHOP_LOG_JSON="true")
    try:
        httpx.get(server.url + "/", headers={"X-Request-ID": "r-page"})
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"not http\r\n\r\n")  # uvicorn warns: Invalid HTTP request received.
            sock.recv(1024)
        if settings.is_sqlite:
            # The SQLite file moved away under the server: a write is refused with 503.
            path = Path(make_url(settings.database_url).database or "")
            os.rename(path, path.with_suffix(".away"))
            try:
                refused = httpx.post(
                    server.url + "/api/v1/posts",
                    json=post_json(),
                    headers={"Authorization": f"Bearer {token}", "X-Request-ID": "r-write"},
                )
            finally:
                os.rename(path.with_suffix(".away"), path)
            assert refused.status_code == 503
        time.sleep(0.2)  # the access log is written at the next turn of the worker's loop
    finally:
        stop_server(server)
    after = datetime.now(UTC)
    lines = server.log.read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # every line, uvicorn's too
    assert all(_near(doc["time"], before, after) for doc in docs), lines
    assert [(d["path"], d["status"]) for d in docs if d.get("request_id") == "r-page"] == [
        ("/", 200)
    ]
    uvicorn_warning = {"level": "warning", "message": "Invalid HTTP request received."}
    assert any(uvicorn_warning.items() <= doc.items() for doc in docs), lines
    if settings.is_sqlite:
        write = [d for d in docs if d.get("request_id") == "r-write"]
        assert [d["level"] for d in write] == ["error", "info"]  # the traceback, then the access
        assert "database error answered 503" in write[0]["message"]


@pytest.fixture
def not_utc() -> Iterator[None]:
    """This process in a time zone other than UTC while the test runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", NOT_UTC)
        time.tzset()
        try:
            yield
        finally:
            patch.undo()
            time.tzset()


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "plain"])
def test_the_configured_formatter_writes_utc(
    settings: Settings, not_utc: None, as_json: bool
) -> None:
    """The formatter `create_app` gives the access log, the error log and the app's modules,
    in both forms, under a time zone that is not UTC."""
    assert time.localtime(0).tm_hour != 0  # the zone took
    app = create_app(settings.model_copy(update={"log_json": as_json}))
    app.state.engine.dispose()
    record = logging.makeLogRecord(
        {"msg": "GET /x: failed", "levelname": "ERROR", "fields": {"request_id": "r-1"}}
    )
    record.created, record.msecs = 1796500083.123, 123.0  # 2026-12-05T19:48:03.123Z
    for name in ("workshop.access", "workshop.errors", "app"):
        formatter = logging.getLogger(name).handlers[0].formatter
        assert isinstance(formatter, observability.LogFormatter), name
        line = formatter.format(record)
        if as_json:
            assert json.loads(line) == {
                "time": "2026-12-05T19:48:03.123Z",
                "level": "error",
                "message": "GET /x: failed",
                "request_id": "r-1",
            }
        else:
            assert line == "2026-12-05T19:48:03.123Z ERROR GET /x: failed {'request_id': 'r-1'}"


def test_the_access_lines_own_json_writes_utc(not_utc: None, monkeypatch) -> None:
    """The access log's JSON line, written by hand rather than by the formatter, says the same
    time the same way."""
    written: list[str] = []

    class Stderr:
        def write(self, text: str) -> None:
            written.append(text)

    monkeypatch.setattr("sys.stderr", Stderr())
    monkeypatch.setattr(observability, "_access_json", True)
    before = datetime.now(UTC)
    observability._access_log("GET", "/", 200, 0.001, "r-2")  # no event loop: written at once
    after = datetime.now(UTC)
    (line,) = written
    assert _near(json.loads(line)["time"], before, after), line
