"""`workshop import` and `workshop export`: moving essays in the blog's export format."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from app import exportfmt, posts
from app.config import Settings
from app.db import write_session
from app.errors import WorkshopError
from app.fragments import Renderer
from app.models import STATUS_PUBLISHED, Post
from app.urls import permalink

Outcome = Literal["imported", "updated", "unchanged", "refused"]


@dataclass
class ImportResult:
    path: Path
    outcome: Outcome
    post_id: int | None = None
    message: str = ""

    def line(self) -> str:
        if self.outcome == "refused":
            return f"refused   {self.path}: {self.message}"
        return f"{self.outcome:<9} {self.path} -> post {self.post_id}"


def import_file(engine: Engine, settings: Settings, path: Path) -> ImportResult:
    """Import one file through the same service functions the ingest API uses."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ImportResult(path, "refused", message=f"cannot read the file ({exc})")
    try:
        parsed = exportfmt.parse(text)
    except exportfmt.FormatError as exc:
        return ImportResult(path, "refused", message=str(exc))
    with write_session(engine) as session:
        try:
            return _store(session, settings, path, parsed)
        except WorkshopError as exc:
            return ImportResult(path, "refused", message=exc.detail)


def _store(
    session: Session, settings: Settings, path: Path, parsed: exportfmt.ExportedPost
) -> ImportResult:
    author = settings.author
    render = Renderer.for_settings(settings)
    if parsed.post_id is None and parsed.post.cycle is None:
        # Nothing identifies the essay but its title and time: re-importing must not duplicate it.
        parsed.post_id = session.execute(
            select(col(Post.id)).where(
                col(Post.title) == parsed.post.title,
                col(Post.published_at) == parsed.post.published_at,
            )
        ).scalar()
    if parsed.post_id is not None and session.get(Post, parsed.post_id) is not None:
        result = posts.update_post(
            session, parsed.post_id, parsed.post, author, reason="import", render=render
        )
        return ImportResult(path, "updated" if result.changed else "unchanged", result.post.id)
    result = posts.create_post(session, parsed.post, author, post_id=parsed.post_id, render=render)
    return ImportResult(path, "imported" if result.created else "unchanged", result.post.id)


def expand_paths(args: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Command-line paths: a directory stands for its *.txt files, in name order."""
    found: list[Path] = []
    for arg in args:
        found.extend(sorted(arg.glob("*.txt")) if arg.is_dir() else [arg])
    return found


def count_published(engine: Engine) -> int:
    with Session(engine) as session:
        return int(
            session.execute(
                select(func.count()).select_from(Post).where(Post.status == STATUS_PUBLISHED)  # type: ignore[arg-type]
            ).scalar_one()
        )


def export_name(post: Post) -> str:
    prefix = f"cycle-{post.cycle}" if post.cycle is not None else f"post-{post.id}"
    return f"{prefix}-{post.slug}.txt"


def iter_published(engine: Engine, batch: int = 500) -> Iterator[posts.PostView]:
    """Every published essay, oldest id first, a batch at a time (bounded memory)."""
    last_id = 0
    while True:
        with Session(engine) as session:
            rows = list(
                session.execute(
                    select(Post)
                    .where(Post.status == STATUS_PUBLISHED, Post.id > last_id)  # type: ignore[arg-type, operator]
                    .order_by(Post.id)  # type: ignore[arg-type]
                    .limit(batch)
                ).scalars()
            )
            if not rows:
                return
            yield from posts.load_views(session, rows)
            last_id = rows[-1].id


def export_all(engine: Engine, settings: Settings, directory: Path) -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for view in iter_published(engine):
        path = directory / export_name(view.post)
        text = exportfmt.render(
            view.to_input(), permalink=permalink(settings, view.post), tz=settings.tz
        )
        path.write_text(text, encoding="utf-8")
        yield path
