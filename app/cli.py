"""The `workshop` console command for operators."""

import contextlib
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from app import backup as backups
from app import db, essaypage, pagepack, pagestore, posts, tempfolders, tokens, transfer
from app.config import Settings
from app.errors import WorkshopError
from app.fragments import Renderer

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _settings() -> Settings:
    return Settings()


class _OperatorCommands(click.Group):
    """An operator's mistake (a bad setting, a database that is missing or down, a file that
    cannot be read or written) ends in one line that names it, and exit status 1: not a
    traceback. A password in a database URL is masked."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except WorkshopError as exc:
            raise click.ClickException(exc.detail) from None
        except ValidationError as exc:
            raise click.ClickException(_setting_problem(exc)) from None
        except DBAPIError as exc:
            raise click.ClickException(f"database: {_masked(str(exc.orig))}") from None
        except (sqlite3.Error, OSError) as exc:
            raise click.ClickException(_masked(str(exc))) from None


def _setting_problem(exc: ValidationError) -> str:
    if exc.title != Settings.__name__:
        return str(exc)
    found = []
    for error in exc.errors():
        name = "WORKSHOP_" + "_".join(str(part) for part in error["loc"]).upper()
        found.append(f"{name}: {error['msg']}")
    return "invalid setting " + "; ".join(found)


def _masked(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`; the first line only."""
    return _PASSWORD.sub(r"\1***@", text.strip().splitlines()[0] if text.strip() else text)


_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")


@click.group(cls=_OperatorCommands)
def main() -> None:
    """Workshop: the publishing app for the debate engine's essays."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
def serve(host: str, port: int, workers: int) -> None:
    """Run the web server (upgrades an empty or old SQLite database first)."""
    import uvicorn

    from app import serving

    settings = _settings()
    if settings.is_sqlite:
        db.upgrade(settings)
    elif not db.is_at_head(db.make_engine(settings)):
        raise click.ClickException(
            "the database is not at the latest migration: run `workshop db upgrade`"
        )
    # uvicorn stops on SIGTERM, then raises it again under the handler it found there: the
    # default one would end this process before the folders below are removed.
    signal.signal(signal.SIGTERM, _stop)
    tempfolders.remove_abandoned(tempfile.gettempdir())  # what killed serves left behind
    with contextlib.ExitStack() as stack:
        # Metrics summed over every worker (prometheus_client multiprocess mode), in a folder
        # of this serve's unless the operator named one; set before the workers import the app.
        if not os.environ.get(METRICS_ENV):
            os.environ[METRICS_ENV] = stack.enter_context(tempfolders.held(tempfolders.METRICS))
            stack.callback(os.environ.pop, METRICS_ENV, None)
        stack.enter_context(pagestore.shared_copy(settings))  # PostgreSQL: a local page copy
        uvicorn.run(
            "app.main:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            http=serving.PROTOCOL,  # each answer in one send (app/serving.py)
            proxy_headers=False,
            timeout_keep_alive=settings.keep_alive_seconds,
            server_header=False,
            log_level="warning",
            log_config=_uvicorn_log_config(settings.log_json),
            access_log=False,  # app/observability.py writes its own, with the request id
        )


def _uvicorn_log_config(as_json: bool) -> dict[str, Any]:
    """uvicorn's own lines (its warnings and errors) written as the app writes its lines
    (`app.observability.LogFormatter`): the time in UTC, JSON unless WORKSHOP_LOG_JSON=false.
    Named, not imported: the module makes the Prometheus metrics, which must wait until
    PROMETHEUS_MULTIPROC_DIR is set; uvicorn imports it when it configures logging, after."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "workshop": {"()": "app.observability.LogFormatter", "as_json": as_json},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "workshop",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }


def _stop(signum: int, frame: object) -> None:
    """SIGTERM for `workshop serve`: a clean stop, its temp folders removed on the way out."""
    raise SystemExit(0)


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    db.upgrade(_settings())
    click.echo("database at head")


@main.group("token")
def token_group() -> None:
    """Engine API tokens."""


@token_group.command("create")
@click.argument("name")
def token_create(name: str) -> None:
    """Create a token and print it once (only its hash is stored); no live token may have NAME."""
    token = _run(lambda: tokens.create_token(db.make_engine(_settings()), name))
    click.echo(token)
    click.echo(f"token {name!r} created; it is shown only this once", err=True)


@token_group.command("list")
def token_list() -> None:
    """Name, created, last used and revoked time of every token (revoked ones stay listed)."""
    found = tokens.list_tokens(db.make_engine(_settings()))
    click.echo(f"{'NAME':<24} {'CREATED':<20} {'LAST USED':<20} REVOKED")
    for t in found:
        click.echo(
            f"{t.name:<24} {_when(t.created_at):<20} {_when(t.last_used_at):<20} "
            f"{_when(t.revoked_at)}"
        )


@token_group.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke the live token NAME; the next request that uses it gets 401, and the name is free
    for a new token."""
    _run(lambda: tokens.revoke_token(db.make_engine(_settings()), name))
    click.echo(f"token {name!r} revoked")


@main.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def import_(files: tuple[Path, ...]) -> None:
    """Import essays in the blog's export format; one line per file.

    A directory stands for every *.txt file in it (so 100,000 files need no argument list).
    Files are written 100 to a transaction; each one's line is printed once its transaction
    has committed (constant memory); a progress bar and the essays/second go to stderr.
    """
    settings = _settings()
    if settings.is_sqlite:
        db.upgrade(settings)
    engine = db.make_engine(settings)
    paths = transfer.expand_paths(files)
    counts: dict[str, int] = {}
    started = time.monotonic()
    with click.progressbar(
        length=len(paths), label="importing", file=sys.stderr, show_pos=True, show_percent=True
    ) as bar:
        for result in transfer.import_files(engine, settings, paths):
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            click.echo(result.line())
            bar.update(1)
    _rate("imported", len(paths), time.monotonic() - started, counts)
    if counts.get("refused"):
        raise SystemExit(1)


@main.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def export(directory: Path) -> None:
    """Write every essay to DIRECTORY in the export format (a deleted one marked Deleted)."""
    settings = _settings()
    engine = db.make_engine(settings)
    total = transfer.count_essays(engine)
    started = time.monotonic()
    count = 0
    with click.progressbar(
        length=total, label="exporting", file=sys.stderr, show_pos=True, show_percent=True
    ) as bar:
        for _ in transfer.export_all(engine, settings, directory):
            count += 1
            bar.update(1)
    click.echo(f"exported {count} essays to {directory}")
    _rate("exported", count, time.monotonic() - started, {})


def _rate(verb: str, count: int, seconds: float, counts: dict[str, int]) -> None:
    detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    rate = count / seconds if seconds > 0 else 0.0
    tail = f" ({detail})" if detail else ""
    click.echo(f"{verb} {count} files in {seconds:.1f} s: {rate:.0f} essays/s{tail}", err=True)


@main.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def backup(file: Path) -> None:
    """Consistent online backup of the whole database to FILE."""
    _run(lambda: backups.backup(_settings(), file))
    click.echo(f"backup written to {file}")


@main.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def restore(file: Path) -> None:
    """Replace the database's contents with the backup in FILE."""
    _run(lambda: backups.restore(_settings(), file))
    click.echo(f"restored from {file}")


@main.group("pages")
def pages_group() -> None:
    """The essay pages stored at write time."""


@pages_group.command("refresh")
@click.option("--all", "everything", is_flag=True, help="Store every page, current or not.")
def pages_refresh(everything: bool) -> None:
    """Store the page of every published essay that has none from this build. Run it after a
    deploy that changes the templates or the site's name or timezone: until then those pages
    render on each request (correct, only slower). On SQLite it also compacts the pack files
    once the page copies left behind outweigh the pages in use (--all: always). Safe while the
    site runs."""
    settings = _settings()
    engine = db.make_engine(settings)
    renderer = Renderer.for_settings(settings)
    started = time.monotonic()
    total = transfer.count_published(engine)
    packed = pagepack.size_on_disk(engine)
    done = 0
    with click.progressbar(
        length=total, label="storing pages", file=sys.stderr, show_pos=True, show_percent=True
    ) as bar:
        for count in essaypage.refresh_all(engine, renderer, everything=everything):
            done += count
            bar.update(count)
    click.echo(f"stored {done} essay pages")
    after = pagepack.size_on_disk(engine)
    if after < packed:  # compacted (app/pagepack.py)
        click.echo(f"pack files compacted: {packed / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB")
    seconds = time.monotonic() - started
    click.echo(
        f"stored {done} pages in {seconds:.1f} s: {done / max(seconds, 1e-9):.0f}/s", err=True
    )


@main.group("post")
def post_group() -> None:
    """Inspect and repair posts."""


@post_group.command("revisions")
@click.argument("post_id", type=int)
def post_revisions(post_id: int) -> None:
    """List a post's earlier versions."""
    with Session(db.make_engine(_settings())) as session:
        for rev in _run(lambda: posts.revisions(session, post_id)):
            click.echo(f"{rev.id:>6}  v{rev.version:<4} {rev.reason:<8} {_when(rev.created_at)}")


@post_group.command("restore")
@click.argument("post_id", type=int)
@click.argument("revision_id", type=int)
def post_restore(post_id: int, revision_id: int) -> None:
    """Bring back an earlier version of a post (the current one becomes a revision)."""
    settings = _settings()
    with db.write_session(db.make_engine(settings)) as session:
        render = Renderer.for_settings(settings)
        _run(lambda: posts.restore_revision(session, post_id, revision_id, settings.author, render))
    click.echo(f"post {post_id} restored from revision {revision_id}")


def _when(instant: object) -> str:
    return instant.strftime("%Y-%m-%d %H:%M:%S") if instant else "-"  # type: ignore[attr-defined]


def _run(action):
    try:
        return action()
    except WorkshopError as exc:
        raise click.ClickException(exc.detail) from None


if __name__ == "__main__":
    main()
