"""ASGI middleware that vets request bodies before any route sees them.

Every request: a body over `max_body_bytes` is refused with 413 as soon as that is known
(from Content-Length, or while streaming), without reading the rest. API writes (POST, PUT,
PATCH, DELETE under /api/) with a body must also be JSON (else 415), valid UTF-8 and
well-formed JSON without duplicate keys (else 400, naming the field or the position).
Written by hand because the checks must run before FastAPI buffers and parses the body.
"""

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import PROBLEM_JSON

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodyRefused(Exception):
    def __init__(
        self, status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors = status, title, detail, errors


class BodyGate:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self._check_length(headers)
            body = await self._read(receive)
            if body is None:
                # The client left before its body was all sent (short of its Content-Length, or
                # without the last chunk): an abandoned request changes nothing, even when what
                # arrived happens to parse.
                return
            if body and scope["path"].startswith("/api/"):
                check_json(headers.get("content-type"), body)
        except BodyRefused as refused:
            await _send_problem(send, refused)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _check_length(self, headers: Headers) -> None:
        declared = headers.get("content-length")
        if declared is None:
            return
        if not declared.isdigit():
            raise BodyRefused(
                400, "Bad Content-Length", f"Content-Length {declared!r} is not a number"
            )
        if int(declared) > self.max_body_bytes:
            raise self._too_large()

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body; None when the client disconnected before it ended."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> BodyRefused:
        return BodyRefused(
            413,
            "Request body too large",
            f"the request body is over the limit of {self.max_body_bytes} bytes",
        )


def check_json(content_type: str | None, body: bytes) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise BodyRefused(
            415,
            "Unsupported media type",
            "the body must be JSON sent as Content-Type: application/json, "
            f"not {media_type or 'nothing'}",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_utf8(body, exc) from None
    try:
        json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise BodyRefused(
            400,
            "Malformed JSON",
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno} (char {exc.pos})",
            errors=[{"field": "body", "message": f"{exc.msg} at char {exc.pos}"}],
        ) from None
    except _DuplicateKey as exc:
        raise BodyRefused(
            400,
            "Malformed JSON",
            f"the key {exc.key!r} appears twice in one object",
            errors=[{"field": exc.key, "message": "duplicate key"}],
        ) from None
    except RecursionError:
        raise BodyRefused(400, "Malformed JSON", "the JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python will convert
        raise BodyRefused(400, "Malformed JSON", f"the body is not usable JSON: {exc}") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _bad_utf8(body: bytes, exc: UnicodeDecodeError) -> BodyRefused:
    """Name the field whose string holds the bad bytes, when the rest of the JSON is sound."""
    field = "body"
    try:
        doc = json.loads(body.decode("utf-8", "surrogateescape"))
        field = _path_to_bad_string(doc) or field
    except (ValueError, RecursionError):
        pass
    return BodyRefused(
        400,
        "Invalid UTF-8",
        f"{field}: the body is not valid UTF-8 "
        f"(byte 0x{body[exc.start]:02x} at offset {exc.start})",
        errors=[{"field": field, "message": "not valid UTF-8"}],
    )


def _path_to_bad_string(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        return path if any("\udc80" <= ch <= "\udcff" for ch in value) else None
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        if isinstance(key, str) and _path_to_bad_string(key) is not None:
            return f"{path}.{key!r}".lstrip(".")
        found = _path_to_bad_string(item, f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


async def _send_problem(send: Send, refused: BodyRefused) -> None:
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": refused.title,
        "status": refused.status,
        "detail": refused.detail,
    }
    if refused.errors:
        problem["errors"] = refused.errors
    payload = json.dumps(problem).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    if refused.status == 413:
        # The unread rest of the body would otherwise be parsed as the next request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
