"""The API's output documents (the input, PostIn, lives in app/models.py) and problem schema."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.config import Settings
from app.posts import PostView
from app.urls import permalink


class MindOut(BaseModel):
    name: str = Field(examples=["Macro"])
    confidence: float = Field(ge=0, le=1, examples=[0.25])


class DebateOut(BaseModel):
    outcome: str = Field(examples=["split"])
    conviction: float | None = Field(ge=0, le=1, examples=[0.42])
    minds: list[MindOut] = Field(description="In the order the engine sent them.")


class StoryOut(BaseModel):
    title: str = Field(examples=["Narrow Leadership"])
    slug: str = Field(
        description="The story's page is /stories/{slug}.", examples=["narrow-leadership"]
    )
    status: str = Field(
        description="The story's status at this post's cycle.", examples=["developing"]
    )


class PostOut(BaseModel):
    """An essay as the API returns it."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 812,
                "slug": "breadth-is-thinning-under-a-calm-index",
                "url": "https://workshop.example/read/812/breadth-is-thinning-under-a-calm-index",
                "title": "Breadth Is Thinning Under a Calm Index",
                "body": "The minds disagreed about *why* the index held up...",
                "author": "Workshop",
                "published_at": "2026-04-05T15:04:00Z",
                "updated_at": "2026-04-05T15:04:02.318000Z",
                "cycle": 812,
                "status": "published",
                "debate": {
                    "outcome": "split",
                    "conviction": 0.42,
                    "minds": [
                        {"name": "Macro", "confidence": 0.35},
                        {"name": "Flow", "confidence": 0.6},
                    ],
                },
                "tags": ["QQQ", "breadth"],
                "stories": [
                    {
                        "title": "Narrow Leadership",
                        "slug": "narrow-leadership",
                        "status": "developing",
                    }
                ],
                "version": 1,
            }
        }
    )

    id: int = Field(description="The permalink's number; stable forever.")
    slug: str = Field(
        description="Derived from the title; follows title edits (old URLs redirect)."
    )
    url: str = Field(description="The absolute permalink, /read/{id}/{slug}.")
    title: str
    body: str = Field(description="Markdown, as sent.")
    author: str
    published_at: datetime = Field(description="UTC instant.")
    updated_at: datetime = Field(description="UTC instant of the last change.")
    cycle: int | None = Field(description="The engine's cycle; unique among posts.")
    status: Literal["published", "deleted"]
    debate: DebateOut | None
    tags: list[str]
    stories: list[StoryOut]
    version: int = Field(description="Grows by one with every change; the ETag is derived from it.")


class PostPage(BaseModel):
    """One page of posts, newest first."""

    items: list[PostOut]
    next: str | None = Field(
        description="Absolute URL of the next (older) page, "
        'also sent as `Link: <...>; rel="next"`; '
        "null on the last page."
    )


def post_out(settings: Settings, view: PostView) -> PostOut:
    p = view.post
    debate = None
    if p.debate_outcome is not None:
        debate = DebateOut(
            outcome=p.debate_outcome,
            conviction=p.debate_conviction,
            minds=[MindOut(name=m.name, confidence=m.confidence) for m in view.minds],
        )
    return PostOut(
        id=p.id,  # type: ignore[arg-type]
        slug=p.slug,
        url=permalink(settings, p),
        title=p.title,
        body=p.body,
        author=p.author,
        published_at=p.published_at,
        updated_at=p.updated_at,
        cycle=p.cycle,
        status=p.status,  # type: ignore[arg-type]
        debate=debate,
        tags=[t.name for t in view.tags],
        stories=[StoryOut(title=s.title, slug=s.slug, status=status) for s, status in view.stories],
        version=p.version,
    )


# --- problems (RFC 9457) ----------------------------------------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document; "
    "400 and 422 list each offending field in `errors`.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string", "example": "Invalid request"},
        "status": {"type": "integer", "example": 422},
        "detail": {
            "type": "string",
            "example": "debate.conviction: Input should be less than or equal to 1",
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "example": "debate.conviction"},
                    "message": {
                        "type": "string",
                        "example": "Input should be less than or equal to 1",
                    },
                },
            },
        },
        "post_id": {"type": "integer", "description": "409 on a cycle: the post that has it."},
        "post_url": {"type": "string", "description": "409 on a cycle: that post's permalink."},
    },
    "additionalProperties": True,
}

_PROBLEMS: dict[int, tuple[str, dict[str, str]]] = {
    400: ("Malformed request: not JSON, invalid UTF-8, duplicate keys, bad cursor.", {}),
    401: (
        "Missing, unknown or revoked token.",
        {
            "WWW-Authenticate": 'Always `Bearer realm="workshop"`, '
            'with `error="invalid_token"` for a bad token.'
        },
    ),
    404: ("No post with this id.", {}),
    409: (
        "The cycle already has a different essay (`post_url` names it), or a request with the same "
        "Idempotency-Key is still running (retry after `Retry-After` seconds).",
        {"Retry-After": "Seconds to wait (idempotency key in flight)."},
    ),
    410: ("The post was deleted (unpublished).", {}),
    412: (
        "If-Match no longer matches the post's ETag: it changed in between. Nothing was changed.",
        {},
    ),
    413: ("The body is over the size limit (1 MiB by default).", {}),
    415: ("The body is not sent as application/json.", {}),
    422: (
        "Validation failed (each field in `errors`), "
        "or an Idempotency-Key reused for another request.",
        {},
    ),
    429: (
        "Too many failed authentications from this client.",
        {"Retry-After": "Seconds until this client may try again."},
    ),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _PROBLEMS[status]
        out[status] = {
            "description": description,
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        if headers:
            out[status]["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in headers.items()
            }
    return out
