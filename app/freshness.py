"""Conditional GET for documents derived from the whole site's content (feeds, sitemaps).

Every write bumps two rows of `site_state` in its own transaction (`posts._bump_content_version`):
the content version and the time of that change. One small query reads both, so a poll that ends
in `304 Not Modified` costs that query and nothing else; the same pair is what a response cache
keys on, because every document served here is a pure function of (path, content version).
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from sqlalchemy import select
from sqlmodel import Session

from app.models import SiteState
from app.posts import CHANGED_AT_EPOCH, CONTENT_CHANGED_AT, CONTENT_VERSION

# Bump when the rendering code changes what a document looks like, so that clients holding an
# ETag from the previous release fetch the new form after a deploy.
RENDER_REVISION = 1

CACHE_CONTROL = "public, max-age=60, s-maxage=300, stale-while-revalidate=600"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How far an answer's Date may lag the clock: uvicorn makes it anew about once a second, on a
# timer of the worker's event loop.
DATE_LAG_SECONDS = 2


@dataclass(frozen=True)
class ContentState:
    version: int
    changed_at: datetime

    def etag(self, path: str, site: str) -> str:
        """Weak: the same document goes out gzipped or not (a strong tag would have to differ
        between the two). `site`: the build and the settings the document shows
        (`templating.site_fingerprint`)."""
        digest = hashlib.sha256(f"{RENDER_REVISION}:{site}:{path}".encode()).hexdigest()[:12]
        return f'W/"v{self.version}-{digest}"'

    @property
    def sendable_at(self) -> float:
        """When `Last-Modified` may be sent: never later than the answer's Date (RFC 9110
        section 8.8.2.1). The change time runs ahead of the clock while writes come faster than
        one a second (`posts._bump_content_version`), and is the current second right after
        any write."""
        return self.changed_at.timestamp() + DATE_LAG_SECONDS

    def last_modified(self, now: float) -> str | None:
        """The header's value, or None until `sendable_at`. Not the clock's time instead: a
        client holding that value could then miss a change made later in the same second; with
        no `Last-Modified` it revalidates by ETag."""
        if now < self.sendable_at:
            return None
        return format_datetime(self.changed_at, usegmt=True)


def content_state(session: Session) -> ContentState:
    """The content version and the time of the last write, in one query."""
    rows: dict[str, int] = dict(
        session.execute(
            select(SiteState.name, SiteState.value).where(  # type: ignore[call-overload]
                SiteState.name.in_([CONTENT_VERSION, CONTENT_CHANGED_AT])  # type: ignore[attr-defined]
            )
        ).all()
    )
    changed = rows.get(CONTENT_CHANGED_AT)
    # A database nobody has written to yet has no change time; the epoch is as honest as any.
    changed_at = datetime.fromtimestamp(CHANGED_AT_EPOCH + changed, UTC) if changed else _EPOCH
    return ContentState(int(rows.get(CONTENT_VERSION) or 0), changed_at)


def validators(state: ContentState, path: str, site: str, now: float) -> dict[str, str]:
    headers = {"ETag": state.etag(path, site), "Cache-Control": CACHE_CONTROL}
    last_modified = state.last_modified(now)
    if last_modified is not None:
        headers["Last-Modified"] = last_modified
    return headers


def is_fresh(headers: Mapping[str, str], state: ContentState, path: str, site: str) -> bool:
    """True when the client's copy is current (RFC 9110 §13.1: If-None-Match wins over
    If-Modified-Since; a weak comparison is right for GET)."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        ours = state.etag(path, site).removeprefix("W/")
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or ours in tags
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError, OverflowError):  # Overflow: year 10**11
            return False  # an unparseable date is ignored, as the RFC says
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return state.changed_at.replace(microsecond=0) <= since
    return False
