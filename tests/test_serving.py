"""`workshop serve` sends each answer in one go and answers what memory holds at its front door
(app/serving.py), and still speaks plain HTTP/1.1: keep-alive, `Connection: close`, HEAD, 304,
streamed bodies and pipelining, over a real socket."""

import inspect
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
from conftest import SITE_URL, add_post, sample_input, start_server, stop_server
from fastapi.testclient import TestClient
from lxml import etree

from app import posts
from app.db import write_session
from app.fragments import Renderer
from app.main import create_app
from app.urls import post_path


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _request(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


Answer = tuple[bytes, dict[bytes, bytes], bytes]


def _read_answer(
    sock: socket.socket, head: bool = False, pending: bytearray | None = None
) -> Answer:
    """One answer with a Content-Length (or none, for HEAD and 304): status line, headers, body.
    `pending`: bytes read past earlier answers on this connection, kept for the next ones."""
    data = bytearray() if pending is None else pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-headers: {bytes(data)!r}"
        data += chunk
    end = data.index(b"\r\n\r\n")
    status, *lines = bytes(data[:end]).split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    length = 0 if head or b" 304 " in status else int(headers[b"content-length"])
    while len(data) < end + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        data += chunk
    body = bytes(data[end + 4 : end + 4 + length])
    del data[: end + 4 + length]
    return status, headers, body


def test_an_answer_leaves_in_one_send(engine, live_server) -> None:
    """Status line, headers and body arrive together: the first read holds the whole answer
    (uvicorn alone sent the headers and the body in two system calls)."""
    post = add_post(engine)
    path = post_path(post)
    assert httpx.get(live_server.url + path).status_code == 200  # the page is cached now
    for target in ("/healthz", path):
        with _connect(live_server.url) as sock:
            sock.sendall(_request(target))
            first = sock.recv(1 << 20)
        top, _, body = first.partition(b"\r\n\r\n")
        assert top.startswith(b"HTTP/1.1 200 "), first[:200]
        length = next(
            int(line.split(b":", 1)[1])
            for line in top.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert len(body) == length, f"{target}: first read held {len(body)} of {length} bytes"


def test_keep_alive_head_304_and_close_on_one_connection(engine, live_server) -> None:
    post = add_post(engine)
    path = post_path(post)
    with _connect(live_server.url) as sock:
        sock.sendall(_request(path))
        status, headers, body = _read_answer(sock)
        assert status.startswith(b"HTTP/1.1 200 ") and b"<html" in body
        etag = headers[b"etag"].decode()

        sock.sendall(_request(path, method="HEAD"))
        status, head_headers, _ = _read_answer(sock, head=True)
        assert status.startswith(b"HTTP/1.1 200 ")
        assert head_headers[b"content-length"] == headers[b"content-length"]

        sock.sendall(_request(path, f"If-None-Match: {etag}"))
        status, _, body = _read_answer(sock)
        assert status.startswith(b"HTTP/1.1 304 ") and body == b""

        sock.sendall(_request("/healthz", "Connection: close"))
        status, headers, body = _read_answer(sock)
        assert status.startswith(b"HTTP/1.1 200 ") and headers[b"connection"] == b"close"
        assert body  # the held body went out before the connection closed
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        assert rest == b""  # and then the server closed it, with nothing after the answer


def test_a_streamed_answer_arrives_whole(engine, live_server) -> None:
    """The sitemap streams batch by batch (chunked): every chunk and the last one arrive."""
    for _ in range(3):
        add_post(engine)
    answer = httpx.get(live_server.url + "/sitemap.xml")
    assert answer.status_code == 200 and answer.headers["transfer-encoding"] == "chunked"
    urls = etree.fromstring(answer.content).findall(
        "{http://www.sitemaps.org/schemas/sitemap/0.9}url"
    )
    assert len(urls) >= 3


# --- the front door: answers from memory before any ASGI work --------------------------------

PER_REQUEST = {"date", "x-request-id", "server"}


def _essays(engine, settings, count: int = 3) -> list[posts.Post]:
    renderer = Renderer.for_settings(settings)
    made = []
    for n in range(1, count + 1):
        data = sample_input(
            title=f"Front Door Essay {n}", cycle=700 + n, published_at=f"2026-05-{n:02d}T15:04:00Z"
        )
        with write_session(engine) as session:
            post = posts.create_post(session, data, "Workshop", render=renderer).post  # type: ignore[arg-type]
            session.expunge(post)
            made.append(post)
    return made


def _seen(answer: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in answer.headers.items() if k not in PER_REQUEST}
    return answer.status_code, headers, answer.content


def test_the_front_door_answers_as_the_asgi_app_does(settings, engine, tmp_path) -> None:
    """Every kind of answer the front door gives (a stored essay page, a cache hit of a page, a
    feed, a streamed sitemap, a redirect, an error page; GET, HEAD, gzip, 304) is the answer
    the app gives through ASGI, header for header and byte for byte (but the date and id)."""
    essay, *_ = _essays(engine, settings)
    path = post_path(essay)
    site = {"WORKSHOP_SITE_URL": SITE_URL, "WORKSHOP_SITE_NAME": settings.site_name}
    server = start_server(settings, tmp_path, **site)
    app = create_app(settings)
    asked = [
        ("GET", path, {}),
        ("GET", path, {"Accept-Encoding": "gzip"}),
        ("HEAD", path, {}),
        ("GET", "/", {"Accept-Encoding": "gzip"}),
        ("HEAD", "/", {}),
        ("GET", "/feed.xml", {}),
        ("GET", "/sitemap.xml", {}),
        ("GET", f"/read/{essay.id}/an-old-slug", {}),
        ("GET", "/read/999999/nothing", {"Accept": "text/html"}),
    ]
    try:
        with (
            httpx.Client(base_url=server.url, follow_redirects=False) as live,
            TestClient(app, base_url=SITE_URL, follow_redirects=False) as inside,
        ):
            for method, target, headers in asked:
                # The first asking fills the response cache; the second is answered from it.
                mine = [live.request(method, target, headers=headers) for _ in range(2)][1]
                asgi = [inside.request(method, target, headers=headers) for _ in range(2)][1]
                assert _seen(mine) == _seen(asgi), (method, target, headers)
                etag = mine.headers.get("etag")
                if etag and mine.status_code == 200:
                    conditional = {**headers, "If-None-Match": etag}
                    mine = live.request(method, target, headers=conditional)
                    asgi = inside.request(method, target, headers=conditional)
                    assert mine.status_code == 304
                    assert _seen(mine) == _seen(asgi), (method, target, conditional)
    finally:
        stop_server(server)
        app.state.engine.dispose()


def test_the_front_door_answers_a_stored_page_and_a_cache_hit(settings, engine) -> None:
    """Asked directly: what memory holds it answers; what it cannot tell without waiting (a
    page nobody asked for yet, a POST, a personal request), it leaves to ASGI."""
    essay, *_ = _essays(engine, settings)
    path = post_path(essay)
    app = create_app(settings)
    host = [(b"host", b"testserver")]
    with TestClient(app, base_url=SITE_URL) as client:
        page = client.get(path, headers={"Accept-Encoding": "identity"})
        home = client.get("/", headers={"Accept-Encoding": "identity"})

        def ask(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> object:
            # On the worker's event loop, as the server asks it.
            return client.portal.call(_front_door, app, method, target, headers)

        def asked_again(target: str) -> object:
            # PostgreSQL: a worker keeps the pages it reads once its watcher of writes is
            # trusted, which it becomes shortly after the first request; ask through ASGI
            # until it is (SQLite: at once).
            for _ in range(100):
                found = ask("GET", target, host)
                if found is not None:
                    return found
                client.get(target, headers={"Accept-Encoding": "identity"})
                time.sleep(0.05)
            return None

        found = asked_again(path)
        assert found is not None
        status, headers, body = found  # type: ignore[misc]
        assert (status, body) == (200, page.content)
        assert dict(headers)[b"etag"].decode() == page.headers["etag"]
        assert b"x-request-id" in dict(headers)  # logged and counted as every answer is
        found = asked_again("/")
        assert found is not None and found[2] == home.content  # type: ignore[index]
        assert ask("GET", "/archive", host) is None  # not asked for yet: ASGI renders it
        assert ask("POST", "/", host) is None
        assert ask("GET", "/", [*host, (b"cookie", b"a=b")]) is None
    app.state.engine.dispose()


async def _front_door(app, method: str, target: str, headers: list[tuple[bytes, bytes]]) -> object:
    """What the front door answers, awaited as the server awaits it when only a read on the
    event loop can tell (PostgreSQL: a page the worker does not keep)."""
    found = app.front_door(method, target, b"", headers)
    if inspect.iscoroutine(found):
        found = await found
    return found


def test_pipelined_requests_are_answered_in_order(engine, live_server) -> None:
    """Requests sent together on one connection, some the front door answers and some it does
    not (the first /archive, a POST), come back one after another in the order asked."""
    post = add_post(engine)
    path = post_path(post)
    httpx.get(live_server.url + path)  # cached: the front door answers it from now on
    targets = [path, "/archive", path, "/healthz", path]
    with _connect(live_server.url) as sock:
        sock.sendall(b"".join(_request(t) for t in targets))
        pending = bytearray()
        answers = [_read_answer(sock, pending=pending) for _ in targets]
    for target, (status, _, body) in zip(targets, answers, strict=True):
        assert status.startswith(b"HTTP/1.1 200 "), (target, status)
        if target == path:
            assert post.title.encode() in body
        elif target == "/archive":
            assert b"Archive" in body
        else:
            assert body.startswith(b"{")


def test_http_1_0_and_percent_encoded_paths_still_answer(engine, live_server) -> None:
    """What the front door leaves to ASGI is answered there, as before."""
    post = add_post(engine)
    path = post_path(post)
    httpx.get(live_server.url + path)
    with _connect(live_server.url) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and post.title.encode() in data
    encoded = path.replace("/read/", "/rea%64/")
    answer = httpx.get(live_server.url + encoded)
    assert answer.status_code == 200 and post.title in answer.text


def test_answers_that_wait_for_a_read_keep_their_order(settings, engine, tmp_path) -> None:
    """With the response cache off a worker keeps no pages, so on PostgreSQL every stored page
    is read on the event loop while the front door waits (SQLite reads it at once). Pipelined
    with requests only ASGI answers (an old slug and an unknown id, which the read sends the
    ASGI way after all; the health check), the answers come back in the order asked, each the
    one a request of its own gets."""
    first, second, *_ = _essays(engine, settings)
    server = start_server(settings, tmp_path, WORKSHOP_RESPONSE_CACHE="false")
    asked = [
        _request(post_path(first)),
        _request(f"/read/{second.id}/an-old-slug"),
        _request(post_path(first), "Accept-Encoding: gzip"),
        _request("/read/999999/nothing", "Accept: text/html"),
        _request("/healthz"),
        _request(post_path(second), method="HEAD"),
        _request(post_path(second)),
    ]
    try:
        alone = []
        for request in asked:
            with _connect(server.url) as sock:
                sock.sendall(request)
                alone.append(_read_answer(sock, head=request.startswith(b"HEAD")))
        with _connect(server.url) as sock:
            sock.sendall(b"".join(asked))
            pending = bytearray()
            together = [
                _read_answer(sock, head=request.startswith(b"HEAD"), pending=pending)
                for request in asked
            ]
    finally:
        stop_server(server)
    statuses = [status.split(b" ")[1] for status, _, _ in together]
    assert statuses == [b"200", b"301", b"200", b"404", b"200", b"200", b"200"]
    for (status, headers, body), (status_alone, headers_alone, body_alone) in zip(
        together, alone, strict=True
    ):
        assert (status, body) == (status_alone, body_alone)
        for name in (b"content-type", b"etag", b"location", b"content-encoding"):
            assert headers.get(name) == headers_alone.get(name), name
    assert first.title.encode() in together[0][2]
    assert together[2][1][b"content-encoding"] == b"gzip"


def test_a_client_gone_while_its_answer_is_read_harms_nothing(settings, engine, tmp_path) -> None:
    """Clients that close their connection right after asking (the page still being read on
    PostgreSQL) leave the worker serving everyone else, with nothing logged as an error."""
    essay, *_ = _essays(engine, settings, count=1)
    path = post_path(essay)
    server = start_server(settings, tmp_path, WORKSHOP_RESPONSE_CACHE="false")
    try:
        for _ in range(50):
            with _connect(server.url) as sock:
                sock.sendall(_request(path) * 3)  # and gone before any answer
        answer = httpx.get(server.url + path)
        assert answer.status_code == 200 and essay.title in answer.text
    finally:
        stop_server(server)
    logged = server.log.read_text()
    assert "Traceback" not in logged and '"level": "error"' not in logged


def test_an_idle_connection_is_closed_and_a_busy_one_is_kept(settings, engine, tmp_path) -> None:
    """The keep-alive timeout counts from a connection's last answer (the front door's or the
    ASGI way's): one that keeps asking stays open well past it; one that goes quiet is closed."""
    path = post_path(add_post(engine))
    server = start_server(settings, tmp_path, WORKSHOP_KEEP_ALIVE_SECONDS="2")
    try:
        with _connect(server.url) as quiet, _connect(server.url) as busy:
            quiet.sendall(_request(path))
            assert _read_answer(quiet)[0].startswith(b"HTTP/1.1 200 ")
            began, asked = time.monotonic(), 0
            while time.monotonic() - began < 5:  # two and a half timeouts, asking every 50 ms
                busy.sendall(_request(path if asked % 2 else "/healthz"))
                assert _read_answer(busy)[0].startswith(b"HTTP/1.1 200 ")
                asked += 1
                time.sleep(0.05)
            assert quiet.recv(1) == b""  # closed by the server while idle
            assert busy.recv(1) == b""  # and this one too, once it stopped asking
    finally:
        stop_server(server)


def test_the_front_door_splits_a_target_as_httptools_does() -> None:
    import httptools

    from app.serving import _split_target

    for target in (b"/", b"/a?b=1", b"/a?", b"//x/y", b"/a?b?c", b"/a;b?c=d&e", b"/r%20x"):
        url = httptools.parse_url(target)
        assert _split_target(target) == (url.path, url.query or b""), target
    for other in (b"http://example.com/a", b"*", b"/a#b"):  # left to uvicorn
        assert _split_target(other) == (None, b"")


def test_answers_at_the_front_door_carry_the_current_date(engine, live_server) -> None:
    """The date header's line is made once per second (`_lines_of`), never kept past it."""
    from email.utils import parsedate_to_datetime

    path = post_path(add_post(engine))
    httpx.get(live_server.url + path)  # kept now: the next ones are the front door's
    first = httpx.get(live_server.url + path).headers["date"]
    time.sleep(1.5)
    second = httpx.get(live_server.url + path).headers["date"]
    assert parsedate_to_datetime(second) > parsedate_to_datetime(first)


# --- repeats: header lines the front door took before, after a plain line, are not parsed -----


def _ids_and_answers(sock: socket.socket, request: bytes, times: int) -> list[Answer]:
    answers = []
    for _ in range(times):
        sock.sendall(request)
        answers.append(_read_answer(sock, head=request.startswith(b"HEAD")))
    return answers


def _same_but_date_and_id(answers: list[Answer]) -> None:
    def seen(answer: Answer) -> Answer:
        status, headers, body = answer
        kept = {k: v for k, v in headers.items() if k.decode() not in PER_REQUEST}
        return status, kept, body

    assert [seen(answer) for answer in answers[1:]] == [seen(answers[0])] * (len(answers) - 1)
    ids = {answer[1][b"x-request-id"] for answer in answers}
    assert len(ids) == len(answers)  # each repeat is a request of its own, with its own id


def test_a_repeated_request_is_answered_afresh_each_time(settings, engine, tmp_path) -> None:
    """The same bytes asked again and again on one connection (a stored page, a cache hit and
    its 304, HEAD) get the answer the first asking got, each with its own id, each logged; and
    after an edit and a delete, the same bytes get the new page and then the 410, never the
    page they got before."""
    essay, *_ = _essays(engine, settings, count=1)
    path = post_path(essay)
    server = start_server(settings, tmp_path)
    try:
        httpx.get(server.url + "/")  # cached: the front door answers it from now on
        home_etag = httpx.get(server.url + "/").headers["etag"]
        asked = [
            _request(path),
            _request(path, "Accept-Encoding: gzip"),
            _request(path, method="HEAD"),
            _request("/"),
            _request("/", f"If-None-Match: {home_etag}"),
        ]
        with _connect(server.url) as sock:
            for request in asked:  # the first asking fills the cache, the rest are hits
                _same_but_date_and_id(_ids_and_answers(sock, request, 5)[1:])
            status, _, body = _ids_and_answers(sock, asked[0], 1)[0]
            assert status.startswith(b"HTTP/1.1 200 ") and essay.title.encode() in body

            with write_session(engine) as session:
                current = posts.load_views(session, [posts.get_post(session, essay.id)])[0]
                edited = current.to_input().model_copy(update={"body": "Breadth is *gone*."})
                posts.update_post(session, essay.id, edited, "Workshop")
            for request in (asked[0], asked[0]):
                status, _, body = _ids_and_answers(sock, request, 1)[0]
                assert status.startswith(b"HTTP/1.1 200 ") and b"<em>gone</em>" in body
            status, _, _ = _ids_and_answers(sock, asked[4], 1)[0]
            assert status.startswith(b"HTTP/1.1 200 ")  # the front page changed: no 304

            with write_session(engine) as session:
                posts.delete_post(session, essay.id)  # type: ignore[arg-type]
            for _ in range(2):
                status, _, _ = _ids_and_answers(sock, asked[0], 1)[0]
                assert status.startswith(b"HTTP/1.1 410 ")
    finally:
        stop_server(server)
    logged = [json.loads(line) for line in server.log.read_text().splitlines() if "{" in line]
    home_304s = [e for e in logged if e.get("path") == "/" and e.get("status") == 304]
    assert len(home_304s) == 5  # every repeat is in the request log


def test_repeats_of_pages_read_on_the_event_loop(settings, engine, tmp_path) -> None:
    """With the response cache off, a PostgreSQL worker reads every stored page on the event
    loop: a repeat hands the front door's pending read to the parse of its bytes, which awaits
    it (SQLite reads at once). Repeats of an old slug and an unknown id, which the read sends
    the ASGI way after all, get the redirect and the error page each time."""
    first, second, *_ = _essays(engine, settings, count=2)
    server = start_server(settings, tmp_path, WORKSHOP_RESPONSE_CACHE="false")
    asked = {
        _request(post_path(first)): b"200",
        _request(f"/read/{second.id}/an-old-slug"): b"301",
        _request("/read/999999/nothing", "Accept: text/html"): b"404",
        _request(post_path(second), method="HEAD"): b"200",
    }
    try:
        with _connect(server.url) as sock:
            for request, status in asked.items():
                answers = _ids_and_answers(sock, request, 3)
                assert [a[0].split(b" ")[1] for a in answers] == [status] * 3, request
                _same_but_date_and_id(answers)
    finally:
        stop_server(server)


def test_a_request_split_over_reads_or_sent_with_another_is_parsed(engine, live_server) -> None:
    """Only a whole request read alone is taken as a repeat: the same bytes in two reads, or
    two requests in one read, are parsed, and answered as asked."""
    post = add_post(engine)
    request = _request(post_path(post))
    with _connect(live_server.url) as sock:
        first = _ids_and_answers(sock, request, 3)[1:]  # cached, then kept as a repeat
        sock.sendall(request[:10])
        time.sleep(0.05)  # the server reads the start alone
        sock.sendall(request[10:])
        split = _read_answer(sock)
        sock.sendall(request + _request("/healthz"))
        pending = bytearray()
        together = [_read_answer(sock, pending=pending) for _ in range(2)]
        again = _ids_and_answers(sock, request, 1)
    _same_but_date_and_id([*first, split, together[0], *again])
    assert together[1][0].startswith(b"HTTP/1.1 200 ") and together[1][2].startswith(b"{")


def test_repeats_read_only_plain_request_lines() -> None:
    """A known rest after a plain request line is the question its line gives; any other line
    (method, version, spacing, a percent sign, a fragment, a control character) is not read
    here, and goes to the parse."""
    from app.serving import Repeats, _size

    repeats, headers = Repeats(), [(b"host", b"a")]
    rest = b"Host: a\r\n\r\n"
    repeats.note(b"GET /x HTTP/1.1\r\n" + rest, headers)
    plain = b"GET /read/7/a-b_c.d~e HTTP/1.1\r\n" + rest
    assert repeats.get(plain) == ("GET", "/read/7/a-b_c.d~e", b"", headers)
    query = b"HEAD /search?q=a+b&page=2? HTTP/1.1\r\n" + rest
    assert repeats.get(query) == ("HEAD", "/search", b"q=a+b&page=2?", headers)
    assert repeats.get(b"GET /? HTTP/1.1\r\n" + rest) == ("GET", "/", b"", headers)
    for line in [
        b"POST / HTTP/1.1",
        b"get / HTTP/1.1",
        b"GET / HTTP/1.0",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"GET /%2e%2e/ HTTP/1.1",
        b"GET /a#b HTTP/1.1",
        b"GET /a\tb HTTP/1.1",
        b"GET http://example.com/ HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GET /\xc3\xa9 HTTP/1.1",
        b"GET / HTTP/1.1\n",
    ]:
        assert repeats.get(line + b"\r\n" + rest) is None, line
    assert repeats.get(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n") is None  # another rest
    assert repeats.get(b"GET / HTTP/1.1\r\n" + rest + b"GET") is None  # more after it
    repeats.note(b"GET / HTTP/1.0\r\nHost: c\r\n\r\n", headers)  # not a plain line: not kept
    repeats.note(b"GET / HTTP/1.1\nHost: d\r\n\r\n", headers)
    assert repeats.bytes == _size(rest, 1)


def test_repeats_are_bounded() -> None:
    from app.serving import Repeats, _size

    one = _size(b"Host: 00000\r\n\r\n", 1)
    repeats = Repeats(max_bytes=3 * one, max_head=40, max_fields=2)
    headers = [(b"host", b"a")]
    repeats.note(b"GET / HTTP/1.1\r\nHost: " + b"x" * 30 + b"\r\n\r\n", headers)  # too long
    repeats.note(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", [(b"a", b"b")] * 3)  # too many lines
    assert repeats.bytes == 0
    heads = [b"GET / HTTP/1.1\r\nHost: %05d\r\n\r\n" % n for n in range(4)]
    for head in heads[:3]:
        repeats.note(head, headers)
        repeats.note(head.replace(b"GET /", b"HEAD /x"), headers)  # the same rest: kept once
    assert repeats.bytes == 3 * one and repeats.get(heads[2]) == ("GET", "/", b"", headers)
    repeats.note(heads[3], headers)  # full: emptied, then kept
    kept = [repeats.get(head) is not None for head in heads]
    assert kept == [False, False, False, True] and repeats.bytes == one


class _Wire:
    """An asyncio transport that keeps what is written to it, for the protocol in process."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.sent += chunk

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _asked_in_process(
    app, requests: list[bytes], fail_on: int | None = None, unanswered: int | None = None
) -> dict:
    """`requests` sent one after another on one connection of the server's protocol, in process:
    each answer, whether its bytes were parsed, and every question put to the front door (the
    `fail_on`th raising, as a bug in it would). From request number `unanswered` (0-based) on,
    no answer is awaited. The worker's `Repeats` start empty."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from app import serving
    from app.serving import OneSendHttpProtocol

    serving.REPEATS = serving.Repeats()

    config = uvicorn.Config(app, http=OneSendHttpProtocol, lifespan="off", log_level="warning")
    config.load()
    protocol = OneSendHttpProtocol(config, ServerState(), {})
    wire = _Wire()
    protocol.connection_made(wire)  # type: ignore[arg-type]
    front, asked = protocol._front, []
    assert front is not None

    def counted(*question):
        method, path, query, headers = question
        asked.append((method, path, query, list(headers)))  # as asked: trailers come later
        if len(asked) == fail_on:
            raise RuntimeError("the front door failed")
        return front(*question)

    protocol._front = counted
    answers, parsed = [], []
    for n, request in enumerate(requests):
        protocol._begun, before = -1, len(wire.sent)  # every parse counts messages from 0
        done = protocol.server_state.total_requests + 1
        protocol.data_received(request)
        while protocol.server_state.total_requests < done:
            if unanswered is not None and n >= unanswered:
                await asyncio.sleep(0.05)
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.005)  # the held write goes out at the end of the loop's step
        parsed.append(protocol._begun != -1)
        answers.append(bytes(wire.sent[before:]))
    protocol.connection_lost(None)
    return {"answers": answers, "parsed": parsed, "asked": asked}


def test_a_crawler_is_parsed_once(settings, engine) -> None:
    """In process: requests for other pages with the same header lines (a crawler, a reader
    browsing) are answered without parsing once the first is, and ask the front door what the
    parse would; another header line, or a line `Repeats` does not read, is parsed; each gets
    its own page."""
    essays = _essays(engine, settings, count=3)
    paths = [post_path(essay) for essay in essays]
    requests = [
        _request(paths[0]),
        _request(paths[1]),
        _request(paths[2], method="HEAD"),
        _request(paths[2], "Accept-Encoding: gzip"),
        _request(paths[1], "Accept-Encoding: gzip"),
        _request(paths[0]).replace(b"HTTP/1.1", b"HTTP/1.0"),  # a known rest, another line
    ]
    app = create_app(settings)
    with TestClient(app, base_url=SITE_URL) as client:
        # Once to have every page read (a page PostgreSQL must read first is awaited, and the
        # parse of its bytes awaits it), then again with `Repeats` empty.
        client.portal.call(_asked_in_process, app, requests)
        seen = client.portal.call(_asked_in_process, app, requests)
    app.state.engine.dispose()
    assert seen["parsed"] == [True, False, False, True, False, True]
    host, gzip = [(b"host", b"127.0.0.1")], [(b"accept-encoding", b"gzip")]
    assert seen["asked"] == [  # HTTP/1.0 is not the front door's
        ("GET", paths[0], b"", host),
        ("GET", paths[1], b"", host),
        ("HEAD", paths[2], b"", host),
        ("GET", paths[2], b"", host + gzip),
        ("GET", paths[1], b"", host + gzip),
    ]
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in seen["answers"])
    for n, essay in [(0, essays[0]), (1, essays[1]), (5, essays[0])]:
        assert b"<title>" + essay.title.encode() in seen["answers"][n]
    assert seen["answers"][2].endswith(b"\r\n\r\n")  # HEAD: no body
    assert b"content-encoding: gzip" in seen["answers"][4]


def test_a_body_or_trailers_are_never_taken_as_known_header_lines(settings, engine) -> None:
    """In process: a chunked request's trailers are not header lines, so its head is not kept
    (another request with the same bytes after its line is parsed too); and after trailers
    that close the connection, the parser reads nothing more, and neither does `Repeats`."""
    first, second = (post_path(essay) for essay in _essays(engine, settings, count=2))
    chunked = "Transfer-Encoding: chunked\r\n\r\n0\r\nAccept-Encoding: gzip"
    closing = "Transfer-Encoding: chunked\r\n\r\n0\r\nConnection: close"
    requests = [
        _request(first, chunked),
        _request(second, chunked),
        _request(first),  # kept
        _request(second, closing),
        _request(second),  # known, but the parser reads no more
    ]
    app = create_app(settings)
    with TestClient(app, base_url=SITE_URL) as client:
        seen = client.portal.call(_asked_in_process, app, requests, None, 4)
    app.state.engine.dispose()
    assert seen["parsed"] == [True, True, True, True, True]
    assert [question[3] for question in seen["asked"][:2]] == [
        [(b"host", b"127.0.0.1"), (b"transfer-encoding", b"chunked")]
    ] * 2  # no trailer among them: identity pages
    assert [answer[:15] for answer in seen["answers"]] == [b"HTTP/1.1 200 OK"] * 4 + [b""]
    assert not any(b"content-encoding: gzip" in answer for answer in seen["answers"])


def test_a_repeat_is_not_parsed_and_asks_the_front_door_once(settings, engine) -> None:
    """In process: the same request head again is answered without parsing it; every request,
    parsed or not, asks the front door once (a repeat whose answer must be awaited, or goes the
    ASGI way, hands what it was told to the parse); after an edit the same bytes get the new
    page; a front door that raises on a repeat is asked once, and the ASGI way answers."""
    essay, *_ = _essays(engine, settings, count=1)
    request = _request(post_path(essay))
    app = create_app(settings)
    with TestClient(app, base_url=SITE_URL) as client:
        seen = client.portal.call(_asked_in_process, app, [request] * 6)
        assert len(seen["asked"]) == 6 and seen["parsed"][0]
        assert not all(seen["parsed"][1:])  # repeats, once the front door answered at once
        for answer in seen["answers"]:
            assert answer.startswith(b"HTTP/1.1 200 ") and essay.title.encode() in answer

        with write_session(engine) as session:
            current = posts.load_views(session, [posts.get_post(session, essay.id)])[0]
            edited = current.to_input().model_copy(update={"body": "Breadth is *gone*."})
            posts.update_post(session, essay.id, edited, "Workshop")
        seen = client.portal.call(_asked_in_process, app, [request] * 4, 3)
        assert len(seen["asked"]) == 4  # the third raised, and was not asked again
        assert all(b"<em>gone</em>" in answer for answer in seen["answers"])
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in seen["answers"])
    app.state.engine.dispose()
