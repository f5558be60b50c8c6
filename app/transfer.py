"""`workshop import` and `workshop export`: moving essays in the blog's export format."""

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
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
from app.models import STATUS_DELETED, STATUS_PUBLISHED, Post
from app.urls import permalink

Outcome = Literal["imported", "updated", "deleted", "unchanged", "refused"]
IMPORT_BATCH = 100  # files written in one transaction by `import_files`
READ_AHEAD = 2  # batches read ahead of the one being written


@dataclass
class ImportResult:
    path: Path
    outcome: Outcome
    post_id: int | None = None
    message: str = ""
    deleted: bool = False  # the file is marked Deleted: the essay is withdrawn (page 410)

    def line(self) -> str:
        if self.outcome == "refused":
            return f"refused   {self.path}: {self.message}"
        withdrawn = " (deleted)" if self.deleted and self.outcome != "deleted" else ""
        return f"{self.outcome:<9} {self.path} -> post {self.post_id}{withdrawn}"


def import_file(engine: Engine, settings: Settings, path: Path) -> ImportResult:
    """Import one file through the same service functions the ingest API uses."""
    return next(import_files(engine, settings, [path]))


def import_files(
    engine: Engine,
    settings: Settings,
    paths: Sequence[Path | str],
    batch_size: int = IMPORT_BATCH,
) -> Iterator[ImportResult]:
    """Import files through the same service functions the ingest API uses, `batch_size` of
    them in one transaction (`posts.Batch`: the essay pages they touch are stored and the
    content version bumped once for all of them, not once for each). A file that is refused
    undoes only its own writes. Results come in the files' order once their batch has
    committed: a file reported imported is stored.

    Reading, parsing and the Markdown work (`_read_batch`) need no database: with more than one
    batch, a worker process does them for the next batches while this one writes (at most
    `READ_AHEAD` batches ahead, so memory stays bounded)."""
    # Each batch's Paths are made when it is read: the list holds strings (see `expand_paths`).
    chunks = (
        [Path(p) for p in paths[start : start + batch_size]]
        for start in range(0, len(paths), batch_size)
    )
    if len(paths) <= batch_size:
        for chunk in chunks:
            yield from _write_batch(engine, settings, _read_batch(chunk))
        return
    spawn = multiprocessing.get_context("spawn")  # a fresh process: none of this one's connections
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        ahead: deque[Future[list[Read]]] = deque()
        for chunk in chunks:
            ahead.append(pool.submit(_read_batch, chunk))
            if len(ahead) > READ_AHEAD:
                yield from _write_batch(engine, settings, ahead.popleft().result())
        while ahead:
            yield from _write_batch(engine, settings, ahead.popleft().result())


# A file read for import: refused already, or parsed with its Markdown rendered.
Read = ImportResult | tuple[Path, exportfmt.ExportedPost, posts.Prepared]


def _read_batch(paths: Sequence[Path]) -> list[Read]:
    """The database-free part of importing these files (see `import_files`)."""
    read: list[Read] = []
    for path in paths:
        try:
            parsed = exportfmt.parse(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            read.append(ImportResult(path, "refused", message=f"cannot read the file ({exc})"))
        except exportfmt.FormatError as exc:
            read.append(ImportResult(path, "refused", message=str(exc)))
        else:
            read.append((path, parsed, posts.prepare([parsed.post])[0]))
    return read


def _write_batch(engine: Engine, settings: Settings, read: list[Read]) -> list[ImportResult]:
    """Store the files read, in one transaction; their results in the same order."""
    results = [r if isinstance(r, ImportResult) else None for r in read]
    if any(result is None for result in results):
        with write_session(engine) as session:
            batch = posts.Batch(Renderer.for_settings(settings))
            for i, item in enumerate(read):
                if isinstance(item, ImportResult):
                    continue
                path, parsed, prepared = item
                try:
                    with batch.item(session):
                        results[i] = _store(session, settings, path, parsed, batch, prepared)
                except WorkshopError as exc:
                    results[i] = ImportResult(path, "refused", message=exc.detail)
            posts.commit_batch(session, batch)
    return [r for r in results if r is not None]


def _store(
    session: Session,
    settings: Settings,
    path: Path,
    parsed: exportfmt.ExportedPost,
    batch: posts.Batch,
    prepared: posts.Prepared,
) -> ImportResult:
    author = settings.author
    if parsed.post_id is None and parsed.post.cycle is None:
        # Nothing identifies the essay but its title and time: re-importing must not duplicate it.
        parsed.post_id = session.execute(
            select(col(Post.id)).where(
                col(Post.title) == parsed.post.title,
                col(Post.published_at) == parsed.post.published_at,
            )
        ).scalar()
    existing = session.get(Post, parsed.post_id) if parsed.post_id is not None else None
    if parsed.deleted_at is not None:
        return _store_deleted(session, author, path, parsed, existing, batch, prepared)
    result = _write(session, author, parsed, existing, batch, prepared)
    if existing is not None:
        return ImportResult(path, "updated" if result.changed else "unchanged", result.post.id)
    return ImportResult(path, "imported" if result.created else "unchanged", result.post.id)


def _write(
    session: Session,
    author: str,
    parsed: exportfmt.ExportedPost,
    existing: Post | None,
    batch: posts.Batch,
    prepared: posts.Prepared,
) -> posts.SaveResult:
    """The file's essay written over the post with its id (`existing`), or created."""
    if existing is not None and parsed.post_id is not None:
        return posts.update_post(
            session,
            parsed.post_id,
            parsed.post,
            author,
            reason="import",
            batch=batch,
            prepared=prepared,
        )
    return posts.create_post(
        session, parsed.post, author, post_id=parsed.post_id, batch=batch, prepared=prepared
    )


def _store_deleted(
    session: Session,
    author: str,
    path: Path,
    parsed: exportfmt.ExportedPost,
    existing: Post | None,
    batch: posts.Batch,
    prepared: posts.Prepared,
) -> ImportResult:
    """A file marked Deleted: the essay ends withdrawn with its id and last content, so its page
    stays a 410 and its id is never given to another essay. Written as any edit is: created or
    updated, then deleted at the exported time."""
    assert parsed.post_id is not None  # parse() refuses a Deleted line without a permanent link
    if (
        existing is not None
        and existing.status == STATUS_DELETED
        and posts.same_content(existing, parsed.post, author)
    ):
        return ImportResult(path, "unchanged", existing.id, deleted=True)
    was_deleted = existing is not None and existing.status == STATUS_DELETED
    result = _write(session, author, parsed, existing, batch, prepared)
    post_id = result.post.id
    assert post_id is not None
    posts.delete_post(session, post_id, batch=batch, deleted_at=parsed.deleted_at)
    outcome: Outcome = "imported" if result.created else "updated" if was_deleted else "deleted"
    return ImportResult(path, outcome, post_id, deleted=True)


def expand_paths(args: tuple[Path, ...] | list[Path]) -> list[str]:
    """Command-line paths: a directory stands for its *.txt files, in name order. Held as
    strings: 100,000 files held 57.8 MB as `Path` objects, 18.0 MB as strings."""
    found: list[str] = []
    for arg in args:
        found.extend(sorted(str(p) for p in arg.glob("*.txt")) if arg.is_dir() else [str(arg)])
    return found


def count_published(engine: Engine) -> int:
    with Session(engine) as session:
        return int(
            session.execute(
                select(func.count()).select_from(Post).where(Post.status == STATUS_PUBLISHED)  # type: ignore[arg-type]
            ).scalar_one()
        )


def count_essays(engine: Engine) -> int:
    """What `export_all` writes: every essay, deleted ones included."""
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(Post)).scalar_one())


def export_name(post: Post) -> str:
    prefix = f"cycle-{post.cycle}" if post.cycle is not None else f"post-{post.id}"
    return f"{prefix}-{post.slug}.txt"


def iter_essays(engine: Engine, batch: int = 500) -> Iterator[posts.PostView]:
    """Every essay, deleted ones included, oldest id first, a batch at a time (bounded memory)."""
    last_id = 0
    while True:
        with Session(engine) as session:
            rows = list(
                session.execute(
                    select(Post).where(col(Post.id) > last_id).order_by(col(Post.id)).limit(batch)
                ).scalars()
            )
            if not rows:
                return
            yield from posts.load_views(session, rows)
            last_id = rows[-1].id


def export_all(engine: Engine, settings: Settings, directory: Path) -> Iterator[Path]:
    """Write every essay to `directory`. A deleted one too, marked with the time it was deleted
    (its `updated_at` since), so that an import keeps its id withdrawn (see app/exportfmt.py)."""
    if directory.is_dir() and next(directory.glob("*.txt"), None) is not None:
        # An older export's files would stay beside this one's (a title edited since renames
        # its file), and importing the folder would bring the old title back.
        raise FileExistsError(f"{directory} already holds .txt files: export into an empty folder")
    directory.mkdir(parents=True, exist_ok=True)
    for view in iter_essays(engine):
        post = view.post
        path = directory / export_name(post)
        text = exportfmt.render(
            view.to_input(),
            permalink=permalink(settings, post),
            tz=settings.tz,
            deleted_at=post.updated_at if post.status == STATUS_DELETED else None,
        )
        path.write_text(text, encoding="utf-8")
        yield path
