"""The engine's ingest API under /api/v1: thin handlers over the post service.

Writes need a bearer token and accept an Idempotency-Key; reads are public and conditional
(ETag / If-None-Match). Every refusal is an RFC 9457 problem (see app/problems.py).
"""

import base64
import binascii
import gzip
import hashlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from sqlmodel import Session

from app import idempotency, posts
from app.auth import Caller
from app.config import Settings
from app.db import SessionDep, write_session
from app.errors import CycleConflict, WorkshopError
from app.etags import gzip_etag, matches
from app.idempotency import StoredResponse
from app.models import Post, PostIn
from app.routes.conditional import VARY, accepts_gzip, not_modified
from app.schemas import PostOut, PostPage, post_out, problem_responses
from app.urls import permalink

MAX_LIMIT = 100

router = APIRouter(prefix="/api/v1", tags=["posts"])

PostId = Annotated[
    int, Path(ge=1, le=2**31 - 1, description="The post's id (its permalink number).")
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1000,
        description="Only change the post if its ETag still matches, in either form "
        "(else 412 and nothing changes).",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=idempotency.KEY_PATTERN,
        description="Up to 255 visible ASCII characters (a UUID is ideal). The same key with "
        "the same request replays the first answer (with `Idempotent-Replayed: true`); "
        "with a different request "
        "-> 422; while the first is still running -> 409. Keys are per token and kept 24 hours.",
        examples=["5f0c2e8e-3b1a-4d2a-9a53-2f1f4bfb7c11"],
    ),
]

_POST_HEADERS = {
    "ETag": {
        "description": 'The post\'s current version: `"p{id}v{version}"`, or '
        '`"p{id}v{version}-gzip"` on the gzipped answer (each representation has its own '
        "strong tag). If-Match and If-None-Match take either tag of the current version.",
        "schema": {"type": "string"},
    },
    "Location": {"description": "The post's absolute permalink.", "schema": {"type": "string"}},
}
_LINKS = {
    "GetPost": {"operationId": "getPost", "parameters": {"post_id": "$response.body#/id"}},
    "ReplacePost": {"operationId": "replacePost", "parameters": {"post_id": "$response.body#/id"}},
    "DeletePost": {"operationId": "deletePost", "parameters": {"post_id": "$response.body#/id"}},
}


def _post_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "model": PostOut,
        "headers": _POST_HEADERS,
        "links": _LINKS,
    }


@router.post(
    "/posts",
    operation_id="createPost",
    summary="Publish an essay",
    status_code=201,
    response_model=PostOut,
    responses={
        201: _post_response("Created. `Location` is the permalink."),
        200: _post_response("A retry: this cycle already has this essay; nothing was changed."),
        **problem_responses(400, 401, 409, 413, 415, 422, 429),
    },
)
def create_post(
    data: PostIn, request: Request, caller: Caller, idempotency_key: IdempotencyKey = None
) -> Response:
    """Publish an essay. Safe to retry: the same `cycle` with the same content answers 200 with
    the existing post; the same cycle with other content is 409 naming the existing post.
    A post without a cycle is deduplicated only through `Idempotency-Key`."""
    settings: Settings = request.app.state.settings

    def action(completion: idempotency.Completion) -> StoredResponse:
        written = _Written(completion, settings, 201)
        with write_session(request.app.state.engine) as session:
            try:
                result = posts.create_post(
                    session,
                    data,
                    settings.author,
                    render=request.app.state.renderer,
                    before_commit=written.record,
                )
            except CycleConflict as exc:
                raise _conflict_with_url(session, settings, exc) from None
            if result.created:
                return written.answer()
            return _answer(session, settings, result.post, 200)

    return _run(request, caller, idempotency_key, None, data, action)


@router.put(
    "/posts/{post_id}",
    operation_id="replacePost",
    summary="Replace an essay",
    response_model=PostOut,
    responses={
        200: _post_response("Replaced (or unchanged, for an identical body)."),
        **problem_responses(400, 401, 404, 409, 412, 413, 415, 422, 429),
    },
)
def replace_post(
    post_id: PostId,
    data: PostIn,
    request: Request,
    caller: Caller,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Replace every field of a post; the old version is kept as a revision. The slug follows the
    new title and the old URL redirects to the new one. An omitted `published_at` keeps the
    current one. A deleted post is published again."""
    settings: Settings = request.app.state.settings

    def action(completion: idempotency.Completion) -> StoredResponse:
        written = _Written(completion, settings, 200)
        with write_session(request.app.state.engine) as session:
            try:
                result = posts.update_post(
                    session,
                    post_id,
                    data,
                    settings.author,
                    if_match=if_match,
                    render=request.app.state.renderer,
                    before_commit=written.record,
                )
            except CycleConflict as exc:
                raise _conflict_with_url(session, settings, exc) from None
            if result.changed:
                return written.answer()
            return _answer(session, settings, result.post, 200)

    return _run(request, caller, idempotency_key, if_match, data, action)


@router.delete(
    "/posts/{post_id}",
    operation_id="deletePost",
    summary="Unpublish an essay",
    status_code=204,
    responses={
        204: {"description": "Unpublished (or already was). The post and its revisions are kept."},
        **problem_responses(401, 404, 412, 413, 422, 429),
    },
)
def delete_post(
    post_id: PostId,
    request: Request,
    caller: Caller,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Unpublish: the page answers 410 and the post leaves lists, feeds and the sitemap. Nothing
    is erased; `workshop post revisions ID` / `workshop post restore ID REV` bring it back."""

    def action(completion: idempotency.Completion) -> StoredResponse:
        answer = StoredResponse(204, "", None)
        with write_session(request.app.state.engine) as session:
            posts.delete_post(
                session,
                post_id,
                if_match=if_match,
                before_commit=lambda s, _post: completion.record(s, answer),
                render=request.app.state.renderer,
            )
        return answer

    return _run(request, caller, idempotency_key, if_match, None, action)


@router.get(
    "/posts",
    operation_id="listPosts",
    summary="List published essays, newest first",
    response_model=PostPage,
    responses={
        200: {
            "description": "A page of posts.",
            "headers": {
                "Link": {
                    "description": '`<url>; rel="next"` when there are older posts.',
                    "schema": {"type": "string"},
                },
                "ETag": {"description": "Of this page.", "schema": {"type": "string"}},
            },
        },
        304: {"description": "Not modified (If-None-Match)."},
        **problem_responses(400, 422),
    },
)
def list_posts(
    request: Request,
    session: SessionDep,
    limit: Annotated[
        int | None,
        Query(
            ge=1, le=2**31, description=f"Posts per page; above {MAX_LIMIT} counts as {MAX_LIMIT}."
        ),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="Opaque: copy it from the previous page's `next`."),
    ] = None,
) -> Response:
    """Published essays, newest first, by keyset cursor (deep pages cost the same as the first)."""
    settings: Settings = request.app.state.settings
    size = min(limit or settings.page_size, MAX_LIMIT)
    before = _decode_cursor(cursor) if cursor else None
    found = posts.list_published(session, size + 1, before)
    page, more = found[:size], len(found) > size
    next_url = None
    if more:
        last = page[-1]
        query = urlencode({"limit": size, "cursor": _encode_cursor(last)})
        next_url = f"{settings.site_url}/api/v1/posts?{query}"
    items = [post_out(settings, v) for v in posts.load_views(session, page)]
    body = PostPage(items=items, next=next_url).model_dump_json()
    etag = 'W/"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if next_url:
        headers["Link"] = f'<{next_url}>; rel="next"'
    if _matches_none(request, etag):
        return not_modified(headers)
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/posts/{post_id}",
    operation_id="getPost",
    summary="Get one essay",
    response_model=PostOut,
    responses={
        200: {"description": "The post.", "headers": _POST_HEADERS},
        304: {
            "description": "Not modified: If-None-Match names the current version, in either "
            "form. `ETag` is the tag of the encoding asked for.",
            "headers": _POST_HEADERS,
        },
        **problem_responses(404, 410, 422),
    },
)
def get_post(post_id: PostId, request: Request, session: SessionDep) -> Response:
    """One published post with its debate, tags and stories. `ETag` serves If-Match on writes."""
    settings: Settings = request.app.state.settings
    post = posts.get_post(session, post_id)
    etag = _etag_for(request, posts.etag(post))
    headers = {"ETag": etag, "Location": permalink(settings, post), "Cache-Control": "no-cache"}
    if _matches_none(request, etag):
        return not_modified(headers)
    body = post_out(settings, posts.load_views(session, [post])[0]).model_dump_json()
    return _post_json(request, body, 200, headers)


# --- helpers --------------------------------------------------------------------------------------


def _run(
    request: Request,
    caller: Caller,
    key: str | None,
    if_match: str | None,
    data: PostIn | None,
    action: Any,
) -> Response:
    request_hash, hash_as_sent = idempotency.fingerprints(
        request.method, request.url.path, if_match, data
    )
    answer, replayed = idempotency.run(
        request.app.state.engine,
        request.app.state.settings,
        f"token:{caller.token_id}",
        key,
        request_hash,
        action,
        hash_as_sent,
    )
    if answer.status == 204:
        return Response(
            status_code=204, headers={"Idempotent-Replayed": "true"} if replayed else None
        )
    headers = {"ETag": _etag_for(request, _etag_of(answer.body))}
    if answer.location:
        headers["Location"] = answer.location
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _post_json(request, answer.body, answer.status, headers)


class _Written:
    """The answer to a write, made in its transaction just before it commits (and kept with
    its Idempotency-Key, if any): the version this request wrote. Read after the commit, it
    could already hold a concurrent writer's edit and ETag (SQLite: 6 of 24 racing PUTs), and
    the writer's next If-Match would then pass over a change it never saw."""

    def __init__(self, completion: idempotency.Completion, settings: Settings, status: int):
        self._completion, self._settings, self._status = completion, settings, status
        self._answer: StoredResponse | None = None

    def record(self, session: Session, post: Post) -> None:
        self._answer = _answer(session, self._settings, post, self._status)
        self._completion.record(session, self._answer)

    def answer(self) -> StoredResponse:
        assert self._answer is not None, "the write committed without its before_commit hook"
        return self._answer


def _answer(session: Session, settings: Settings, post: Post, status: int) -> StoredResponse:
    body = post_out(settings, posts.load_views(session, [post])[0]).model_dump_json()
    return StoredResponse(status, body, permalink(settings, post))


def _etag_of(body: str) -> str:
    doc = json.loads(body)
    return f'"p{doc["id"]}v{doc["version"]}"'  # the same form as posts.etag()


def _etag_for(request: Request, etag: str) -> str:
    """The post's ETag in the form of the representation this request gets (`_post_json`)."""
    # The gzip layer's test, which the response cache keys its copies by too (app/cache.py):
    # every request of one cache key gets the same representation.
    return gzip_etag(etag) if accepts_gzip(request.scope) else etag


def _post_json(request: Request, body: str, status: int, headers: dict[str, str]) -> Response:
    """A post as JSON, under the ETag `_etag_for` gave it: gzipped here for a client that
    accepts gzip, whatever its length, so that the 304 (which has no body to measure) can tell
    which tag the 200 carries. The gzip layer leaves an answer with a Content-Encoding alone,
    Vary included; it names Vary on the plain answer once that is long enough to compress."""
    content = body.encode()
    if accepts_gzip(request.scope):
        # mtime 0: one strong tag, one sequence of bytes, however often and wherever it is made.
        content = gzip.compress(content, mtime=0)
        headers = {**headers, "Content-Encoding": "gzip", "Vary": VARY}
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _conflict_with_url(session: Session, settings: Settings, exc: CycleConflict) -> CycleConflict:
    other = session.get(Post, exc.extra.get("post_id"))
    if other is None:
        return exc
    url = permalink(settings, other)
    return CycleConflict(f"{exc.detail} ({url})", post_id=other.id, post_url=url)


def _matches_none(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    return wanted is not None and matches(wanted, etag)


class InvalidCursor(WorkshopError):
    status = 400
    title = "Invalid cursor"


def _encode_cursor(post: Post) -> str:
    raw = f"{post.published_at.isoformat()}|{post.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> posts.Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.split("|")
        at, post_id = datetime.fromisoformat(at_text), int(id_text)
        if at.tzinfo is None or not 0 < post_id < 2**31:
            raise ValueError("not a cursor")
        at = at.astimezone(UTC)  # OverflowError when an offset pushes it past year 1..9999
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(
            "cursor is not one this API issued; copy it from a page's `next`",
            errors=[{"field": "cursor", "message": "not a cursor this API issued"}],
        ) from None
    return at, post_id
