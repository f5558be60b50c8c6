"""`workshop serve` sends each answer in one go (app/serving.py), and still speaks plain HTTP/1.1:
keep-alive, `Connection: close`, HEAD, 304 and streamed bodies, over a real socket."""

import socket
from urllib.parse import urlsplit

import httpx
from conftest import add_post
from lxml import etree

from app.urls import post_path


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _request(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


Answer = tuple[bytes, dict[bytes, bytes], bytes]


def _read_answer(sock: socket.socket, head: bool = False) -> Answer:
    """One answer with a Content-Length (or none, for HEAD and 304): status line, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-headers: {data!r}"
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status, *lines = top.split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    length = 0 if head or b" 304 " in status else int(headers[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
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
